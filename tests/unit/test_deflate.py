"""Deflate chunks: each inflates to its text, and any sequence of them is one valid gzip member."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from agent import deflate as d


def texts(rng: random.Random, n: int) -> list[bytes]:
    """Line protocol of varied size and compressibility, some rows empty of repetition."""
    out = []
    for i in range(n):
        lines = rng.randint(1, 300)
        noise = rng.random() < 0.3
        out.append(
            b"\n".join(
                b"m,machine=cnc-%02d v=%r %d" % (i % 7, rng.random() * 10 ** rng.randint(0, 9), i)
                + (rng.randbytes(rng.randint(0, 60)).hex().encode() if noise else b"")
                for _ in range(lines)
            )
        )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_any_sequence_of_chunks_is_one_gzip_member_of_their_texts(seed: int) -> None:
    rng = random.Random(seed)
    rows = texts(rng, rng.randint(1, 40))
    chunks = [d.deflate(t) for t in rows]
    for chunk, text in zip(chunks, rows, strict=True):
        assert d.inflate(chunk) == text + b"\n"
        assert (chunk.size, chunk.crc) == (len(text) + 1, zlib.crc32(text + b"\n"))
    order = rng.sample(range(len(chunks)), len(chunks))  # newest_first and partial batches too
    body = d.gzip_body([chunks[i] for i in order])
    assert body.startswith(d.GZIP_HEADER)
    assert gzip.decompress(body) == b"".join(rows[i] + b"\n" for i in order)
    member = zlib.decompressobj(31)  # one member: nothing left after its trailer
    assert member.decompress(body) == gzip.decompress(body) and member.eof
    assert member.unused_data == b""


def test_crc32_combine_matches_over_lengths_past_the_zero_buffer() -> None:
    rng = random.Random(3)
    for n1, n2 in [(0, 0), (0, 5), (5, 0), (1, 1), (4095, 4097), (3 << 20, (2 << 20) + 7)]:
        a, b = rng.randbytes(n1), rng.randbytes(n2)
        assert d.crc32_combine(zlib.crc32(a), zlib.crc32(b), n2) == zlib.crc32(a + b), (n1, n2)


def test_a_damaged_chunk_is_detected() -> None:
    chunk = d.deflate(b"m,machine=cnc-01 v=1.5 1\n" * 100)
    flipped = bytearray(chunk.data)
    flipped[len(flipped) // 2] ^= 0x10
    for bad in (
        d.Chunk(bytes(flipped), chunk.crc, chunk.size),  # a bit flipped in the stream
        d.Chunk(chunk.data, chunk.crc ^ 1, chunk.size),  # the stored CRC does not match
        d.Chunk(chunk.data[: len(chunk.data) // 2], chunk.crc, chunk.size),  # cut short
        d.Chunk(b"\xff" * 40, chunk.crc, chunk.size),  # not deflate at all
    ):
        with pytest.raises(d.ChunkError):
            d.inflate(bad)


@pytest.mark.parametrize("level", [1, 6, 9])
def test_gzip_compress_levels(level: int) -> None:
    text = b"\n".join(texts(random.Random(level), 20))
    body = d.gzip_compress(text, level)
    assert gzip.decompress(body) == text
    assert len(body) < len(text) / 2


def test_isal_is_the_backend_when_installed() -> None:
    pytest.importorskip("isal")
    assert d.BACKEND == "isal"


def test_chunks_from_zlib_and_isal_mix() -> None:
    """A spool written without ISA-L (or with it) is sent fine by an agent with (or without)."""
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    rows = texts(random.Random(9), 6)
    chunks = []
    for i, text in enumerate(rows):
        module = isal_zlib if i % 2 else zlib
        c = module.compressobj(1, zlib.DEFLATED, -15)
        data = c.compress(text + b"\n") + c.flush(zlib.Z_SYNC_FLUSH)
        chunks.append(d.Chunk(data, zlib.crc32(text + b"\n"), len(text) + 1))
    assert gzip.decompress(d.gzip_body(chunks)) == b"".join(t + b"\n" for t in rows)


def test_gunzip_reads_every_member() -> None:
    text = b"\n".join(texts(random.Random(4), 5))
    assert d.gunzip(d.gzip_compress(text, 1) + gzip.compress(text, 6)) == text + text
