"""Line protocol compressed once, at the spool: deflate chunks that join into one gzip body.

Each payload the pipeline appends to a spool is compressed right away into a :class:`Chunk`:
raw deflate (RFC 1951) of the lines plus a trailing newline, ended by a sync flush so that it
stops on a byte boundary without a final block, with the CRC-32 and length of the text it
holds. Chunks written by independent compressors concatenate into one valid deflate stream
(a chunk's back-references never reach before its own start), so a batch of spool rows is sent
as a single gzip member (RFC 1952): header, the rows' chunks, an empty final block, and a
trailer whose CRC-32 is combined from the rows' own (:func:`crc32_combine`). Nothing is
compressed twice, the spool holds ~3.5-6x more readings in the same disk budget, and every
server that reads gzip reads it (a multi-member body would not do: InfluxDB 3 reads only the
first member of a gzip body and would silently drop the rest).

Compression is ISA-L's level 1 (``isal``; 3.4x less CPU than zlib's level 1 on this
project's line protocol, and a better ratio) when installed, else zlib's level 1.

>>> rows = [deflate(b"m v=1 1"), deflate(b"m v=2 2\\nm v=3 3")]
>>> import gzip
>>> gzip.decompress(gzip_body(rows))
b'm v=1 1\\nm v=2 2\\nm v=3 3\\n'
>>> inflate(rows[1])
b'm v=2 2\\nm v=3 3\\n'
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_zlib: ModuleType
_gzip: ModuleType
try:  # pragma: no branch - which one depends on the install
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib

    BACKEND = "isal"
except ImportError:  # pragma: no cover - isal is a dependency; kept for odd platforms
    _zlib, _gzip = zlib, gzip
    BACKEND = "zlib"

#: gzip member header: deflate, no name or time, "unknown OS" (as Python's gzip writes for mtime 0)
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: An empty final block with fixed Huffman codes: ends the deflate stream after the chunks.
FINAL_BLOCK = b"\x03\x00"
_ZEROS_MAX = 1 << 20  # crc32_combine works through zeros; longer texts go in steps


class ChunkError(ValueError):
    """A stored chunk does not inflate, or its text does not match its CRC-32 or length."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Compressed lines: ``data`` inflates to ``size`` bytes of text with CRC-32 ``crc``."""

    data: bytes
    crc: int
    size: int


def deflate(lines: bytes, level: int = 1) -> Chunk:
    """Compress newline-joined ``lines`` (a newline is added at the end) into a chunk."""
    c = _zlib.compressobj(level, zlib.DEFLATED, -15)
    data = c.compress(lines) + c.compress(b"\n") + c.flush(zlib.Z_SYNC_FLUSH)
    crc = _zlib.crc32(b"\n", _zlib.crc32(lines))
    return Chunk(data, crc, len(lines) + 1)


def inflate(chunk: Chunk) -> bytes:
    """The chunk's text (ending in a newline); :class:`ChunkError` if it is damaged."""
    try:
        text: bytes = zlib.decompressobj(-15).decompress(chunk.data)
    except zlib.error as exc:
        raise ChunkError(f"does not inflate: {exc}") from exc
    if len(text) != chunk.size or zlib.crc32(text) != chunk.crc:
        raise ChunkError(f"{len(text)} bytes inflated, {chunk.size} expected, or CRC mismatch")
    return text


class _Zeros:
    """A growing buffer of zero bytes, sliced without copying."""

    def __init__(self) -> None:
        self.view = memoryview(bytes(4096))

    def __call__(self, n: int) -> memoryview:
        if n > len(self.view):
            self.view = memoryview(bytes(max(n, 2 * len(self.view))))
        return self.view[:n]


_zeros = _Zeros()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)``.

    CRC-32 is affine over GF(2): continuing ``crc1`` over ``b`` equals continuing it over as
    many zeros, plus ``crc32(b)``, minus the zeros' own CRC. Two CRC passes over zeros (a few
    GB/s) instead of the text, which the spool no longer holds uncompressed.

    >>> a, b = b"machine v=1 1\\n", b"machine v=2 2\\n"
    >>> crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    True
    """
    crc = _zlib.crc32
    while len2 > _ZEROS_MAX:
        zeros = _zeros(_ZEROS_MAX)
        crc1 = crc(zeros, crc1) ^ crc(zeros)
        len2 -= _ZEROS_MAX
    zeros = _zeros(len2)
    result: int = crc(zeros, crc1) ^ crc(zeros) ^ crc2
    return result


def gzip_body(chunks: Sequence[Chunk]) -> bytes:
    """One gzip member holding the chunks' texts in order."""
    crc = size = 0
    for chunk in chunks:
        crc = crc32_combine(crc, chunk.crc, chunk.size)
        size += chunk.size
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return b"".join([GZIP_HEADER, *(c.data for c in chunks), FINAL_BLOCK, trailer])


def gunzip(body: bytes) -> bytes:
    """The text of a gzip body (every member)."""
    text: bytes = _gzip.decompress(body)
    return text


def gzip_compress(text: bytes, level: int) -> bytes:
    """gzip of ``text`` at zlib's ``level``; level 1 through ISA-L when installed."""
    if level == 1 and BACKEND == "isal":
        out: Any = _zlib.compress(text, 1, 31)  # wbits 31: a gzip member
        return bytes(out)
    return gzip.compress(text, level, mtime=0)
