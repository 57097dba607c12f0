"""Filesystem helpers: the cache folder and atomic output folders.

Outputs are built in a temporary sibling folder and renamed into place, so an
interrupted run never leaves a half-written result, and nothing is overwritten
unless the caller asked for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError


def cache_dir() -> Path:
    """Root of tokcomp's cache: $TOKCOMP_CACHE, else $XDG_CACHE_HOME/tokcomp, else ~/.cache/tokcomp."""
    if env := os.environ.get("TOKCOMP_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tokcomp"


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces `target` only if the block finishes.

    Raises TokcompError if `target` exists and `force` is false.
    """
    target = Path(target)
    if target.exists() and not force:
        raise TokcompError(f"output folder {target} already exists", hint="pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; outputs and caches should read like normal folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        # Move the old folder aside first so there is no moment without a complete result.
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / target.name)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), pretty-printed and key-ordered as given."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)
