"""Where the DiffRate search starts: shaped schedules at the target, integer counts, the choice."""

import math

import pytest
import torch

import tokcomp
from tokcomp.analysis.flops import model_macs
from tokcomp.calibrate.budget import FIT_TOLERANCE, fit_to_macs, shape_weights, shaped_start, tokens_per_block
from tokcomp.calibrate.rates import fixed_plan
from tokcomp.calibrate.search import _Option, _best
from tokcomp.calibrate.start import StartCandidate, choose_start, integer_counts, start_candidates
from tokcomp.errors import TokcompError
from tokcomp.reducers.diffrate import bipartite_sources
from tokcomp.surgery.adapters.base import Geometry

# DeiT-S at 224 px: 12 blocks, 384 wide, MLP 1536, 197 tokens.
DEIT_S = Geometry(12, 384, 2 * 384 * 1536, 197, 197 * 384 * 16 * 16 * 3, 384 * 1000)
ALL = list(range(12))
DENSE = model_macs(DEIT_S, [197] * 12)


def _reductions(merge: list[float]) -> list[float]:
    return [a - b for a, b in zip([197.0, *merge[:-1]], merge, strict=True)]


@pytest.mark.parametrize("rule", ["importance", "bipartite"])
@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_every_shape_meets_the_target_and_starts_without_pruning(rule, power):
    target = int(0.65 * DENSE)
    prune, merge = shaped_start(DEIT_S, ALL, 1, target, rule, power)
    assert model_macs(DEIT_S, tokens_per_block(merge, ALL, DEIT_S)) == pytest.approx(target, rel=1e-4)
    assert prune == [197.0, *merge[:-1]]  # pure merging: every layer keeps what enters it


def test_power_sets_the_shape_one_is_constant_r():
    target = int(0.65 * DENSE)
    constant = _reductions(shaped_start(DEIT_S, ALL, 1, target, "importance", 1.0)[1])
    assert max(constant) - min(constant) < 1e-6  # ToMe's constant r
    back = _reductions(shaped_start(DEIT_S, ALL, 1, target, "importance", 2.0)[1])
    front = _reductions(shaped_start(DEIT_S, ALL, 1, target, "importance", 0.5)[1])
    assert back == sorted(back) and back[0] < constant[0] < back[-1]  # fewer early, more late
    assert front == sorted(front, reverse=True) and front[0] > constant[0] > front[-1]
    assert sum(shape_weights(12, 1.7)) == pytest.approx(1.0)


def test_bipartite_start_merges_no_more_than_the_rule_can():
    target = int(0.45 * DENSE)
    prune, merge = shaped_start(DEIT_S, ALL, 1, target, "bipartite", 2.0)
    for entering, after in zip([197.0, *merge[:-1]], merge, strict=True):
        assert after >= (entering - 1) / 2 + 1 - 1e-6  # at most the unprotected half merges


def test_an_unreachable_target_is_an_error_naming_the_range():
    assert [c.power for c in start_candidates(DEIT_S, ALL, 1, int(0.45 * DENSE), "bipartite", (1.0, 8.0))] == [1, 8]
    with pytest.raises(TokcompError, match="outside what the searched blocks can reach"):
        start_candidates(DEIT_S, ALL, 1, int(0.01 * DENSE), "bipartite", (1.0, 2.0))


def test_integer_counts_round_never_increase_and_keep_the_bipartite_floor():
    prune, after = integer_counts([197.0, 100.4, 60.2], [100.6, 60.4, 20.2], 1, "bipartite")
    assert prune == [197, 100, 60]
    assert after == [101, 60, 60 - bipartite_sources(60, 1)]  # 20 is below the floor of 60 tokens: lifted
    assert integer_counts([197.0, 150.0], [120.2, 130.0], 1, "importance") == ([197, 120], [120, 120])


def test_the_lowest_score_wins_and_ties_go_to_constant_r():
    candidates = [StartCandidate(p, [1.0], [1.0], ([1], [1])) for p in (0.5, 1.0, 1.5, 2.0)]
    scores = {0.5: 0.3, 1.0: 0.2, 1.5: 0.1, 2.0: 0.4}
    assert choose_start(candidates, lambda c: scores[c.power]).power == 1.5
    assert [c.score for c in candidates] == [0.3, 0.2, 0.1, 0.4]
    assert choose_start(candidates, lambda c: 0.5).power == 1.0


def test_the_search_returns_the_best_scoring_counts_near_the_target():
    target = 1000
    options = [
        _Option("start", [9], [8], 0.30, 1005),
        _Option("epoch 1", [9], [7], 0.10, 1200),  # best score, but 20% off the FLOPs target
        _Option("epoch 2", [9], [8], 0.20, 995),
    ]
    assert _best(options, target).name == "epoch 2"
    assert _best(options[:2], target).name == "start"  # the start wins when no read-out beats it
    assert _best([options[1], _Option("start", [9], [8], 0.5, 1300)], target).name == "epoch 1"  # none near: closest


def test_fixed_plan_masks_exactly_the_counts():
    plan = fixed_plan([10, 8], [9, 5], 12)
    assert plan.prune_mask.sum(1).tolist() == [10, 8] and plan.merge_mask.sum(1).tolist() == [9, 5]
    assert torch.equal(plan.prune_mask[1], (torch.arange(12) < 8).float())
    assert plan.tokens.tolist() == [9, 5] and plan.prune_count.tolist() == [10, 8]


@pytest.mark.parametrize("rule", ["importance", "bipartite"])
def test_search_keeps_its_best_scoring_counts_and_block_0_only_with_bipartite(rule, tiny_vit_dir, tmp_path):
    from tokcomp.fileio import read_json

    recipe = {
        "model": str(tiny_vit_dir),
        "passes": [{"type": "diffrate", "target_flops": 0.6, "epochs": 2, "lr": 0.05, "merge_rule": rule}],
        "calibration": {"data": "zoo:imagenet", "samples": 16, "batch_size": 8, "augment": True},
        "evaluation": {"data": "zoo:skimage", "samples": 4, "batch_size": 4, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    meta = read_json(out / "tokcomp.json")["passes"][0]["metadata"]
    search = read_json(out / "report.json")["diffrate"]
    if rule == "importance":  # DiffRate's convention: its CLS attention ranks nothing in block 0
        assert meta["prune_kept"][0] == meta["merge_kept"][0] == 65
    assert len(search["start"]) >= 2 and search["settings"]["start"] == "auto"
    start = next(c for c in search["start"] if c["chosen"])
    assert start["score"] == min(c["score"] for c in search["start"])
    assert all(e["score"] > 0 and e["read_out_gmacs"] > 0 for e in search["epochs"])
    assert search["kept"] in {"start", *(f"epoch {e['epoch']}" for e in search["epochs"])}
    if search["kept"] == "start":
        assert [meta["prune_kept"], meta["merge_kept"]] == [
            search["start_schedule"]["prune_kept"],
            search["start_schedule"]["merge_kept"],
        ]
    assert not math.isnan(start["score"])


def test_a_fixed_start_power_scores_one_shape_and_still_keeps_the_best():
    from tests.conftest import tiny_vision
    from tokcomp.calibrate import SearchSettings, search_rates
    from tokcomp.passes.token_reduction import BlockSite, geometry_of
    from tokcomp.surgery.adapters.base import InputSpec

    torch.manual_seed(0)
    model = tiny_vision("dinov2")
    site = BlockSite.prepare(model, "diffrate")
    geometry = geometry_of(model, InputSpec("image", image_size=32))
    target = int(0.6 * model_macs(geometry, [geometry.input_tokens] * geometry.num_layers))
    generator = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(4, 3, 32, 32, generator=generator)} for _ in range(2)]
    settings = SearchSettings(target_macs=target, epochs=1, lr=0.05, merge_rule="bipartite", start=1.5)
    result = search_rates(model, site.blocks, [True] * 4, site.protected, geometry, batches, settings, "cls")
    assert [(c["power"], c["chosen"]) for c in result.start] == [(1.5, True)]
    assert result.kept in {"start", "epoch 1"}
    assert abs(result.achieved_macs - target) <= 0.02 * target


@pytest.mark.parametrize("miss", [0.03, -0.03])
def test_a_schedule_off_its_target_is_fitted_to_half_a_percent_of_its_macs(miss):
    layers = list(range(12))
    merge = [197 - 8 * (i + 1) for i in layers]  # ToMe-like, r = 8
    prune = [197] * 12
    target = round(model_macs(DEIT_S, tokens_per_block(merge, layers, DEIT_S)) * (1 + miss))
    fitted = fit_to_macs(prune, merge, layers, DEIT_S, target, protected=1)
    achieved = model_macs(DEIT_S, tokens_per_block(fitted, layers, DEIT_S))
    assert abs(achieved - target) <= FIT_TOLERANCE * target
    assert all(a >= b for a, b in zip(fitted, fitted[1:])) and fitted[-1] >= 2
    moved = [abs(a - b) for a, b in zip(fitted, merge)]
    assert max(moved) - min(moved) <= 1  # the correction is spread over the layers, not put in one


def test_fitting_stops_at_the_closest_reachable_counts():
    layers = [0]
    prune, merge = [197], [100]
    target = model_macs(DEIT_S, tokens_per_block([2], layers, DEIT_S)) // 2  # below what 1 kept token costs
    fitted = fit_to_macs(prune, merge, layers, DEIT_S, target, protected=1)
    assert fitted == [2]  # never below the protected token + 1
