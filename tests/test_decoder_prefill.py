"""Decoder LLMs: prefill token dropping (FastV) with rotary positions, causal / sliding masks and a KV cache.

Fast tests use tiny random Llama / Qwen2 / Mistral configs (grouped-query attention,
sliding windows shorter than the prompts); slow tests use the real zoo:gemma-3-270m.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers

from tokcomp.errors import RecipeError, TokcompError
from tokcomp.pipeline import apply_passes
from tokcomp.reducers.apply import select
from tokcomp.reducers.base import Reducer
from tokcomp.reducers.rate import Rate
from tokcomp.surgery import capture_final_state
from tokcomp.surgery.adapters.decoder import DecoderTokenBlock

PROMPT = 40
SINK, QUESTION = 2, 5


def tiny(family: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    common = {
        "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    }  # fmt: skip
    if family == "llama":
        config = transformers.LlamaConfig(**common)
        return transformers.LlamaForCausalLM(config).eval()
    if family == "qwen2":  # sliding window on the upper layers only
        config = transformers.Qwen2Config(**common, use_sliding_window=True, sliding_window=12, max_window_layers=2)
        return transformers.Qwen2ForCausalLM(config).eval()
    config = transformers.MistralConfig(**common, sliding_window=12)
    return transformers.MistralForCausalLM(config).eval()


def compressed(base, keep: float, layer: int = 2):
    model = copy.deepcopy(base)
    apply_passes(
        model, [{"type": "fastv", "keep": keep, "layer": layer, "sink": SINK, "question": QUESTION}], sequence_length=64
    )
    return model


def prompt(length: int = PROMPT, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(seed))


def left_padded_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(short, long, ids, attention mask): a 28-token and a PROMPT-token prompt, left-padded into one batch."""
    short, long = prompt(28, seed=2), prompt(PROMPT, seed=3)
    ids = torch.zeros(2, PROMPT, dtype=torch.long)
    mask = torch.zeros(2, PROMPT, dtype=torch.long)
    ids[0], mask[0] = long[0], 1
    ids[1, PROMPT - 28 :], mask[1, PROMPT - 28 :] = short[0], 1
    return short, long, ids, mask


def greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)


FAMILIES = ["llama", "qwen2", "mistral"]
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_the_original_model(family):
    base = tiny(family)
    model = compressed(base, keep=1.0)
    assert isinstance(model.model.layers[0], DecoderTokenBlock)
    ids = prompt()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)
    ours, theirs = greedy(model, input_ids=ids), greedy(base, input_ids=ids)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.logits, theirs.logits, strict=True):  # every decoding step, through the cache
        assert torch.allclose(a, b, atol=1e-5)


class KeepPositions(Reducer):
    """Reference: keep exactly the tokens at the given original positions (and every later one)."""

    kind = "keep_positions"

    def __init__(self, positions: torch.Tensor, first_new: int):
        super().__init__(Rate(0, 1), 0)
        self.positions, self.first_new = positions, first_new

    def forward(self, x, state, attn):
        kept = torch.isin(state.position, self.positions) | (state.position >= self.first_new)
        order = torch.where(kept, state.position, state.position + 10**6).argsort(dim=-1)[:, : int(kept.sum())]
        return select(x, state, order)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_holds_the_kept_tokens_and_decoding_reads_them_at_original_positions(family):
    base = tiny(family)
    model = compressed(base, keep=0.5)
    ids = prompt()
    reference_reducible = 64 - SINK - QUESTION  # the rate is set at the 64-token reference
    rate = Rate((reference_reducible + 1) // 2, reference_reducible)
    kept = PROMPT - rate.of(PROMPT - SINK - QUESTION)
    with torch.no_grad(), capture_final_state(model) as states:
        out = model(ids, use_cache=True)
    position = states[0].position[0]
    assert out.logits.shape[1] == kept
    assert torch.equal(position, position.sort().values)  # input order
    assert set(range(SINK)) | set(range(PROMPT - QUESTION, PROMPT)) <= set(position.tolist())  # span protected
    windows = [block.window for block in model.model.layers]
    for index, layer in enumerate(out.cache.layers):
        expected = PROMPT if index < 2 else kept  # layers 0-1 see the whole prompt
        if windows[index] is not None:
            expected = min(expected, windows[index] - 1)  # the cache's own window trimming
        assert layer.keys.shape[2] == expected
    # Cached decoding equals recomputing the whole sequence with the same tokens kept (no cache).
    result = greedy(model, input_ids=ids)
    sequence = result.sequences[:, :-1]
    reference = copy.deepcopy(model)
    reference.model.layers[1].reducer = KeepPositions(position, PROMPT)
    with torch.no_grad():
        logits = reference(sequence, use_cache=False).logits
    steps = torch.stack(result.logits, dim=1)
    assert torch.allclose(logits[:, -steps.shape[1] :], steps, atol=1e-4)


def test_left_padded_batch_equals_each_prompt_alone():
    base = tiny("mistral")
    model = compressed(base, keep=0.5)
    short, long, ids, mask = left_padded_pair()
    batch = greedy(copy.deepcopy(model), input_ids=ids, attention_mask=mask)  # a copy hooks into itself
    for row, alone in ((0, long), (1, short)):
        single = greedy(model, input_ids=alone)
        assert torch.equal(batch.sequences[row, PROMPT:], single.sequences[0, alone.shape[1] :])
        for a, b in zip(batch.logits, single.logits, strict=True):
            assert torch.allclose(a[row], b[0], atol=1e-4)


def test_a_prompt_shorter_than_the_protected_span_drops_nothing():
    base = tiny("llama")
    model = compressed(base, keep=0.5)
    ids = prompt(SINK + QUESTION - 1)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)


def test_compiled_checkpoint_loads_as_a_causal_lm_that_generates(tmp_path):
    import tokcomp

    base = tiny("qwen2")
    base.save_pretrained(tmp_path / "model")
    passes = [{"type": "fastv", "keep": 0.5, "layer": 2, "sink": SINK, "question": QUESTION}]
    recipe = {
        "model": {"source": str(tmp_path / "model"), "sequence_length": 64},
        "passes": passes,
        "evaluation": False,
    }
    tokcomp.compile(recipe, tmp_path / "out")
    loaded = tokcomp.load(tmp_path / "out")
    assert isinstance(loaded, transformers.Qwen2ForCausalLM)
    ids = prompt()
    assert torch.equal(greedy(loaded, input_ids=ids).sequences, greedy(compressed(base, 0.5), input_ids=ids).sequences)


@pytest.mark.parametrize(
    "passes, message",
    [
        ({"type": "fastv", "keep": 0.5, "sink": 40, "question": 24}, "leave nothing reducible"),
        ({"type": "fastv", "keep": 0.5, "layer": 4}, "the model has 4 layers"),
        ({"type": "fastv", "keep": 0.0}, "keep"),
    ],
)
def test_bad_configs_are_one_line_errors(passes, message):
    with pytest.raises(TokcompError) as error:
        apply_passes(tiny("llama"), [passes], sequence_length=64)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_fastv_refuses_models_it_cannot_reduce():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    with pytest.raises(RecipeError, match="decoder LLM"):
        apply_passes(transformers.BertModel(config).eval(), [{"type": "fastv"}], sequence_length=64)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(TokcompError, match="does not support GPT2LMHeadModel") as error:
        apply_passes(gpt2.eval(), [{"type": "fastv"}], sequence_length=64)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------- real model: zoo:gemma-3-270m

CONTEXT, CONTINUATION = 1000, 32  # prompt tokens (twice the 512-token sliding window), tokens scored after it


def passages(tokenizer, count: int) -> list[torch.Tensor]:
    """`count` real prose passages of CONTEXT + CONTINUATION tokens, from different parts of the Python docs."""
    from tokcomp.zoo.samples import english_prose

    sentences = english_prose()
    out, start = [], 0
    while len(out) < count:
        text, end = "", start
        while len(tokenizer(text).input_ids) < CONTEXT + CONTINUATION + 8:
            text, end = f"{text} {sentences[end]}".strip(), end + 1
        out.append(tokenizer(text, return_tensors="pt").input_ids[:, : CONTEXT + CONTINUATION])
        start = end + len(sentences) // (2 * count)  # skip ahead: another topic
    return out


def continuation_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits [CONTINUATION, V] for the last CONTINUATION tokens of `ids`: the prompt is
    prefilled (and reduced) alone, the continuation then runs through the KV cache in one chunk."""
    with torch.no_grad():
        prefill = model(ids[:, :CONTEXT], use_cache=True)
        steps = model(ids[:, CONTEXT:-1], cache=prefill.cache, use_cache=True)
    return torch.cat([prefill.logits[0, -1:], steps.logits[0]])


def fidelity(original: torch.Tensor, compressed: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean KL(original || compressed) in nats) over the scored positions."""
    agreement = (original.argmax(-1) == compressed.argmax(-1)).float().mean().item()
    log_p, log_q = original.float().log_softmax(-1), compressed.float().log_softmax(-1)
    return agreement, (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()


@pytest.fixture(scope="module")
def gemma():
    from tokcomp.zoo import pull

    folder = pull("zoo:gemma-3-270m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model


def compile_gemma(tmp_path, keep: float):
    import yaml

    import tokcomp

    recipe = yaml.safe_load((RECIPES / "fastv_gemma.yaml").read_text())
    recipe["passes"][0]["keep"] = keep
    tokcomp.compile(recipe, tmp_path / f"fastv_{keep}")
    return tokcomp.load(tmp_path / f"fastv_{keep}")


def assert_exact_on_gemma(model, original, tokenizer) -> None:
    """Logits (full prompt and continuation) within 1e-5 and identical greedy generations with the KV cache."""
    ids = passages(tokenizer, 1)[0]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)
    assert torch.allclose(continuation_logits(model, ids), continuation_logits(original, ids), atol=1e-5)
    prompt = {"input_ids": ids[:, :CONTEXT], "attention_mask": torch.ones(1, CONTEXT, dtype=torch.long)}
    ours = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(ours, original.generate(**prompt, max_new_tokens=16, do_sample=False))


@pytest.mark.slow
@pytest.mark.heavy
def test_gemma_keep_all_is_exact_with_and_without_the_cache(gemma, tmp_path):
    tokenizer, original = gemma
    model = compile_gemma(tmp_path, keep=1.0)
    assert isinstance(model, transformers.Gemma3ForCausalLM)
    assert_exact_on_gemma(model, original, tokenizer)


@pytest.mark.slow
@pytest.mark.heavy
def test_gemma_fastv_half_keeps_the_continuation(gemma, tmp_path):
    """keep 0.5 after the recipe's layer: the next 32 tokens' distributions stay close to the original's."""
    import yaml

    tokenizer, original = gemma
    model = compile_gemma(tmp_path, keep=0.5)
    scores = []
    for ids in passages(tokenizer, 4):
        with torch.no_grad():
            cache = model(ids[:, :CONTEXT], use_cache=True).cache
        reducible = CONTEXT - 4 - 32
        layer = yaml.safe_load((RECIPES / "fastv_gemma.yaml").read_text())["passes"][0]["layer"]
        kept = CONTEXT - model.model.layers[layer - 1].reducer.rate.of(reducible)
        assert kept == CONTEXT - reducible // 2
        full_layers = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
        assert all(cache.layers[i].keys.shape[2] == kept for i in full_layers)  # layers 5, 11, 17
        scores.append(fidelity(continuation_logits(original, ids), continuation_logits(model, ids)))
    agreement = sum(s[0] for s in scores) / len(scores)
    kl = sum(s[1] for s in scores) / len(scores)
    print(f"\nfastv keep 0.5 K=2, {len(scores)} x {CONTINUATION} tokens: top-1 agreement {agreement:.3f}, KL {kl:.4f}")
    print("per passage:", [(round(a, 3), round(k, 4)) for a, k in scores])
    assert agreement >= 0.75 and kl < 0.5


def test_decoder_flops_count_grouped_query_causal_and_sliding_attention():
    from tokcomp.analysis.flops import per_layer_macs
    from tokcomp.surgery import find_adapter
    from tokcomp.surgery.adapters.base import InputSpec

    model = tiny("qwen2")  # layers 0-1 full, 2-3 sliding (window 12); 4 query heads, 2 KV heads of 16
    geometry = find_adapter(model).geometry(model, InputSpec("text", sequence_length=PROMPT))
    c, width, kv_width = 64, 64, 32
    projections = 2 * c * width + 2 * c * kv_width
    mlp = 3 * c * 96
    for layer, macs in enumerate(per_layer_macs(geometry, [PROMPT] * 4)):
        window = 12 if layer >= 2 else PROMPT
        pairs = sum(min(i + 1, window) for i in range(PROMPT))  # query i sees keys max(0, i-w+1) .. i
        assert macs == PROMPT * projections + 2 * pairs * width + PROMPT * mlp
