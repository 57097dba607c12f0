"""Paired comparison of two methods on the same samples: known cases."""

import numpy as np
import pytest

from tokcomp.analysis.paired import compare_paired
from tokcomp.errors import TokcompError


def test_identical_scores_are_a_tie_with_a_zero_interval():
    scores = [0.9, 0.8, 0.95, 0.7]
    result = compare_paired(scores, scores)
    assert result.mean_difference == 0.0
    assert result.interval == (0.0, 0.0)
    assert (result.wins, result.ties, result.losses) == (0, 4, 0)
    assert result.verdict == "tie"


def test_a_constant_lead_is_a_win_with_a_degenerate_interval():
    b = np.linspace(0.5, 0.9, 50)
    result = compare_paired(b + 0.01, b)
    assert result.mean_difference == pytest.approx(0.01)
    assert result.interval == pytest.approx((0.01, 0.01))
    assert (result.wins, result.ties, result.losses) == (50, 0, 0)
    assert result.verdict == "A better"
    assert compare_paired(b, b + 0.01).verdict == "B better"


def test_two_samples_bootstrap_interval_spans_both_values():
    # Differences 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles are exactly 0 and 1, and the verdict is a tie although A never loses.
    result = compare_paired([1.0, 2.0], [1.0, 1.0])
    assert result.mean_difference == 0.5
    assert result.interval == (0.0, 1.0)
    assert (result.wins, result.ties, result.losses) == (1, 1, 0)
    assert result.verdict == "tie"


def test_symmetric_differences_tie_and_count_wins_and_losses():
    a = [1.0, 0.0] * 50
    result = compare_paired(a, [0.5] * 100)
    assert result.mean_difference == 0.0
    assert result.interval[0] < 0 < result.interval[1]
    assert (result.wins, result.ties, result.losses) == (50, 0, 50)
    assert result.verdict == "tie"


def test_interval_width_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    difference = rng.normal(0.01, 0.1, size=2000)
    result = compare_paired(difference, np.zeros(2000))
    half_width = 1.96 * difference.std(ddof=1) / np.sqrt(2000)
    low, high = result.interval
    assert low < result.mean_difference < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert result.verdict == "A better"  # the mean 0.01 is over 4 standard errors from 0


def test_same_seed_same_interval_and_tolerance_counts_ties():
    rng = np.random.default_rng(2)
    a, b = rng.random(30), rng.random(30)
    assert compare_paired(a, b, seed=3) == compare_paired(a, b, seed=3)
    close = compare_paired([0.5001, 0.6, 0.4], [0.5, 0.5, 0.5], tie_tolerance=1e-3)
    assert (close.wins, close.ties, close.losses) == (1, 1, 1)


def test_summary_names_the_methods():
    text = compare_paired([1.0] * 3, [0.0] * 3).summary("token_transform", "tome")
    assert "token_transform better" in text and "3/0/0 of 3" in text


@pytest.mark.parametrize(("a", "b"), [([1.0, 2.0], [1.0]), ([], []), ([float("nan")], [1.0]), ([[1.0]], [[1.0]])])
def test_bad_inputs_are_tokcomp_errors(a, b):
    with pytest.raises(TokcompError):
        compare_paired(a, b)


def _readme_table():
    import importlib.util
    import sys
    from pathlib import Path

    if "readme_table" not in sys.modules:  # a script, not a package module: load it by path
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "readme_table.py"
        spec = importlib.util.spec_from_file_location("readme_table", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["readme_table"] = module
        spec.loader.exec_module(module)
    return sys.modules["readme_table"]


def test_readme_table_shows_the_paired_comparison_with_its_verdict(tmp_path):
    import json

    table = _readme_table()
    tie = compare_paired([0.9, 0.8], [0.8, 0.9]).as_dict()
    better = compare_paired([0.95] * 4, [0.9] * 4).as_dict()
    rows = {
        "tome": {"pass": {"type": "tome"}, "gmacs": 3.0, "cosine_mean": 0.9},
        "a": {"pass": {"type": "a"}, "gmacs": 3.0, "cosine_mean": 0.9, "vs_tome": tie},
        "b": {"pass": {"type": "b"}, "gmacs": 3.0, "cosine_mean": 0.95, "vs_tome": better},
    }
    (tmp_path / "reducers.json").write_text(json.dumps({"models": {"m": {"budgets": {"-35%": {"rows": rows}}}}}))
    text = table.table(table.read_results(tmp_path, tmp_path))
    line = {row.split("|")[2].strip(): row for row in text.splitlines()[2:]}
    assert "+0.0000 [-0.1000, +0.1000] tie" in line["a"]
    assert "+0.0500 [+0.0500, +0.0500] better" in line["b"]
    assert line["tome"].count(" - ") >= 1
