"""One checkpoint, right at every input: budgets as rates, per-sample padding, exact state, one graph.

Tiny random models check the mechanics fast; the `slow` tests check the issue's claims on the
real zoo models (DINOv2-S, MiniLM-L6).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import tokcomp
from tests.conftest import tiny_bert, tiny_vision
from tokcomp.errors import RecipeError
from tokcomp.surgery import capture_final_state, token_blocks

TEXT_PASSES = [
    {"type": "tome", "r": 2},
    {"type": "token_transform", "r": 2},
    {"type": "token_transform", "r": 2, "k": 2, "target_selection": "cls_attention"},
    {"type": "prune", "r": 2},
    {"type": "evit", "r": 2},
    {"type": "zero_tprune", "r": 2},
    {"type": "diffrate", "schedule": {"prune": [16, 13, 11], "merge": [14, 12, 9]}, "merge_rule": "importance"},
    {"type": "diffrate", "schedule": {"prune": [16, 14, 12], "merge": [14, 12, 10]}},
]


def _ids(spec):
    return spec["type"] + ("-" + "-".join(f"{k}={v}" for k, v in spec.items() if k not in ("type", "schedule")))


def _padded_batch(lengths, width, vocab=200):
    """Token ids with real tokens first (right padding), as tokenizers pad."""
    ids = torch.randint(5, vocab, (len(lengths), width))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids, mask


@pytest.mark.parametrize("spec", TEXT_PASSES, ids=_ids)
def test_every_sample_of_a_padded_batch_is_reduced_as_when_alone(spec):
    """Dynamic padding: the batch is as long as its longest sample needs, and every sample keeps the
    budget's share of its own tokens, exactly as if it ran alone."""
    model = tokcomp.apply(tiny_bert().double(), [spec], sequence_length=16)
    lengths = [16, 11, 6, 3]
    ids, mask = _padded_batch(lengths, 16)
    with torch.no_grad(), capture_final_state(model) as states:
        batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = [model(input_ids=ids[i : i + 1, :n]).last_hidden_state[0] for i, n in enumerate(lengths)]
    real = states[0].real
    assert batched.shape[1] == alone[0].shape[0]  # the longest sample sets the length
    for row, expected in enumerate(alone):
        assert int(real[row].sum()) == expected.shape[0]
        assert (batched[row, : expected.shape[0]] - expected).abs().max().item() <= 1e-9


def test_left_padding_is_moved_behind_the_real_tokens():
    model = tokcomp.apply(tiny_bert().double(), [{"type": "tome", "r": 2}], sequence_length=16)
    ids, mask = _padded_batch([12], 16)
    left_ids, left_mask = ids.roll(4, dims=1), mask.roll(4, dims=1)
    with torch.no_grad():
        right = model(input_ids=ids, attention_mask=mask).last_hidden_state
        left = model(input_ids=left_ids, attention_mask=left_mask, position_ids=(torch.arange(16) - 4).clamp(min=0)[None])
    # Positions follow the tokens (the model's own position ids); only the padding moved.
    assert (right - left.last_hidden_state).abs().max().item() <= 1e-9


def test_a_budget_is_a_rate_of_each_images_own_tokens():
    """Compiled at 32 px (8 x 8 patches), DINOv2 keeps about the same share of its patches at 16 to 64 px.

    (Hugging Face ViT and DeiT embed one image size; DINOv2 interpolates its positions.)
    """
    model = tokcomp.apply(tiny_vision("dinov2"), [{"type": "tome", "target_flops": "-35%"}], image_size=32)
    reducers = [b.reducer for b in token_blocks(model)]
    reference_share = (_tokens_after(reducers, 64) - 1) / 64
    for size in (16, 48, 64):
        patches = (size // 4) ** 2
        expected = _tokens_after(reducers, patches)
        with torch.no_grad(), capture_final_state(model) as states:
            model(pixel_values=torch.randn(2, 3, size, size))
        assert states[0].size.shape[1] == expected
        assert abs((expected - 1) / patches - reference_share) < 0.08, size


def _tokens_after(reducers, patches):
    tokens = patches + 1
    for reducer in reducers:
        tokens = reducer.kept_tokens(tokens) if reducer is not None else tokens
    return tokens


def test_sizes_and_positions_are_exact_in_bfloat16():
    """Sizes beyond 256 (bf16's exact integers) and positions travel in float32 inside bf16 models."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=2, layerscale_value=0.5
    )
    model = Dinov2Model(config).eval()  # 32 x 32 = 1024 patches
    schedule = {"prune": [1025, 1025], "merge": [1025, 3]}  # the last block merges 1024 patches into 2 tokens
    tokcomp.apply(model, [{"type": "diffrate", "schedule": schedule, "merge_rule": "importance"}])
    model = model.to(torch.bfloat16)
    with torch.no_grad(), capture_final_state(model) as states:
        model(pixel_values=torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    state = states[0]
    assert state.size.dtype == torch.float32
    assert (state.size.max(dim=1).values > 256).all()
    assert torch.equal(state.size.sum(1), torch.full((2,), 1025.0))
    assert torch.equal(state.size, state.size.round())
    assert state.position[:, 0].eq(0).all()  # CLS keeps position 0


@pytest.mark.parametrize("kind", ["dinov2", "bert", "bert-greedy", "bert-learned-cost"])
def test_one_graph_and_bounded_recompiles_under_torch_compile(kind):
    """No graph break, and compiling once covers new batch sizes and lengths (dynamic shapes)."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    if kind == "dinov2":
        model = tokcomp.apply(tiny_vision("dinov2"), [{"type": "tome", "r": 8}])
        inputs = [{"pixel_values": torch.randn(b, 3, s, s)} for b, s in ((1, 32), (2, 32), (3, 32), (2, 48), (1, 64))]
    else:
        options = {"matching": "greedy", "merge": "norm_preserving"} if kind != "bert" else {}
        model = tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 3, **options}], sequence_length=16)
        if kind == "bert-learned-cost":
            from tests.test_merge_cost import attach_random_costs

            attach_random_costs(model)
        inputs = []
        for batch, length in ((1, 8), (2, 11), (3, 20), (2, 33)):
            ids, mask = _padded_batch([length] + [max(2, length // 2)] * (batch - 1), length)
            inputs.append({"input_ids": ids, "attention_mask": mask})
    explanation = torch._dynamo.explain(model)(**inputs[0])
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for batch in inputs:
            expected = model(**batch).last_hidden_state
            assert torch.allclose(compiled(**batch).last_hidden_state, expected, atol=1e-5)
    assert len(graphs) <= 4, f"{len(graphs)} compiles for {len(inputs)} input shapes"


# ---------------------------------------------------------------- the reference input


def test_apply_resolves_the_budget_at_the_given_reference_size():
    from tokcomp.pipeline import apply_passes

    model = tiny_vision("dinov2")
    (record,) = apply_passes(model, [{"type": "tome", "r": 4}], image_size=48)
    assert record.metadata["input_tokens"] == 12 * 12 + 1
    assert record.metadata["tokens_per_layer"][0] == 145 - 4


@pytest.mark.parametrize(
    "spec,kwargs,message",
    [
        ({"type": "tome", "r": -5}, {}, r"r = -5 is negative"),
        ({"type": "tome", "r": 10000}, {}, r"r = 10000 is more than the 64 reducible tokens"),
        ({"type": "tome", "r": [2, -1, 2, 2]}, {}, r"r\[1\] = -1 is negative"),
        ({"type": "tome", "target_flops": "-120%"}, {}, r"target_flops '-120%' is at or below 0 FLOPs; reachable with tome on this model: -\d+\.\d% to -\d+\.\d%"),
        ({"type": "tome", "target_flops": "0.0001G"}, {}, r"beyond what the model can reach; reachable with tome"),
        ({"type": "tome", "target_flops": "50G"}, {}, r"above the original"),
        ({"type": "prune", "target_flops": True}, {}, r"not true/false"),
        ({"type": "tome", "r": 2}, {"image_size": 30}, r"image_size 30 is not a whole number of 4-px patches.*28 or 32"),
        ({"type": "tome", "r": 2, "targets": ["re:encoder.layer.[0-"]}, {}, r"not a valid regular expression"),
    ],
)
def test_budgets_and_sizes_the_model_cannot_take_are_refused(spec, kwargs, message):
    with pytest.raises(RecipeError, match=message):
        tokcomp.apply(tiny_vision("dinov2"), [spec], **kwargs)


def test_a_sequence_longer_than_the_positions_is_refused():
    with pytest.raises(RecipeError, match="sequence_length 10000 is longer than the 512 positions"):
        tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 2}], sequence_length=10000)


def test_format_1_checkpoints_load_with_the_same_counts(tmp_path, tiny_vit_dir):
    """A checkpoint written before budgets were rates reloads into the same model at its reference input."""
    from tokcomp.fileio import read_json, write_json

    out = tokcomp.compile(
        {"model": str(tiny_vit_dir), "passes": [{"type": "tome", "r": 5}], "evaluation": {"data": "zoo:skimage", "samples": 2, "batch_size": 2, "random_baseline": False}},
        tmp_path / "ckpt",
    )
    state = read_json(out / "tokcomp.json")
    state["format_version"] = 1
    write_json(out / "tokcomp.json", state)
    model = tokcomp.load(out)
    with torch.no_grad(), capture_final_state(model) as states:
        model(pixel_values=torch.randn(1, 3, 32, 32))
    assert states[0].size.shape[1] == state["tokens_per_layer"][-1] == 65 - 4 * 5


# ---------------------------------------------------------------- real models (zoo)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dinov2_at_518px_in_half_precision_matches_float32(dtype, dinov2):
    """Real DINOv2-S at 518 px (1370 tokens), last blocks merging into tokens of more than 256 inputs."""
    from tokcomp.data import load_samples, make_batches
    from tokcomp.sources import fit_processor

    processor = copy.deepcopy(dinov2.processor)
    fit_processor(processor, 518)
    batch = next(make_batches(load_samples("zoo:skimage", "image", 2), processor, "image", 2))
    schedule = {"prune": [1370] * 12, "merge": [1370] * 10 + [400, 40]}
    model = tokcomp.apply(
        copy.deepcopy(dinov2.model), [{"type": "diffrate", "schedule": schedule, "merge_rule": "importance"}], image_size=518
    )
    with torch.no_grad():
        reference = model(**batch).last_hidden_state[:, 0]
        half = copy.deepcopy(model).to(dtype)
        with capture_final_state(half) as states:
            out = half(pixel_values=batch["pixel_values"].to(dtype)).last_hidden_state[:, 0].float()
    assert states[0].size.max() > 256  # bf16 alone would round such sizes
    assert torch.equal(states[0].size.sum(1), torch.full((2,), 1370.0))
    assert (F.cosine_similarity(out, reference) >= 0.999).all()


@pytest.mark.slow
def test_real_compressed_models_compile_to_one_graph(dinov2, minilm):
    dino = tokcomp.apply(copy.deepcopy(dinov2.model), [{"type": "tome", "target_flops": "-35%"}], image_size=224)
    explanation = torch._dynamo.explain(dino)(pixel_values=torch.randn(2, 3, 224, 224))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    text = tokcomp.apply(copy.deepcopy(minilm.model), [{"type": "tome", "target_flops": "-35%"}], sequence_length=128)
    batch = dict(minilm.processor(["A short sentence.", "A somewhat longer sentence with a few more words."], padding=True, return_tensors="pt"))
    explanation = torch._dynamo.explain(text)(**batch)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.slow
def test_minilm_compiled_once_is_right_under_dynamic_padding(minilm):
    """ToMe at -35% for 128 tokens, fed held-out prose in dynamically padded batches of 8-16, 17-32 and
    33-64 real tokens: every bucket's real-token FLOPs cut is within 5 points of 35%, and the pooled
    embedding stays far above random dropping at the same rates (benchmarks/dynamic_padding.py has
    the full table)."""
    from benchmarks.dynamic_padding import buckets, cosines, flops_cut
    from tokcomp.analysis.baselines import random_drop_like
    from tokcomp.pipeline import apply_passes

    model = copy.deepcopy(minilm.model)
    (record,) = apply_passes(model, [{"type": "tome", "target_flops": "-35%"}], sequence_length=128)
    reducers = [block.reducer for block in token_blocks(model)]
    meta = record.metadata
    baseline = random_drop_like(minilm.model, meta["input_tokens"], meta["tokens_per_layer"], seed=0)
    for label, texts in buckets(minilm.processor, 16).items():
        cuts = [flops_cut(minilm.model, reducers, len(minilm.processor(t)["input_ids"])) for t in texts]
        assert abs(sum(cuts) / len(cuts) - 0.35) <= 0.05, label
        ours = cosines(minilm.model, model, minilm.processor, texts, 16).mean()
        assert ours > cosines(minilm.model, baseline, minilm.processor, texts, 16).mean() + 0.05, label


def test_a_recipe_image_size_is_saved_into_the_processor(tmp_path):
    """The checkpoint's processor produces the reference size the budget was resolved at."""
    from transformers import AutoImageProcessor, BitImageProcessor

    from tokcomp.fileio import read_json

    folder = tmp_path / "dinov2"
    model = tiny_vision("dinov2")
    model.config.architectures = ["Dinov2Model"]
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    recipe = {
        "model": {"source": str(folder), "image_size": 48},
        "passes": [{"type": "tome", "r": 8}],
        "evaluation": False,
    }
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    assert read_json(out / "tokcomp.json")["input"]["image_size"] == 48
    assert read_json(out / "report.json")["tokens_per_layer"]["input"] == 12 * 12 + 1
    processor = AutoImageProcessor.from_pretrained(out)
    from PIL import Image

    assert processor(images=[Image.new("RGB", (90, 70))], return_tensors="pt")["pixel_values"].shape[-2:] == (48, 48)


def test_a_vit_reference_size_other_than_its_own_is_refused():
    with pytest.raises(RecipeError, match="takes 32 px images only"):
        tokcomp.apply(tiny_vision("vit"), [{"type": "tome", "r": 2}], image_size=48)


# ---------------------------------------------------------------- state the next model families need


@pytest.mark.parametrize("kind", ["tome", "prune", "diffrate", "zero_tprune", "evit"])
def test_protected_tokens_anywhere_stay_whole(kind):
    """Protection is a per-token flag: tokens 0, 5 and 6 (not a prefix) never move, merge or receive."""
    from tests.conftest import rate_at, state_of
    from tokcomp.reducers.diffrate import DiffRate, rates_from_kept
    from tokcomp.reducers.evit import EViT
    from tokcomp.reducers.prune import ClassAttentionPrune
    from tokcomp.reducers.tome import ToMe
    from tokcomp.reducers.zero_tprune import ZeroTPrune
    from tokcomp.surgery.attention import AttentionInfo

    tokens, protected = 16, 3
    state = state_of(torch.ones(2, tokens), protected=1)
    flags = state.protected.clone()
    flags[:, [5, 6]] = True
    state = state._replace(protected=flags)
    reducer = {
        "tome": lambda: ToMe(rate_at(6, tokens, protected), protected),
        "prune": lambda: ClassAttentionPrune(rate_at(6, tokens, protected), protected),
        "zero_tprune": lambda: ZeroTPrune(rate_at(6, tokens, protected), protected),
        "evit": lambda: EViT(rate_at(6, tokens, protected), protected),
        "diffrate": lambda: DiffRate(*rates_from_kept([12], [8], tokens, protected, "importance")[0], protected),
    }[kind]()
    x = torch.randn(2, tokens, 8)
    key = torch.randn(2, 2, tokens, 4)
    out, new = reducer(x, state, AttentionInfo(query=key, key=key, bias=None, scale=0.5))
    for position in (0, 5, 6):
        row = (new.position == position) & new.protected
        assert row.sum(dim=1).eq(1).all()  # still there, still protected
        assert torch.equal(new.source[row], torch.eye(tokens)[position].expand(2, -1))  # and alone
        assert torch.allclose(out[row], x[:, position])


def test_the_eager_cpu_state_carriage_equals_the_packed_one(monkeypatch):
    """Eager on CPU the state rides along as an attribute of the hidden tensor, not as packed channels
    (no copy of the hidden states per block): the same outputs and final state, exactly."""
    from tokcomp.surgery import block
    from tokcomp.surgery.state import STATE_ATTRIBUTE, pack

    model = tokcomp.apply(tiny_bert().double(), [{"type": "tome", "r": 2}], sequence_length=16)
    hidden_size = model.config.hidden_size
    widths = []
    token_blocks(model)[1].register_forward_pre_hook(
        lambda module, args: widths.append((args[0].shape[-1], hasattr(args[0], STATE_ATTRIBUTE)))
    )
    ids, mask = _padded_batch([16, 11, 6, 3], 16)
    with torch.no_grad(), capture_final_state(model) as states:
        attached = model(input_ids=ids, attention_mask=mask).last_hidden_state
        monkeypatch.setattr(block, "carry", pack)
        packed = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert widths[0] == (hidden_size, True) and widths[1][0] > hidden_size  # attached, then packed
    assert torch.equal(attached, packed)
    for field in ("size", "real", "protected", "position"):
        assert torch.equal(getattr(states[0], field), getattr(states[1], field)), field


def test_a_layer_loop_that_replaces_the_hidden_tensor_gets_one_clear_error():
    from tokcomp.errors import TokcompError

    model = tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 2}], sequence_length=16)
    token_blocks(model)[1].register_forward_pre_hook(lambda module, args: (args[0].clone(), *args[1:]))
    ids, mask = _padded_batch([16, 9], 16)
    with torch.no_grad(), pytest.raises(TokcompError, match="without their token state"):
        model(input_ids=ids, attention_mask=mask)


def test_order_preserving_blocks_keep_input_order():
    model = tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 3}], sequence_length=16)
    for block in token_blocks(model):
        block.preserve_order = True
    ids, mask = _padded_batch([16, 9], 16)
    with torch.no_grad(), capture_final_state(model) as states:
        model(input_ids=ids, attention_mask=mask)
    state = states[0]
    for row in range(2):
        positions = state.position[row][state.real[row]]
        assert torch.equal(positions, positions.sort().values)
        assert positions[0] == 0  # CLS first


def test_causal_bias_follows_original_positions():
    """Decoders: after dropping tokens, a query still sees exactly the keys at or before its position."""
    from tests.conftest import state_of

    state = state_of(torch.ones(1, 4), protected=0)._replace(position=torch.tensor([[0, 3, 4, 9]]))
    bias = state.attention_bias(False, torch.float32, causal=True, window=6)[0, 0]
    visible = bias == 0
    assert visible.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [False, False, True, True],  # position 9 sees 4..9 with a window of 6
    ]
