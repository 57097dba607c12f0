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


def fetch_deb(package: str, version: str | None = None) -> Path:
    """The package's .deb in `debs_dir()` (that exact version, or any when None), fetched once with
    `apt-get download`; as root, apt's package lists are updated once when they do not know it."""
    folder = debs_dir()
    if cached := _cached_deb(folder, package, version):
        return cached
    spec = package if version is None else f"{package}={version}"
    file = f"{package}_{version or '*'}_all.deb"
    if shutil.which("apt-get") is None:
        raise ZooError(
            f"cannot fetch the Debian package {spec}: apt-get is not available here",
            hint=f"copy {file} (from packages.debian.org) into {folder}",
        )
    folder.mkdir(parents=True, exist_ok=True)
    info(f"fetching the Debian package {spec} (once; cached in {folder})")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        os.chmod(tmp, 0o755)  # apt's unprivileged download user must be able to write there
        result = _apt_download(spec, Path(tmp))
        if result.returncode != 0 and _needs_update(result.stderr) and os.geteuid() == 0:
            info("apt's package lists do not know it; running apt-get update once")
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, check=False)
            result = _apt_download(spec, Path(tmp))
        downloaded = _cached_deb(Path(tmp), package, version)
        if result.returncode != 0 or downloaded is None:
            hint = (
                "run `sudo apt-get update`, then try again"
                if _needs_update(result.stderr)
                else f"check the network, or copy {file} into {folder}"
            )
            raise ZooError(f"apt-get download {spec} failed: {apt_error(result.stderr)}", hint=hint)
        target = folder / downloaded.name
        os.replace(downloaded, target)
    return target


def _apt_download(spec: str, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", "-q", spec], cwd=dest, capture_output=True, text=True, check=False)


def _needs_update(stderr: str) -> bool:
    return "Unable to locate package" in stderr or "has no installation candidate" in stderr


def apt_error(stderr: str) -> str:
    """The lines of apt / dpkg output that say what went wrong, on one line."""
    # apt warns about sandboxing when run as root; its E: lines say what went wrong.
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return " | ".join((errors or lines)[-2:]) or "no error output"


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


def _cached_deb(folder: Path, package: str, version: str | None) -> Path | None:
    if not folder.is_dir():
        return None
    # apt writes the epoch's colon as %3a; pinned versions here have no epoch.
    matches = sorted(folder.glob(f"{package}_{version or '*'}_*.deb"))
    return matches[-1] if matches else None


def _relative(member: str, prefix: str) -> str:
    rel = PurePosixPath(member[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts:
        raise ZooError(f"refusing unsafe path {member!r} in a Debian package", hint="the package may be corrupted")
    return str(rel)
