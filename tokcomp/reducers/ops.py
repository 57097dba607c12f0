"""The two application steps every reducer's X' = T X comes down to.

    gather_tokens(t, index)               row selection: pruning, reordering
    index_merge_sum(t, kept, src, dst)    keep rows `kept`, add rows `src` into output rows `dst`

Merging sums weighted values with out-of-place `scatter_add` (ONNX ScatterElements with
reduction=add) and divides by the summed weights afterwards (reducers/apply.py):
`scatter_reduce(reduce="mean")` exports silently wrong, so it is never used.

`use_ops({...})` swaps the steps for the duration of a block of code; tokcomp.export uses
it to route every reduction step through one `tokcomp::` custom op (one ONNX node, one
TensorRT plugin, one GPU kernel) without touching any reducer, and, for the portable ONNX
graph, through versions written for CPU runtimes (export/portable_ops.py). The table is a plain
module-level dict, which torch.compile reads as a guarded constant: a lookup costs no
graph break (a ContextVar lookup did).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

# --- reference implementations (plain PyTorch, export-safe) ------------------------

# Devices where gathering tokens copies whole rows (faster on CPU) instead of one `gather` kernel.
ROW_COPY_DEVICES = ("cpu",)


def _expand_index(index: Tensor, width: int) -> Tensor:
    return index[..., None].expand(-1, -1, width)


def eager_cpu_path(t: Tensor) -> bool:
    """Whether token steps on t [B, N, ...] take the eager CPU path: whole rows of the flattened
    [B N, D] tensor, and writes into fresh buffers instead of concatenations.

    True in eager runs on the devices in ROW_COPY_DEVICES (CPU), where a row copy is several times
    faster than `gather`/`scatter_add`, which read an index per element, and every pass over the
    tokens counts. Elsewhere one `gather`/`scatter_add`/`cat`: on a GPU every extra op is a kernel
    launch, and under tracing (torch.compile, export with symbolic shapes) the product B N makes
    the shape expressions blow up over a model's blocks, and slice writes become copies.
    """
    batch, tokens = t.shape[:2]
    # dynamo traces the isinstance check as true for its symbolic sizes: ask it directly
    eager = not torch.compiler.is_compiling() and isinstance(batch, int) and isinstance(tokens, int)
    return eager and t.device.type in ROW_COPY_DEVICES


def flat_rows(index: Tensor, tokens: int) -> Tensor:
    """Rows of the flattened [B N, D] tensor that index [B, K] names, as one [B K] index."""
    return (index + _row_offsets(index.shape[0], tokens, index.device)).view(-1)


@functools.lru_cache(maxsize=64)
def _row_offsets(batch: int, tokens: int, device: torch.device) -> Tensor:
    """[B, 1] first row of each sample in the flattened tensor: made once per shape (eager only, never
    written to), as every op costs a dispatch that short inputs feel."""
    return torch.arange(0, batch * tokens, tokens, device=device)[:, None]


def positions(count: int, like: Tensor) -> Tensor:
    """torch.arange(count) on like's device; made once per count on the eager CPU path (like [B, N, ...]
    decides: see eager_cpu_path), where every op costs a dispatch that short inputs feel. Never written to."""
    if eager_cpu_path(like):
        return _cached_positions(count, like.device)
    return torch.arange(count, device=like.device)


@functools.lru_cache(maxsize=64)
def _cached_positions(count: int, device: torch.device) -> Tensor:
    return torch.arange(count, device=device)


def gather_tokens_reference(t: Tensor, index: Tensor) -> Tensor:
    """t [B, N, D], index [B, K] -> [B, K, D] (row copies on the eager CPU path: see eager_cpu_path)."""
    batch, tokens, width = t.shape
    if not eager_cpu_path(t):
        return t.gather(1, _expand_index(index, width))
    return t.reshape(batch * tokens, width).index_select(0, flat_rows(index, tokens)).view(*index.shape, width)


def index_merge_sum_reference(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Keep rows `kept` [B, K] of t, then add rows `src` [B, R] into output rows `dst` [B, R] (< K)."""
    out = gather_tokens_reference(t, kept)
    moved = gather_tokens_reference(t, src)
    if not eager_cpu_path(t):
        return out.scatter_add(1, _expand_index(dst, t.shape[-1]), moved)
    # `out` is a fresh tensor: add rows into it in place (no copy of it), in the same order as scatter_add
    batch, rows, width = out.shape
    out.view(batch * rows, width).index_add_(0, flat_rows(dst, rows), moved.view(-1, width))
    return out


REFERENCE_OPS: Mapping[str, Callable[..., Tensor]] = {
    "gather_tokens": gather_tokens_reference,
    "index_merge_sum": index_merge_sum_reference,
}
# What runs now: the references, or what `use_ops` put in their place.
_active: dict[str, Callable[..., Tensor]] = dict(REFERENCE_OPS)


def references_active() -> bool:
    """Whether every step runs its reference implementation (no `use_ops` override in force)."""
    return all(_active[name] is step for name, step in REFERENCE_OPS.items())


@contextlib.contextmanager
def use_ops(overrides: Mapping[str, Callable[..., Tensor]]) -> Iterator[None]:
    """Run the enclosed code with some application steps replaced (same signatures as the references)."""
    unknown = sorted(set(overrides) - set(REFERENCE_OPS))
    if unknown:
        raise ValueError(f"unknown token ops {unknown}; swappable ops are {sorted(REFERENCE_OPS)}")
    saved = dict(_active)
    _active.update(overrides)
    try:
        yield
    finally:
        _active.clear()
        _active.update(saved)


# --- the application steps reducers call -------------------------------------------


def gather_tokens(t: Tensor, index: Tensor) -> Tensor:
    """t [B, N, D], index [B, K] -> [B, K, D]."""
    return _active["gather_tokens"](t, index)


def index_merge_sum(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """See `index_merge_sum_reference` (any exclusive merge: keep K rows, add R rows into them)."""
    return _active["index_merge_sum"](t, kept, src, dst)
