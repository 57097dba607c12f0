"""Decoder prefill passes beyond FastV: PyramidDrop (staged drops), per-call reducible spans, KV-cache
compression after prefill (SnapKV, StreamingLLM) and GemFilter (select, then re-run), on tiny random
Llama / Qwen2 / Mistral configs.

Exactness: keep 1.0 is the original model (logits and greedy generation through the cache). Drops:
cached decoding equals a no-cache recompute with the same tokens kept. Cache compression: decoding
equals the original model run over the whole sequence with a per-head 4-D mask that hides, from the
generated tokens only, the prompt entries the cache dropped (the prompt itself saw every token).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from test_decoder_prefill import FAMILIES, PROMPT, QUESTION, SINK, KeepPositions, greedy, left_padded_pair, prompt, tiny

from tokcomp.errors import RecipeError, SpanError, TokcompError
from tokcomp.pipeline import apply_passes
from tokcomp.surgery import capture_final_state
from tokcomp.surgery.adapters.decoder import cached_tokens, reducible_span

SPAN = {"sink": SINK, "question": QUESTION}
PASSES = {
    "pyramid_drop": {"type": "pyramid_drop", "layers": [1, 2, 3], **SPAN},
    "snapkv": {"type": "snapkv", "window": 8, **SPAN},
    "streaming_llm": {"type": "streaming_llm", **SPAN},
}


def compressed(base, name: str, **settings):
    model = copy.deepcopy(base)
    apply_passes(model, [{**PASSES[name], **settings}], sequence_length=64)
    return model


@pytest.mark.parametrize("name", list(PASSES))
@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_the_original_model(family, name):
    base = tiny(family)
    model = compressed(base, name, keep=1.0)
    ids = prompt()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)
    ours, theirs = greedy(model, input_ids=ids), greedy(base, input_ids=ids)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.logits, theirs.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- PyramidDrop


def test_pyramid_stages_compose_and_cached_decoding_equals_a_recompute():
    base = tiny("llama")  # full attention everywhere: each layer's cache holds exactly what entered it
    model = compressed(base, "pyramid_drop", keep=0.5)
    ids = prompt()
    kept = [PROMPT]  # layer 0 sees the whole prompt; every stage keeps half of the span still present
    for block in model.model.layers[:3]:
        kept.append(kept[-1] - block.reducer.rate.of(kept[-1] - SINK - QUESTION))
    assert [k - SINK - QUESTION for k in kept] == [33, 17, 8, 4]  # 33 reducible -> 50%, 25%, 12.5%
    with torch.no_grad():
        out = model(ids, use_cache=True)
    assert [layer.keys.shape[2] for layer in out.cache.layers] == kept
    stages = [cached_tokens(out.cache).position[layer][0, 0] for layer in range(4)]
    protected = set(range(SINK)) | set(range(PROMPT - QUESTION, PROMPT))
    for earlier, later in itertools.pairwise(stages):
        assert torch.equal(later, later.sort().values)  # input order, original positions
        assert protected <= set(later.tolist()) <= set(earlier.tolist())  # a stage drops only what is there
    # Cached decoding equals recomputing the whole sequence without a cache, every stage keeping the same tokens.
    result = greedy(model, input_ids=ids)
    reference = copy.deepcopy(model)
    for layer in range(3):
        reference.model.layers[layer].reducer = KeepPositions(stages[layer + 1], PROMPT)
    with torch.no_grad():
        logits = reference(result.sequences[:, :-1], use_cache=False).logits
    steps = torch.stack(result.logits, dim=1)
    assert torch.allclose(logits[:, -steps.shape[1] :], steps, atol=1e-4)


def test_pyramid_target_keep_names_the_share_left_after_the_last_stage():
    model = compressed(tiny("llama"), "pyramid_drop", target_keep=0.125)  # three stages of 0.5 each
    counts = [64]
    for block in model.model.layers[:3]:
        counts.append(counts[-1] - block.reducer.rate.removed)
    assert [n - SINK - QUESTION for n in counts] == [57, 29, 14, 7]  # 28.5 rounds up
    same = compressed(tiny("llama"), "pyramid_drop", keep=0.5)
    assert [b.reducer.rate for b in same.model.layers[:3]] == [b.reducer.rate for b in model.model.layers[:3]]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"layers": []}, "non-empty, strictly increasing"),
        ({"layers": [2, 2]}, "non-empty, strictly increasing"),
        ({"layers": [0, 2]}, "non-empty, strictly increasing"),
        ({"layers": [1, 4]}, "the model has 4 layers"),
        ({"keep": 0.5, "target_keep": 0.25}, "not both"),
    ],
)
def test_bad_pyramid_configs_are_one_line_errors(settings, message):
    with pytest.raises(TokcompError) as error:
        compressed(tiny("llama"), "pyramid_drop", **settings)
    assert message in str(error.value) and "\n" not in str(error.value)


# --------------------------------------------------------------------------- explicit reducible span


def kept_positions(model, ids, **kwargs) -> set[int]:
    with torch.no_grad(), capture_final_state(model) as states:
        model(ids, **kwargs)
    return set(states[0].position[0].tolist())


def test_a_call_span_is_the_only_thing_reduced():
    model = compressed(tiny("llama"), "pyramid_drop", keep=0.25)
    ids = prompt()
    mask = torch.zeros(1, PROMPT, dtype=torch.bool)
    mask[:, 10:30] = True  # e.g. an image's tokens in the middle of the prompt
    with reducible_span(model, mask):
        kept = kept_positions(model, ids)
    outside = set(range(10)) | set(range(30, PROMPT))
    assert outside <= kept and len(kept & set(range(10, 30))) < 20
    with reducible_span(model, (10, 30)):  # the same span as input columns
        assert kept_positions(model, ids) == kept
    assert kept_positions(model, ids) != kept  # outside the block: the recipe's span again


def test_a_tiny_budget_never_removes_protected_tokens():
    model = compressed(tiny("mistral"), "pyramid_drop", keep=0.01)
    ids = prompt()
    protected = set(range(SINK)) | set(range(PROMPT - QUESTION, PROMPT))
    assert kept_positions(model, ids) == protected  # the whole reducible span may go, nothing else
    with reducible_span(model, (20, 25)):
        assert kept_positions(model, ids) == set(range(PROMPT)) - set(range(20, 25))


def test_spans_outside_the_prompt_are_one_line_errors():
    model = compressed(tiny("llama"), "pyramid_drop", keep=0.5)
    ids = prompt()
    padded_mask = torch.ones(1, PROMPT, dtype=torch.long)
    padded_mask[:, :4] = 0
    cases = [
        ((30, PROMPT + 1), {}, "outside the 40-token prompt"),
        (torch.ones(1, PROMPT + 3, dtype=torch.bool), {}, "does not fit"),
        (torch.ones(1, PROMPT, dtype=torch.bool), {"attention_mask": padded_mask}, "marks padding"),
    ]
    for span, kwargs, message in cases:
        with pytest.raises(SpanError) as error, reducible_span(model, span):
            model(ids, **kwargs)
        assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SpanError, match="no tokcomp decoder layers"), reducible_span(tiny("llama"), (0, 4)):
        pass


def test_a_recipe_can_require_every_call_to_mark_its_span():
    model = compressed(tiny("qwen2"), "snapkv", keep=0.5, span="call")
    ids = prompt()
    with pytest.raises(SpanError, match="marked none"):
        model(ids, use_cache=True)
    with reducible_span(model, (10, 30)), torch.no_grad():
        cache = model(ids, use_cache=True).cache
    for head in cached_tokens(cache).position[0][0]:  # layer 0: full attention, compressed per KV head
        cached = set(head.tolist())
        assert set(range(10)) | set(range(30, PROMPT)) <= cached and len(cached) == PROMPT - 10  # half of 20 go


def test_generate_within_a_span_equals_each_prompt_alone_in_a_padded_batch():
    model = compressed(tiny("mistral"), "pyramid_drop", keep=0.5)
    short, long, ids, mask = left_padded_pair()
    span = torch.zeros(2, PROMPT, dtype=torch.bool)
    span[0, 5:25], span[1, PROMPT - 28 + 5 : PROMPT - 28 + 25] = True, True
    with reducible_span(model, span):
        batch = greedy(model, input_ids=ids, attention_mask=mask)
    for row, alone in ((0, long), (1, short)):
        with reducible_span(model, (5, 25)):
            single = greedy(model, input_ids=alone)
        assert torch.equal(batch.sequences[row, PROMPT:], single.sequences[0, alone.shape[1] :])


# --------------------------------------------------------------------------- KV-cache compression


def masked_reference(base, sequence: torch.Tensor, record, prompt_length: int) -> torch.Tensor:
    """The original model over `sequence`, each layer with its own [1, H, N, N] mask: the generated tokens
    see only the prompt entries that layer's KV head cached (the prompt itself sees the whole prompt)."""
    tokens, heads = sequence.shape[1], base.config.num_attention_heads
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    masks = []
    for layer in range(len(base.model.layers)):
        cached = record.position[layer][0]  # [Hs, L]: one row for every KV head, or one per head
        mask = causal[None, None].repeat(1, heads, 1, 1)
        for head in range(heads):
            row = cached[head * cached.shape[0] // heads]
            visible = torch.zeros(prompt_length, dtype=torch.bool)
            visible[row[row < prompt_length]] = True
            mask[0, head, prompt_length:, :prompt_length] &= visible
        masks.append(mask)

    def per_layer(layer):
        def hook(module, args, kwargs):
            return args, {**kwargs, "attention_mask": masks[layer]}

        return hook

    handles = [
        block.register_forward_pre_hook(per_layer(i), with_kwargs=True) for i, block in enumerate(base.model.layers)
    ]
    try:
        with torch.no_grad():
            return base(sequence).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", ["snapkv", "streaming_llm"])
def test_compressed_cache_decoding_equals_the_original_with_the_dropped_entries_hidden(name):
    base = tiny("llama")  # every layer full attention (and compressed), 2 KV heads for 4 query heads
    model = compressed(base, name, keep=0.5)
    ids = prompt()
    with torch.no_grad():
        out = model(ids, use_cache=True)
        assert torch.allclose(out.logits, base(ids).logits, atol=1e-5)  # prefill itself is unchanged
    record = cached_tokens(out.cache)
    question = 8 if name == "snapkv" else QUESTION  # snapkv keeps its whole observation window
    reducible = PROMPT - SINK - question
    kept = PROMPT - model.model.layers[0].kv_selector.rate.of(reducible)
    protected = set(range(SINK)) | set(range(PROMPT - question, PROMPT))
    original = base(ids, use_cache=True).cache
    for layer, cache_layer in enumerate(out.cache.layers):
        positions = record.position[layer][0]
        assert cache_layer.keys.shape[2] == kept and positions.shape[0] == (2 if name == "snapkv" else 1)
        for head_positions in positions:
            assert protected <= set(head_positions.tolist())
            assert torch.equal(head_positions, head_positions.sort().values)
        # Each head stores the original keys of its chosen tokens (rotated at their original positions).
        expected = original.layers[layer].keys.gather(2, positions[None, ..., None].expand(1, 2, -1, 16))
        assert torch.allclose(cache_layer.keys, expected, atol=1e-5)
    if name == "streaming_llm":
        assert record.position[0][0, 0].tolist() == list(range(SINK)) + list(range(PROMPT - kept + SINK, PROMPT))
    # Decoding (generate) and a plain chunk through the cache both equal the masked original.
    result = greedy(model, input_ids=ids)
    reference = masked_reference(base, result.sequences[:, :-1], record, PROMPT)
    steps = torch.stack(result.logits, dim=1)
    assert torch.allclose(reference[:, PROMPT - 1 :], steps, atol=1e-4)
    with torch.no_grad():
        prefill = model(ids, use_cache=True)
        chunk = model(result.sequences[:, PROMPT:-1], cache=prefill.cache, use_cache=True).logits
    assert torch.allclose(reference[:, PROMPT:], chunk, atol=1e-4)


def test_snapkv_heads_choose_their_own_tokens_and_sliding_layers_keep_their_window():
    model = compressed(tiny("qwen2"), "snapkv", keep=0.25, kernel=3)  # layers 0-1 full, 2-3 sliding (12)
    with torch.no_grad():
        cache = model(prompt(), use_cache=True).cache
    record = cached_tokens(cache)
    full = record.position[0][0]
    assert full.shape[0] == 2 and not torch.equal(full[0], full[1])  # per KV head
    assert [layer.keys.shape[2] for layer in cache.layers[2:]] == [11, 11]  # window - 1, uncompressed
    assert record.position[2].shape[1] == 1


def test_snapkv_rejects_an_even_kernel():
    with pytest.raises(TokcompError, match="must be odd"):
        compressed(tiny("llama"), "snapkv", kernel=6)


def test_one_decoder_pass_per_recipe():
    model = compressed(tiny("llama"), "snapkv")
    with pytest.raises(RecipeError, match="already installed"):
        apply_passes(model, [{"type": "fastv", **SPAN}], sequence_length=64)


@pytest.mark.parametrize("name", ["pyramid_drop", "snapkv"])
def test_compiled_checkpoint_rebuilds_the_pass(tmp_path, name):
    import tokcomp

    base = tiny("qwen2")
    base.save_pretrained(tmp_path / "model")
    recipe = {
        "model": {"source": str(tmp_path / "model"), "sequence_length": 64},
        "passes": [{**PASSES[name], "keep": 0.5}],
        "evaluation": False,
    }
    tokcomp.compile(recipe, tmp_path / "out")
    loaded = tokcomp.load(tmp_path / "out")
    ids = prompt()
    ours, theirs = greedy(loaded, input_ids=ids), greedy(compressed(base, name, keep=0.5), input_ids=ids)
    assert torch.equal(ours.sequences, theirs.sequences)


# --------------------------------------------------------------------------- GemFilter


def gemfilter(base, keep: float, positions: str):
    model = copy.deepcopy(base)
    settings = {"type": "gemfilter", "keep": keep, "layer": 2, "positions": positions, **SPAN}
    apply_passes(model, [settings], sequence_length=64)
    return model


@pytest.mark.parametrize("positions", ["original", "contiguous"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gemfilter_keep_all_is_the_original_model(family, positions):
    base = tiny(family)
    model = gemfilter(base, 1.0, positions)
    ids = prompt()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)
    ours, theirs = greedy(model, input_ids=ids), greedy(base, input_ids=ids)
    assert torch.equal(ours.sequences, theirs.sequences)
    for a, b in zip(ours.logits, theirs.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("positions", ["original", "contiguous"])
def test_gemfilter_is_the_original_model_run_on_the_selected_tokens(positions):
    base = tiny("qwen2")  # a sliding window on layers 2-3: the re-run's masks follow its own tokens
    model = gemfilter(base, 0.5, positions)
    ids = prompt()
    # The selection: FastV at the same layer and budget keeps the same tokens (same first layers, same ranking).
    fastv = copy.deepcopy(base)
    apply_passes(fastv, [{"type": "fastv", "keep": 0.5, "layer": 2, **SPAN}], sequence_length=64)
    selected = sorted(kept_positions(fastv, ids))
    assert len(selected) < PROMPT and set(range(SINK)) | set(range(PROMPT - QUESTION, PROMPT)) <= set(selected)
    result = greedy(model, input_ids=ids)
    generated = result.sequences[:, PROMPT:-1]
    sequence = torch.cat([ids[:, selected], generated], dim=1)
    first = selected if positions == "original" else list(range(len(selected)))
    after = first[-1] + 1
    position_ids = torch.tensor([first + list(range(after, after + generated.shape[1]))])
    with torch.no_grad():
        reference = base(sequence, position_ids=position_ids).logits
        prefill = model(ids, use_cache=True)
    assert torch.allclose(prefill.logits, reference[:, : len(selected)], atol=1e-4)  # one row per selected token
    steps = torch.stack(result.logits, dim=1)
    assert torch.allclose(reference[:, len(selected) - 1 :], steps, atol=1e-4)
    assert [layer.keys.shape[2] for layer in prefill.cache.layers] == [len(selected)] * 2 + [11, 11]


@pytest.mark.parametrize("positions", ["original", "contiguous"])
def test_gemfilter_left_padded_batch_equals_each_prompt_alone(positions):
    model = gemfilter(tiny("llama"), 0.5, positions)
    short, long, ids, mask = left_padded_pair()
    batch = greedy(model, input_ids=ids, attention_mask=mask)
    for row, alone in ((0, long), (1, short)):
        single = greedy(model, input_ids=alone, attention_mask=torch.ones_like(alone))
        assert torch.equal(batch.sequences[row, PROMPT:], single.sequences[0, alone.shape[1] :])
        for a, b in zip(batch.logits, single.logits, strict=True):
            assert torch.allclose(a[row], b[0], atol=1e-4)


def test_gemfilter_continues_through_a_cache_the_model_built_itself():
    base = tiny("llama")
    model = gemfilter(base, 0.5, "original")
    ids = prompt()
    result = greedy(model, input_ids=ids)
    with torch.no_grad():
        prefill = model(ids, use_cache=True)  # no cache passed: the model builds one
        chunk = model(result.sequences[:, PROMPT:-1], cache=prefill.cache, use_cache=True).logits
    steps = torch.stack(result.logits, dim=1)
    assert torch.allclose(chunk, steps[:, 1:], atol=1e-4)


# --------------------------------------------------------------------------- PyramidKV


def test_pyramid_budgets_shrink_with_depth_and_average_to_keep():
    from tokcomp.passes.kv_cache import pyramid_keeps

    keeps = pyramid_keeps(0.25, 3, 20.0)
    assert keeps[0] > keeps[1] > keeps[2] == pytest.approx(0.25 / 20)
    assert sum(keeps) / 3 == pytest.approx(0.25)
    high = pyramid_keeps(0.8, 4, 20.0)  # the first would pass 1: capped, the mean still 0.8
    assert high[0] == 1.0 and sum(high) / 4 == pytest.approx(0.8)
    assert pyramid_keeps(0.5, 1, 20.0) == [0.5]


def test_pyramidkv_caches_fewer_entries_in_deeper_full_attention_layers():
    base = tiny("llama")  # every layer full attention
    model = copy.deepcopy(base)
    apply_passes(model, [{"type": "pyramidkv", "window": 8, "keep": 0.5, **SPAN}], sequence_length=64)
    ids = prompt()
    with torch.no_grad():
        out = model(ids, use_cache=True)
        assert torch.allclose(out.logits, base(ids).logits, atol=1e-5)  # prefill itself is unchanged
    lengths = [layer.keys.shape[2] for layer in out.cache.layers]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    snap = compressed(base, "snapkv", keep=0.5)
    with torch.no_grad():
        snap_lengths = [layer.keys.shape[2] for layer in snap(ids, use_cache=True).cache.layers]
    assert abs(sum(lengths) - sum(snap_lengths)) <= len(lengths)  # the same cache size, spread differently
    assert greedy(model, input_ids=ids).sequences.shape[1] > ids.shape[1]


def test_pyramidkv_keep_all_is_the_original_model_and_rebuilds_from_its_checkpoint(tmp_path):
    import tokcomp

    base = tiny("qwen2")
    spec = {"type": "pyramidkv", "window": 8, **SPAN}
    model = copy.deepcopy(base)
    apply_passes(model, [{**spec, "keep": 1.0}], sequence_length=64)
    ids = prompt()
    assert torch.equal(greedy(model, input_ids=ids).sequences, greedy(base, input_ids=ids).sequences)
    base.save_pretrained(tmp_path / "model")
    recipe = {"model": {"source": str(tmp_path / "model"), "sequence_length": 64},
              "passes": [{**spec, "keep": 0.5}], "evaluation": False}  # fmt: skip
    tokcomp.compile(recipe, tmp_path / "out")
    reference = copy.deepcopy(base)
    apply_passes(reference, [{**spec, "keep": 0.5}], sequence_length=64)
    loaded = tokcomp.load(tmp_path / "out")
    assert torch.equal(greedy(loaded, input_ids=ids).sequences, greedy(reference, input_ids=ids).sequences)


def test_a_version_1_snapkv_record_one_shared_rate_still_restores():
    from tokcomp.passes import PASSES as REGISTERED

    base = tiny("llama")
    current = compressed(base, "snapkv", keep=0.5)
    rate = current.model.layers[0].kv_selector.rate
    handler = REGISTERED["snapkv"]()
    config = handler.Config(**{k: v for k, v in PASSES["snapkv"].items() if k != "type"}, keep=0.5)
    restored = copy.deepcopy(base)
    handler.restore(restored, config, {"rate": list(rate)})
    ids = prompt()
    assert torch.equal(greedy(restored, input_ids=ids).sequences, greedy(current, input_ids=ids).sequences)


# --------------------------------------------------------------------------- ranking pooled over neighbours


def test_pooling_spreads_a_score_over_its_neighbours_and_kernel_1_is_the_identity():
    from tokcomp.reducers.ranking import pool_neighbours

    scores = torch.tensor([[0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.3, 0.0]])
    assert torch.equal(pool_neighbours(scores, 1), scores)
    assert torch.equal(pool_neighbours(scores, 3), scores[:, [0, 0, 3, 3, 3, 6, 6, 6]])
    mean = pool_neighbours(scores, 3, "avg")  # padding left out of the mean at the edges
    assert torch.allclose(mean, torch.tensor([[0.0, 0.0, 0.3, 0.3, 0.3, 0.1, 0.1, 0.15]]))


def test_a_pooled_ranking_keeps_the_phrase_around_what_the_last_token_reads():
    """The last token reads token 9 only: unpooled, the other kept tokens are whatever ties rank first;
    pooled over 5, token 9 comes with its two neighbours on each side."""
    from tests.conftest import state_of
    from tokcomp.reducers.attention_drop import LastQueryAttentionDrop
    from tokcomp.reducers.rate import Rate
    from tokcomp.surgery.attention import AttentionInfo

    tokens = 16
    key = torch.zeros(1, 1, tokens, 4)
    key[0, 0, 9, 0] = 20.0  # the last token's query is (1, 0, 0, 0): all its attention goes to token 9
    query = torch.zeros(1, 1, tokens, 4)
    query[0, 0, -1, 0] = 1.0
    attn = AttentionInfo(query=query, key=key, bias=None, scale=1.0)
    state = state_of(torch.ones(1, tokens), protected=0, source=False)
    state = state._replace(protected=state.position >= tokens - 1)  # the last token is the question
    x = torch.arange(tokens, dtype=torch.float32).view(1, tokens, 1)

    def kept(kernel: int) -> set[int]:
        _, new = LastQueryAttentionDrop(Rate(10, tokens - 1), 1, kernel)(x, state, attn)  # keeps 5 of 15
        return set(new.position[0].tolist()) - {tokens - 1}

    assert kept(5) == {7, 8, 9, 10, 11}
    assert 9 in kept(1) and kept(1) != kept(5)


@pytest.mark.parametrize("name", ["fastv", "pyramid_drop", "gemfilter"])
def test_rank_drops_reject_an_even_kernel(name):
    spec = {"type": name, "kernel": 4, **SPAN} | ({"layers": [1, 2]} if name == "pyramid_drop" else {})
    with pytest.raises(TokcompError, match="must be odd") as error:
        apply_passes(tiny("llama"), [spec], sequence_length=64)
    assert "\n" not in str(error.value)


def test_a_version_1_fastv_record_restores_its_unpooled_ranking():
    from tokcomp.passes import PASSES as REGISTERED

    base = tiny("llama")
    unpooled = copy.deepcopy(base)
    record = apply_passes(unpooled, [{"type": "fastv", "keep": 0.25, "kernel": 1, **SPAN}], sequence_length=64)[0]
    metadata = {k: v for k, v in record.metadata.items() if k != "ranking"}  # what version 1 wrote
    handler = REGISTERED["fastv"]()
    restored = copy.deepcopy(base)
    handler.restore(restored, handler.Config(keep=0.25, **SPAN), metadata)  # today's default kernel is 15
    assert restored.model.layers[1].reducer.kernel == 1
    ids = prompt()
    assert torch.equal(greedy(restored, input_ids=ids).sequences, greedy(unpooled, input_ids=ids).sequences)


def test_ranking_with_a_sliding_window_layer_is_flagged_with_the_layer_to_use(capsys):
    # tiny qwen2: layers 1-2 full attention, 3-4 sliding (window 12)
    apply_passes(tiny("qwen2"), [{"type": "fastv", "layer": 3, **SPAN}], sequence_length=64)
    out = capsys.readouterr().err
    assert "fastv ranks tokens after layer 3, a sliding-window layer (12 tokens)" in out
    apply_passes(tiny("qwen2"), [{"type": "fastv", "layer": 2, **SPAN}], sequence_length=64)
    assert "sliding-window" not in capsys.readouterr().err
