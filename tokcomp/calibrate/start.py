"""Where the rate search starts: the schedule shape that loses least on the calibration data.

A few dozen gradient steps refine counts near their start but hardly change a
schedule's shape (docs/diffrate.md, Results), and the shape matters: at the same FLOPs,
removing fewer tokens early and more late keeps more of the model. So before the
search, every shape in START_POWERS (shaped_start: pure merging at the target FLOPs,
power 1 = ToMe's constant r) is scored on the first calibration batches by the search
forward under its exact integer counts (the compiled model's forward), and the search
starts from the best one. The same score then judges the search's read-out after every
epoch (search.py keeps the best).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tokcomp.calibrate.budget import shaped_start
from tokcomp.calibrate.settings import START_POWERS
from tokcomp.reducers.diffrate import block_counts
from tokcomp.surgery.adapters.base import Geometry

# Calibration batches a schedule is scored on (a forward each, no gradient): every start
# shape, and the search's read-out after every epoch.
SCORE_BATCHES = 6


@dataclass
class StartCandidate:
    power: float
    prune: list[float]  # continuous counts per searched layer: where the logits are centred
    merge: list[float]
    counts: tuple[list[int], list[int]]  # integer (prune kept, tokens after): what is scored
    score: float = math.nan  # task loss at `counts` on the scoring batches


def integer_counts(
    prune: list[float], merge: list[float], protected: int, merge_rule: str
) -> tuple[list[int], list[int]]:
    """Integer (prune kept, tokens after) per searched layer: rounded, never increasing, floors kept.

    Rounding to the nearest count keeps the FLOPs next to the target (errors cancel across
    layers); a count rounded below the bipartite floor is lifted to it.
    """
    prune_out, after_out, previous = [], [], math.inf
    for p, m in zip(prune, merge, strict=True):
        kept, previous = block_counts(previous, round(p), round(m), protected, merge_rule)
        prune_out.append(kept)
        after_out.append(previous)
    return prune_out, after_out


def start_candidates(
    geometry: Geometry,
    layers: list[int],
    protected: int,
    target_macs: int,
    merge_rule: str,
    powers: tuple[float, ...] = START_POWERS,
) -> list[StartCandidate]:
    """One candidate per shape (every shape reaches the same targets: all layers at the floor)."""
    candidates = []
    for power in powers:
        prune, merge = shaped_start(geometry, layers, protected, target_macs, merge_rule, power)
        candidates.append(StartCandidate(power, prune, merge, integer_counts(prune, merge, protected, merge_rule)))
    return candidates


def choose_start(candidates: list[StartCandidate], score: Callable[[StartCandidate], float]) -> StartCandidate:
    """Score every candidate (lower is better); the lowest wins, ties to the shape nearest constant r."""
    for candidate in candidates:
        candidate.score = score(candidate)
    return min(candidates, key=lambda c: (c.score, abs(math.log(c.power))))
