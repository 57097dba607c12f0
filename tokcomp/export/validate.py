"""Every export is checked against PyTorch before it is kept.

ONNX: the graph's input/output names and axes must be what was declared (batch the
only dynamic axis, every other dimension static), then ONNX Runtime runs fresh
inputs (never the ones the export traced) at two batch sizes and every output must
match the eager model within `atol`. A mismatch raises ExportValidationError with
the numbers; it is never only a warning.

Token-reduction models are discontinuous: which tokens merge is an argsort/argmax over
similarity scores, so on an input where two scores nearly tie, fp32 rounding alone
decides the merge. A mismatching sample is therefore checked against PyTorch in
float64: if PyTorch fp32 is itself more than `atol` away from fp64 there, the input
(not the artifact) is ill-conditioned and the draw is set aside and redrawn. A batch
size passes only on a draw where every sample matches; a mismatch on a
well-conditioned sample is a real failure.

Validation runs with TF32 off (`full_fp32`): TF32 keeps 10 mantissa bits, which is
on by default for cuDNN convolutions (a ViT's patch embedding) and would put a CUDA
runtime (AOTInductor) far outside the 1e-4 an fp32 artifact is held to.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError
from tokcomp.export.io_spec import BATCH_AXIS, SEQUENCE_AXIS, IOSpec

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
    """Names in the declared order; dim 0 is `batch_size`; with a dynamic sequence axis, dim 1 of the inputs
    is `sequence_length` and dim 1 of the token outputs is symbolic; all other dims static (and as expected)."""
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
        static_from = 1
        if spec.dynamic_sequence and len(dims) > 1:
            static_from = 2
            if name in spec.input_names and dims[1] != SEQUENCE_AXIS:
                problems.append(f"{name}: axis 1 is {dims[1]}, expected dynamic '{SEQUENCE_AXIS}'")
        dynamic = [d for d in dims[static_from:] if isinstance(d, str) or d == 0]
        if dynamic:
            problems.append(f"{name}: axes {dims} have unexpected dynamic or unknown dims {dynamic}")
        if expected_shapes and name in expected_shapes and dims[static_from:] != expected_shapes[name][static_from - 1 :]:
            problems.append(f"{name}: static dims {dims[static_from:]}, expected {expected_shapes[name][static_from - 1 :]}")
    if problems:
        raise ExportValidationError("exported graph signature is wrong: " + "; ".join(problems))


MAX_DRAWS = 3  # per batch size: the first draw and up to two redraws after ill-conditioned ones


def draw_seed(batch: int, attempt: int) -> int:
    """Seed of the `attempt`-th draw (0 = first) at `batch`; the first is the historic `_SEED + batch`."""
    return _SEED + batch + 1000 * attempt


def _tf32_switches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, value that turns TF32 off) for CUDA matmuls and cuDNN.

    The legacy flags when torch can read them (then both the legacy and the per-op
    getters keep answering inside the block); the per-op `fp32_precision` flags when
    torch >= 2.9 refuses the legacy ones because the caller set per-op precisions.
    """
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    legacy = [(cuda.matmul, "allow_tf32", False), (cudnn, "allow_tf32", False)]
    try:
        for target, name, _ in legacy:
            getattr(target, name)
    except RuntimeError:
        return [(cuda.matmul, "fp32_precision", "ieee"), (cudnn.conv, "fp32_precision", "ieee"), (cudnn.rnn, "fp32_precision", "ieee")]
    return legacy


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (no TF32) inside the block; the caller's flags after it."""
    switches = _tf32_switches()
    saved = [(target, name, getattr(target, name)) for target, name, _ in switches]
    try:
        for target, name, off in switches:
            setattr(target, name, off)
        yield
    finally:
        for target, name, value in reversed(saved):
            setattr(target, name, value)


def compare_outputs(
    run: Callable[[dict[str, Tensor]], Sequence[np.ndarray]],
    reference: nn.Module,
    spec: IOSpec,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float | dict[str, float] = DEFAULT_ATOL,
    runtime: str = "",
) -> dict[str, Any]:
    """Run `run` and the PyTorch reference on fresh inputs; raise on any output over its atol.

    Report: `max_abs_diff` {batch: {output: diff}} and `seeds` {batch: seed} of the
    accepted draw per batch size, `set_aside` (draws redrawn because every mismatching
    sample was ill-conditioned), `passed`, `atol`, `batch_sizes`, `runtime`.
    """
    tolerances = {name: atol[name] if isinstance(atol, dict) else atol for name in spec.output_names}
    report: dict[str, Any] = {
        "runtime": runtime,
        "atol": tolerances,
        "batch_sizes": list(batch_sizes),
        **({"sequence_lengths": list(spec.validation_lengths)} if spec.dynamic_sequence else {}),
        "max_abs_diff": {},
        "seeds": {},
        "set_aside": [],
    }
    exact = _Float64Reference(reference)  # built on the first mismatch only
    mismatches, ill_conditioned = [], []
    with full_fp32():
        for batch in batch_sizes:
            for length in spec.validation_lengths:
                kind, message = _validate_batch(run, reference, exact, spec, batch, length, tolerances, report)
                if kind == "mismatch":
                    mismatches.append(message)
                elif kind == "ill-conditioned":
                    ill_conditioned.append(message)
    report["passed"] = not (mismatches or ill_conditioned)
    if mismatches:
        raise ExportValidationError(
            f"{runtime or 'exported model'} does not match PyTorch: " + "; ".join(mismatches + ill_conditioned),
            hint="the artifact was not kept; run with --debug and report the numbers",
        )
    if ill_conditioned:
        raise ExportValidationError(
            f"{runtime or 'exported model'} could not be validated: the model is numerically ill-conditioned on"
            " the fresh inputs (a token-merge decision decided by rounding): " + "; ".join(ill_conditioned),
            hint="the artifact was not kept; validate with a larger atol (--atol) or a smoother reducer setting"
            " (e.g. a higher temperature)",
        )
    return report


def compare_on_inputs(
    run: Callable[[dict[str, Tensor]], Sequence[np.ndarray]],
    reference: nn.Module,
    spec: IOSpec,
    inputs: dict[str, Tensor],
    atol: float = DEFAULT_ATOL,
) -> dict[str, Any]:
    """compare_outputs' rule on given inputs (real data: nothing to redraw); raise on a real mismatch.

    A sample over `atol` is excused only when it is ill-conditioned (PyTorch fp32 itself more
    than `atol` from fp64 on it); the report lists those (`ill_conditioned`, with both diffs).
    """
    tolerances = {name: atol for name in spec.output_names}
    with full_fp32():
        expected = _reference_outputs(reference, spec, inputs)
        per_sample, problems = _per_sample_diffs(spec, expected, run(inputs))
        if problems:
            raise ExportValidationError("exported model does not match PyTorch: " + "; ".join(problems))
        over = {name: np.flatnonzero(d > atol) for name, d in per_sample.items()}
        mismatched = sorted({int(i) for rows in over.values() for i in rows})
        report: dict[str, Any] = {
            "max_abs_diff": {name: [float(v) for v in d] for name, d in per_sample.items()},
            "ill_conditioned": [],
            "atol": atol,
        }
        if mismatched:
            conditioning, error = _Float64Reference(reference).diffs(spec, inputs, expected)
            real = _real_mismatches("given", "none", per_sample, over, conditioning, error, tolerances)
            if real:
                raise ExportValidationError("exported model does not match PyTorch: " + "; ".join(real))
            report["ill_conditioned"] = [_set_aside_entry("given", None, mismatched, per_sample, conditioning)]
    return report | {"passed": True}


def _validate_batch(run, reference, exact, spec, batch, length, tolerances, report) -> tuple[str, str]:
    """("pass", ""), ("mismatch", numbers) or ("ill-conditioned", numbers) for one batch size (and sequence
    length, None when static).

    Passing needs one draw where every sample matches: setting a draw aside never lets
    a mismatch through, it only redraws.
    """
    key = batch if length is None else f"{batch}x{length}"  # the report's key: "4", or "4x17" with a length
    for attempt in range(MAX_DRAWS):
        seed = draw_seed(batch, attempt) + (0 if length is None else 100 * length)
        inputs = spec.dummy_inputs(batch, seed=seed, length=length)
        expected = _reference_outputs(reference, spec, inputs)
        per_sample, problems = _per_sample_diffs(spec, expected, run(inputs))
        report["max_abs_diff"][str(key)] = {name: float(d.max(initial=0.0)) for name, d in per_sample.items()}
        report["seeds"][str(key)] = seed
        if problems:  # a wrong shape is never a matter of rounding
            return "mismatch", "; ".join(f"batch {key} {p}" for p in problems)
        over = {name: np.flatnonzero(d > tolerances[name]) for name, d in per_sample.items()}
        mismatched = sorted({int(i) for rows in over.values() for i in rows})
        if not mismatched:
            return "pass", ""
        conditioning, error = exact.diffs(spec, inputs, expected)
        real = _real_mismatches(key, seed, per_sample, over, conditioning, error, tolerances)
        if real:
            return "mismatch", "; ".join(real)
        report["set_aside"].append(_set_aside_entry(key, seed, mismatched, per_sample, conditioning))
    return "ill-conditioned", _ill_conditioned_line(key, report["set_aside"], tolerances)


def _real_mismatches(batch, seed, per_sample, over, conditioning, error, tolerances) -> list[str]:
    """One line per output with a mismatch rounding does not explain; [] if all mismatching samples are ill-conditioned.

    A sample is ill-conditioned when PyTorch fp32 is more than an output's atol away from
    PyTorch fp64 on it (the input sits on a decision boundary, so no fp32 runtime can be
    expected to agree). Without an fp64 verdict nothing is excused.
    """
    lines = []
    for name, rows in over.items():
        if not rows.size:
            continue
        line = (
            f"batch {batch} {name}: max |diff| {per_sample[name].max():.3g} > atol {tolerances[name]:g}"
            f" on sample(s) {rows.tolist()} (seed {seed})"
        )
        if error:
            why = f"the conditioning check (PyTorch in float64) could not run: {error}, so it counts as real"
            lines.append(f"{line}; {why}")
            continue
        well = [i for i in rows.tolist() if all(conditioning[n][i] <= tolerances[n] for n in conditioning)]
        if well:
            fp64 = conditioning[name][well].max()
            lines.append(f"{line}; well-conditioned sample(s) {well}: PyTorch fp32 vs fp64 there {fp64:.3g}")
    return lines


def _reference_outputs(reference: nn.Module, spec: IOSpec, inputs: dict[str, Tensor]) -> list[np.ndarray]:
    with torch.inference_mode():
        outputs = reference(*(inputs[name] for name in spec.input_names))
    return [o.float().numpy() for o in outputs]


def _per_sample_diffs(spec: IOSpec, expected, actual) -> tuple[dict[str, np.ndarray], list[str]]:
    """output -> max |runtime - PyTorch| per sample (dim 0 is batch); shape problems as text."""
    diffs, problems = {}, []
    for name, want, got in zip(spec.output_names, expected, actual, strict=True):
        got = np.asarray(got, dtype=np.float32)
        if got.shape != want.shape:
            problems.append(f"{name}: shape {list(got.shape)}, PyTorch {list(want.shape)}")
            continue
        diffs[name] = _sample_max(got.astype(np.float64) - want)
    return diffs, problems


def _sample_max(delta: np.ndarray) -> np.ndarray:
    """max |delta| over every axis but the batch axis; NaN counts as inf (never within atol)."""
    rows = np.abs(delta.reshape(delta.shape[0] if delta.ndim else 1, -1))
    out = rows.max(axis=1, initial=0.0)
    return np.where(np.isnan(out), np.inf, out)


class _Float64Reference:
    """`reference` deep-copied in float64, built lazily once; `diffs` gives fp32-vs-fp64 per sample."""

    def __init__(self, reference: nn.Module):
        self.reference = reference
        self.model: nn.Module | None = None
        self.error: str | None = None

    def diffs(self, spec: IOSpec, inputs: dict[str, Tensor], expected: list[np.ndarray]):
        """(output -> max |fp32 - fp64| per sample, None), or (None, why it could not run)."""
        if self.error:
            return None, self.error
        try:
            if self.model is None:
                self.model = copy.deepcopy(self.reference).double()
            args = [_to_float64(inputs[name]) for name in spec.input_names]
            with torch.inference_mode():
                outputs = self.model(*args)
            exact = [o.detach().to(torch.float64).numpy() for o in outputs]
            return {
                name: _sample_max(want.astype(np.float64) - got)
                for name, want, got in zip(spec.output_names, expected, exact, strict=True)
            }, None
        except Exception as exc:  # e.g. an op or custom kernel with no float64 implementation
            self.model = None
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.error = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
            return None, self.error


def _to_float64(tensor: Tensor) -> Tensor:
    return tensor.double() if tensor.is_floating_point() else tensor  # token ids / masks stay integers


def _set_aside_entry(batch, seed, samples, per_sample, conditioning) -> dict[str, Any]:
    """One redrawn draw: per output, diffs on the mismatching samples, in `samples` order."""
    return {
        "batch": batch,
        "seed": seed,
        "samples": samples,
        "runtime_vs_fp32": {name: [float(d[i]) for i in samples] for name, d in per_sample.items()},
        "fp32_vs_fp64": {name: [float(d[i]) for i in samples] for name, d in conditioning.items()},
    }


def _ill_conditioned_line(batch, set_aside, tolerances) -> str:
    entries = [e for e in set_aside if e["batch"] == batch]

    def worst(key):
        return ", ".join(f"{n} {max(v for e in entries for v in e[key][n]):.3g}" for n in tolerances)

    return (
        f"batch {batch}: all {len(entries)} draws (seeds {', '.join(str(e['seed']) for e in entries)}) set aside,"
        f" PyTorch fp32 itself up to {worst('fp32_vs_fp64')} away from fp64 on every mismatching sample"
        f" (runtime vs fp32 up to {worst('runtime_vs_fp32')}; atol {', '.join(f'{t:g}' for t in tolerances.values())})"
    )


def onnx_runtime_session(path: str | Path):
    """A CPU ONNX Runtime session the way validation runs one (2 threads, no spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_onnx(path: str | Path, reference: nn.Module, spec, batch_sizes, atol) -> dict[str, Any]:
    """compare_outputs with ONNX Runtime (CPU) running the graph at `path`."""
    import onnxruntime as ort

    session = onnx_runtime_session(path)

    def run(inputs: dict[str, Tensor]) -> list[np.ndarray]:
        return session.run(list(spec.output_names), {k: v.numpy() for k, v in inputs.items()})

    return compare_outputs(run, reference, spec, batch_sizes, atol, runtime=f"onnxruntime {ort.__version__} CPU")


def validate_onnx(
    path: str | Path,
    reference: nn.Module,
    spec: IOSpec,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    atol: float | dict[str, float] = DEFAULT_ATOL,
    expected_shapes: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Signature check + ONNX Runtime (CPU) against PyTorch at each batch size."""
    check_signature(onnx.load(str(path), load_external_data=False), spec, expected_shapes)
    return compare_onnx(path, reference, spec, batch_sizes, atol)
