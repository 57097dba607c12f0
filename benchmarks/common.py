"""Shared benchmark plumbing: machine description and interleaved throughput timing.

Speed is always a ratio measured in one run: original and compressed models are timed
alternately on the same inputs, so machine load affects both alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


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
    }


@torch.inference_mode()
def interleaved_throughput(
    runners: dict[str, Callable[[], object]], batch: int, repeats: int, warmup: int = 2
) -> dict[str, dict]:
    """Images (or sequences) per second for each runner; median over alternating repeats."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(t), "items_per_s": batch / statistics.median(t), "repeats": len(t)}
        for name, t in times.items()
    }
