"""A discrete search for per-layer kept shares under a FLOPs target, scored by a black-box loss.

What is searched: the share of the reducible tokens kept after each of `slots` reduction points
(non-increasing). A schedule is a shape, non-negative drop weights w_l, scaled by one number a:
share_l = exp(-a x (w_0 + ... + w_l)). For every shape `a` is solved by bisection so that the
FLOPs meet the target (`project`), so every schedule the search scores costs the same, and the
search only compares where and how steeply to reduce.

How it searches (`search_shares`), deterministic in the seed:
1. the caller's named starts (the baselines' shapes, so the result never scores worse than a
   baseline at the same FLOPs on the calibration data), then a few random sparse shapes;
2. hill climbing from the best: move, rescale, add or remove one drop weight; a change is kept
   when the score falls.

Users: `learned_drop` (decoder prefill, calibrate/prefill.py: KL on teacher-forced continuations)
and `rates: learned` on the merging passes of speech encoders (calibrate/learned_rates.py: KL on
teacher-forced transcripts). It is not DiffRate's gradient search (calibrate/search.py), which
needs soft masks inside the attention of the blocks it searches.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tokcomp.errors import RecipeError
from tokcomp.progress import info

# The achieved FLOPs cut must be within this fraction of the target cut: |cut / target cut - 1| <= 0.02.
CUT_TOLERANCE = 0.02
# Random shapes scored after the named starts, before hill climbing.
RANDOM_STARTS = 4
_MAX_SCALE = 1e4  # a shape that cannot reach the target below this scale never will (shares ~ 0)

Shares = list[float]


def achieved_cut(macs: int, original_macs: int) -> float:
    return 1 - macs / original_macs


def within_target(macs: int, target_macs: int, original_macs: int) -> bool:
    """The cut meets the target cut within CUT_TOLERANCE (relative); a 0% target needs no cut at all."""
    target = achieved_cut(target_macs, original_macs)
    if target <= 0:
        return macs >= original_macs
    return abs(achieved_cut(macs, original_macs) / target - 1) <= CUT_TOLERANCE


def bisect_decreasing(f: Callable[[float], float], target: float, low: float, high: float, steps: int = 60) -> float:
    """The smallest x in [low, high] (to `steps` halvings) with f(x) <= target, for f non-increasing in x;
    f(high) <= target is the caller's to ensure."""
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if f(middle) > target else (low, middle)
    return high


def shares_of(weights: Sequence[float], scale: float) -> Shares:
    """Kept share after every slot: exp(-scale x cumulative weight)."""
    shares, total = [], 0.0
    for weight in weights:
        total += weight
        shares.append(math.exp(-scale * total))
    return shares


def weights_of(shares: Sequence[float]) -> list[float]:
    """The shape (at scale 1) whose shares are `shares` (positive, non-increasing): shares_of's inverse."""
    logs = [0.0, *(-math.log(max(s, 1e-12)) for s in shares)]
    return [max(b - a, 0.0) for a, b in itertools.pairwise(logs)]


def project(weights: Sequence[float], macs_of: Callable[[Shares], int], target_macs: int) -> Shares | None:
    """The shares of this shape whose FLOPs are the target's (closest from below); None if it cannot reach it."""
    if macs_of(shares_of(weights, 0.0)) <= target_macs:
        return shares_of(weights, 0.0)
    high = 1.0
    while macs_of(shares_of(weights, high)) > target_macs:
        high *= 2
        if high > _MAX_SCALE:
            return None
    return shares_of(weights, bisect_decreasing(lambda a: macs_of(shares_of(weights, a)), target_macs, 0.0, high))


@dataclass
class ShareSearchResult:
    shares: Shares  # kept share after every slot
    score: float  # its calibration score (lower is better)
    achieved_macs: int
    target_macs: int
    original_macs: int
    kept: str  # which candidate won: a start's name or "climb k"
    seconds: float
    candidates: list[dict] = field(default_factory=list)  # every scored schedule: kind, score, shares


def _random_shape(slots: int, rng: random.Random) -> list[float]:
    weights = [0.0] * slots
    for block in rng.sample(range(slots), k=min(slots, rng.randint(1, 4))):
        weights[block] += rng.expovariate(1.0)
    return weights


def _mutate(weights: list[float], rng: random.Random) -> list[float]:
    """One change to a shape: move, rescale, add or remove a drop."""
    out, slots = list(weights), len(weights)
    used = [i for i, w in enumerate(out) if w > 0]
    move = rng.choice(["move", "rescale", "add", "remove"] if len(used) > 1 else ["move", "rescale", "add"])
    block = rng.choice(used)
    if move == "move":
        to = min(max(block + rng.choice([-2, -1, 1, 2]), 0), slots - 1)
        if to != block:
            out[to], out[block] = out[to] + out[block], 0.0
    elif move == "rescale":
        out[block] *= math.exp(rng.gauss(0.0, 0.5))
    elif move == "add":
        out[rng.randrange(slots)] += rng.uniform(0.1, 0.5) * sum(out)
    else:
        out[block] = 0.0
    return out


def search_shares(
    starts: Mapping[str, list[float]],
    macs_of: Callable[[Shares], int],
    score: Callable[[Shares], float],
    target_macs: int,
    original_macs: int,
    evaluations: int,
    seed: int,
    label: str,
) -> ShareSearchResult:
    """Score `evaluations` schedules at the target FLOPs (named starts, random shapes, then hill climbing).

    `starts` maps names to shapes, all of the same length (the slots); `label` names the search in progress lines.
    """
    started = time.perf_counter()
    rng = random.Random(seed)
    slots = len(next(iter(starts.values())))
    seen: dict[tuple, float] = {}
    candidates: list[dict] = []
    best: tuple[float, list[float], Shares, str] | None = None  # (score, weights, shares, kind)

    def try_shape(kind: str, weights: list[float]) -> None:
        nonlocal best
        if not any(w > 0 for w in weights):
            return
        shares = project(weights, macs_of, target_macs)
        if shares is None or not within_target(macs_of(shares), target_macs, original_macs):
            return
        key = tuple(round(s, 4) for s in shares)
        if key in seen:
            return
        value = seen[key] = score(shares)
        candidates.append({"kind": kind, "score": value, "shares": shares})
        if best is None or value < best[0]:
            best = (value, weights, shares, kind)
        info(
            f"{label} search {len(candidates)}/{evaluations}: {kind}: score {value:.4f} (best {best[0]:.4f}, "
            f"{best[3]}), {time.perf_counter() - started:.0f} s"
        )

    shapes = list(starts.items()) + [(f"random {i + 1}", _random_shape(slots, rng)) for i in range(RANDOM_STARTS)]
    for kind, weights in shapes:
        if len(candidates) >= evaluations:
            break
        try_shape(kind, weights)
    if best is None:
        raise RecipeError(
            f"{label}: no schedule reaches {target_macs / 1e9:.3f} GMACs within {CUT_TOLERANCE:.0%} of the cut",
            hint="choose a smaller target_flops cut",
        )
    attempts = 0
    nothing_to_drop = target_macs >= original_macs  # every shape projects to keeping everything
    while not nothing_to_drop and len(candidates) < evaluations and attempts < 50 * evaluations:
        attempts += 1
        try_shape(f"climb {len(candidates) + 1}", _mutate(best[1], rng))
    value, _, shares, kind = best
    return ShareSearchResult(
        shares=shares,
        score=value,
        achieved_macs=macs_of(shares),
        target_macs=target_macs,
        original_macs=original_macs,
        kept=kind,
        seconds=time.perf_counter() - started,
        candidates=candidates,
    )
