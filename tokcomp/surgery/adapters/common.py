"""Helpers shared by adapters: q/k/v attention over the model's own projections, head MACs."""

from __future__ import annotations

from torch import Tensor, nn

from tokcomp.surgery.attention import AttentionInfo, attend, split_heads


def separate_qkv_attention(
    x: Tensor,
    q_proj: nn.Linear,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    head_dim: int,
    scale: float,
    bias: Tensor | None,
    dropout: float,
) -> tuple[Tensor, AttentionInfo]:
    """Attention for models with three projection layers (Hugging Face ViT/DeiT/DINOv2/BERT)."""
    q = split_heads(q_proj(x), head_dim)
    k = split_heads(k_proj(x), head_dim)
    v = split_heads(v_proj(x), head_dim)
    return attend(q, k, v, bias, scale, dropout)


def linear_macs_outside(model: nn.Module, excluded_prefixes: tuple[str, ...]) -> int:
    """MACs of Linear layers outside the blocks and embeddings: pooler and heads, applied to one token."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.startswith(excluded_prefixes):
            total += module.in_features * module.out_features
    return total


def adopt(target: nn.Module, source: nn.Module, names: list[str]) -> None:
    """Move child modules from the original block under the same names (keeps state-dict keys)."""
    for name in names:
        setattr(target, name, getattr(source, name))
