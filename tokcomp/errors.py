"""User-facing errors.

Every error a user can cause is a `TokcompError`: the CLI prints its message on one
line and exits non-zero (traceback only with --debug). The message names the problem;
`hint` names the fix.
"""

from __future__ import annotations


class TokcompError(Exception):
    """An error caused by input the user can fix (recipe, paths, model ids, checkpoints)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class RecipeError(TokcompError):
    """The recipe file does not parse or does not match the schema."""


class UnsupportedModelError(TokcompError):
    """No adapter knows how to rewrite this model's transformer blocks."""


class CheckpointError(TokcompError):
    """A tokcomp checkpoint folder is missing, incomplete or corrupted."""


class ZooError(TokcompError):
    """A zoo model or data set cannot be found or materialised."""
