"""The decoder block's attention paths: SDPA's own causal mask (no mask in memory), one-query decoding steps
without a mask, grouped KV heads without copies, and bool masks broadcast over heads; each must equal the
general path (a mask from original positions, gathers, reordering) that `_ASSUME_PADDING` forces.

Tiny random Llama (full attention), Qwen2 (sliding layers, window 12) and Gemma-3 (sliding and full layers,
window 12, q/k norms) configs with grouped-query attention (4 query heads over 2 KV heads).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from test_decoder_prefill import PROMPT, QUESTION, SINK, greedy, left_padded_pair, prompt, tiny

from tokcomp.pipeline import apply_passes
from tokcomp.surgery.adapters import decoder
from tokcomp.surgery.adapters.decoder import cached_tokens, last_token_bias, may_pad, reducible_span
from tokcomp.surgery.state import TokenState, causal_bias

SPAN = {"sink": SINK, "question": QUESTION}
PASSES = {
    "fastv": {"type": "fastv", "keep": 0.5, "layer": 2, **SPAN},
    "pyramid_drop": {"type": "pyramid_drop", "keep": 0.5, "layers": [1, 2, 3], **SPAN},
    "snapkv": {"type": "snapkv", "keep": 0.5, "window": 8, **SPAN},
}
FAMILIES = ["llama", "qwen2", "gemma3"]
WINDOW = 12  # the sliding window of the tiny Qwen2 and Gemma-3 configs


def tiny_model(family: str) -> transformers.PreTrainedModel:
    if family != "gemma3":
        return tiny(family)
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    )  # fmt: skip
    return transformers.Gemma3ForCausalLM(config).eval()


def compressed(family: str, name: str):
    model = tiny_model(family)
    apply_passes(model, [PASSES[name]], sequence_length=64)
    return model


def general_path(monkeypatch, run):
    """run() with the general path forced everywhere."""
    with monkeypatch.context() as patch:
        patch.setattr(decoder, "_ASSUME_PADDING", True)
        return run()


def logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


def assert_same_generation(fast, general) -> None:
    assert torch.equal(fast.sequences, general.sequences)
    for a, b in zip(fast.logits, general.logits, strict=True):  # every decoding step, through the cache
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", list(PASSES))
@pytest.mark.parametrize("family", FAMILIES)
def test_unpadded_prefill_and_decoding_equal_the_general_path(monkeypatch, family, name):
    """Prefill with drops (or a KV selector) and greedy decoding through the cache; prompts longer than the window."""
    model = compressed(family, name)
    ids = prompt()
    mask = torch.ones_like(ids)  # what a tokenizer and generate hand over: all ones, nothing padded
    fast = logits(model, ids, attention_mask=mask)
    assert torch.allclose(fast, general_path(monkeypatch, lambda: logits(model, ids, attention_mask=mask)), atol=1e-5)
    fast = greedy(model, input_ids=ids, attention_mask=mask)
    assert_same_generation(fast, general_path(monkeypatch, lambda: greedy(model, input_ids=ids, attention_mask=mask)))


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_a_prompt_inside_the_sliding_window_equals_the_general_path(monkeypatch, family):
    model = compressed(family, "fastv")
    ids = prompt(WINDOW)  # every sliding layer sees the whole prompt: SDPA's causal mask is exact there too
    assert torch.allclose(logits(model, ids), general_path(monkeypatch, lambda: logits(model, ids)), atol=1e-5)
    general = general_path(monkeypatch, lambda: greedy(model, input_ids=ids))
    assert_same_generation(greedy(model, input_ids=ids), general)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_batch_equals_each_prompt_alone_on_the_fast_path(family):
    """The padded batch takes bool masks; each prompt alone takes the fast path: the real rows agree."""
    model = compressed(family, "fastv")
    short, long, ids, mask = left_padded_pair()
    batch = greedy(model, input_ids=ids, attention_mask=mask)
    for row, alone in ((0, long), (1, short)):
        single = greedy(model, input_ids=alone)
        assert torch.equal(batch.sequences[row, PROMPT:], single.sequences[0, alone.shape[1] :])
        for a, b in zip(batch.logits, single.logits, strict=True):
            assert torch.allclose(a[row], b[0], atol=1e-4)


def test_a_reduction_that_pads_a_sample_switches_the_later_layers_to_masks(monkeypatch):
    """No input padding, but per-sample spans of different lengths: one sample keeps fewer tokens, so the
    layers after the drop hold padding and must leave the causal fast path."""
    model = compressed("llama", "pyramid_drop")
    ids = torch.cat([prompt(seed=4), prompt(seed=5)])
    span = torch.zeros(2, PROMPT, dtype=torch.bool)
    span[0, 4:30], span[1, 4:14] = True, True

    mask = torch.ones_like(ids)

    def run():
        with reducible_span(model, span):
            return greedy(model, input_ids=ids, attention_mask=mask)

    with reducible_span(model, span), torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).cache
    assert cached_tokens(cache).padded  # the cache of the sample that kept fewer holds padding
    assert_same_generation(run(), general_path(monkeypatch, run))


class Recorder:
    """Stands in for F.scaled_dot_product_attention, keeping what each call was given."""

    def __init__(self):
        self.calls: list[dict] = []
        self.sdpa = F.scaled_dot_product_attention

    def __call__(self, q, k, v, attn_mask=None, is_causal=False, enable_gqa=False, **kwargs):
        self.calls.append({"q": q.shape, "k": k.shape, "mask": attn_mask, "causal": is_causal, "gqa": enable_gqa})
        return self.sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa, **kwargs)


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(F, "scaled_dot_product_attention", recorder)
    return recorder


def test_unpadded_full_attention_prefill_and_decoding_pass_no_mask(recorder):
    model = compressed("llama", "fastv")  # full attention everywhere, 4 query heads over 2 KV heads
    ids = prompt()
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids), use_cache=True)
    prefill = recorder.calls[:]
    assert len(prefill) == 4
    assert all(c["mask"] is None and c["causal"] and c["gqa"] for c in prefill)
    assert all(c["k"][1] == 2 for c in prefill)  # the KV heads, not a copy per query head
    assert [c["q"][2] for c in prefill] == [PROMPT, PROMPT] + [out.logits.shape[1]] * 2  # the drop after layer 1
    recorder.calls.clear()
    step = out.logits[:, -1:].argmax(-1)
    with torch.no_grad():
        model(step, attention_mask=torch.ones(1, PROMPT + 1, dtype=torch.long), cache=out.cache, use_cache=True)
    assert all(c["mask"] is None and not c["causal"] and c["q"][2] == 1 for c in recorder.calls)


def test_sliding_layers_and_padded_batches_share_one_mask_for_all_heads(recorder):
    model = compressed("qwen2", "fastv")  # layers 0-1 full attention, 2-3 sliding (window 12), drop after layer 1
    ids = prompt()
    with torch.no_grad():
        model(ids)
    full, sliding = recorder.calls[:2], recorder.calls[2:]
    assert all(c["mask"] is None and c["causal"] for c in full)
    for c in sliding:  # the prompt is longer than the window: the window needs a mask
        assert c["mask"].shape[:2] == (1, 1) and not c["causal"]
    assert sliding[0]["mask"] is sliding[1]["mask"]  # built once for the layers that see the same tokens
    recorder.calls.clear()
    mask = torch.ones(2, PROMPT, dtype=torch.long)
    mask[1, :5] = 0
    with torch.no_grad():
        model(ids.repeat(2, 1), attention_mask=mask)
    assert all(c["mask"].shape[:2] == (2, 1) for c in recorder.calls)
    assert recorder.calls[0]["mask"] is recorder.calls[1]["mask"]  # layers 0-1: the whole prompt, full attention
    assert not model.model.layers[0].call.shared  # nothing is kept once the call ends


def test_a_decoding_step_over_a_per_head_cache_folds_query_heads_instead_of_copying_keys(recorder):
    model = compressed("llama", "snapkv")  # each KV head caches its own entries
    ids = prompt()
    mask = torch.ones(2, PROMPT, dtype=torch.long)
    mask[1, :3] = 0  # padding: the step needs a mask, one row per KV head
    with torch.no_grad():
        out = model(ids.repeat(2, 1), attention_mask=mask, use_cache=True)
        recorder.calls.clear()
        step = torch.ones(2, 1, dtype=torch.long)
        model(step, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), cache=out.cache)
    for c in recorder.calls:
        assert c["q"][1:3] == (2, 2)  # [B, KV heads, query heads per KV head, d]
        assert c["mask"].shape[1] == c["k"][1] == 2


def test_last_token_bias_is_the_last_row_of_the_causal_bias():
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # padding last, as the block keeps it
    position = torch.tensor([[0, 2, 3, 5, 8, 9], [2, 4, 6, 7, 0, 1]])
    state = TokenState(size=torch.ones(2, 6), real=real, protected=torch.zeros_like(real), position=position)
    key_bias = torch.where(real, 0.0, torch.finfo(torch.float32).min)
    for window in (None, 4):
        full = causal_bias(position, position, key_bias, torch.float32, window)
        last = torch.tensor([5, 3])  # each sample's latest real token
        expected = full[torch.arange(2), :, last][:, :, None]
        assert torch.equal(last_token_bias(state, window, torch.float32, padded=True), expected)
    assert last_token_bias(state, None, torch.float32, padded=False) is None  # the last token sees every token


def test_padding_is_assumed_while_tracing(monkeypatch):
    real = torch.ones(1, 5, dtype=torch.bool)
    assert not may_pad(real) and not may_pad(None) and may_pad(~real)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert may_pad(real)  # reading the mask would break the graph: the masked path is traced
