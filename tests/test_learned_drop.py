"""Pass `learned_drop`: per-layer prefill keep shares searched for a FLOPs target (KL on calibration prompts).

Tiny random Llama / Qwen2 (tests/test_decoder_prefill.py) with random calibration token ids: keep 1.0
and a 0% target are the original model; a searched schedule is non-increasing, reaches the FLOPs cut
within 2%, reloads from its checkpoint, and bad targets are one-line errors. Real gemma-3-270m: a short
search on zoo:prose-calib (heavy).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_decoder_prefill import QUESTION, SINK, greedy, prompt, tiny

from tokcomp.calibrate.share_search import CUT_TOLERANCE, project, shares_of, weights_of, within_target
from tokcomp.errors import TokcompError
from tokcomp.pipeline import apply_passes

LENGTH = 64
SEARCH = {"type": "learned_drop", "data": "random", "prompts": 2, "continuation": 4, "evaluations": 6,
          "sink": SINK, "question": QUESTION}  # fmt: skip


def learned(base, **settings):
    model = copy.deepcopy(base)
    [record] = apply_passes(model, [{**SEARCH, **settings}], sequence_length=LENGTH)
    return model, record.metadata


@pytest.mark.parametrize("settings", [{"keep": [1.0] * 4, "evaluations": 1}, {"target_flops": "-0%"}])
def test_keep_all_and_a_zero_target_are_the_original_model(settings):
    base = tiny("llama")
    model, metadata = learned(base, **settings)
    assert metadata["keep"] == [1.0] * 4 and metadata["tokens_per_layer"] == [LENGTH] * 4
    ids = prompt()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, base(ids).logits, atol=1e-5)
    assert torch.equal(greedy(model, input_ids=ids).sequences, greedy(base, input_ids=ids).sequences)


@pytest.mark.parametrize("family, target", [("llama", "-40%"), ("qwen2", "-55%")])
def test_searched_shares_are_monotone_and_meet_the_flops_target(family, target):
    _, metadata = learned(tiny(family), target_flops=target)
    report, shares = metadata["report"], metadata["keep"]
    assert all(b <= a for a, b in zip(shares, shares[1:], strict=False)) and shares[-1] == shares[-2]
    assert min(shares) < 1.0  # something is dropped
    cut = float(target.strip("-%")) / 100
    assert report["target_cut"] == pytest.approx(cut, abs=1e-6)  # the target is whole MACs
    assert abs(report["achieved_cut"] / cut - 1) <= CUT_TOLERANCE
    assert metadata["gmacs"] == pytest.approx(report["achieved_gmacs"])
    assert len(report["candidates"]) == 6 and report["kl"] == min(c["kl"] for c in report["candidates"])
    tokens = metadata["tokens_per_layer"]
    assert all(b <= a for a, b in zip(tokens, tokens[1:], strict=False)) and min(tokens) >= SINK + QUESTION


@pytest.mark.parametrize("search_layers, allowed", [("full_attention", [1, 2]), ("all", [1, 2, 3])])
def test_searched_drops_follow_full_attention_layers_unless_asked(search_layers, allowed):
    # tiny qwen2: layers 1-2 full attention, 3-4 sliding (window 12); a drop never follows the last layer
    _, metadata = learned(tiny("qwen2"), target_flops="-45%", search_layers=search_layers)
    report = metadata["report"]
    assert report["drop_layers_allowed"] == allowed
    for candidate in report["candidates"]:
        shares = candidate["shares"]
        before = [1.0, *shares[:-1]]
        falls = [i + 1 for i, (was, now) in enumerate(zip(before, shares, strict=True)) if now < was]
        assert set(falls) <= set(allowed), (candidate["kind"], shares)
    if search_layers == "all":  # the random shapes and the climb do use the sliding layer
        assert any(c["shares"][2] < c["shares"][1] for c in report["candidates"])


def test_the_search_is_deterministic_in_the_seed():
    base = tiny("llama")
    first, second = learned(base, target_flops="-40%")[1], learned(base, target_flops="-40%")[1]
    assert first["keep"] == second["keep"] and first["rates"] == second["rates"]


def test_projection_reaches_any_reachable_target_and_refuses_the_rest():
    def macs(shares):  # a toy cost: every share costs its layer's tokens
        return round(1000 * sum(shares))

    weights = [0.0, 1.0, 0.5]
    shares = project(weights, macs, 2000)
    assert shares is not None and within_target(macs(shares), 2000, 3000)
    assert project([0.0, 0.0, 1.0], macs, 1900) is None  # a drop at the third of 3 slots leaves at least 2000
    assert shares_of(weights, 0.0) == [1.0] * 3


def test_weights_of_inverts_shares_of():
    shares = [1.0, 0.8, 0.8, 0.3]
    assert shares_of(weights_of(shares), 1.0) == pytest.approx(shares)


def test_compiled_checkpoint_rebuilds_the_learned_rates(tmp_path):
    import tokcomp

    base = tiny("qwen2")
    base.save_pretrained(tmp_path / "model")
    recipe = {
        "model": {"source": str(tmp_path / "model"), "sequence_length": LENGTH},
        "passes": [{**SEARCH, "target_flops": "-50%"}],
        "evaluation": False,
    }
    tokcomp.compile(recipe, tmp_path / "out")
    loaded = tokcomp.load(tmp_path / "out")
    reference, metadata = learned(base, target_flops="-50%")
    rates = [None if block.reducer is None else list(block.reducer.rate) for block in loaded.model.layers]
    assert rates == metadata["rates"] and any(rate is not None for rate in rates)
    ids = prompt(50)  # another length: the same shares of its own span
    ours, theirs = greedy(loaded, input_ids=ids), greedy(reference, input_ids=ids)
    assert torch.equal(ours.sequences, theirs.sequences)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_flops": "-97%"}, "give a cut from 0% to 95%"),
        ({"target_flops": "-90%"}, "would need to drop protected tokens"),
        ({"target_flops": "1.5"}, "not understood"),
        ({"target_flops": 1.5}, "not a fraction"),
        ({"target_flops": "-50%", "keep": [1.0] * 4}, "exactly one of"),
        ({"keep": [1.0, 0.5, 0.7, 0.7]}, "never rise"),
        ({"keep": [1.0, 0.5, 0.5, 0.2]}, "the last layer cannot drop"),
        ({"keep": [1.0, 0.5]}, "the model has 4 layers"),
        ({"target_flops": "-50%", "data": "prose"}, "needs the model's tokenizer"),
        ({"target_flops": "-50%", "family": "mistral"}, "every layer but the last has a sliding window"),
    ],
)
def test_bad_targets_and_schedules_are_one_line_errors(settings, message):
    settings = dict(settings)
    family = settings.pop("family", "llama")  # mistral: a sliding window on every layer
    with pytest.raises(TokcompError) as error:
        learned(tiny(family), **settings)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.heavy
def test_gemma_search_on_calibration_prose_meets_the_target(tmp_path):
    """A short search (4 prompts of 256 tokens, 8 schedules) on the real model, compiled from the recipe."""
    import yaml
    from test_decoder_prefill import RECIPES

    import tokcomp
    from tokcomp.checkpoint import read_state

    recipe = yaml.safe_load((RECIPES / "learned_drop_gemma.yaml").read_text())
    recipe["model"]["sequence_length"] = 256
    recipe["passes"][0].update(prompts=4, continuation=8, evaluations=8)
    tokcomp.compile(recipe, tmp_path / "learned")
    model = tokcomp.load(tmp_path / "learned")
    kept = [block.reducer is not None for block in model.model.layers]
    assert any(kept) and not kept[-1]
    report = read_state(tmp_path / "learned").passes[0].metadata["report"]
    # Gemma-3-270m's full-attention layers are 6, 12 and 18: drops rank only after 6 and 12
    assert report["drop_layers_allowed"] == [6, 12]
    assert {i + 1 for i, dropping in enumerate(kept) if dropping} <= {6, 12}
    assert abs(report["achieved_cut"] / report["target_cut"] - 1) <= CUT_TOLERANCE
    assert report["calibration"]["data"] == "zoo:prose-calib" and max(report["calibration"]["prompt_tokens"]) <= 256
    assert len(report["candidates"]) == 8 and report["kl"] > 0  # eight schedules at the target, each a real drop
