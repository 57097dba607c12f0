"""Export-safe token operations shared by reducers.

Merging sums weighted values into groups with out-of-place `scatter_add` (ONNX
ScatterElements with reduction=add) and divides by the summed weights afterwards:
`scatter_reduce(reduce="mean")` exports silently wrong, so it is never used.

The four *application steps* (the functions that apply a reducer's T to the tokens)
dispatch through a swappable table:

    gather_tokens(t, index)                    row selection (pruning, reordering)
    bipartite_merge_sum(t, unmerged, src, dst) ToMe's alternating-split sum-merge
    index_merge_sum(t, kept, src, dst)         keep rows, add other rows into them
    transform_apply(transform, t)              dense T @ t (many-to-many merging)

`use_ops({...})` replaces them for the duration of a block; tokcomp.export uses it
to route every reduction step through one `tokcomp::` custom op (one ONNX node,
one TensorRT plugin, one GPU kernel) without touching any reducer. Reducers only
call these functions; the reference implementations below are what runs otherwise
and what the custom ops are checked against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType

import torch
from torch import Tensor

from tokcomp.surgery.state import TokenState

# --- reference implementations (plain PyTorch, export-safe) ------------------------


def _expand_index(index: Tensor, width: int) -> Tensor:
    return index[..., None].expand(-1, -1, width)


def gather_tokens_reference(t: Tensor, index: Tensor) -> Tensor:
    """t [B, N, D], index [B, K] -> [B, K, D]."""
    return t.gather(1, _expand_index(index, t.shape[-1]))


def bipartite_merge_sum_reference(t: Tensor, unmerged: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Sum-merge under ToMe's alternating split.

    t [B, N, D] is split into A = t[:, 0::2] and B = t[:, 1::2]. A tokens at `src`
    are added into B tokens at `dst`; A tokens at `unmerged` are kept.
    Output order: [A[unmerged], B (with sources added)].
    """
    a, b = t[:, 0::2], t[:, 1::2]
    kept = gather_tokens_reference(a, unmerged)
    moved = gather_tokens_reference(a, src)
    b = b.scatter_add(1, _expand_index(dst, t.shape[-1]), moved)
    return torch.cat([kept, b], dim=1)


def index_merge_sum_reference(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Keep rows `kept` [B, K] of t, then add rows `src` [B, R] into output rows `dst` [B, R] (< K)."""
    out = gather_tokens_reference(t, kept)
    moved = gather_tokens_reference(t, src)
    return out.scatter_add(1, _expand_index(dst, t.shape[-1]), moved)


def transform_apply_reference(transform: Tensor, t: Tensor) -> Tensor:
    """X' = T X: transform [B, K, N] applied to t [B, N, D] -> [B, K, D]."""
    return torch.matmul(transform.to(t.dtype), t)


REFERENCE_OPS: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {
        "gather_tokens": gather_tokens_reference,
        "bipartite_merge_sum": bipartite_merge_sum_reference,
        "index_merge_sum": index_merge_sum_reference,
        "transform_apply": transform_apply_reference,
    }
)

_overrides: ContextVar[Mapping[str, Callable[..., Tensor]]] = ContextVar("tokcomp_op_overrides", default={})


@contextlib.contextmanager
def use_ops(overrides: Mapping[str, Callable[..., Tensor]]) -> Iterator[None]:
    """Run the block with some application steps replaced (same signatures as the references)."""
    unknown = sorted(set(overrides) - set(REFERENCE_OPS))
    if unknown:
        raise ValueError(f"unknown token ops {unknown}; swappable ops are {sorted(REFERENCE_OPS)}")
    token = _overrides.set({**_overrides.get(), **overrides})
    try:
        yield
    finally:
        _overrides.reset(token)


def _impl(name: str) -> Callable[..., Tensor]:
    return _overrides.get().get(name) or REFERENCE_OPS[name]


# --- the application steps reducers call -------------------------------------------


def gather_tokens(t: Tensor, index: Tensor) -> Tensor:
    """t [B, N, D], index [B, K] -> [B, K, D]."""
    return _impl("gather_tokens")(t, index)


def bipartite_merge_sum(t: Tensor, unmerged: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """See `bipartite_merge_sum_reference`; output [B, len(unmerged) + N // 2, D]."""
    return _impl("bipartite_merge_sum")(t, unmerged, src, dst)


def index_merge_sum(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """See `index_merge_sum_reference` (any exclusive merge: keep K rows, add R rows into them)."""
    return _impl("index_merge_sum")(t, kept, src, dst)


def transform_apply(transform: Tensor, t: Tensor) -> Tensor:
    """X' = T X (Token Transforming's many-to-many merge); usable as `merge_sum` below."""
    return _impl("transform_apply")(transform, t)


# --- state-carrying helpers built on the steps -------------------------------------


def _pack_state(x: Tensor, weight: Tensor, state: TokenState) -> Tensor:
    channels = [x, weight[..., None]]
    if state.mask is not None:
        channels.append(state.mask[..., None].to(x.dtype))
    if state.source is not None:
        channels.append(state.source.to(x.dtype))
    return torch.cat(channels, dim=-1)


def weighted_merge(x: Tensor, state: TokenState, merge_sum) -> tuple[Tensor, TokenState]:
    """Size-weighted average of x under any sum-merge, carrying sizes, mask and source.

    `merge_sum(t) -> t'` sums rows of t into groups (linear in t: a bipartite merge,
    an index merge, or `partial(transform_apply, T)`). The weight of a token is its
    size, times its mask flag, so padding never contributes to a real token; a group
    with no real token stays padding (mask 0, size 1, value 0).
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
    """Keep the tokens at `index` [B, K] (pruning), carrying their state.

    x and its state are gathered as one packed tensor: one gather (one `GatherTokens`
    node in the tokcomp ONNX flavour) instead of one per state field. Gathering copies
    values exactly, so this equals gathering each field on its own.
    """
    hidden = x.shape[-1]
    picked = gather_tokens(_pack_state(x, state.size.to(x.dtype), state), index)
    column = hidden + 1
    size = picked[..., hidden].to(state.size.dtype)
    mask = None
    if state.mask is not None:
        mask = picked[..., column].to(state.mask.dtype)
        column += 1
    source = None if state.source is None else picked[..., column:].to(state.source.dtype)
    return picked[..., :hidden], state.with_(size=size, mask=mask, source=source)
