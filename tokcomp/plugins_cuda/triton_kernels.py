"""Triton kernels for the token ops, and the torch launchers the CUDA custom ops use.

One kernel per op (gather, index merge), so an op and its kernel can be removed
together. Argument order is (inputs..., int32 scalars..., output, constexprs): the
order TensorRT's ahead-of-time plugin launch uses, so one kernel serves PyTorch, the
TensorRT JIT plugin and the TensorRT AOT plugin (tokcomp.plugins_cuda.ptx).

Merging is a gather-side reduction: each program owns one output row (and a block
of channels) and adds the source rows whose destination is that row. It walks the
R sources in fixed chunks of SOURCE_CHUNK, loading only the rows that hit, summed in
fp32 in source order. No atomics, so results are deterministic and fp16 sums do not
round at every step; the fixed chunk keeps the tile (and the registers) the same size
whatever R is. The cost is reading the R destination indices once per output row
(from L1/L2).

Every index is clamped into range before it is used: TensorRT times plugins on
uninitialised buffers, where an index can be anything, and a wild index would be an
illegal memory access. In-range indices (every valid input) are unchanged. A padded
batch's null index N reads the zero row the caller appended to t (N + 1 rows): an
ordinary in-range index here.

Runs on CPU tensors under TRITON_INTERPRET=1 (the tests use that where no GPU is).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK_D = 128  # channels per program: 4 warps, one channel per thread
SOURCE_CHUNK = 8  # merge sources examined per step: an 8 x 128 tile, 8 values per thread at 4 warps


@triton.jit
def _clamped(index, size):
    """`index` forced into [0, size): an index read from an uninitialised buffer stays in bounds."""
    return tl.minimum(tl.maximum(index, 0), size - 1)


@triton.jit
def gather_rows_kernel(T, INDEX, n_in, n_out, width, OUT, BLOCK_D: tl.constexpr):
    """Output row (b, k) = t row (b, INDEX[b, k])."""
    row = tl.program_id(0)  # b * n_out + k
    col = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = col < width
    b = row // n_out
    src = _clamped(tl.load(INDEX + row).to(tl.int64), n_in)
    values = tl.load(T + (b.to(tl.int64) * n_in + src) * width + col, mask=cmask)
    tl.store(OUT + row.to(tl.int64) * width + col, values, mask=cmask)


@triton.jit
def index_merge_kernel(T, KEPT, SRC, DST, n_in, n_kept, n_src, width, OUT, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """Output row (b, i) = t row KEPT[b, i] + the t rows SRC[b, r] of every source r with DST[b, r] == i."""
    row = tl.program_id(0)  # b * n_kept + i
    col = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = col < width
    b = row // n_kept
    i = row - b * n_kept
    base = b.to(tl.int64) * n_in * width
    own = _clamped(tl.load(KEPT + row).to(tl.int64), n_in)
    acc = tl.load(T + base + own * width + col, mask=cmask, other=0.0).to(tl.float32)
    for start in range(0, n_src, CHUNK):
        r = start + tl.arange(0, CHUNK)
        rmask = r < n_src
        dst = tl.load(DST + b * n_src + r, mask=rmask, other=-1)  # only compared, never an address: no clamp
        hit = rmask & (dst == i)
        src = _clamped(tl.load(SRC + b * n_src + r, mask=hit, other=0).to(tl.int64), n_in)
        tile = tl.load(T + base + src[:, None] * width + col[None, :], mask=hit[:, None] & cmask[None, :], other=0.0)
        acc += tl.sum(tile.to(tl.float32), axis=0)  # in source order, so the sum is deterministic
    tl.store(OUT + row.to(tl.int64) * width + col, acc.to(OUT.dtype.element_ty), mask=cmask)


def _checked(t: Tensor, *indices: Tensor) -> tuple[Tensor, ...]:
    if t.dim() != 3 or any(i.dim() != 2 or i.shape[0] != t.shape[0] for i in indices):
        raise ValueError(f"expected t [B, N, D] and indices [B, K]; got {tuple(t.shape)}, {[tuple(i.shape) for i in indices]}")
    return tuple(x.contiguous() for x in (t, *indices))


def gather_tokens(t: Tensor, index: Tensor, out: Tensor | None = None) -> Tensor:
    t, index = _checked(t, index)
    batch, n_in, width = t.shape
    n_out = index.shape[1]
    out = t.new_empty(batch, n_out, width) if out is None else out
    if out.numel():
        grid = (batch * n_out, triton.cdiv(width, BLOCK_D))
        gather_rows_kernel[grid](t, index, n_in, n_out, width, out, BLOCK_D=BLOCK_D)
    return out


def index_merge(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor, out: Tensor | None = None) -> Tensor:
    """Same contract as tokcomp.reducers.ops.index_merge_sum_reference."""
    t, kept, src, dst = _checked(t, kept, src, dst)
    batch, n_in, width = t.shape
    n_kept, n_src = kept.shape[1], src.shape[1]
    out = t.new_empty(batch, n_kept, width) if out is None else out
    if out.numel():
        grid = (batch * n_kept, triton.cdiv(width, BLOCK_D))
        index_merge_kernel[grid](t, kept, src, dst, n_in, n_kept, n_src, width, out, BLOCK_D=BLOCK_D, CHUNK=SOURCE_CHUNK)
    return out
