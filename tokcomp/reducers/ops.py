"""Export-safe token operations shared by reducers.

Merging sums weighted values into groups with out-of-place `scatter_add` (ONNX
ScatterElements with reduction=add) and divides by the summed weights afterwards:
`scatter_reduce(reduce="mean")` exports silently wrong, so it is never used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.surgery.state import TokenState


def gather_tokens(t: Tensor, index: Tensor) -> Tensor:
    """t [B, N, D], index [B, K] -> [B, K, D]."""
    return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))


def bipartite_merge_sum(t: Tensor, unmerged: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Sum-merge under ToMe's alternating split.

    t [B, N, D] is split into A = t[:, 0::2] and B = t[:, 1::2]. A tokens at `src`
    are added into B tokens at `dst`; A tokens at `unmerged` are kept.
    Output order: [A[unmerged], B (with sources added)].
    """
    a, b = t[:, 0::2], t[:, 1::2]
    kept = gather_tokens(a, unmerged)
    moved = gather_tokens(a, src)
    b = b.scatter_add(1, dst[..., None].expand(-1, -1, t.shape[-1]), moved)
    return torch.cat([kept, b], dim=1)


def weighted_merge(x: Tensor, state: TokenState, merge_sum) -> tuple[Tensor, TokenState]:
    """Size-weighted average of x under any sum-merge, carrying sizes, mask and source.

    `merge_sum(t) -> t'` sums rows of t into groups. The weight of a token is its size,
    times its mask flag, so padding never contributes to a real token; a group with
    no real token stays padding (mask 0, size 1, value 0).
    """
    weight = state.size if state.mask is None else state.size * state.mask
    channels = [x * weight[..., None], weight[..., None]]
    if state.source is not None:
        channels.append(state.source)
    merged = merge_sum(torch.cat(channels, dim=-1))
    hidden = x.shape[-1]
    summed_x, summed_w = merged[..., :hidden], merged[..., hidden]
    source = merged[..., hidden + 1 :] if state.source is not None else None
    if state.mask is None:
        return summed_x / summed_w[..., None], state.with_(size=summed_w, source=source)
    real = summed_w > 0
    safe_w = torch.where(real, summed_w, torch.ones_like(summed_w))
    new_x = summed_x / safe_w[..., None]
    new_mask = real.to(state.mask.dtype)
    return new_x, state.with_(size=safe_w, mask=new_mask, source=source)


def select_tokens(x: Tensor, state: TokenState, index: Tensor) -> tuple[Tensor, TokenState]:
    """Keep the tokens at `index` [B, K] (pruning), carrying their state."""
    size = gather_tokens(state.size[..., None], index)[..., 0]
    mask = None if state.mask is None else gather_tokens(state.mask[..., None], index)[..., 0]
    source = None if state.source is None else gather_tokens(state.source, index)
    return gather_tokens(x, index), state.with_(size=size, mask=mask, source=source)
