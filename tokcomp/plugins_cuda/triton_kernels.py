"""Triton kernels for the token ops, and the torch launchers the CUDA custom ops use.

Argument order is (inputs..., int32 scalars..., output, constexprs): the order
TensorRT's ahead-of-time plugin launch uses, so one kernel serves PyTorch, the
TensorRT JIT plugin and the TensorRT AOT plugin (tokcomp.plugins_cuda.ptx).

Merging is a gather-side reduction: each program owns one output row (and a block
of channels) and adds the source rows whose destination is that row, as one masked
[R, channels] tile summed in a fixed order with fp32 accumulation. No atomics, so
results are deterministic and fp16 sums do not round at every step. The cost is
reading the R destination indices once per output row (R <= N/2, a few hundred
bytes), small next to the rows themselves.

Runs on CPU tensors under TRITON_INTERPRET=1 (the tests use that where no GPU is).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK_D = 128  # channels per gather program (4 warps, one element per thread)
TILE_ELEMENTS = 8192  # merge tile BLOCK_R x BLOCK_D: 64 fp32 registers per thread at 4 warps


def merge_blocks(n_src: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D) for a merge with n_src sources: every source in one tile."""
    block_r = triton.next_power_of_2(max(n_src, 1))
    return block_r, max(16, min(128, TILE_ELEMENTS // block_r))


@triton.jit
def gather_rows_kernel(T, INDEX, n_in, n_out, width, OUT, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)  # b * n_out + k
    col = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = col < width
    b = row // n_out
    src = tl.load(INDEX + row).to(tl.int64)
    values = tl.load(T + (b.to(tl.int64) * n_in + src) * width + col, mask=cmask)
    tl.store(OUT + row.to(tl.int64) * width + col, values, mask=cmask)


@triton.jit
def merge_rows_kernel(
    T,
    KEPT,
    SRC,
    DST,
    n_in,
    n_kept,
    n_out,
    n_src,
    width,
    OUT,
    BIPARTITE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Output row i = own row + sum of source rows whose destination is i.

    BIPARTITE (ToMe): rows i < n_kept copy A row KEPT[i] (t row 2*KEPT[i]); rows after
    are the B tokens (t row 2*(i - n_kept) + 1); SRC indexes A, DST indexes B.
    Otherwise (index merge): row i copies t row KEPT[i]; SRC indexes t, DST the output.
    """
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = col < width
    b = row // n_out
    i = row - b * n_out
    base = b.to(tl.int64) * n_in * width
    if BIPARTITE:
        is_kept = i < n_kept
        kept = tl.load(KEPT + b * n_kept + i, mask=is_kept, other=0).to(tl.int64)
        own = tl.where(is_kept, 2 * kept, 2 * (i - n_kept) + 1)
        target = i - n_kept  # negative for kept A rows: no source ever targets them
    else:
        own = tl.load(KEPT + b * n_kept + i).to(tl.int64)
        target = i
    acc = tl.load(T + base + own * width + col, mask=cmask, other=0.0).to(tl.float32)
    # All R sources in one tile (BLOCK_R >= R): only the rows that hit are read from memory.
    r = tl.arange(0, BLOCK_R)
    rmask = r < n_src
    dst = tl.load(DST + b * n_src + r, mask=rmask, other=-1)
    hit = rmask & (dst == target)
    src = tl.load(SRC + b * n_src + r, mask=hit, other=0).to(tl.int64)
    if BIPARTITE:
        src = 2 * src
    tile = tl.load(T + base + src[:, None] * width + col[None, :], mask=hit[:, None] & cmask[None, :], other=0.0)
    acc += tl.sum(tile.to(tl.float32), axis=0)
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


def _merge(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor, n_out: int, bipartite: bool, out: Tensor | None) -> Tensor:
    t, kept, src, dst = _checked(t, kept, src, dst)
    batch, n_in, width = t.shape
    out = t.new_empty(batch, n_out, width) if out is None else out
    if out.numel():
        block_r, block_d = merge_blocks(src.shape[1])
        grid = (batch * n_out, triton.cdiv(width, block_d))
        merge_rows_kernel[grid](
            t, kept, src, dst, n_in, kept.shape[1], n_out, src.shape[1], width, out,
            BIPARTITE=bipartite, BLOCK_R=block_r, BLOCK_D=block_d,
        )  # fmt: skip
    return out


def bipartite_merge(t: Tensor, unmerged: Tensor, src: Tensor, dst: Tensor, out: Tensor | None = None) -> Tensor:
    """Same contract as tokcomp.reducers.ops.bipartite_merge_sum_reference."""
    return _merge(t, unmerged, src, dst, unmerged.shape[1] + t.shape[1] // 2, True, out)


def index_merge(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor, out: Tensor | None = None) -> Tensor:
    """Same contract as tokcomp.reducers.ops.index_merge_sum_reference."""
    return _merge(t, kept, src, dst, kept.shape[1], False, out)
