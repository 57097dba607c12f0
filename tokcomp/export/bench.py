"""Throughput of the original vs the compressed model, per runtime and batch size.

Both models run the same inputs in the same process; timings are interleaved
(original, compressed, original, ...) so a busy machine slows both alike, and the
median of the repeats after warm-up is reported. Beside each figure go the machine's
load and the run-to-run spread; a row where either is high is marked noisy. Runtimes:

    torch             PyTorch eager, CPU
    onnxruntime       ONNX Runtime CPU (portable ONNX of both models, allow_spinning=0)
    cuda-eager        PyTorch eager on the GPU
    cuda-kernels      cuda-eager with the reduction steps on tokcomp's Triton kernels
    cuda-compile      torch.compile on the GPU
    cuda-graphs       torch.compile with CUDA graphs (mode "reduce-overhead"): one launch per forward,
                      for models small enough to be bound by kernel launches
    cuda-aoti         AOTInductor packages of both models on the GPU
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tokcomp.errors import TokcompError
from tokcomp.export.io_spec import ExportWrapper, IOSpec

RESULT_KIND = "tokcomp-bench"
CPU_RUNTIMES = ("torch", "onnxruntime")
# A figure is noisy when its timings spread more than this (interquartile range / median) ...
NOISY_SPREAD = 0.10
# ... or when the 1-minute load average was this much above the CPU count: other work took CPU time.
NOISY_LOAD_ABOVE_CPUS = 1.0
GPU_RUNTIMES = ("cuda-eager", "cuda-kernels", "cuda-compile", "cuda-graphs", "cuda-aoti")

Runner = Callable[[dict[str, Tensor]], Any]


@dataclass
class Pair:
    """The two models to compare, wrapped with the same I/O spec."""

    original: ExportWrapper
    compressed: ExportWrapper
    spec: IOSpec
    flops: dict[str, float] = field(default_factory=dict)  # GMACs original / compressed / ratio


def available_runtimes() -> list[str]:
    runtimes = list(CPU_RUNTIMES)
    if torch.cuda.is_available():
        from tokcomp.plugins_cuda import triton_available

        runtimes += [r for r in GPU_RUNTIMES if r != "cuda-kernels" or triton_available()]
    return runtimes


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    info["load_1min"] = load_average()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, ours included), where the OS reports one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# --- runners -----------------------------------------------------------------------


def _torch_runner(model: nn.Module, device: str, spec: IOSpec) -> Runner:
    model = model.to(device).eval()

    def run(inputs):
        with torch.inference_mode():
            return model(*(inputs[n] for n in spec.input_names))

    return run


def _ort_runner(onnx_path: Path, spec: IOSpec, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = list(spec.output_names)

    def run(inputs):
        return session.run(names, {k: v.numpy() for k, v in inputs.items()})

    return run


def _onnx_files(pair: Pair, compressed_onnx: Path | None, workdir: Path) -> tuple[Path, Path]:
    """Portable ONNX of both models (the compressed one reused from the checkpoint when validated)."""
    import onnx

    from tokcomp.export.onnx_export import export_onnx
    from tokcomp.export.validate import validate_onnx

    paths = []
    for name, wrapper, existing in (("original", pair.original, None), ("compressed", pair.compressed, compressed_onnx)):
        if existing is not None and existing.is_file():
            paths.append(existing)
            continue
        path = workdir / f"{name}.onnx"
        onnx.save_model(export_onnx(wrapper, pair.spec, "portable"), str(path))
        validate_onnx(path, wrapper, pair.spec)  # never time a wrong model
        paths.append(path)
    return paths[0], paths[1]


def _aoti_runner(wrapper: ExportWrapper, spec: IOSpec, workdir: Path, name: str) -> Runner:
    from tokcomp.export.onnx_export import dynamic_shapes

    example = spec.dummy_inputs(2, seed=1234)
    args = tuple(example[n].cuda() for n in spec.input_names)
    shapes = dynamic_shapes(spec)
    program = torch.export.export(wrapper.cuda(), args, dynamic_shapes=(tuple(shapes[n] for n in spec.input_names),))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(workdir / f"{name}.pt2"))
    runner = torch._inductor.aoti_load_package(package)

    def run(inputs):
        with torch.inference_mode():
            return runner(*(inputs[n] for n in spec.input_names))

    return run


def _kernel_runner(model: nn.Module, spec: IOSpec) -> Runner:
    from tokcomp.plugins_cuda.ops import TOKEN_OPS
    from tokcomp.reducers.ops import use_ops

    inner = _torch_runner(model, "cuda", spec)

    def run(inputs):
        with use_ops(TOKEN_OPS):
            return inner(inputs)

    return run


def make_runners(runtime: str, pair: Pair, workdir: Path, threads: int, compressed_onnx: Path | None) -> tuple[Runner, Runner, str]:
    """(original runner, compressed runner, device of the inputs)."""
    if runtime == "torch":
        return _torch_runner(pair.original, "cpu", pair.spec), _torch_runner(pair.compressed, "cpu", pair.spec), "cpu"
    if runtime == "onnxruntime":
        original, compressed = _onnx_files(pair, compressed_onnx, workdir)
        return _ort_runner(original, pair.spec, threads), _ort_runner(compressed, pair.spec, threads), "cpu"
    if runtime in GPU_RUNTIMES and not torch.cuda.is_available():
        raise TokcompError(f"runtime {runtime} needs a CUDA GPU", hint=f"available here: {', '.join(available_runtimes())}")
    if runtime == "cuda-eager":
        return _torch_runner(pair.original, "cuda", pair.spec), _torch_runner(pair.compressed, "cuda", pair.spec), "cuda"
    if runtime == "cuda-kernels":
        return _torch_runner(pair.original, "cuda", pair.spec), _kernel_runner(pair.compressed, pair.spec), "cuda"
    if runtime in ("cuda-compile", "cuda-graphs"):
        mode = "reduce-overhead" if runtime == "cuda-graphs" else None
        compiled = [torch.compile(w.cuda(), mode=mode) for w in (pair.original, pair.compressed)]
        return _torch_runner(compiled[0], "cuda", pair.spec), _torch_runner(compiled[1], "cuda", pair.spec), "cuda"
    if runtime == "cuda-aoti":
        return (
            _aoti_runner(pair.original, pair.spec, workdir, "original"),
            _aoti_runner(pair.compressed, pair.spec, workdir, "compressed"),
            "cuda",
        )
    raise TokcompError(f"unknown runtime '{runtime}'", hint=f"choose from {', '.join(CPU_RUNTIMES + GPU_RUNTIMES)}")


# --- timing ------------------------------------------------------------------------


def _timed(run: Runner, inputs: dict[str, Tensor], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_pair(original: Runner, compressed: Runner, inputs: dict[str, Tensor], device: str, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Interleaved timings (seconds) of both runners on the same inputs, after warm-up."""
    for _ in range(warmup):
        original(inputs)
        compressed(inputs)
    times_o, times_c = [], []
    for _ in range(repeats):
        times_o.append(_timed(original, inputs, device))
        times_c.append(_timed(compressed, inputs, device))
    return times_o, times_c


def _stats(times: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [median] * 3
    spread = (quartiles[2] - quartiles[0]) / median
    return {"median_s": median, "min_s": min(times), "throughput": batch / median, "spread": round(spread, 4)}


def noise_reasons(row: dict[str, Any], cpu_count: int | None) -> list[str]:
    """Why a row's speed-up cannot be trusted: a busy machine or timings that vary run to run."""
    reasons = []
    load = row.get("load_1min")
    if load is not None and cpu_count and load > cpu_count + NOISY_LOAD_ABOVE_CPUS:
        reasons.append(f"load average {load:.1f} on {cpu_count} CPUs")
    for model in ("original", "compressed"):
        if row[model]["spread"] > NOISY_SPREAD:
            reasons.append(f"{model} timings spread {100 * row[model]['spread']:.0f}%")
    return reasons


def bench_pair(
    pair: Pair,
    runtimes: Sequence[str],
    batch_sizes: Sequence[int],
    warmup: int = 3,
    repeats: int = 10,
    threads: int = 2,
    compressed_onnx: Path | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Benchmark every runtime x batch size; returns the JSON-able result.

    `dtype` (GPU runtimes) casts both models and their floating inputs, e.g. torch.float16.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="tokcomp-bench-") as tmp:
        for runtime in runtimes:
            if dtype is not None:
                pair.original.to(dtype)
                pair.compressed.to(dtype)
            run_o, run_c, device = make_runners(runtime, pair, Path(tmp), threads, compressed_onnx)
            for batch in batch_sizes:
                inputs = {
                    k: v.to(device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
                    for k, v in pair.spec.dummy_inputs(batch, seed=7).items()
                }
                times_o, times_c = time_pair(run_o, run_c, inputs, device, warmup, repeats)
                row = {
                    "runtime": runtime,
                    "batch_size": batch,
                    "original": _stats(times_o, batch),
                    "compressed": _stats(times_c, batch),
                }
                row["speedup"] = row["compressed"]["throughput"] / row["original"]["throughput"]
                row["load_1min"] = load_average()
                row["noise"] = noise_reasons(row, os.cpu_count())
                row["noisy"] = bool(row["noise"])
                results.append(row)
                if on_result:
                    on_result(row)
    return {
        "kind": RESULT_KIND,
        "machine": machine(),
        "settings": {
            "warmup": warmup,
            "repeats": repeats,
            "threads": threads,
            "statistic": "median",
            "dtype": str(dtype or torch.float32).replace("torch.", ""),
            "noisy_when": {"spread_above": NOISY_SPREAD, "load_above_cpus_plus": NOISY_LOAD_ABOVE_CPUS},
        },
        "flops": pair.flops,
        "results": results,
        "noisy": any(row["noisy"] for row in results),
    }


def speedup_text(row: dict[str, Any]) -> str:
    """"1.43x", or "0.87x (noisy)" when the machine was busy or the timings spread."""
    return f"{row['speedup']:.2f}x" + (" (noisy)" if row.get("noisy") else "")


def markdown_table(result: dict[str, Any]) -> str:
    ideal = result["flops"].get("ideal_speedup")
    lines = [
        "| runtime | batch | original img/s | compressed img/s | speed-up | FLOPs speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["results"]:
        lines.append(
            f"| {row['runtime']} | {row['batch_size']} | {row['original']['throughput']:.1f} | "
            f"{row['compressed']['throughput']:.1f} | {speedup_text(row)} | {f'{ideal:.2f}x' if ideal else '-'} |"
        )
    return "\n".join(lines) + "\n"


def checkpoint_pair(path: str | Path, original_source: str | None = None, task: str | None = None) -> Pair:
    """Original (passes skipped) and compressed models of a checkpoint, with its FLOPs."""
    from tokcomp.export.artifacts import open_subject
    from tokcomp.export.original import load_original
    from tokcomp.fileio import read_json

    subject = open_subject(path, task)
    original = ExportWrapper(load_original(path, original_source), subject.spec, subject.state.base.library).eval()
    flops = {}
    report = Path(path) / "report.json"
    if report.is_file() and (f := read_json(report).get("flops")):
        flops = {"original_gmacs": f["original"], "compressed_gmacs": f["compressed"], "ratio": f["ratio"]}
        flops["ideal_speedup"] = f["original"] / f["compressed"]
    return Pair(original, subject.wrapper, subject.spec, flops)
