"""The application steps as `tokcomp::` custom ops.

Each op's default implementation is the export-safe PyTorch reference from
tokcomp.reducers.ops (it runs on every device and is what the kernels are tested
against); a fake implementation gives torch.export and torch.compile the output
shape without running anything; CUDA tensors go to the Triton kernels, imported on
first use so that importing this module never needs triton.

    with tokcomp.reducers.ops.use_ops(TOKEN_OPS):
        model(x)          # every reduction step is one tokcomp:: op
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokcomp.reducers import ops as reference


@torch.library.custom_op("tokcomp::gather_tokens", mutates_args=())
def gather_tokens(t: Tensor, index: Tensor) -> Tensor:
    return reference.gather_tokens_reference(t, index)


@gather_tokens.register_fake
def _gather_tokens_fake(t: Tensor, index: Tensor) -> Tensor:
    return t.new_empty(t.shape[0], index.shape[1], t.shape[2])


@torch.library.custom_op("tokcomp::index_merge", mutates_args=())
def index_merge(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    return reference.index_merge_sum_reference(t, kept, src, dst)


@index_merge.register_fake
def _index_merge_fake(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    return t.new_empty(t.shape[0], kept.shape[1], t.shape[2])


def _kernels():
    try:
        from tokcomp.plugins_cuda import triton_kernels
    except ImportError as exc:
        raise RuntimeError(
            f"tokcomp's CUDA kernels need triton ({exc}); install it with `pip install triton` "
            "or run the model without tokcomp ops (the PyTorch reference runs on CUDA too)"
        ) from None
    return triton_kernels


@gather_tokens.register_kernel("cuda")
def _gather_tokens_cuda(t: Tensor, index: Tensor) -> Tensor:
    return _kernels().gather_tokens(t, index)


@index_merge.register_kernel("cuda")
def _index_merge_cuda(t: Tensor, kept: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    return _kernels().index_merge(t, kept, src, dst)


# Keys are the swappable steps of tokcomp.reducers.ops.
TOKEN_OPS = {
    "gather_tokens": torch.ops.tokcomp.gather_tokens.default,
    "index_merge_sum": torch.ops.tokcomp.index_merge.default,
}
