"""`tome` with `cost: learned`: the learned merge cost (reducers/merge_cost.py) and its calibration
(calibrate/merge_cost.py). Tiny random models here; the real MiniLM bar is in tests/test_tome_text.py."""

import json

import pytest
import torch

import tokcomp
from tests.conftest import state_of, tiny_bert, tiny_vision
from tokcomp.errors import RecipeError
from tokcomp.reducers.merge_cost import (
    NON_CANDIDATE_OFFSET,
    LearnedMergeCost,
    allowed_pairs,
    candidate_mask,
    candidate_partners,
    symmetric_similarity,
)
from tokcomp.surgery import token_blocks
from tokcomp.surgery.attention import AttentionInfo

GREEDY_LEARNED = {"type": "tome", "matching": "greedy", "merge": "norm_preserving", "cost": "learned"}


def random_cost(width: int, hidden: int = 8, candidates: int = 3, seed: int = 0) -> LearnedMergeCost:
    """A cost model with every parameter random (a fitted one is not zero anywhere)."""
    torch.manual_seed(seed)
    cost = LearnedMergeCost(width, hidden, candidates)
    with torch.no_grad():
        for parameter in cost.parameters():
            parameter.normal_(0, 0.3)
    return cost.requires_grad_(False)


def attach_random_costs(model, candidates: int = 3, hidden: int = 8) -> None:
    """Give every ToMe reducer of `model` (greedy matching) a random learned cost."""
    for index, block in enumerate(token_blocks(model)):
        if block.reducer is not None:
            block.reducer.cost = random_cost(block.hidden_size, hidden, candidates, seed=index)


def _attention(keys: torch.Tensor) -> AttentionInfo:
    return AttentionInfo(query=keys[:, None], key=keys[:, None], bias=None, scale=1.0)


@pytest.mark.parametrize("hidden", [0, 8])  # the linear cost (the default) and one with a pair MLP
def test_scores_are_minus_the_predicted_log_cost_at_candidates_which_rank_first(hidden):
    torch.manual_seed(1)
    x, keys = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    state = state_of(torch.rand(2, 9) * 3 + 1)
    cost = random_cost(16, hidden=hidden, candidates=2)
    scores = cost(x, state, _attention(keys))
    assert torch.equal(scores, scores.transpose(-1, -2))

    hidden = symmetric_similarity(torch.nn.functional.normalize(x, dim=-1))
    key_similarity = symmetric_similarity(torch.nn.functional.normalize(keys, dim=-1))
    allowed = allowed_pairs(state)
    candidates = candidate_mask(candidate_partners(hidden, allowed, 2), allowed)
    for b, i, j in candidates.nonzero().tolist():
        size = state.size[b]
        expected = -cost.log_cost(x[b, i], x[b, j], hidden[b, i, j], key_similarity[b, i, j], size[i], size[j])
        assert torch.allclose(scores[b, i, j], expected, atol=1e-5)
    others = allowed & ~candidates
    assert others.any()
    assert scores[others].max() < scores[candidates].min()
    assert torch.allclose(scores[others], hidden[others] - NON_CANDIDATE_OFFSET)


def test_macs_are_what_torch_counts_for_the_pair_mlp():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    batch, tokens, width = 2, 9, 16
    x, keys = torch.randn(batch, tokens, width), torch.randn(batch, tokens, 8)
    cost = random_cost(width, hidden=8, candidates=3)
    with FlopCounterMode(display=False) as counter:
        cost(x, state_of(torch.ones(batch, tokens)), _attention(keys))
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    pair_mlp = (counts["aten.mm"] + counts["aten.addmm"]) // 2  # the counter reports 2 FLOPs a MAC
    per_token_term = batch * tokens * width  # a matrix-vector product, which the counter leaves out
    assert pair_mlp + per_token_term == batch * cost.macs(tokens)
    assert cost.macs(2) == 2 * width + 2 * (2 * width * 8 + 8)  # one partner each below k + 1 tokens
    linear = random_cost(width, hidden=0, candidates=3)
    assert linear.pair is None and linear.macs(tokens) == tokens * width  # the per-token term only


def test_candidates_are_each_tokens_most_similar_allowed_partners_either_way():
    similarity = symmetric_similarity(torch.nn.functional.normalize(torch.randn(1, 6, 4), dim=-1))
    state = state_of(torch.ones(1, 6), real=[[1, 1, 1, 1, 1, 0]])  # token 0 protected, token 5 padding
    allowed = allowed_pairs(state)
    partners = candidate_partners(similarity, allowed, 1)
    mask = candidate_mask(partners, allowed)
    assert torch.equal(mask, mask.transpose(-1, -2))
    assert not mask[0, 0].any() and not mask[0, 5].any() and not mask[0].diagonal().any()
    for token in range(1, 5):  # every free token's best allowed partner is a candidate
        best = similarity[0, token].masked_fill(~allowed[0, token], -2).argmax()
        assert mask[0, token, best]
    assert candidate_partners(similarity, allowed, 100).shape[-1] == 5  # at most N - 1


def test_a_padded_batch_gives_each_sentence_what_it_gives_alone():
    model = tokcomp.apply(tiny_bert(), [{**GREEDY_LEARNED, "cost": "similarity", "r": 3}], sequence_length=16)
    attach_random_costs(model)
    torch.manual_seed(0)
    lengths = (14, 9, 5)
    ids = torch.randint(5, 200, (3, 14))
    mask = (torch.arange(14)[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for row, length in enumerate(lengths):
            alone = model(input_ids=ids[row : row + 1, :length]).last_hidden_state[0]
            kept = alone.shape[0]
            assert torch.allclose(batch[row, :kept], alone, atol=1e-5)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "tome", "r": 2, "cost": "learned"}, r"cost: learned ranks the pairs of greedy matching"),
        ({"type": "tome", "r": 2, "matching": "greedy", "cost_model": {"steps": 3}}, r"apply to cost: learned only"),
        ({**GREEDY_LEARNED, "r": 2, "cost_model": {"candidate": 3}}, r"candidate"),
    ],
)
def test_config_errors_name_the_fix(spec, message):
    with pytest.raises(RecipeError, match=message):
        tokcomp.apply(tiny_vision("vit"), [spec])


def test_learned_cost_needs_calibration_data_and_preprocessing():
    with pytest.raises(RecipeError, match="calibration data with the model's preprocessing"):
        tokcomp.apply(tiny_vision("vit"), [{**GREEDY_LEARNED, "r": 2}])


def _recipe(root, budget: dict | None = None, **cost_model) -> dict:
    budget = budget or {"r": [6, 5, 5, 4]}
    return {
        "model": str(root / "model"),
        "passes": [{**GREEDY_LEARNED, **budget, "cost_model": {"steps": 20, "max_tokens": 65, **cost_model}}],
        "calibration": {"data": str(root / "images"), "samples": 4},
        "evaluation": {"data": str(root / "images"), "samples": 4, "batch_size": 4, "random_baseline": False},
    }


@pytest.mark.parametrize("hidden", [0, 8])
def test_compile_fits_a_cost_per_block_and_the_checkpoint_reloads_it(tiny_vit_with_images, tmp_path, hidden):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    out = tokcomp.compile(_recipe(tiny_vit_with_images, hidden=hidden), tmp_path / "ckpt")
    (record,) = json.loads((out / "tokcomp.json").read_text())["passes"]
    assert record["metadata"]["merge_cost"] == {"hidden": hidden, "candidates": 2}
    report = json.loads((out / "report.json").read_text())
    fits = report["tome"]["merge_cost"]
    assert fits["calibration"]["used"] == 4 and sorted(fits["blocks"]) == ["0", "1", "2", "3"]
    assert all(block["pairs"] > 0 for block in fits["blocks"].values())

    saved = load_file(out / "model.safetensors")
    cost_keys = sorted(k for k in saved if ".reducer.cost." in k)
    # weight and coefficients, and with a pair MLP its two Linear layers' weight and bias, in 4 blocks
    assert len(cost_keys) == 4 * (6 if hidden else 2)
    assert all(saved[k].abs().sum() > 0 for k in cost_keys if k.endswith(("pair.2.weight", "cost.weight")))
    reloaded = tokcomp.load(out)
    assert all(b.reducer.describe()["cost"] == "learned" for b in token_blocks(reloaded))
    state = reloaded.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in cost_keys)

    pixels = torch.randn(2, 3, 32, 32)
    auto = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixels).logits, auto(pixel_values=pixels).logits)


def test_calibration_is_deterministic_and_skips_samples_over_max_tokens(tiny_vit_with_images, tmp_path):
    from safetensors.torch import load_file

    first = load_file(tokcomp.compile(_recipe(tiny_vit_with_images), tmp_path / "a") / "model.safetensors")
    second = load_file(tokcomp.compile(_recipe(tiny_vit_with_images), tmp_path / "b") / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(RecipeError, match=r"no calibration sample of at most 64 tokens.*raise cost_model.max_tokens"):
        tokcomp.compile(_recipe(tiny_vit_with_images, max_tokens=64), tmp_path / "c")


def test_a_flops_target_counts_the_cost_models_macs(tiny_vit_with_images, tmp_path):
    """The checkpoint cuts what target_flops says, the learned cost's own MACs included: at this tiny
    width the cost model is a large share of a block, so it must remove more tokens than similarity."""
    from tokcomp.analysis.flops import model_macs
    from tokcomp.surgery import find_adapter
    from tokcomp.surgery.adapters.base import InputSpec

    budget = {"target_flops": "-30%"}
    learned = tokcomp.compile(_recipe(tiny_vit_with_images, budget), tmp_path / "learned")
    similarity_recipe = _recipe(tiny_vit_with_images, budget)
    similarity_recipe["passes"][0] = {**GREEDY_LEARNED, **budget, "cost": "similarity"}
    similarity = tokcomp.compile(similarity_recipe, tmp_path / "similarity")
    (record,) = json.loads((learned / "tokcomp.json").read_text())["passes"]
    (baseline,) = json.loads((similarity / "tokcomp.json").read_text())["passes"]
    assert sum(record["metadata"]["r_per_layer"]) > sum(baseline["metadata"]["r_per_layer"])

    model = tokcomp.load(learned)
    reducers = [block.reducer for block in token_blocks(model)]
    tokens = record["metadata"]["tokens_per_layer"]
    geometry = find_adapter(model).geometry(model, InputSpec("image", image_size=32))
    overhead = sum(r.cost.macs(n) for r, n in zip(reducers, [geometry.input_tokens, *tokens[:-1]], strict=True))
    assert overhead > 0
    with_cost = model_macs(geometry, tokens, reducers)
    assert with_cost == model_macs(geometry, tokens) + overhead
    assert record["metadata"]["gmacs"] == pytest.approx(with_cost / 1e9)
    report = json.loads((learned / "report.json").read_text())
    assert report["flops"]["compressed"] == pytest.approx(with_cost / 1e9, abs=1e-6)


@pytest.mark.parametrize("hidden", [0, 8])
def test_exports_to_onnx_with_tokcomp_ops(tmp_path, hidden):
    from tests.test_export import small_vision
    from tests.test_export_reducers import check_tokcomp_export

    model = small_vision("dinov2", layers=1)
    tokcomp.apply(model, [{**GREEDY_LEARNED, "cost": "similarity", "r": 4}])
    attach_random_costs(model, hidden=hidden)
    check_tokcomp_export(model, {"IndexMerge": 1}, tmp_path)


@pytest.mark.parametrize("pooling,measured_on", [(None, "cls"), ("mean", "mean"), ("cls", "cls")])
def test_apply_measures_merge_costs_on_the_pooling_it_is_given(monkeypatch, pooling, measured_on):
    """A sentence encoder that mean-pools a model with a pooler (all-MiniLM-L6-v2) must be calibrated on
    its mean-pooled embedding: `pooling=` reaches the measurement; without it a model with a pooler is CLS."""
    import tokcomp.calibrate.merge_cost as merge_cost

    seen = []

    def record_pooling(model, blocks, settings, preserve_norm, reference_tokens, ctx, pass_name):
        seen.append(ctx.loaded.pooling)
        return {}, {}

    monkeypatch.setattr(merge_cost, "learn_merge_costs", record_pooling)
    tokcomp.apply(tiny_bert(), [{**GREEDY_LEARNED, "r": 2}], processor=object(), pooling=pooling)
    assert seen == [measured_on]


def test_an_unknown_pooling_is_refused():
    with pytest.raises(RecipeError, match=r"pooling 'max' is not known.*'mean' or 'cls'"):
        tokcomp.apply(tiny_bert(), [{**GREEDY_LEARNED, "r": 2}], processor=object(), pooling="max")


def _measured(offsets: list[float], pairs: int = 24, width: int = 8, seed: int = 0):
    """One block's records, a sample per offset: log cost = offset + 2 log(1 - cos h) (cos k, sizes inert)."""
    from tokcomp.calibrate.merge_cost import PairCosts

    generator = torch.Generator().manual_seed(seed)
    records = []
    for offset in offsets:
        cos_hidden = torch.rand(pairs, generator=generator) * 0.95
        records.append(
            PairCosts(
                block=0,
                first=torch.randn(pairs, width, generator=generator),
                second=torch.randn(pairs, width, generator=generator),
                cos_hidden=cos_hidden,
                cos_keys=torch.rand(pairs, generator=generator),
                size_first=torch.ones(pairs),
                size_second=torch.ones(pairs),
                cost=torch.exp(offset + 2 * torch.log(1 - cos_hidden)),
            )
        )
    return records


def test_the_fit_learns_how_a_samples_pairs_compare_not_the_samples_level():
    """Greedy matching compares a sample's pairs with each other only: a per-sample offset of the measured
    log costs leaves the fit unchanged, and the pairs' order within each sample is learned."""
    from tokcomp.calibrate.merge_cost import fit_block
    from tokcomp.passes.tome import MergeCostSettings

    settings = MergeCostSettings(steps=300, batch_pairs=192)
    offsets = torch.linspace(-6, 6, 16).tolist()
    level, relative_error = fit_block(_measured(offsets), 8, settings, seed=0)
    flat, _ = fit_block(_measured([0.0] * 16), 8, settings, seed=0)
    assert relative_error < 0.05
    (held_out,) = _measured([3.0], pairs=64, seed=1)
    fields = ("first", "second", "cos_hidden", "cos_keys", "size_first", "size_second")
    predicted = level.log_cost(*(getattr(held_out, name) for name in fields))
    ranks = torch.stack([predicted.argsort().argsort(), held_out.cost.argsort().argsort()]).float()
    assert torch.corrcoef(ranks)[0, 1] > 0.99  # Spearman's rank correlation on unseen pairs (0.9995 here)
    # the two fits differ by a constant at most (terms that are constant here get no gradient)
    other = flat.log_cost(*(getattr(held_out, name) for name in fields))
    torch.testing.assert_close(predicted - predicted.mean(), other - other.mean(), atol=1e-4, rtol=0)
