"""Greedy pair matching: the most similar pair merges first, with no bipartite split.

ToMe's bipartite split (reducers/matching.py) lets a token merge only into a token of the
other half of the current order; on short inputs, where every merge is a large share of the
tokens, that often forbids the best pair. Greedy matching takes, per sample, the best allowed
pair of the whole score matrix, `removed` times:

1. scores S [B, N, N] (S[i, j]: moving token i into token j; higher merges first); a pair is
   allowed when both tokens are free (real, not protected) and distinct;
2. after a merge i -> j, token i is gone and j has received: neither may move any more, and
   nothing may merge into i. A merged token is therefore the plain size-weighted mean of the
   tokens that moved into it, as in ToMe (no chains);
3. the tokens that stay keep their order (real tokens first, padding last), so the reduction
   preserves order.

`slots` (static) steps run for every sample; a sample that removes fewer tokens idles through
the rest, so the graph is the same for every batch (no .item(), no data-dependent shapes). The
cap is ToMe's (half of the reducible tokens), under which an allowed pair always exists.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tokcomp.reducers.apply import first, inverse, merge
from tokcomp.reducers.rate import Count
from tokcomp.surgery.state import TokenState, real_count


class GreedyPlan(NamedTuple):
    kept: Tensor  # [B, K] tokens that become the output rows, in order (null past a sample's end)
    src: Tensor  # [B, S] tokens that move (null for an idle slot)
    dst: Tensor  # [B, S] output row each moving token goes into (0 for an idle slot)


def greedy_plan(scores: Tensor, state: TokenState, removed: Count, slots: int, length: int) -> GreedyPlan:
    """Which tokens move into which, `removed` (int or [B]) pairs per sample, best score first."""
    batch, tokens = state.protected.shape
    device = scores.device
    null = tokens
    position = torch.arange(tokens, device=device)
    free = state.free()
    allowed = free[:, :, None] & free[:, None, :] & (position[:, None] != position[None, :])
    forbidden = torch.finfo(scores.dtype).min
    scores = torch.where(allowed, scores, torch.full_like(scores, forbidden))
    samples = torch.arange(batch, device=device)
    sources, targets = [], []
    for _ in range(slots):  # per step only what must be sequential: the best pair and its writes
        source, target = best_pair(scores, samples)
        # the source is gone (no row, no column); the target has received (no row): written in
        # place, not as a masked copy of the whole matrix per step. A sample past its `removed`
        # idles and never reads its scores again, so writing its rows too changes nothing.
        scores[samples, source] = forbidden
        scores[samples, target] = forbidden
        scores[samples, :, source] = forbidden
        sources.append(source)
        targets.append(target)
    if slots:  # slot s of a sample moves a token while s < its `removed`; later slots idle
        active = torch.arange(slots, device=device) < (removed[:, None] if isinstance(removed, Tensor) else removed)
        src = torch.where(active, torch.stack(sources, dim=1), null)
        target = torch.where(active, torch.stack(targets, dim=1), 0)
    else:
        src = target = torch.zeros(batch, 0, dtype=torch.long, device=device)
    moved = (src[:, :, None] == position).any(dim=1)
    gone = moved if state.real is None else moved | ~state.real
    order = torch.where(gone, tokens + position, position).argsort(dim=-1)
    kept = first(order, real_count(state, tokens) - removed, length, null)
    rows = inverse(order)
    dst = torch.where(src != null, rows.gather(1, target), torch.zeros_like(target))
    return GreedyPlan(kept, src, dst)


def best_pair(scores: Tensor, samples: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column [B] of each sample's highest score in scores [B, N, N]: the first in row-major
    order among equals, as an argmax over the flattened matrix, but faster on CPU (a row-wise
    amax is vectorised, an argmax over N^2 elements is not)."""
    source = scores.amax(dim=-1).argmax(dim=-1)
    target = scores[samples, source].argmax(dim=-1)
    return source, target


def merge_greedy(
    x: Tensor, state: TokenState, scores: Tensor, removed: Count, slots: int, length: int, preserve_norm: bool = False
) -> tuple[Tensor, TokenState]:
    """Greedy matching on `scores` [B, N, N], then each moving token whole into its target, size-weighted."""
    plan = greedy_plan(scores, state, removed, slots, length)
    return merge(x, state, plan.kept, plan.src, plan.dst, null=state.real is not None, preserve_norm=preserve_norm)
