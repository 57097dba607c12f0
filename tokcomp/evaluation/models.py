"""The models an evaluation compares, both rebuilt from one checkpoint folder.

The compressed model is `open_checkpoint(path)`. The original is the same base class
built from config.json with the saved weights loaded strictly and no pass replayed:
token passes rewrite the forward pass, never the weights, so the saved weights are
the original's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tokcomp.checkpoint import CheckpointState, open_checkpoint, read_state
from tokcomp.errors import CheckpointError


@dataclass
class CheckpointModels:
    compressed: nn.Module
    original: nn.Module | None  # None when the caller did not ask for it
    state: CheckpointState
    processor: Any | None  # image processor or tokenizer saved beside the weights
    path: Path


def open_models(path: str | Path, with_original: bool = True) -> CheckpointModels:
    path = Path(path)
    checkpoint = open_checkpoint(path)
    original = open_original(path, checkpoint.state) if with_original else None
    processor = load_processor(path, checkpoint.state.input.modality)
    return CheckpointModels(checkpoint.model, original, checkpoint.state, processor, path)


def open_original(path: str | Path, state: CheckpointState | None = None) -> nn.Module:
    """The checkpoint's base model: built from config.json, saved weights loaded strictly, no pass replayed."""
    path = Path(path)
    state = state or read_state(path)
    try:
        return open_checkpoint(path, apply_passes=False).model
    except CheckpointError as exc:
        passes = ", ".join(p.name for p in state.passes)
        raise CheckpointError(
            f"cannot rebuild the original model of {path} from its saved weights ({exc.message}); "
            f"one of its passes ({passes}) changed the weights",
            hint="run `tokcomp eval` with --no-fidelity to score the compressed model alone",
        ) from None


def load_processor(path: Path, modality: str):
    """The image processor / tokenizer saved in the checkpoint, or None (timm checkpoints have none)."""
    import transformers

    auto = transformers.AutoTokenizer if modality == "text" else transformers.AutoImageProcessor
    try:
        return auto.from_pretrained(str(path))
    except (OSError, ValueError):
        return None
