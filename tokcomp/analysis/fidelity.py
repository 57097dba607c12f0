"""How close a compressed model stays to its original, on the same inputs.

Embeddings are pooled the way the model is used: the CLS token (vision backbones,
BERT-style CLS models) or a mean over real tokens (sentence encoders). After token
merging, the mean is size-weighted, so it equals the mean over the original tokens
that each surviving token stands for.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokcomp.pooling import pool, run_with_token_weights
from tokcomp.surgery import token_blocks


@torch.no_grad()
def model_outputs(model: nn.Module, batch: dict[str, Tensor], pooling: str) -> dict[str, Tensor]:
    """{"embedding": [B, D], "logits": [B, K] if the model has a classifier}."""
    if token_blocks(model):
        out, weights = run_with_token_weights(model, **batch)
    else:
        out = model(**batch)
        mask = batch.get("attention_mask")
        weights = None if mask is None else mask.to(torch.float32)
    result = {}
    logits = getattr(out, "logits", None)
    if logits is not None:
        result["logits"] = logits
    hidden = getattr(out, "last_hidden_state", None)
    result["embedding"] = logits if hidden is None else pool(hidden, weights, pooling)
    return result


@torch.no_grad()
def compare_models(
    original: nn.Module,
    compressed: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    pooling: str,
    per_sample: bool = False,
) -> dict:
    """Cosine of pooled embeddings; top-1 agreement and KL(original || compressed) on logits.

    `per_sample` adds every sample's cosine ("cosines"), for paired comparisons of two models.
    """
    cosines, agree, kl = [], [], []
    for batch in batches:
        ref, out = model_outputs(original, batch, pooling), model_outputs(compressed, batch, pooling)
        cosines.append(F.cosine_similarity(ref["embedding"], out["embedding"], dim=-1))
        if "logits" in ref:
            agree.append((ref["logits"].argmax(-1) == out["logits"].argmax(-1)).float())
            log_p, log_q = F.log_softmax(ref["logits"], -1), F.log_softmax(out["logits"], -1)
            kl.append((log_p.exp() * (log_p - log_q)).sum(-1))
    cos = torch.cat(cosines)
    result = {"samples": int(cos.numel()), "cosine_mean": cos.mean().item(), "cosine_min": cos.min().item()}
    if per_sample:
        result["cosines"] = cos.tolist()
    if agree:
        result["top1_agreement"] = torch.cat(agree).mean().item()
        result["kl_mean"] = torch.cat(kl).mean().item()
    return result
