"""Shared benchmark plumbing: machine description and interleaved throughput timing.

Speed is always a ratio measured in one run: original and compressed models are timed
alternately on the same inputs, so machine load affects both alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from tokcomp.export.bench import load_average  # the 1-minute load, recorded beside every timing


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),  # at the time of the call: record it beside every timing
    }


@torch.inference_mode()
def interleaved_throughput(
    runners: dict[str, Callable[[], object] | Sequence[Callable[[], object]]],
    batch: int,
    repeats: int,
    warmup: int = 2,
) -> dict[str, dict]:
    """Images (or sequences) per second for each runner; median over `repeats` rounds, each round's
    seconds kept in order so that paired ratios per round can be read.

    A runner is one callable, or a sequence of steps (say, one per batch of a corpus) that together
    make one round. Step k of every runner runs before step k + 1 of any, in an order that rotates
    with k and the round: every runner then meets the machine's load in the same few seconds, not
    in its own slot of a round, where load that drifts on a shared machine favours one runner.
    """
    steps = {name: list(run) if isinstance(run, Sequence) else [run] for name, run in runners.items()}
    counts = {len(s) for s in steps.values()}
    if len(counts) != 1:
        raise ValueError(f"every runner needs the same number of steps, got {sorted(counts)}")
    (count,) = counts
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            for step in steps[name]:
                step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for k in range(count):
            shift = (round_ + k) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                steps[name][k]()
                spent[name] += time.perf_counter() - start
        for name in names:
            times[name].append(spent[name])
    return {
        name: {
            "median_s": statistics.median(t),
            "items_per_s": batch / statistics.median(t),
            "repeats": len(t),
            "steps_per_repeat": count,
            "seconds": t,
        }
        for name, t in times.items()
    }


def no_timing_line(machine_info: dict) -> str:
    """The machine line of a results table that holds no timings."""
    return f"Machine: {machine_info['cpu']}, load average {machine_info['load_average']} (no timings)."


def bootstrap_mean(values, resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean of `values` with a 95% bootstrap interval (percentile method, seeded)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    draws = torch.randint(len(values), (resamples, len(values)), generator=torch.Generator().manual_seed(seed))
    means = values[draws].mean(1)
    return {
        "mean": values.mean().item(),
        "ci95": [means.quantile(0.025).item(), means.quantile(0.975).item()],
        "min": values.min().item(),
        "samples": len(values),
    }


def write_results(results_dir, name: str, result: dict, markdown: str, show: bool = True) -> None:
    """benchmarks/results/<name>.json (the data) and .md (the table), written atomically; print the table."""
    from pathlib import Path

    from tokcomp.fileio import atomic_write_text, write_json

    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{name}.json", result)
    atomic_write_text(folder / f"{name}.md", markdown)
    if show:
        print(markdown)


def pooled_rounds(runs: list[dict], items: int) -> dict:
    """Every runner's rounds from several `interleaved_throughput` runs together: medians over runs spread
    through a benchmark's minutes, as eager timings on a shared machine move between runs more than
    between rounds. Keys other than runners (a run's `load_average`) are left out."""
    rounds = {name: [s for run in runs for s in run[name]["seconds"]] for name in runs[0] if name != "load_average"}
    return {
        name: {"median_s": (m := statistics.median(t)), "items_per_s": items / m, "repeats": len(t), "seconds": t}
        for name, t in rounds.items()
    }
