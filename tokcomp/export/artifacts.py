"""What every export format shares: the model to export, atomic files, the tokcomp.json entry."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tokcomp.checkpoint import CheckpointState, open_checkpoint
from tokcomp.errors import TokcompError
from tokcomp.export.io_spec import BATCH_AXIS, SEQUENCE_AXIS, ExportWrapper, IOSpec, io_spec
from tokcomp.fileio import FILE_MODE


@dataclass
class ExportSubject:
    """A checkpoint opened for export: the wrapped model and what its graph must look like."""

    path: Path
    state: CheckpointState
    wrapper: ExportWrapper
    spec: IOSpec
    output_shapes: dict[str, list[int]]  # static dims after the batch axis, from a PyTorch forward

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        example = self.spec.dummy_inputs(1, seed=0)
        return {name: list(example[name].shape[1:]) for name in self.spec.input_names}

    def axes(self, shapes: dict[str, list[int]], sequence: str) -> dict[str, list[int | str]]:
        """name -> [batch_size, dims...] for the tokcomp.json entry, axis 1 named `sequence` when dynamic."""
        named = {}
        for name, dims in shapes.items():
            dims = list(dims)
            if self.spec.dynamic_sequence and dims:
                dims[0] = sequence
            named[name] = [BATCH_AXIS, *dims]
        return named


def open_subject(path: str | Path, task: str | None = None, dynamic_sequence: bool = False) -> ExportSubject:
    """The checkpoint ready to export; `dynamic_sequence` (text models) exports any sequence length."""
    checkpoint = open_checkpoint(path)
    state = checkpoint.state
    refuse_data_dependent_shapes(checkpoint.model)
    spec = io_spec(
        checkpoint.model,
        state.base.library,
        state.input.modality,
        state.input.image_size,
        state.input.sequence_length,
        task,
        dynamic_sequence=dynamic_sequence and state.input.modality == "text",
    )
    wrapper = ExportWrapper(checkpoint.model, spec, state.base.library).eval()
    with torch.inference_mode():
        outputs = wrapper(*spec.dummy_inputs(1, seed=0).values())
    shapes = {name: list(out.shape[1:]) for name, out in zip(spec.output_names, outputs, strict=True)}
    return ExportSubject(Path(path), state, wrapper, spec, shapes)


def refuse_data_dependent_shapes(model: torch.nn.Module) -> None:
    """An exported graph has static token counts; a reducer that merges by a threshold has none."""
    from tokcomp.surgery import token_blocks

    for index, block in enumerate(token_blocks(model)):
        settings = block.reducer.describe() if block.reducer is not None else {}
        if settings.get("threshold") is not None:
            raise TokcompError(
                f"block {index} reduces by a similarity threshold ({settings.get('kind', 'reducer')} threshold"
                f" {settings['threshold']}): its token counts depend on the input, and an exported graph needs"
                " static ones",
                hint="compile with the ratio form (`r` or `target_flops`, no `threshold`) and export that checkpoint",
            )


def size_channel(subject: ExportSubject) -> dict[str, Any]:
    """The tokcomp.json note on a speech encoder's extra output channel ({} when the output has none)."""
    width = getattr(getattr(subject.wrapper.model, "config", None), "d_model", None)
    shape = subject.output_shapes.get("last_hidden_state", [])
    if subject.spec.modality != "audio" or not width or not shape or shape[-1] != width + 1:
        return {}
    return {
        "size_channel": {
            "output": "last_hidden_state",
            "channel": width,
            "meaning": "log(size) of each output token (encoder positions it stands for); the lowest float32"
            " for an empty row; the decoder's cross-attention adds it to its key logits (channels 0..C-1 are"
            " the states)",
        }
    }


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` that replaces it only if the block succeeds."""
    # Same suffix as the target: some writers (AOTInductor's packager) check it.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.partial-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def base_entry(fmt: str, file: str, subject: ExportSubject, **fields: Any) -> dict[str, Any]:
    from tokcomp import __version__

    return {
        "format": fmt,
        "file": file,
        "task": subject.spec.task,
        "inputs": subject.axes(subject.input_shapes, SEQUENCE_AXIS),
        "outputs": subject.axes(subject.output_shapes, "tokens"),
        "dynamic_axes": {BATCH_AXIS: [*subject.spec.input_names, *subject.spec.output_names]}
        | ({SEQUENCE_AXIS: list(subject.spec.input_names)} if subject.spec.dynamic_sequence else {}),
        **({"max_sequence_length": subject.spec.max_sequence_length} if subject.spec.dynamic_sequence else {}),
        "tokcomp_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
