"""Read the files inside a Qt resource bundle (.rcc), the container GCompris ships its pictures in.

Layout (Qt's rcc format, versions 1-3): a header, a tree of fixed-size nodes, a name table
(UTF-16 names) and a data table (length-prefixed blobs, zlib-compressed when flagged).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from tokcomp.errors import ZooError

_COMPRESSED, _DIRECTORY, _COMPRESSED_ZSTD = 0x1, 0x2, 0x4


def rcc_files(blob: bytes, where: str) -> Iterator[tuple[str, bytes]]:
    """(path, contents) of every file in the bundle, paths like "gcompris/src/.../x.webp"."""
    if blob[:4] != b"qres" or len(blob) < 20:
        raise ZooError(f"{where} is not a Qt resource bundle", hint="the carrier package layout changed; report this")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22  # version 2+ adds a last-modified stamp

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        base = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[base : base + 6])
        path = f"{prefix}/{name_at(name_offset)}".lstrip("/") if index else ""
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", blob[base + 6 : base + 14])
            for child in range(first, first + count):
                yield from walk(child, path)
            return
        (offset,) = struct.unpack(">I", blob[base + 10 : base + 14])
        (length,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        raw = blob[data + offset + 4 : data + offset + 4 + length]
        if flags & _COMPRESSED_ZSTD:
            raise ZooError(f"{where}: {path} is zstd-compressed", hint="report this: tokcomp reads zlib bundles only")
        yield path, zlib.decompress(raw[4:]) if flags & _COMPRESSED else raw  # qCompress: 4-byte size, zlib

    yield from walk(0, "")
