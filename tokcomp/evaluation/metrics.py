"""Streaming scores, fed one batch at a time.

Fidelity uses the formulas of tokcomp.analysis.fidelity.compare_models (cosine of
pooled embeddings; top-1 agreement and KL(original || compressed) on logits), kept
per sample and reduced at the end the same way, so `tokcomp eval` and report.json
agree on the same data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.evaluation.labels import UNLABELED

TOP_K = 5


class FidelityMeter:
    def __init__(self) -> None:
        self.cosines: list[Tensor] = []
        self.agree: list[Tensor] = []
        self.kl: list[Tensor] = []

    def update(self, ref: dict[str, Tensor], out: dict[str, Tensor]) -> None:
        self.cosines.append(F.cosine_similarity(ref["embedding"], out["embedding"], dim=-1))
        if "logits" in ref and "logits" in out:
            self.agree.append((ref["logits"].argmax(-1) == out["logits"].argmax(-1)).float())
            log_p, log_q = F.log_softmax(ref["logits"], -1), F.log_softmax(out["logits"], -1)
            self.kl.append((log_p.exp() * (log_p - log_q)).sum(-1))

    def running_cosine(self) -> float | None:
        return torch.cat(self.cosines).mean().item() if self.cosines else None

    def result(self) -> dict[str, float] | None:
        if not self.cosines:
            return None
        cos = torch.cat(self.cosines)
        result = {"samples": int(cos.numel()), "cosine_mean": cos.mean().item(), "cosine_min": cos.min().item()}
        if self.agree:
            result["top1_agreement"] = torch.cat(self.agree).mean().item()
            result["kl_mean"] = torch.cat(self.kl).mean().item()
        return result


class AccuracyMeter:
    """Top-1 / top-5 accuracy over labeled samples (unlabeled ones are skipped)."""

    def __init__(self) -> None:
        self.samples = 0
        self.top1 = 0
        self.topk = 0
        self.classes: int | None = None
        self.out_of_range = 0  # labels the classifier cannot predict at all

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.classes = logits.shape[-1]
        keep = labels != UNLABELED
        logits, labels = logits[keep], labels[keep]
        self.out_of_range += int((labels >= self.classes).sum())
        self.samples += int(labels.numel())
        if not labels.numel():
            return
        ranked = logits.topk(min(TOP_K, self.classes), dim=-1).indices
        hits = ranked == labels[:, None]
        self.top1 += int(hits[:, 0].sum())
        self.topk += int(hits.any(-1).sum())

    def result(self) -> dict[str, float | int]:
        result: dict[str, float | int] = {"samples": self.samples, "top1": self.top1 / self.samples}
        if self.classes is not None and self.classes >= TOP_K:  # top-5 of <= 5 classes means nothing
            result["top5"] = self.topk / self.samples
        return result


def flag_low_fidelity(fidelity: dict[str, Any], warn_below: dict[str, float | None]) -> dict[str, Any]:
    """`fidelity` plus the thresholds it was held to ("warn_below") and the metrics under them ("below_threshold")."""
    below = {
        metric: fidelity[metric]
        for metric, limit in warn_below.items()
        if limit is not None and metric in fidelity and fidelity[metric] < limit
    }
    return {**fidelity, "warn_below": warn_below, "below_threshold": below}


def transcript_fidelity_text(fidelity: dict[str, Any]) -> str:
    """How a speech model's compile-time fidelity reads (report.py's `_speech_fidelity`)."""
    return (
        f"top-1 agreement {fidelity['top1_agreement']:.3f} (min {fidelity['top1_agreement_min']:.3f}) and KL "
        f"{fidelity['kl_mean']:.4f} nats on the original's teacher-forced transcripts"
    )


def low_fidelity_warning(fidelity: dict[str, Any] | None) -> str | None:
    """One line for a fidelity flagged by `flag_low_fidelity`, or None when nothing is below its threshold."""
    below = (fidelity or {}).get("below_threshold")
    if not below:
        return None
    found = ", ".join(f"{metric} {value:.4f} < {fidelity['warn_below'][metric]}" for metric, value in below.items())
    return (
        f"low fidelity ({found}): the compressed model's outputs differ a lot from the original's "
        "(use a smaller budget, or set evaluation.warn_below in the recipe to accept it)"
    )
