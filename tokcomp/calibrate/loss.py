"""Task losses for the rate search: distillation from the original model by default.

- kl:     KL(original || searched) on classifier logits;
- cosine: 1 - cosine of the pooled output (CLS token, or a mean over surviving tokens
          weighted by their sizes, as the model is pooled in use);
- ce:     cross-entropy against the data's labels (classifiers with labeled data only);
- auto:   kl when the model has logits, else cosine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.calibrate.settings import LossName
from tokcomp.errors import TokcompError



def pooled(output, pooling: str, weights: Tensor | None) -> Tensor:
    """The embedding a backbone is used through: CLS token or weighted mean of tokens."""
    hidden = output.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    w = torch.ones(hidden.shape[:2], device=hidden.device) if weights is None else weights
    return (hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True)


def resolve_loss(loss: LossName, has_logits: bool, has_labels: bool) -> str:
    """The concrete loss for this model and data; errors name the key and what would work."""
    if loss == "auto":
        return "kl" if has_logits else "cosine"
    if loss in ("kl", "ce") and not has_logits:
        raise TokcompError(
            f"loss '{loss}' needs a classifier, but the model returns no logits",
            hint="use loss: cosine (or auto) for backbones and encoders",
        )
    if loss == "ce" and not has_labels:
        raise TokcompError(
            "loss 'ce' needs labeled calibration data",
            hint="use an image folder with class sub-folders or a dataset with a label column, or loss: kl",
        )
    return loss


def teacher_target(output, loss: str, pooling: str, weights: Tensor | None) -> Tensor:
    """What the original model's output contributes to the loss (cached per batch)."""
    if loss == "kl":
        return output.logits.float().log_softmax(-1)
    return pooled(output, pooling, weights).float()


def task_loss(
    output, loss: str, target: Tensor | None, labels: Tensor | None, pooling: str, weights: Tensor | None
) -> Tensor:
    if loss == "ce":
        return F.cross_entropy(output.logits.float(), labels)
    if loss == "kl":
        return F.kl_div(output.logits.float().log_softmax(-1), target, log_target=True, reduction="batchmean")
    student = pooled(output, pooling, weights).float()
    return (1 - F.cosine_similarity(student, target, dim=-1)).mean()
