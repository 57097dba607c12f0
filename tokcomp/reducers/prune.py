"""Class-attention pruning: keep the tokens the CLS token attends to most.

As X' = T X, pruning's T is a row selection: one 1 per kept token, nothing for the
dropped ones (their information is lost). Importance is the CLS attention averaged
over heads (`AttentionInfo.cls_attention`, the rule of EViT and DiffRate). Protected
tokens (CLS, distillation) always stay; padding ranks below every real token, so a
padded text batch loses padding first. Kept tokens stay in their original order.

The selection helpers here are shared by the whole family (EViT, Token Transforming).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.ops import select_tokens
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# Ranking scores outside the range of attention probabilities [0, 1].
_PROTECTED_RANK = 2.0
_PADDING_RANK = -1.0


def capped_r(r: int, tokens_in: int, protected: int) -> int:
    """Tokens a family member removes: r, at most half the unprotected tokens.

    The same cap as ToMe, so every reducer given the same r keeps the same number of
    tokens after every layer: equal r means exactly equal FLOPs across the family.
    """
    return max(0, min(r, (tokens_in - protected) // 2))


def importance_order(importance: Tensor, protected: int, mask: Tensor | None) -> Tensor:
    """Token indices [B, N], most important first: protected tokens, real tokens, padding."""
    position = torch.arange(importance.shape[1], device=importance.device)[None, :]
    rank = torch.where(position < protected, torch.full_like(importance, _PROTECTED_RANK), importance)
    if mask is not None:
        rank = torch.where(mask > 0, rank, torch.full_like(rank, _PADDING_RANK))
    return rank.argsort(dim=-1, descending=True, stable=True)


def split_by_importance(
    importance: Tensor, keep: int, protected: int, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(kept [B, keep] in index order, so protected tokens come first; dropped [B, N - keep])."""
    order = importance_order(importance, protected, mask)
    return order[:, :keep].sort(dim=-1).values, order[:, keep:]


class ClassAttentionPrune(Reducer):
    """Drop the r tokens the CLS token attends to least."""

    kind = "prune"

    def __init__(self, r: int, protected: int = 1):
        super().__init__(protected)
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
        self.r = r

    def kept_tokens(self, tokens_in: int) -> int:
        return tokens_in - capped_r(self.r, tokens_in, self.protected)

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        keep = self.kept_tokens(x.shape[1])
        if keep == x.shape[1]:
            return x, state
        kept, _ = split_by_importance(attn.cls_attention(), keep, self.protected, state.mask)
        return select_tokens(x, state, kept)

    def describe(self) -> dict:
        return {**super().describe(), "r": self.r}
