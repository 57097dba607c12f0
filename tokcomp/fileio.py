"""Filesystem helpers: the cache folder, safe output locations, atomic writes, input files.

Outputs are built in a temporary sibling and renamed into place, so an interrupted or
failed run never leaves a half-written result. Nothing is replaced unless the caller
asked for it (--force), and even then only a folder or file that tokcomp itself wrote:
a checkpoint folder holds tokcomp.json, a sweep folder sweep.json, and so on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokcomp.errors import TokcompError, storage_error

CHECKPOINT_MARKER = "tokcomp.json"  # the file that makes a folder a tokcomp checkpoint


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: ordinary permissions, not mkstemp's 0600
FOLDER_MODE = 0o777 & ~_UMASK


def cache_dir() -> Path:
    """Root of tokcomp's cache: $TOKCOMP_CACHE, else $XDG_CACHE_HOME/tokcomp, else ~/.cache/tokcomp."""
    if env := os.environ.get("TOKCOMP_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tokcomp"


# ------------------------------------------------------------------ output locations


def check_output_folder(
    target: str | Path, *, force: bool, marker: str | None = CHECKPOINT_MARKER, inputs: Iterable[str | Path] = ()
) -> Path:
    """Refuse, before any work, an output folder tokcomp cannot or must not write; returns it absolute.

    An existing folder is replaced only with `force` and only if it holds `marker` (a
    folder tokcomp wrote) or nothing at all. `marker=None` is for tokcomp's own cache,
    whose folders are replaced whatever they hold. The folder may not be the working
    directory or hold one of `inputs` (the recipe, data), which replacing it would delete.
    """
    target = Path(os.path.abspath(target))
    _refuse_enclosing(target, Path.cwd(), "the working directory", "write to a new folder such as runs/NAME")
    for item in inputs:
        _refuse_enclosing(target, Path(os.path.abspath(item)), f"the input {item}", "write the output elsewhere")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        kind = "a symbolic link" if target.is_symlink() else "a file"
        raise TokcompError(f"output {target} is {kind}, not a folder", hint="choose a new folder with -o")
    if target.is_dir() and any(target.iterdir()):
        _check_replaceable_folder(target, force, marker)
    _check_writable(target.parent if target.exists() else target)
    return target


def _refuse_enclosing(target: Path, inside: Path, what: str, fix: str) -> None:
    if target == inside or target in inside.parents:
        raise TokcompError(f"output folder {target} is or contains {what}, which replacing it would delete", hint=fix)


def _check_replaceable_folder(target: Path, force: bool, marker: str | None) -> None:
    if marker is None:
        if cache_dir().absolute() not in target.parents:
            raise ValueError(f"marker=None is only for folders in tokcomp's cache, not {target}")
        return
    if not (target / marker).is_file():
        rule = "nothing was changed"
        if force:
            rule = f"--force replaces only a folder tokcomp wrote (one holding {marker})"
        raise TokcompError(
            f"output folder {target} already exists and holds files tokcomp did not write (no {marker}); {rule}",
            hint="choose a new folder with -o",
        )
    if not force:
        raise TokcompError(f"output folder {target} already exists", hint="pass --force to replace it, or -o elsewhere")
    _check_writable(target)  # its contents are moved aside before they are deleted


def check_output_file(path: str | Path, *, force: bool, kind: str) -> Path:
    """Refuse, before any work, a result file that cannot or must not be written; returns it absolute.

    An existing file is replaced only with `force`, and only if tokcomp wrote it: it
    lies in a checkpoint folder, or it is a tokcomp result of the same `kind`.
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise TokcompError(f"output {path} is a folder, not a file", hint="give a file path with -o")
    if path.exists() or path.is_symlink():
        if not force:
            raise TokcompError(f"result file {path} already exists", hint="pass --force to replace it, or -o elsewhere")
        if not ((path.parent / CHECKPOINT_MARKER).is_file() or result_kind(path) == kind):
            raise TokcompError(
                f"{path} already exists and is not a {kind} result; --force replaces only tokcomp's own results, "
                "so nothing was changed",
                hint="choose a new file with -o",
            )
    _check_writable(path.parent)
    return path


def result_kind(path: Path) -> str | None:
    """The `kind` of a tokcomp JSON result (e.g. "tokcomp-eval"), or of a Markdown table written
    with `kind_comment(kind)` as its first line; None for anything else."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
    except (OSError, UnicodeDecodeError):
        return None
    if head.startswith("<!-- tokcomp-"):
        return head[len("<!-- ") :].split(" ", 1)[0]
    try:
        data = json.loads(head)
    except ValueError:
        return None
    return data.get("kind") if isinstance(data, dict) else None


def kind_comment(kind: str) -> str:
    return f"<!-- {kind} -->\n"


def _check_writable(path: Path) -> None:
    """`path`, or its nearest existing parent (which it would be created under), must take a new folder.

    Tried for real (a probe folder, removed at once): permission bits do not tell about read-only
    mounts, quotas or pseudo file systems, nor about root.
    """
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TokcompError(f"cannot create {path}: {existing} is a file, not a folder", hint="choose another -o")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tokcomp-probe-", dir=existing))
    except OSError as exc:
        raise TokcompError(
            f"cannot write to {existing}: {exc.strerror}", hint="choose a writable location with -o"
        ) from None


# ------------------------------------------------------------------ atomic writes


@contextlib.contextmanager
def atomic_directory(
    target: str | Path, *, force: bool = False, marker: str | None = CHECKPOINT_MARKER
) -> Iterator[Path]:
    """Yield a temporary folder that replaces `target` only if the block finishes.

    `target` is checked first with `check_output_folder(target, force=force, marker=marker)`.
    A full disk or a read-only location becomes a one-line TokcompError; nothing is left behind.
    """
    target = check_output_folder(target, force=force, marker=marker)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as exc:
        raise TokcompError(f"cannot create {target}: {exc.strerror}", hint="choose a writable -o") from None
    try:
        yield tmp
        _ordinary_permissions(tmp)
        _move_into_place(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = storage_error(exc, target)
        if error is None:
            raise
        raise error from None


def _move_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    # Move the old folder aside first so there is no moment without a complete result.
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, trash / target.name)
    os.replace(tmp, target)
    shutil.rmtree(trash, ignore_errors=True)


def _ordinary_permissions(folder: Path) -> None:
    """Files as open() would create them (some writers use 0600), folders as mkdir would."""
    folder.chmod(FOLDER_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), FOLDER_MODE)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), pretty-printed and key-ordered as given."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically: a temporary file in the same folder, renamed into place."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) or exc from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from None


def read_json(path: str | Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


# ------------------------------------------------------------------ input files


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; anything else is a one-line error naming the file, line and fix."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TokcompError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            hint="save the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
        ) from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file."""
    path = Path(path)
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise TokcompError(
                f"{path}:{number}: not valid JSON ({str(exc).split(':')[0]})",
                hint="write one JSON object per line, e.g. {\"text\": \"...\"}",
            ) from None
        if not isinstance(record, dict):
            raise TokcompError(
                f"{path}:{number}: a JSON {type(record).__name__}, not an object",
                hint="write one JSON object per line, e.g. {\"text\": \"...\"}",
            )
        yield number, record
