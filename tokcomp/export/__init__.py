"""Export a tokcomp checkpoint: validated ONNX, the TensorRT path, AOTInductor.

    tokcomp.export.available_formats()                 # ["onnx", "onnx-tokcomp", ...]
    tokcomp.export.export_checkpoint("out/", "onnx")   # -> the entry recorded in tokcomp.json

Formats (files land in the checkpoint folder, each recorded in tokcomp.json "exports"):

    onnx           model.onnx            standard ops only, batch (and text length) dynamic, validated in ONNX Runtime
    onnx-tokcomp   model.tokcomp.onnx    each reduction step one `tokcomp` node + its ONNX function body
    onnx-tensorrt  model.tensorrt.onnx   the same graph for TensorRT's parser (plugins), + plugin manifest
    tensorrt       model.engine          engine built with the tokcomp plugins (needs TensorRT + GPU)
    aoti           model.pt2             AOTInductor package, loads with plain PyTorch

A speech checkpoint (Whisper) exports as `onnx` only: model.onnx is its compressed encoder, and
decoder_model.onnx + decoder_with_past_model.onnx its cached decoder (tokcomp.export.speech;
transcribe with tokcomp.runtime.transcribe_onnx).

Importing this package is cheap: torch, onnx and TensorRT load only when exporting.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

# format -> (module, function, description, module that must be importable)
FORMATS: dict[str, tuple[str, str, str, str | None]] = {
    "onnx": ("tokcomp.export.onnx_formats", "export_portable", "portable ONNX, standard ops only", None),
    "onnx-tokcomp": ("tokcomp.export.onnx_formats", "export_tokcomp", "ONNX with one tokcomp node per reduction step", None),
    "onnx-tensorrt": (
        "tokcomp.export.onnx_formats",
        "export_tensorrt_onnx",
        "ONNX for TensorRT's parser (tokcomp plugins) + plugin manifest",
        None,
    ),
    "tensorrt": ("tokcomp.export.tensorrt_engine", "export_tensorrt", "TensorRT engine with the tokcomp plugins", "tensorrt"),
    "aoti": ("tokcomp.export.aoti", "export_aoti", "AOTInductor package for serving with plain PyTorch", None),
}
DEFAULT_FORMAT = "onnx"
# Text exports of these formats take any sequence length (dynamic padding included).
DYNAMIC_SEQUENCE_FORMATS = ("onnx", "onnx-tokcomp")
# Speech checkpoints (encoder + decoder graphs, tokcomp.export.speech) export in these formats only.
SPEECH_FORMATS = ("onnx",)


def known_formats() -> list[str]:
    return list(FORMATS)


def available_formats() -> list[str]:
    """Formats this machine can write (their optional dependencies are installed)."""
    return [name for name, (*_, needs) in FORMATS.items() if needs is None or importlib.util.find_spec(needs)]


def export_checkpoint(path: str | Path, fmt: str = DEFAULT_FORMAT, *, task: str | None = None, **options: Any) -> dict[str, Any]:
    """Export the checkpoint at `path` in format `fmt`; returns the tokcomp.json entry of `fmt`.

    Options: atol (1e-4), batch_sizes ((1, 4)) for every format; aot (True) for
    onnx-tensorrt; max_batch (64), fp16 (False) for tensorrt; device for aoti.
    Any validation failure raises tokcomp.errors.TokcompError and keeps no file.
    """
    from tokcomp.checkpoint import record_export
    from tokcomp.errors import TokcompError

    if fmt not in FORMATS:
        raise TokcompError(f"unknown export format '{fmt}'", hint=f"choose from {', '.join(FORMATS)}")
    module, function, _, _ = FORMATS[fmt]
    from tokcomp.checkpoint import read_state
    from tokcomp.export.artifacts import open_subject

    if read_state(path).input.modality == "audio" and fmt not in SPEECH_FORMATS:
        raise TokcompError(
            f"--format {fmt} is not supported for speech checkpoints",
            hint="use --format onnx (encoder and cached decoder, validated; run with tokcomp.runtime.transcribe_onnx)",
        )

    # ONNX Runtime takes any sequence length; TensorRT profiles and AOTInductor stay at the reference length.
    subject = open_subject(path, task, dynamic_sequence=fmt in DYNAMIC_SEQUENCE_FORMATS)
    entries = getattr(importlib.import_module(module), function)(subject, **options)
    for entry in entries:
        record_export(path, entry)
    return next(e for e in entries if e["format"] == fmt)


__all__ = ["DEFAULT_FORMAT", "FORMATS", "available_formats", "export_checkpoint", "known_formats"]
