"""Carrier packages from Debian: .deb archives that ship real photographs and prose as plain files.

Like the PyPI carriers (tokcomp.zoo.wheels), a package is never installed: `apt-get download`
fetches the exact pinned version once into `cache_dir()/debs/`, and the files needed are read
out of the archive in Python (a .deb is an `ar` archive holding a compressed `data.tar`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from tokcomp.errors import ZooError
from tokcomp.fileio import cache_dir
from tokcomp.progress import info

_AR_MAGIC = b"!<arch>\n"


def debs_dir() -> Path:
    return cache_dir() / "debs"


def fetch_deb(package: str, version: str) -> Path:
    """Path of `package_version_all.deb` in the cache, downloading it once with apt-get if absent."""
    folder = debs_dir()
    if cached := _cached_deb(folder, package, version):
        return cached
    if shutil.which("apt-get") is None:
        raise ZooError(
            f"the built-in photos and texts need the Debian package {package}={version}, and apt-get is missing",
            hint=f"on a non-Debian system, copy {package}_{version}_all.deb into {folder}",
        )
    folder.mkdir(parents=True, exist_ok=True)
    info(f"fetching the Debian package {package}={version} (once; cached in {folder})")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        os.chmod(tmp, 0o755)  # apt's unprivileged download user must be able to write there
        result = subprocess.run(
            ["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp, capture_output=True, text=True, check=False
        )
        downloaded = _cached_deb(Path(tmp), package, version)
        if result.returncode != 0 or downloaded is None:
            lines = [line for line in result.stderr.splitlines() if line.startswith("E:")] or ["no .deb written"]
            raise ZooError(
                f"could not download {package}={version} with apt-get: {lines[-1]}",
                hint=f"run `apt-get update` first, or copy {package}_{version}_all.deb into {folder}",
            )
        target = folder / downloaded.name
        os.replace(downloaded, target)
    return target


def extract_deb_members(deb: Path, prefix: str, dest: Path, names: Collection[str] | None = None) -> list[Path]:
    """Extract the regular files of `deb` under `prefix` (e.g. "usr/share/foo/") into `dest`, prefix stripped.

    `names` (paths relative to `prefix`) restricts extraction to those files; all must exist.
    """
    with _data_tar(deb) as archive:
        members = {}
        for member in archive:
            path = member.name.removeprefix("./")
            if member.isfile() and path.startswith(prefix):
                members[_relative(path, prefix)] = member
        wanted = sorted(members) if names is None else sorted(names)
        missing = [name for name in wanted if name not in members]
        if missing or not wanted:
            raise ZooError(
                f"{deb.name} lacks {', '.join(missing) or 'any file under ' + prefix}",
                hint="the Debian package's layout changed; report this",
            )
        written = []
        for rel in wanted:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(members[rel]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(target)
    return written


@contextmanager
def _data_tar(deb: Path) -> Iterator[tarfile.TarFile]:
    """The data.tar member of a .deb, opened for reading (gzip, xz or bzip2)."""
    with open(deb, "rb") as fh:
        if fh.read(8) != _AR_MAGIC:
            raise ZooError(f"{deb} is not a Debian package", hint="delete it; it is downloaded again")
        while header := fh.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise ZooError(f"{deb.name} is zstd-compressed", hint="report this: tokcomp reads gz/xz/bz2 only")
                with tempfile.SpooledTemporaryFile(max_size=256 << 20) as payload:
                    shutil.copyfileobj(_limited(fh, size), payload)
                    payload.seek(0)
                    with tarfile.open(fileobj=payload, mode="r:*") as archive:
                        yield archive
                return
            fh.seek(size + size % 2, os.SEEK_CUR)  # ar members are 2-byte aligned
    raise ZooError(f"{deb} has no data.tar member", hint="delete it; it is downloaded again")


def _limited(fh, size: int):
    class Reader:
        remaining = size

        def read(self, n: int = -1) -> bytes:
            n = self.remaining if n < 0 else min(n, self.remaining)
            chunk = fh.read(n)
            self.remaining -= len(chunk)
            return chunk

    return Reader()


def _cached_deb(folder: Path, package: str, version: str) -> Path | None:
    if not folder.is_dir():
        return None
    # apt writes the epoch's colon as %3a; pinned versions here have no epoch.
    matches = sorted(folder.glob(f"{package}_{version}_*.deb"))
    return matches[0] if matches else None


def _relative(member: str, prefix: str) -> str:
    rel = PurePosixPath(member[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts:
        raise ZooError(f"refusing unsafe path {member!r} in a Debian package", hint="the package may be corrupted")
    return str(rel)
