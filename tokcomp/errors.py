"""User-facing errors.

Every error a user can cause is a `TokcompError`: the CLI prints its message on one
line and exits non-zero (traceback only with --debug). The message names the problem;
`hint` names the fix. See docs/errors.md.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path


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


class SpanError(TokcompError):
    """A call's reducible span does not fit its prompt (or a call that must mark one did not)."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM. A BaseException of its own, not KeyboardInterrupt: typer turns
    KeyboardInterrupt into a silent exit code, and nothing may swallow it as an `Exception`."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.step: str | None = None  # the innermost running step (tokcomp.progress.step) it stopped

    @property
    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (third-party messages can run to pages)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# The disk, not the program, is at fault: full, over quota, file too large, read-only, no permission.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
# How safetensors (Rust) reports an OS error: "... (os error 28)", or "IoError(Os { code: 28, ...".
_RUST_IO_ERROR = re.compile(r"os error (\d+)|Os \{ code: (\d+)")


def storage_errno(exc: BaseException) -> int | None:
    """The errno of a failed write to storage (OSError, or safetensors' SafetensorError), else None."""
    if isinstance(exc, OSError):
        code = exc.errno
    elif type(exc).__name__ == "SafetensorError" and (match := _RUST_IO_ERROR.search(str(exc))):
        code = int(match.group(1) or match.group(2))
    else:
        return None
    return code if code in STORAGE_ERRNOS else None


def storage_error(exc: BaseException, target: object = None) -> TokcompError | None:
    """A one-line error for a failed file operation on `target` (default: the file the OS names),
    or None when `exc` is not a storage error."""
    code = storage_errno(exc)
    if code is None:
        return None
    where = getattr(exc, "filename", None) or target or "a file"
    reason = os.strerror(code)
    if code in (errno.EACCES, errno.EPERM):
        return TokcompError(f"{reason}: {where}", hint="fix its permissions, or write elsewhere with -o")
    if code == errno.EROFS:
        return TokcompError(f"cannot write {target or where}: {reason}", hint="write elsewhere with -o")
    if code in (errno.ENOSPC, errno.EDQUOT):
        try:
            reason += f"; {shutil.disk_usage(_existing_parent(target or where)).free / 2**30:.2f} GiB free there"
        except OSError:
            pass
    return TokcompError(f"cannot write {target or where}: {reason}", hint="free some space, or write elsewhere with -o")


def _existing_parent(target: object) -> Path:
    path = Path(str(target)).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
