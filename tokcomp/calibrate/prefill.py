"""Learned prefill keep rates for decoder LLMs: a discrete, KL-scored search under a FLOPs target.

What is searched: the share of each prompt's reducible span kept after every layer (non-increasing;
a drop is allowed after any layer but the last). A schedule is a shape, non-negative drop weights
w_l over the layers, scaled by one number a: share_l = exp(-a x (w_0 + ... + w_l)). For every shape
`a` is solved by bisection so that the prefill FLOPs meet the target (`project`), so every schedule
the search scores costs the same, and the search only compares where and how steeply to drop.

How it is scored, without labels: the original model's greedy continuation of each calibration
prompt is teacher-forced through the original and the compressed model (the prompt prefilled,
and reduced, alone; the continuation read through the KV cache, as evaluation/decoder.py measures
fidelity); the score is KL(original || compressed) of those next-token distributions, averaged over
positions and prompts.

How it searches (`search_keep_shares`), deterministic in the seed:
1. named starts: FastV's shape (one drop after layer 2), PyramidDrop's (equal drops after layers
   2, 6, 12 of 18, scaled to the depth), a uniform decay, one drop after layer 1; then a few random
   sparse shapes;
2. hill climbing from the best: move, rescale, add or remove one drop weight; keep the change when
   the calibration KL falls.
It is a discrete search, not DiffRate's gradient: DiffRate's soft masks need a key bias inside the
decoder's attention (the vision blocks' size channel), which the decoder block does not have; see
docs/learned_prefill.md. Because the named starts include both baselines' shapes, the result never
scores worse than FastV or PyramidDrop at the same FLOPs on its own calibration prompts.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokcomp.progress import info

# The achieved FLOPs cut must be within this fraction of the target cut: |cut / target cut - 1| <= 0.02.
CUT_TOLERANCE = 0.02
# Named starts and random shapes scored before hill climbing (random ones: at most this many).
RANDOM_STARTS = 4
_MAX_SCALE = 1e4  # a shape that cannot reach the target below this scale never will (shares ~ 0)


# ------------------------------------------------------------------ FLOPs target


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


def shares_of(weights: Sequence[float], scale: float) -> list[float]:
    """Kept share after every layer: exp(-scale x cumulative weight); the last layer drops nothing."""
    shares, total = [], 0.0
    for weight in weights:
        total += weight
        shares.append(math.exp(-scale * total))
    return [*shares, shares[-1]]


def project(weights: Sequence[float], macs_of: Callable[[list[float]], int], target_macs: int) -> list[float] | None:
    """The shares of this shape whose FLOPs are the target's (closest from below); None if it cannot reach it."""
    if macs_of(shares_of(weights, 0.0)) <= target_macs:
        return shares_of(weights, 0.0)
    high = 1.0
    while macs_of(shares_of(weights, high)) > target_macs:
        high *= 2
        if high > _MAX_SCALE:
            return None
    return shares_of(weights, bisect_decreasing(lambda a: macs_of(shares_of(weights, a)), target_macs, 0.0, high))


# ------------------------------------------------------------------ calibration prompts and the KL score


def calibration_sentences() -> list[str]:
    """English prose of the calibration split (zoo:prose-calib), one sentence each, in document order."""
    from tokcomp.evaluation.needle import prose_sentences

    return prose_sentences("calib", digits=True)


def prose_calibration_prompts(tokenizer, length: int, count: int, seed: int) -> list[Tensor]:
    """`count` calibration prompts [1, <= length] of whole sentences from seeded places of zoo:prose-calib."""
    from tokcomp.evaluation.decoder import prose_prompts

    texts = prose_prompts(tokenizer, length, count, seed, sentences=calibration_sentences())
    return [tokenizer(text, return_tensors="pt").input_ids for text in texts]


def random_calibration_prompts(vocab_size: int, length: int, count: int, seed: int) -> list[Tensor]:
    """Random token ids (tests and smoke runs on models without a tokenizer), deterministic in the seed."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (1, length), generator=generator) for _ in range(count)]


class ContinuationFidelity:
    """KL(original || model) and top-1 agreement on the original's teacher-forced greedy continuations of
    fixed prompts (evaluation/decoder.py's measures). Built from the model while it is still the original
    (no reducers installed); called later with reducers installed, or on another model.
    """

    def __init__(self, original: nn.Module, prompts: Sequence[Tensor], continuation: int):
        from tokcomp.evaluation.decoder import greedy_tokens, teacher_forced_logits

        device = next(original.parameters()).device
        self.prompts = [ids.to(device) for ids in prompts]
        self.continuations = [greedy_tokens(original, ids, continuation) for ids in self.prompts]
        self.reference = [
            teacher_forced_logits(original, ids, tokens)
            for ids, tokens in zip(self.prompts, self.continuations, strict=True)
        ]

    def scores(self, model: nn.Module) -> list[dict[str, float]]:
        """Per prompt: KL (nats, mean over the continuation) and top-1 agreement."""
        from tokcomp.evaluation.decoder import distribution_fidelity, teacher_forced_logits

        return [
            distribution_fidelity(reference, teacher_forced_logits(model, ids, tokens))
            for ids, tokens, reference in zip(self.prompts, self.continuations, self.reference, strict=True)
        ]

    def __call__(self, model: nn.Module) -> float:
        """Mean KL over prompts."""
        scores = self.scores(model)
        return sum(s["kl"] for s in scores) / len(scores)


# ------------------------------------------------------------------ the search


@dataclass
class PrefillSearchResult:
    shares: list[float]  # kept share of the reducible span after every layer
    kl: float  # its calibration KL
    achieved_macs: int
    target_macs: int
    original_macs: int
    kept: str  # which candidate won: a start's name or "climb k"
    seconds: float
    candidates: list[dict] = field(default_factory=list)  # every scored schedule: kind, KL, first drop, last share


def named_starts(layers: int) -> dict[str, list[float]]:
    """Drop-weight shapes of the baselines and two simple ones, over the layers a drop may follow."""
    slots = layers - 1

    def at(*blocks: int) -> list[float]:
        weights = [0.0] * slots
        for block in blocks:
            weights[min(max(block, 0), slots - 1)] += 1.0
        return weights

    pyramid = sorted({max(round(layers * end / 18) - 1, 0) for end in (2, 6, 12)})
    return {
        "fastv shape": at(1),
        "pyramid shape": at(*pyramid),
        "uniform decay": [1.0] * slots,
        "drop after layer 1": at(0),
    }


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


def search_keep_shares(
    layers: int,
    macs_of: Callable[[list[float]], int],
    score: Callable[[list[float]], float],
    target_macs: int,
    original_macs: int,
    evaluations: int,
    seed: int,
) -> PrefillSearchResult:
    """Score `evaluations` schedules at the target FLOPs (named starts, random shapes, then hill climbing)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    slots = layers - 1
    seen: dict[tuple, float] = {}
    candidates: list[dict] = []
    best: tuple[float, list[float], list[float], str] | None = None  # (KL, weights, shares, kind)

    def try_shape(kind: str, weights: list[float]) -> bool:
        nonlocal best
        if not any(w > 0 for w in weights):
            return False
        shares = project(weights, macs_of, target_macs)
        if shares is None or not within_target(macs_of(shares), target_macs, original_macs):
            return False
        key = tuple(round(s, 4) for s in shares)
        if key in seen:
            return False
        kl = seen[key] = score(shares)
        first = next((i for i, s in enumerate(shares) if s < 1.0), None)
        candidates.append({"kind": kind, "kl": kl, "first_drop_after_layer": None if first is None else first + 1,
                           "last_share": shares[-1], "shares": shares})  # fmt: skip
        if best is None or kl < best[0]:
            best = (kl, weights, shares, kind)
        info(
            f"learned_drop search {len(candidates)}/{evaluations}: {kind}: KL {kl:.4f} (best {best[0]:.4f}, "
            f"{best[3]}), {time.perf_counter() - started:.0f} s"
        )
        return True

    starts = list(named_starts(layers).items())
    starts += [(f"random {i + 1}", _random_shape(slots, rng)) for i in range(RANDOM_STARTS)]
    for kind, weights in starts:
        if len(candidates) >= evaluations:
            break
        try_shape(kind, weights)
    if best is None:
        from tokcomp.errors import RecipeError

        raise RecipeError(
            f"no drop schedule reaches {target_macs / 1e9:.3f} GMACs within {CUT_TOLERANCE:.0%} of the cut",
            hint="choose a smaller target_flops cut",
        )
    attempts = 0
    nothing_to_drop = target_macs >= original_macs  # every shape projects to keeping everything
    while not nothing_to_drop and len(candidates) < evaluations and attempts < 50 * evaluations:
        attempts += 1
        try_shape(f"climb {len(candidates) + 1}", _mutate(best[1], rng))
    kl, _, shares, kind = best
    return PrefillSearchResult(
        shares=shares,
        kl=kl,
        achieved_macs=macs_of(shares),
        target_macs=target_macs,
        original_macs=original_macs,
        kept=kind,
        seconds=time.perf_counter() - started,
        candidates=candidates,
    )
