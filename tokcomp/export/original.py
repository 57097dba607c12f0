"""The original (uncompressed) model of a checkpoint, rebuilt offline from the checkpoint itself.

Token-reduction passes keep every weight and its state-dict key (blocks adopt the
original modules), so the base architecture from config.json loads the checkpoint's
weights strictly with the passes skipped: the exact original, no network needed.
A pass that changes weights or shapes (vocabulary trimming) makes that impossible;
then this fails and names `original_source` as the fix.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tokcomp.checkpoint import open_checkpoint, read_state
from tokcomp.errors import CheckpointError, TokcompError


def load_original(path: str | Path, original_source: str | None = None) -> nn.Module:
    path = Path(path)
    if original_source is not None:
        from tokcomp.sources import load_model

        return load_model(original_source).model.eval()
    try:
        return open_checkpoint(path, apply_passes=False).model
    except CheckpointError as exc:
        raise TokcompError(
            f"cannot rebuild the original model from {path} with its passes skipped: {exc.message}",
            hint=f"pass the original explicitly (--original {read_state(path).base.source})",
        ) from None
