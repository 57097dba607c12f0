"""Ranking tokens by importance: the one implementation (pruning, EViT, DiffRate, Zero-TPrune, random drop).

Importance is any per-token score, higher = more worth keeping: the CLS attention row
(EViT, DiffRate), Weighted PageRank (Zero-TPrune), random numbers (the baseline).
Protected tokens always rank first (in index order) and padding last, whatever the score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokcomp.reducers.apply import first
from tokcomp.reducers.rate import Count
from tokcomp.surgery.state import TokenState


def pool_neighbours(scores: Tensor, kernel: int, pooling: str = "max") -> Tensor:
    """Scores [..., N] smoothed over each token's `kernel` neighbours (odd, centred): max or mean.

    A kept token then brings its neighbours: a fact's value sits a few tokens after the words a
    question matches, and a lone kept token out of its phrase is of little use (SnapKV's pooling).
    """
    if kernel == 1:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    if pooling == "max":
        flat = F.max_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    else:
        flat = F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return flat.view(scores.shape)


def importance_order(importance: Tensor, state: TokenState) -> Tensor:
    """Token indices [B, N], most important first: protected tokens, real tokens by importance, padding."""
    key = torch.where(state.protected, torch.full_like(importance, torch.inf), importance)
    if state.real is not None:
        key = torch.where(state.real, key, torch.full_like(key, -torch.inf))
    return key.argsort(dim=-1, descending=True, stable=True)


def keep_most_important(
    importance: Tensor, state: TokenState, keep: Count, length: int, by_position: bool
) -> tuple[Tensor, Tensor]:
    """(kept [B, length], dropped order [B, N]): each sample keeps its `keep` most important tokens.

    `kept` lists them in their current order (`by_position`) or by importance (DiffRate's
    sorted layout), then null (= N) past a sample's own count. The dropped order is the
    importance order with the kept tokens first; `order[:, keep:]` are the dropped ones.
    """
    tokens = importance.shape[1]
    order = importance_order(importance, state)
    if not by_position:
        return first(order, keep, length, tokens), order
    is_kept = torch.arange(tokens, device=order.device) < (keep[:, None] if isinstance(keep, Tensor) else keep)
    kept_flag = torch.zeros_like(state.protected).scatter(1, order, is_kept.expand_as(order))
    position = torch.arange(tokens, device=order.device)
    key = torch.where(kept_flag, position, position + tokens)
    return first(key.argsort(dim=-1), keep, length, tokens), order
