"""The ONNX formats: `onnx` (portable), `onnx-tokcomp` (tokcomp ops), `onnx-tensorrt`.

Each writes one file into the checkpoint folder (Optimum's layout: model.onnx beside
config.json and the preprocessor files), validated before it replaces anything.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import onnx

from tokcomp.errors import TokcompError
from tokcomp.export.artifacts import ExportSubject, atomic_file, base_entry, size_channel
from tokcomp.export.onnx_export import export_onnx
from tokcomp.export.onnx_ops import STANDARD_OPSET, tokcomp_nodes
from tokcomp.export.tensorrt_onnx import check_model, check_tensorrt_ops, make_tensorrt_flavour
from tokcomp.export.validate import DEFAULT_ATOL, DEFAULT_BATCH_SIZES, validate_onnx
from tokcomp.plugins_cuda.manifest import build_manifest, write_manifest

FILES = {"onnx": "model.onnx", "onnx-tokcomp": "model.tokcomp.onnx", "onnx-tensorrt": "model.tensorrt.onnx"}
_MAX_PROTO_BYTES = 2**31 - 1


def save_model(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() > _MAX_PROTO_BYTES:
        raise TokcompError(
            f"the exported graph is {model.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit",
            hint="models this large are not supported by tokcomp's ONNX export yet",
        )
    onnx.save_model(model, str(path))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _export_validated(
    subject: ExportSubject, flavour: str, fmt: str, atol, batch_sizes, stack: contextlib.ExitStack | None = None
) -> tuple[onnx.ModelProto, dict]:
    """Export, check and validate one graph; with `stack`, its file replaces the target only when the stack closes."""
    model = export_onnx(subject.wrapper, subject.spec, flavour)
    if flavour == "portable":
        custom = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        if custom:
            raise TokcompError(f"the portable ONNX graph uses non-standard domains {custom}")
    check_model(model)
    target = subject.path / FILES[fmt]
    with contextlib.ExitStack() as own:
        tmp = (stack or own).enter_context(atomic_file(target))
        save_model(model, tmp)
        validation = validate_onnx(tmp, subject.wrapper, subject.spec, batch_sizes, atol, subject.output_shapes)
        size = tmp.stat().st_size
    entry = base_entry(
        fmt,
        FILES[fmt],
        subject,
        flavour=flavour,
        opset=STANDARD_OPSET,
        ops=op_counts(model),
        validation=validation,
        size_bytes=size,
    )
    return model, entry


def export_portable(subject: ExportSubject, atol=DEFAULT_ATOL, batch_sizes=DEFAULT_BATCH_SIZES) -> list[dict[str, Any]]:
    if subject.spec.modality != "audio":
        return [_export_validated(subject, "portable", "onnx", atol, batch_sizes)[1]]
    from tokcomp.export.speech import export_decoders

    with contextlib.ExitStack() as stack:  # the three files are kept together or not at all
        _, encoder = _export_validated(subject, "portable", "onnx", atol, batch_sizes, stack)
        decoders = export_decoders(subject, atol, batch_sizes, stack)
    return [encoder | {"component": "encoder"} | size_channel(subject), *decoders]


def export_tokcomp(subject: ExportSubject, atol=DEFAULT_ATOL, batch_sizes=DEFAULT_BATCH_SIZES) -> list[dict[str, Any]]:
    model, entry = _export_validated(subject, "tokcomp", "onnx-tokcomp", atol, batch_sizes)
    entry["tokcomp_ops"] = sorted({n.op_type for n in tokcomp_nodes(model)})
    return [entry]


def export_tensorrt_onnx(
    subject: ExportSubject, atol=DEFAULT_ATOL, batch_sizes=DEFAULT_BATCH_SIZES, aot: bool = True
) -> list[dict[str, Any]]:
    """tokcomp flavour (validated in ONNX Runtime) -> TensorRT flavour (checker + op allow-list) + manifest."""
    tokcomp_model, tokcomp_entry = _export_validated(subject, "tokcomp", "onnx-tokcomp", atol, batch_sizes)
    tokcomp_entry["tokcomp_ops"] = sorted({n.op_type for n in tokcomp_nodes(tokcomp_model)})
    model = make_tensorrt_flavour(tokcomp_model, aot=aot)
    check_model(model)
    report = check_tensorrt_ops(model)
    target = subject.path / FILES["onnx-tensorrt"]
    manifest_file = f"{FILES['onnx-tensorrt']}.plugins.json"
    with atomic_file(target) as tmp:
        save_model(model, tmp)
    write_manifest(subject.path / manifest_file, build_manifest(report["plugins"], aot))
    entry = base_entry(
        "onnx-tensorrt",
        FILES["onnx-tensorrt"],
        subject,
        flavour="tensorrt",
        opset=STANDARD_OPSET,
        derived_from=FILES["onnx-tokcomp"],
        plugin_manifest=manifest_file,
        tensorrt_check=report,
        validation={"onnx_checker": "passed", "tensorrt_op_allow_list": "passed", "engine_built": False},
        size_bytes=target.stat().st_size,
    )
    return [tokcomp_entry, entry]
