"""torch -> ONNX for a compressed model: the portable graph and the tokcomp-op graph.

Exporter settings that matter (all measured on these machines, see docs/export.md):
- dynamo exporter, opset 18, batch a dynamic axis (and the sequence axis of text, see io_spec);
- attention traced with the math SDPA backend: the CPU flash kernel's decomposition
  disagrees with the traced strides once merging has changed the token count and
  the decomposition step fails ("Cannot view a tensor ...");
- `aten.sort` / `aten.sort.stable` (ToMe's stable argsort) become ONNX TopK with a
  constant K (torch's exporter has no translation for `.stable`, and computes K at
  run time, which TensorRT rejects); TopK's tie-break (lower index first) is
  exactly a stable sort;
- flavour "tokcomp": the reducers' application steps are swapped for `tokcomp::`
  custom ops while tracing (tokcomp.reducers.ops.use_ops), each becoming one node;
  flavour "portable": for row gathers and a one-hot matmul (export/portable_ops.py),
  which CPU runtimes run several times faster than GatherElements / ScatterElements.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from tokcomp.export.io_spec import BATCH_AXIS, MIN_SEQUENCE_LENGTH, SEQUENCE_AXIS, IOSpec
from tokcomp.export.onnx_ops import STANDARD_OPSET, attach_function_bodies, translation_table

FLAVOURS = ("portable", "tokcomp")


def _sort(self, dim: int = -1, descending: bool = False, stable: bool | None = None):
    """aten.sort -> ONNX TopK over the whole axis.

    K is a constant when the axis is static (it always is for token axes): TensorRT
    requires TopK's K to be an initializer. ONNX TopK breaks ties by lower index,
    which is what a stable sort does, so `stable` needs nothing extra.
    """
    from onnxscript import opset18 as op

    size = self.shape[dim] if self.shape is not None else None
    if isinstance(size, int):
        k = op.Constant(value_ints=[size])
    else:
        k = op.Reshape(op.Gather(op.Shape(self), dim, axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _sort_translations() -> dict:
    return {torch.ops.aten.sort.default: _sort, torch.ops.aten.sort.stable: _sort}


@contextlib.contextmanager
def export_context(flavour: str) -> Iterator[dict]:
    """Settings every export runs under; yields the custom translation table."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tokcomp.reducers.ops import use_ops

    table = _sort_translations()
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if flavour == "tokcomp":
            from tokcomp.plugins_cuda.ops import TOKEN_OPS

            table.update(translation_table())
            stack.enter_context(use_ops(TOKEN_OPS))
        else:
            from tokcomp.export.portable_ops import PORTABLE_OPS

            stack.enter_context(use_ops(PORTABLE_OPS))
        yield table


# Range of each named dynamic axis; None: up to the spec's max_sequence_length (4096 if unknown).
AXIS_MINIMUM = {BATCH_AXIS: 1, SEQUENCE_AXIS: MIN_SEQUENCE_LENGTH}


def dynamic_shapes(spec: IOSpec) -> dict:
    """input -> {axis: torch.export.Dim}, one Dim per axis name (shared by every input that has it)."""
    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        if name not in dims:
            top = 4096 if name == BATCH_AXIS else (spec.max_sequence_length or 4096)
            dims[name] = torch.export.Dim(name, min=AXIS_MINIMUM.get(name, 1), max=top)
        return dims[name]

    return {name: {axis: dim(axis_name) for axis, axis_name in axes.items()} for name, axes in spec.dynamic_axes().items()}


def export_onnx(wrapper: nn.Module, spec: IOSpec, flavour: str, example_batch: int = 2, seed: int = 1234) -> onnx.ModelProto:
    """Trace `wrapper` (io_spec.ExportWrapper) to an in-memory ONNX model of the given flavour."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown ONNX flavour {flavour!r}; choose from {FLAVOURS}")
    inputs = spec.dummy_inputs(example_batch, seed)
    args = tuple(inputs[name] for name in spec.input_names)
    with export_context(flavour) as table, torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper.eval(),
            args,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=(tuple(dynamic_shapes(spec)[name] for name in spec.input_names),),  # forward(*inputs)
            custom_translation_table=table,
            opset_version=STANDARD_OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    if flavour == "tokcomp":
        attach_function_bodies(model)
    return model
