"""Every export is checked against PyTorch before it is kept.

ONNX: the graph's input/output names and axes must be what was declared (batch the
only dynamic axis, every other dimension static), then ONNX Runtime runs fresh
inputs (never the ones the export traced) at two batch sizes and every output must
match the eager model within `atol`. A mismatch raises ExportValidationError with
the numbers; it is never only a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError
from tokcomp.export.io_spec import BATCH_AXIS, IOSpec

DEFAULT_ATOL = 1e-4
DEFAULT_BATCH_SIZES = (1, 4)
_SEED = 20_000  # validation inputs: seeds far from the export's example seed


class ExportValidationError(TokcompError):
    """An exported artifact does not match the PyTorch model."""


def declared_axes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """name -> dims (int, or the dim_param name) of every graph input and output."""
    out = {}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in dims]
    return out


def check_signature(model: onnx.ModelProto, spec: IOSpec, expected_shapes: dict[str, list[int]] | None = None) -> None:
    """Names in the declared order; dim 0 is `batch_size`; all other dims static (and as expected)."""
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    problems = []
    if inputs != list(spec.input_names):
        problems.append(f"inputs are {inputs}, expected {list(spec.input_names)}")
    if outputs != list(spec.output_names):
        problems.append(f"outputs are {outputs}, expected {list(spec.output_names)}")
    for name, dims in declared_axes(model).items():
        if not dims or dims[0] != BATCH_AXIS:
            problems.append(f"{name}: axis 0 is {dims[:1]}, expected dynamic '{BATCH_AXIS}'")
        dynamic = [d for d in dims[1:] if isinstance(d, str) or d == 0]
        if dynamic:
            problems.append(f"{name}: axes {dims} have non-batch dynamic or unknown dims {dynamic}")
        if expected_shapes and name in expected_shapes and dims[1:] != expected_shapes[name]:
            problems.append(f"{name}: static dims {dims[1:]}, expected {expected_shapes[name]}")
    if problems:
        raise ExportValidationError("exported graph signature is wrong: " + "; ".join(problems))


def compare_outputs(
    run: Callable[[dict[str, Tensor]], Sequence[np.ndarray]],
    reference: nn.Module,
    spec: IOSpec,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float | dict[str, float] = DEFAULT_ATOL,
    runtime: str = "",
) -> dict[str, Any]:
    """Run `run` and the PyTorch reference on fresh inputs; raise on any output over its atol."""
    tolerances = {name: atol[name] if isinstance(atol, dict) else atol for name in spec.output_names}
    report: dict[str, Any] = {"runtime": runtime, "atol": tolerances, "batch_sizes": list(batch_sizes), "max_abs_diff": {}}
    failures = []
    for batch in batch_sizes:
        inputs = spec.dummy_inputs(batch, seed=_SEED + batch)
        with torch.inference_mode():
            expected = reference(*(inputs[name] for name in spec.input_names))
        actual = run(inputs)
        diffs = {}
        for name, want, got in zip(spec.output_names, expected, actual, strict=True):
            want = want.float().numpy()
            got = np.asarray(got, dtype=np.float32)
            if got.shape != want.shape:
                failures.append(f"batch {batch} {name}: shape {list(got.shape)}, PyTorch {list(want.shape)}")
                continue
            diff = float(np.max(np.abs(got - want))) if got.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            diffs[name] = diff
            if diff > tolerances[name]:
                failures.append(f"batch {batch} {name}: max |diff| {diff:.3g} > atol {tolerances[name]:g}")
        report["max_abs_diff"][str(batch)] = diffs
    report["passed"] = not failures
    if failures:
        raise ExportValidationError(
            f"{runtime or 'exported model'} does not match PyTorch: " + "; ".join(failures),
            hint="the artifact was not kept; run with --debug and report the numbers",
        )
    return report


def validate_onnx(
    path: str | Path,
    reference: nn.Module,
    spec: IOSpec,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float | dict[str, float] = DEFAULT_ATOL,
    expected_shapes: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Signature check + ONNX Runtime (CPU) against PyTorch at each batch size."""
    import onnxruntime as ort

    check_signature(onnx.load(str(path), load_external_data=False), spec, expected_shapes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(inputs: dict[str, Tensor]) -> list[np.ndarray]:
        return session.run(list(spec.output_names), {k: v.numpy() for k, v in inputs.items()})

    return compare_outputs(run, reference, spec, batch_sizes, atol, runtime=f"onnxruntime {ort.__version__} CPU")
