"""Paired comparison of two methods scored on the same samples.

    result = compare_paired(scores_a, scores_b)   # e.g. per-image cosine of two reducers
    result.verdict                                # "A better", "B better" or "tie"

The mean difference (A - B) gets a percentile bootstrap 95% interval over samples (seeded, so the
same scores always give the same interval); the verdict is "tie" whenever that interval contains 0.
Wins / ties / losses count samples where A scored higher / equal (within `tie_tolerance`) / lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tokcomp.errors import TokcompError

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean_a: float
    mean_b: float
    mean_difference: float  # mean of (A - B)
    interval: tuple[float, float]  # bootstrap CONFIDENCE interval of mean_difference
    wins: int  # samples where A > B
    ties: int
    losses: int  # samples where A < B
    verdict: str  # "A better", "B better" or "tie"

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self, a: str = "A", b: str = "B") -> str:
        low, high = self.interval
        word = {"A better": f"{a} better", "B better": f"{b} better", "tie": "tie"}[self.verdict]
        return (
            f"{self.mean_difference:+.4f} [{low:+.4f}, {high:+.4f}], "
            f"wins/ties/losses {self.wins}/{self.ties}/{self.losses} of {self.n}: {word}"
        )


def compare_paired(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    tie_tolerance: float = 0.0,
) -> PairedComparison:
    """Compare per-sample scores of method A and method B (higher is better), paired by position."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise TokcompError(
            f"paired scores need two equally long lists; got shapes {a.shape} and {b.shape}",
            hint="score both methods on the same samples, in the same order",
        )
    if a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise TokcompError("paired scores are empty or contain NaN/inf", hint="check the per-sample scores")
    difference = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep memory at 1000 x n
        count = min(1000, resamples - start)
        means[start : start + count] = difference[rng.integers(0, a.size, size=(count, a.size))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
    mean = float(difference.mean())
    if low > 0:
        verdict = "A better"
    elif high < 0:
        verdict = "B better"
    else:
        verdict = "tie"
    wins = int((difference > tie_tolerance).sum())
    losses = int((difference < -tie_tolerance).sum())
    return PairedComparison(
        n=int(a.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_difference=mean,
        interval=(low, high),
        wins=wins,
        ties=int(a.size) - wins - losses,
        losses=losses,
        verdict=verdict,
    )
