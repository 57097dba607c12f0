"""merge_rule learned: DiffRate's per-block choice of merge rule (tiny random models only)."""

import copy
import json

import pytest
import torch

from tests.conftest import tiny_vision
from tokcomp.analysis.flops import model_macs
from tokcomp.calibrate import SearchSettings, search_rates
from tokcomp.calibrate.merge_choice import choose_rules, trial_count
from tokcomp.errors import RecipeError
from tokcomp.passes import get_pass
from tokcomp.passes.token_reduction import BlockSite, geometry_of
from tokcomp.pipeline import PassContext, run_passes
from tokcomp.recipe import CalibrationSpec, parse_pass_list
from tokcomp.reducers.diffrate import MERGE_RULES, diffrate_reducers
from tokcomp.sources import load_model
from tokcomp.surgery import capture_final_state, token_blocks
from tokcomp.surgery.adapters.base import InputSpec

# ---------------------------------------------------------------- the greedy search, by itself

CANDIDATES = ("bipartite", "bipartite_keys", "spread")


def test_choice_goes_from_the_last_block_and_keeps_only_strict_improvements():
    costs = {(0, "spread"): -0.5, (2, "bipartite_keys"): -0.2, (2, "spread"): -0.1, (1, "spread"): 0.0}
    calls = []

    def score(rules):
        calls.append(list(rules))
        return 1.0 + sum(costs.get((block, rule), 0.3) if rule != "bipartite" else 0 for block, rule in enumerate(rules))

    start = ["bipartite"] * 3
    choice = choose_rules(start, [0, 1, 2], CANDIDATES, score)
    assert choice.rules == ["spread", "bipartite", "bipartite_keys"]  # block 1's tie keeps the start
    assert choice.start_score == 1.0 and choice.score == pytest.approx(0.3)
    assert [t["block"] for t in choice.trials] == [2, 2, 1, 1, 0, 0]
    assert len(calls) == 1 + trial_count(start, [0, 1, 2], CANDIDATES)
    assert choose_rules(start, [0, 1, 2], CANDIDATES, score).rules == choice.rules  # deterministic


def test_choice_never_scores_worse_than_its_start():
    generator = torch.Generator().manual_seed(0)
    table = torch.rand(6, len(CANDIDATES), generator=generator)

    def score(rules):
        return float(sum(table[block, CANDIDATES.index(rule)] for block, rule in enumerate(rules)))

    choice = choose_rules(["bipartite"] * 6, list(range(6)), CANDIDATES, score)
    assert choice.score <= choice.start_score == score(["bipartite"] * 6)
    assert choice.score == score(choice.rules)  # the separable optimum, found in one pass
    assert choice.rules == [CANDIDATES[int(i)] for i in table.argmin(dim=1)]


# ---------------------------------------------------------------- the reducers it chooses among


@pytest.mark.parametrize("rule", MERGE_RULES)
def test_every_rule_keeps_the_same_counts_and_conserves_token_mass(rule):
    torch.manual_seed(0)
    model = tiny_vision("dinov2")
    site = BlockSite.prepare(model, "diffrate")
    prune, merge = [65, 60, 50, 44], [60, 50, 40, 36]
    site.install(diffrate_reducers(prune, merge, 1, 65, "bipartite", [rule] * 4), True)
    pixels = torch.randn(2, 3, 32, 32)
    with capture_final_state(model) as states, torch.no_grad():
        model(pixel_values=pixels)
    assert states[-1].size.shape == (2, 36)
    assert torch.allclose(states[-1].size.sum(-1), torch.full((2,), 65.0))


def test_the_rules_differ_on_the_same_counts():
    torch.manual_seed(0)
    model = tiny_vision("dinov2")
    pixels = torch.randn(2, 3, 32, 32)
    outputs = {}
    site = BlockSite.prepare(model, "diffrate")
    for rule in ("bipartite", "bipartite_keys", "spread"):
        site.install(diffrate_reducers([65, 60, 50, 44], [50, 40, 32, 28], 1, 65, "bipartite", [rule] * 4), True)
        with torch.no_grad():
            outputs[rule] = model(pixel_values=pixels).last_hidden_state
    assert not torch.allclose(outputs["bipartite"], outputs["bipartite_keys"])
    assert not torch.allclose(outputs["bipartite"], outputs["spread"])


# ---------------------------------------------------------------- inside the search


def _learned_search(seed=0):
    torch.manual_seed(seed)
    model = tiny_vision("dinov2")
    site = BlockSite.prepare(model, "diffrate")
    geometry = geometry_of(model, InputSpec("image", image_size=32))
    original = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    generator = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(8, 3, 32, 32, generator=generator)} for _ in range(3)]
    settings = SearchSettings(target_macs=int(original * 0.6), epochs=1, lr=0.05, merge_rule="learned")
    return search_rates(
        model, site.blocks, [True] * 4, site.protected, geometry, batches, settings, "cls", seed,
        install=lambda reducers: site.install(reducers, True),
    )  # fmt: skip


def test_learned_search_is_repeatable_and_never_worse_than_the_count_search():
    first, second = _learned_search(), _learned_search()
    assert first.merge_rules == second.merge_rules and first.merge_choice == second.merge_choice
    choice = first.merge_choice
    assert len(first.merge_rules) == 4 and set(first.merge_rules) <= set(CANDIDATES)
    assert choice["score"] <= choice["start_score"]
    # The start is the plain search's model: the real reducers score what the search scored in place.
    assert choice["start_score"] == pytest.approx(choice["search_score"], rel=1e-4, abs=1e-6)
    assert len(choice["trials"]) == 4 * 2


def test_learned_rules_restore_from_the_metadata_with_identical_outputs(tiny_vit_dir):
    loaded = load_model(str(tiny_vit_dir))
    original = copy.deepcopy(loaded.model)
    calibration = CalibrationSpec(data="zoo:imagenet+cifar10", samples=16, batch_size=8, augment=True)
    ctx = PassContext(loaded.input_spec, 0, calibration, loaded)
    entry = {"type": "diffrate", "target_flops": 0.6, "epochs": 1, "merge_rule": "learned"}
    (record,) = run_passes(loaded.model, parse_pass_list([entry]), ctx)
    metadata = json.loads(json.dumps(record.metadata))  # what tokcomp.json holds
    assert record.version == 2 and metadata["merge_rule"] == "learned"
    assert len(metadata["merge_rules"]) == 4 and metadata["report"]["merge_choice"]["rules"] == metadata["merge_rules"]
    handler = get_pass("diffrate")
    handler.restore(original, handler.Config.model_validate(record.config), metadata)
    for block, rule in zip(token_blocks(original), metadata["merge_rules"], strict=True):
        assert block.reducer is None or block.reducer.merge_rule == rule
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(pixel_values=pixels).logits, original.eval()(pixel_values=pixels).logits)


def test_version_1_records_restore_with_their_single_rule():
    model = tiny_vision("dinov2")
    handler = get_pass("diffrate")
    config = handler.Config.model_validate({"schedule": {"prune": [65, 60, 50, 44], "merge": [60, 50, 40, 36]}})
    metadata = {"prune_kept": [65, 60, 50, 44], "merge_kept": [60, 50, 40, 36], "protected": 1, "input_tokens": 65}
    handler.restore(model, config, metadata)  # written before merge_rule existed: DiffRate's own rule
    assert {b.reducer.merge_rule for b in token_blocks(model)} == {"importance"}


def test_learned_needs_a_search_and_choices_need_learned():
    with pytest.raises(RecipeError, match="learned chooses"):
        parse_pass_list([{"type": "diffrate", "merge_rule": "learned", "schedule": {"prune": [65], "merge": [60]}}])
    with pytest.raises(RecipeError, match="merge_choices only apply"):
        parse_pass_list([{"type": "diffrate", "target_flops": 0.6, "merge_choices": ["spread"]}])
