"""Reader for CTranslate2's `model.bin`: named tensors and scalars, read as raw bytes with numpy.

The file (binary version 6, little-endian) is a flat list of variables:

    u32 version, name (u16 length counting a trailing NUL, then bytes), u32 revision,
    u32 variable count, then per variable: name, u8 rank, rank x u32 dims, u8 dtype,
    u32 byte count, raw data; then u32 alias count and (alias, target) name pairs.

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Nothing is
executed or unpickled; a malformed file is a one-line ZooError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokcomp.errors import ZooError

SUPPORTED_VERSIONS = (6,)
# bfloat16 has no numpy dtype: read as uint16 and widened to float32 (the top half of its bits).
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2")}
BFLOAT16 = 5
_CORRUPT_HINT = "the model.bin is truncated or not a CTranslate2 model; fetch it again"


@dataclass
class CTranslate2Model:
    name: str  # the model spec's name, e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray]  # aliases resolved to their targets' arrays

    def scalar(self, name: str) -> int | float:
        value = self.variables[name]
        if value.size != 1:
            raise ZooError(f"CTranslate2 variable {name} is not a scalar (shape {value.shape})", hint=_CORRUPT_HINT)
        return value.reshape(()).item()


class _Cursor:
    """Bounds-checked sequential reads from a bytes-like buffer."""

    def __init__(self, data: bytes | memoryview, source: str):
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, count: int) -> memoryview:
        end = self.pos + count
        if count < 0 or end > len(self.data):
            raise ZooError(
                f"{self.source} ends early: {count} bytes wanted at offset {self.pos} of {len(self.data)}",
                hint=_CORRUPT_HINT,
            )
        view = memoryview(self.data)[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self) -> str:
        (length,) = self.unpack("<H")
        raw = bytes(self.take(length))
        if not raw.endswith(b"\0"):
            raise ZooError(f"{self.source}: a name at offset {self.pos - length} lacks its NUL", hint=_CORRUPT_HINT)
        return raw[:-1].decode("utf-8")


def read_model_bin(path: str | Path) -> CTranslate2Model:
    """Parse a CTranslate2 model.bin into named numpy arrays (float16 stays float16)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZooError(f"cannot read {path}: {exc.strerror}", hint="check the path") from None
    return parse_model_bin(data, source=path.name)


def parse_model_bin(data: bytes, source: str = "model.bin") -> CTranslate2Model:
    cursor = _Cursor(data, source)
    (version,) = cursor.unpack("<I")
    if version not in SUPPORTED_VERSIONS:
        raise ZooError(
            f"{source} has CTranslate2 binary version {version}; this reader knows {SUPPORTED_VERSIONS}",
            hint="re-convert the model with a CTranslate2 release that writes version 6",
        )
    spec = cursor.string()
    (revision,) = cursor.unpack("<I")
    (count,) = cursor.unpack("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = cursor.string()
        (rank,) = cursor.unpack("<B")
        shape = cursor.unpack(f"<{rank}I") if rank else ()
        dtype_code, nbytes = cursor.unpack("<BI")
        variables[name] = _array(cursor.take(nbytes), dtype_code, shape, name, source)
    (aliases,) = cursor.unpack("<I")
    for _ in range(aliases):
        alias, target = cursor.string(), cursor.string()
        if target not in variables:
            raise ZooError(f"{source}: alias {alias} points to missing variable {target}", hint=_CORRUPT_HINT)
        variables[alias] = variables[target]
    if cursor.pos != len(data):
        raise ZooError(f"{source} has {len(data) - cursor.pos} unread bytes after its aliases", hint=_CORRUPT_HINT)
    return CTranslate2Model(spec, revision, variables)


def _array(raw: memoryview, code: int, shape: tuple[int, ...], name: str, source: str) -> np.ndarray:
    if code == BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        flat = bits.view(np.float32)
    elif code in DTYPES:
        if len(raw) % DTYPES[code].itemsize:
            raise ZooError(f"{source}: {name} has {len(raw)} bytes, not a whole number of items", hint=_CORRUPT_HINT)
        flat = np.frombuffer(raw, dtype=DTYPES[code]).copy()  # a copy: the file's buffer is freed later
    else:
        raise ZooError(f"{source}: {name} has unknown dtype code {code}", hint=_CORRUPT_HINT)
    expected = int(np.prod(shape)) if shape else 1
    if flat.size != expected:
        raise ZooError(
            f"{source}: {name} holds {flat.size} values, its shape {shape} needs {expected}", hint=_CORRUPT_HINT
        )
    return flat.reshape(shape)
