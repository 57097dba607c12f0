"""`tensorrt`: a serialized TensorRT engine built from the TensorRT-flavour ONNX graph.

Build: TensorRT's ONNX parser reads model.tensorrt.onnx; every tokcomp node maps to
the tokcomp plugin of the same name (plugin_namespace="tokcomp", aot=1), registered
first by importing tokcomp.plugins_cuda.tensorrt_plugins. One optimization profile
covers batch 1..max_batch. Writes model.engine and model.engine.plugins.json (the
plugins the engine needs); `load_engine` registers them before deserialising.

Precision (`configure_precision`): fp32 engines are built with TF32 cleared (TensorRT
enables it by default, and an fp32 engine is validated at 1e-4). fp16 engines use
BuilderFlag.FP16 on TensorRT 10; TensorRT 11 is always strongly typed and has no
FP16 flag, so there the engine is built from an fp16 copy of the graph
(`tensorrt_onnx.float16_graph`, fp32 inputs and outputs kept). The `tensorrt`
extra pins TensorRT 10 (the tested API); both paths are kept so 11 works too.

NOT RUN anywhere yet: TensorRT's libraries cannot be installed on the machines this
was written on (see docs/export.md). Written against the TensorRT 10 Python API.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError
from tokcomp.export.artifacts import ExportSubject, atomic_file, base_entry
from tokcomp.export.onnx_formats import FILES, export_tensorrt_onnx
from tokcomp.export.validate import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, compare_outputs
from tokcomp.plugins_cuda.manifest import read_manifest, register_plugins, write_manifest

FILE = "model.engine"


def require_tensorrt():
    """Import tensorrt or fail with the reason and the fix."""
    if importlib.util.find_spec("tensorrt") is None:
        raise TokcompError("--format tensorrt needs TensorRT", hint="pip install 'tokcomp[tensorrt]' on a CUDA machine")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # the bindings install without libnvinfer on some indexes
        raise TokcompError(f"TensorRT is installed but does not load: {exc}", hint="install tensorrt-cu12/cu13 libs") from None
    import torch

    if not torch.cuda.is_available():
        raise TokcompError("--format tensorrt needs a CUDA GPU to build the engine")
    return trt


def configure_precision(trt, config, fp16: bool) -> str:
    """Set the builder config's precision flags; returns "fp32", "fp16-flag" or "fp16-graph" (see above)."""
    if not fp16:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; 10 mantissa bits cannot meet 1e-4
        return "fp32"
    if hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 10 (weakly typed)
        config.set_flag(trt.BuilderFlag.FP16)
        return "fp16-flag"
    return "fp16-graph"  # TensorRT >= 11: the graph's types are the engine's


def _parse(parser, onnx_path: Path, fp16_graph: bool) -> None:
    if fp16_graph:
        import onnx

        from tokcomp.export.tensorrt_onnx import float16_graph

        parsed = parser.parse(float16_graph(onnx.load(str(onnx_path))).SerializeToString(), str(onnx_path))
    else:
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TokcompError(f"TensorRT's ONNX parser rejects {onnx_path.name}: {errors}")


def build_engine(onnx_path: Path, input_shapes: dict[str, list[int]], max_batch: int, fp16: bool) -> bytes:
    trt = require_tensorrt()
    register_plugins(read_manifest(f"{onnx_path}.plugins.json"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    config = builder.create_builder_config()
    precision = configure_precision(trt, config, fp16)
    parser = trt.OnnxParser(network, logger)  # owns the parsed weights: keep it alive until the build is done
    _parse(parser, onnx_path, fp16_graph=precision == "fp16-graph")
    profile = builder.create_optimization_profile()
    for name, dims in input_shapes.items():
        profile.set_shape(name, [1, *dims], [max(1, max_batch // 2), *dims], [max_batch, *dims])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TokcompError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    return bytes(serialized)


def deserialize_engine(engine_bytes: bytes, manifest: dict[str, Any]):
    """Register the plugins the manifest names, then deserialise (the order TensorRT requires)."""
    trt = require_tensorrt()
    register_plugins(manifest)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise TokcompError("TensorRT could not deserialise the engine", hint="rebuild it with this TensorRT version")
    return engine


def load_engine(engine_path: str | Path):
    """An engine written by `tokcomp export -f tensorrt`, with its plugins registered first."""
    engine_path = Path(engine_path)
    return deserialize_engine(engine_path.read_bytes(), read_manifest(f"{engine_path}.plugins.json"))


def run_engine(engine, inputs: dict, output_names: list[str]) -> list:
    """One synchronous inference with torch CUDA tensors as I/O buffers."""
    import tensorrt as trt
    import torch

    dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}
    context = engine.create_execution_context()
    buffers = {}
    for name, value in inputs.items():
        tensor = value.to(device="cuda", dtype=dtypes[engine.get_tensor_dtype(name)]).contiguous()
        context.set_input_shape(name, tuple(tensor.shape))
        buffers[name] = tensor
    for name in output_names:
        shape = tuple(context.get_tensor_shape(name))
        buffers[name] = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise TokcompError("TensorRT execution failed")
    stream.synchronize()
    return [buffers[name].float().cpu().numpy() for name in output_names]


def export_tensorrt(
    subject: ExportSubject, max_batch: int = 64, fp16: bool = False, atol=DEFAULT_ATOL, batch_sizes=DEFAULT_BATCH_SIZES
) -> list[dict[str, Any]]:
    require_tensorrt()
    entries = export_tensorrt_onnx(subject, atol, batch_sizes, aot=True)
    onnx_path = subject.path / FILES["onnx-tensorrt"]
    engine_bytes = build_engine(onnx_path, subject.input_shapes, max_batch, fp16)
    target = subject.path / FILE
    manifest = read_manifest(f"{onnx_path}.plugins.json")
    with atomic_file(target) as tmp:
        tmp.write_bytes(engine_bytes)
        engine = deserialize_engine(engine_bytes, manifest)
        validation = compare_outputs(
            lambda inputs: run_engine(engine, inputs, list(subject.spec.output_names)),
            subject.wrapper,
            subject.spec,
            batch_sizes,
            atol if not fp16 else 1e-2,
            runtime="TensorRT",
        )
    write_manifest(f"{target}.plugins.json", manifest)
    entries.append(
        base_entry(
            "tensorrt",
            FILE,
            subject,
            plugin_manifest=f"{FILE}.plugins.json",
            max_batch=max_batch,
            fp16=fp16,
            validation=validation,
            size_bytes=target.stat().st_size,
        )
    )
    return entries
