"""Learned prefill keep rates for decoder LLMs: a discrete, KL-scored search under a FLOPs target.

What is searched: the share of each prompt's reducible span kept after every layer (non-increasing;
a drop may follow the layers the caller allows, never the last), by calibrate/share_search.py: shapes
scaled to the FLOPs target, so every schedule scored costs the same and the search compares where and
how steeply to drop. The pass allows only full-attention layers by default: a sliding-window layer's
last token cannot see the start of a prompt longer than its window, so a drop ranked there removes
those tokens unseen, which calibration prompts shorter than the window would never show.

How it is scored, without labels: the original model's greedy continuation of each calibration
prompt is teacher-forced through the original and the compressed model (the prompt prefilled,
and reduced, alone; the continuation read through the KV cache, as evaluation/decoder.py measures
fidelity); the score is KL(original || compressed) of those next-token distributions, averaged over
positions and prompts.

How it searches (`search_keep_shares`), deterministic in the seed: named starts, FastV's shape (one
drop after layer 2), PyramidDrop's (equal drops after layers 2, 6, 12 of 18, scaled to the depth), a
uniform decay and one drop after the first layer, each drop moved to the first allowed layer at or
after it (Gemma-3-270m: layers 6 and 12); then random shapes and hill climbing (share_search.py).
It is a discrete search, not DiffRate's gradient: DiffRate's soft masks need a key bias inside the
decoder's attention (the vision blocks' size channel), which the decoder block does not have; see
docs/learned_prefill.md. Because the named starts include both baselines' shapes, the result never
scores worse than FastV or PyramidDrop at the same FLOPs on its own calibration prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tokcomp.calibrate.share_search import search_shares

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


def named_starts(layers: int, allowed: Sequence[int]) -> dict[str, list[float]]:
    """Drop-weight shapes of the baselines and two simple ones, over the `allowed` layers (the slots):
    a drop after layer index i moves to the first allowed index at or after i (else the last)."""
    slots = len(allowed)

    def at(*blocks: int) -> list[float]:
        weights = [0.0] * slots
        for block in blocks:
            weights[next((k for k, index in enumerate(allowed) if index >= block), slots - 1)] += 1.0
        return weights

    pyramid = sorted({max(round(layers * end / 18) - 1, 0) for end in (2, 6, 12)})
    return {
        "fastv shape": at(1),
        "pyramid shape": at(*pyramid),
        "uniform decay": [1.0] * slots,
        "drop after layer 1": at(0),
    }


def search_keep_shares(
    layers: int,
    allowed: Sequence[int],
    macs_of: Callable[[list[float]], int],
    score: Callable[[list[float]], float],
    target_macs: int,
    original_macs: int,
    evaluations: int,
    seed: int,
) -> PrefillSearchResult:
    """Score `evaluations` per-layer share lists at the target FLOPs; a drop may follow only the `allowed`
    layer indices (ascending, never the last layer)."""
    if not allowed or allowed[-1] >= layers - 1 or list(allowed) != sorted(set(allowed)):
        raise ValueError(f"allowed drop layers {list(allowed)}: ascending indices below the last layer ({layers - 1})")

    def every_layer(slot_shares: list[float]) -> list[float]:
        """Per-layer shares: each layer keeps the share of the last allowed layer at or before it."""
        shares, current = [], 1.0
        slot = dict(zip(allowed, slot_shares, strict=True))
        for index in range(layers):
            current = slot.get(index, current)
            shares.append(current)
        return shares

    result = search_shares(
        named_starts(layers, allowed),
        lambda shares: macs_of(every_layer(shares)),
        lambda shares: score(every_layer(shares)),
        target_macs,
        original_macs,
        evaluations,
        seed,
        "learned_drop",
    )
    candidates = []
    for candidate in result.candidates:
        shares = every_layer(candidate["shares"])
        first = next((i for i, s in enumerate(shares) if s < 1.0), None)
        candidates.append({"kind": candidate["kind"], "kl": candidate["score"],
                           "first_drop_after_layer": None if first is None else first + 1,
                           "last_share": shares[-1], "shares": shares})  # fmt: skip
    return PrefillSearchResult(
        shares=every_layer(result.shares),
        kl=result.score,
        achieved_macs=result.achieved_macs,
        target_macs=target_macs,
        original_macs=original_macs,
        kept=result.kept,
        seconds=result.seconds,
        candidates=candidates,
    )
