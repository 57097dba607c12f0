"""TensorRT 10 Python plugins ("quickly deployable plugins") for the tokcomp ops.

Importing this module registers `tokcomp::GatherTokens` and `tokcomp::IndexMerge`
with TensorRT's plugin registry. The ONNX parser maps a node of that op_type carrying
plugin_namespace="tokcomp" to the plugin; `aot=1` on the node selects the
ahead-of-time implementation, whose PTX (the same Triton kernels PyTorch runs on
CUDA) is embedded in the engine so the engine runs without Python. The JIT `impl`
(Python, via PyTorch) serves engines built with aot=0.

Shapes: token counts are static per layer (from the compression schedule), only
the batch is dynamic; the output shape is an expression of input shapes, so no
attribute bakes a count or ratio into the plugin, and nothing is allocated at
enqueue time.

Annotations must stay real classes: TensorRT validates each plugin function with
`issubclass(annotation, TensorDesc)`, so this module must never use
`from __future__ import annotations` (which turns every annotation into a string).

Requires tensorrt >= 10.7 (AOT plugins), triton and a CUDA GPU. NOT RUN in this
repository's CI: TensorRT cannot be installed there (see docs/export.md); the CPU
tests import it against a stand-in of `tensorrt.plugin` (tests/test_gpu_tensorrt_plugins.py).
"""

from typing import Union

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from tokcomp.plugins_cuda import NAMESPACE, ptx, triton_kernels

_DTYPES = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16", trt.int32: "int32", trt.int64: "int64"}

# One combination per (value dtype, index dtype): token tensors in fp32/fp16/bf16, indices
# in whatever integer type the parser produced for TopK/ArgMax outputs.
_VALUE_TYPES = ("FP32", "FP16", "BF16")
_GATHER_TYPES = [f"{v}, {i}, {v}" for v in _VALUE_TYPES for i in ("INT32", "INT64")]
_INDEX_MERGE_TYPES = [f"{v}, {i}, {i}, {i}, {v}" for v in _VALUE_TYPES for i in ("INT32", "INT64")]
_AOT_RESULT = tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]


def _name(dtype) -> str:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"tokcomp plugins do not support TensorRT dtype {dtype}") from None


def _capability() -> int:
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _torch(tensor: trtp.Tensor) -> torch.Tensor:
    return torch.as_tensor(tensor, device="cuda")


def _launch(kernel: ptx.CompiledKernel, grid_x, grid_y, scalars) -> _AOT_RESULT:
    params = trtp.KernelLaunchParams()
    params.grid_x = grid_x
    params.grid_y = grid_y
    params.block_x = kernel.num_warps * 32
    params.shared_mem = kernel.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in scalars])
    return kernel.name.encode(), kernel.ptx.encode(), params, extra


# --- GatherTokens: out[b, k] = t[b, index[b, k]] -----------------------------------


@trtp.register("tokcomp::GatherTokens")
def gather_tokens_desc(t: trtp.TensorDesc, index: trtp.TensorDesc) -> trtp.TensorDesc:
    out = t.like()
    out.shape_expr[1] = index.shape_expr[1]
    return out


@trtp.autotune("tokcomp::GatherTokens")
def gather_tokens_autotune(t: trtp.TensorDesc, index: trtp.TensorDesc, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(types) for types in _GATHER_TYPES]


@trtp.impl("tokcomp::GatherTokens")
def gather_tokens_impl(t: trtp.Tensor, index: trtp.Tensor, outputs: tuple[trtp.Tensor], stream: int) -> None:
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        triton_kernels.gather_tokens(_torch(t), _torch(index), out=_torch(outputs[0]))


@trtp.aot_impl("tokcomp::GatherTokens")
def gather_tokens_aot(
    t: trtp.TensorDesc, index: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc], tactic: int
) -> _AOT_RESULT:
    signature = ptx.gather_signature(_name(t.dtype), _name(index.dtype))
    kernel = ptx.compile_kernel(
        triton_kernels.gather_rows_kernel, signature, {"BLOCK_D": triton_kernels.BLOCK_D}, _capability()
    )
    batch, n_in, width = t.shape_expr[0], t.shape_expr[1], t.shape_expr[2]
    n_out = index.shape_expr[1]
    grid_y = trtp.cdiv(width, triton_kernels.BLOCK_D)
    return _launch(kernel, batch * n_out, grid_y, (n_in, n_out, width))


# --- IndexMerge: out[b, i] = t[b, kept[b, i]] + t[b, src[b, r]] for dst[b, r] == i ----


@trtp.register("tokcomp::IndexMerge")
def index_merge_desc(
    t: trtp.TensorDesc, kept: trtp.TensorDesc, src: trtp.TensorDesc, dst: trtp.TensorDesc
) -> trtp.TensorDesc:
    out = t.like()
    out.shape_expr[1] = kept.shape_expr[1]
    return out


@trtp.autotune("tokcomp::IndexMerge")
def index_merge_autotune(t, kept, src, dst, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination(types) for types in _INDEX_MERGE_TYPES]


@trtp.impl("tokcomp::IndexMerge")
def index_merge_impl(t, kept, src, dst, outputs: tuple[trtp.Tensor], stream: int) -> None:
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        triton_kernels.index_merge(_torch(t), _torch(kept), _torch(src), _torch(dst), out=_torch(outputs[0]))


@trtp.aot_impl("tokcomp::IndexMerge")
def index_merge_aot(
    t: trtp.TensorDesc, kept: trtp.TensorDesc, src: trtp.TensorDesc, dst: trtp.TensorDesc,
    outputs: tuple[trtp.TensorDesc], tactic: int,
) -> _AOT_RESULT:  # fmt: skip
    signature = ptx.index_merge_signature(_name(t.dtype), _name(kept.dtype))
    constexprs = {"BLOCK_D": triton_kernels.BLOCK_D, "CHUNK": triton_kernels.SOURCE_CHUNK}
    kernel = ptx.compile_kernel(triton_kernels.index_merge_kernel, signature, constexprs, _capability())
    batch, n_in, width = t.shape_expr[0], t.shape_expr[1], t.shape_expr[2]
    n_kept = kept.shape_expr[1]
    # The number of sources is a run-time scalar, so no shape needs to be a build-time constant.
    grid_y = trtp.cdiv(width, triton_kernels.BLOCK_D)
    return _launch(kernel, batch * n_kept, grid_y, (n_in, n_kept, src.shape_expr[1], width))


REGISTERED = (f"{NAMESPACE}::GatherTokens", f"{NAMESPACE}::IndexMerge")
