"""Sentence embeddings from token outputs: one pooling rule for PyTorch, sentence-transformers and ONNX Runtime.

A compressed model's output tokens each stand for `size` input tokens (merging adds
sizes); padding rows weigh 0. Mean pooling weighted by those sizes equals mean pooling
over the input tokens, which is what the original model's users compute. CLS pooling
reads the first token: CLS is protected, so it is always kept and always first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

POOLING_MODES = ("cls", "mean")


def pool(tokens: Tensor, weights: Tensor | None, pooling: str, normalize: bool = False) -> Tensor:
    """[B, N, D] tokens, [B, N] weights (None: all 1) -> [B, D] in at least float32; L2-normalised when `normalize`."""
    # At least float32: sizes and sums of many tokens are not exact in bf16 / fp16.
    tokens = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
    if pooling == "cls":
        pooled = tokens[:, 0]
    elif pooling == "mean":
        w = torch.ones(tokens.shape[:2], dtype=tokens.dtype) if weights is None else weights.to(tokens.dtype)
        pooled = (tokens * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-9)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLING_MODES)}")
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def run_with_token_weights(model: nn.Module, **inputs: Tensor) -> tuple[Any, Tensor]:
    """(the model's outputs, [B, N] weights of its output tokens) for a token-reduced model."""
    from tokcomp.surgery import capture_final_state

    with capture_final_state(model) as states:
        outputs = model(**inputs)
    return outputs, states[-1].weight()
