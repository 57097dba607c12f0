"""Interleaved timing (benchmarks/common.py): the order runners' steps run in, and what a round sums."""

import pytest

from benchmarks.common import interleaved_throughput


def _recording(log: list[str], name: str):
    return lambda: log.append(name)


def test_step_k_of_every_runner_runs_before_step_k_plus_1_in_a_rotating_order():
    log: list[str] = []
    runners = {name: [_recording(log, f"{name}{k}") for k in range(3)] for name in ("a", "b")}
    result = interleaved_throughput(runners, batch=6, repeats=2, warmup=1)
    warmup, rounds = log[:6], log[6:]
    assert warmup == ["a0", "a1", "a2", "b0", "b1", "b2"]
    # round 0: steps 0, 1, 2 start with a, b, a; round 1 starts one runner later
    assert rounds == ["a0", "b0", "b1", "a1", "a2", "b2"] + ["b0", "a0", "a1", "b1", "b2", "a2"]
    for name in runners:
        assert result[name]["repeats"] == 2 and result[name]["steps_per_repeat"] == 3
        assert len(result[name]["seconds"]) == 2
        assert result[name]["items_per_s"] == pytest.approx(6 / result[name]["median_s"])


def test_a_single_callable_is_one_step_per_round():
    log: list[str] = []
    result = interleaved_throughput({"a": _recording(log, "a"), "b": _recording(log, "b")}, 1, repeats=3, warmup=0)
    assert log == ["a", "b", "b", "a", "a", "b"]
    assert result["a"]["steps_per_repeat"] == 1


def test_runners_with_different_step_counts_are_refused():
    with pytest.raises(ValueError, match="same number of steps"):
        interleaved_throughput({"a": [lambda: None] * 2, "b": [lambda: None]}, 1, repeats=1)
