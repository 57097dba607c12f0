"""`tokcomp export`: validated ONNX, the TensorRT path and AOTInductor packages of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tokcomp.progress import console


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    from tokcomp.errors import TokcompError

    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise TokcompError(f"batch sizes '{text}' are not a comma-separated list of positive integers", hint="e.g. 1,16")
    return sizes


def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="a tokcomp checkpoint folder")],
    formats: Annotated[
        list[str], typer.Option("--format", "-f", help="onnx | onnx-tokcomp | onnx-tensorrt | tensorrt | aoti (repeatable)")
    ] = ["onnx"],  # noqa: B006 (typer reads the default)
    atol: Annotated[float, typer.Option(help="max |diff| allowed against PyTorch, per output")] = 1e-4,
    batch_sizes: Annotated[str, typer.Option(help="validation batch sizes")] = "1,4",
    task: Annotated[str | None, typer.Option(help="Optimum task, when it cannot be inferred")] = None,
    max_batch: Annotated[int, typer.Option(help="tensorrt: largest batch of the engine's profile")] = 64,
    fp16: Annotated[bool, typer.Option(help="tensorrt: allow fp16 kernels")] = False,
    device: Annotated[str | None, typer.Option(help="aoti: cpu or cuda (default: cuda when present)")] = None,
) -> None:
    """Export a checkpoint; every artifact is validated against PyTorch and recorded in tokcomp.json."""
    from tokcomp.export import export_checkpoint
    from tokcomp.progress import step

    sizes = parse_batch_sizes(batch_sizes)
    for fmt in formats:
        options = {"atol": atol, "batch_sizes": sizes}
        if fmt == "tensorrt":
            options.update(max_batch=max_batch, fp16=fp16)
        if fmt == "aoti":
            options["device"] = device
        with step(f"exporting {checkpoint} as {fmt}"):
            entry = export_checkpoint(checkpoint, fmt, task=task, **options)
        console.print(f"[bold]{fmt}[/]: {entry['file']} {_validation_line(entry)}", highlight=False)
        print((checkpoint / entry["file"]).resolve())
        for part in _decoder_entries(checkpoint, entry):  # a speech export: the decoder graphs beside the encoder
            console.print(f"[bold]{fmt}[/] {part['component']}: {part['file']} {_validation_line(part)}", highlight=False)
            print((checkpoint / part["file"]).resolve())


def _decoder_entries(checkpoint: Path, entry: dict) -> list[dict]:
    if entry.get("component") != "encoder":
        return []
    from tokcomp.checkpoint import read_state

    exports = read_state(checkpoint).exports
    return [e for e in exports if e.get("format") == entry["format"] and e.get("component", "encoder") != "encoder"]


def _validation_line(entry: dict) -> str:
    validation = entry.get("validation", {})
    diffs = validation.get("max_abs_diff")
    if not diffs:
        checks = ", ".join(f"{k} {v}" for k, v in validation.items() if isinstance(v, str))
        return f"({checks})" if checks else ""
    worst = max(d for per_batch in diffs.values() for d in per_batch.values())
    return f"(max |diff| {worst:.2g} vs PyTorch at batch {', '.join(diffs)}; {validation['runtime']})"
