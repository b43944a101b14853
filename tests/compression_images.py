"""Builders of compressed test images: benign streams made by the real tools and
libraries, and hostile ones (bombs, lying headers, damaged checksums) made here by code."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import subprocess
import zlib
from pathlib import Path

import zstandard

KINDS = ("gzip", "bzip2", "xz", "zstd")
#: The command-line tool of each format, writing to stdout.
TOOLS = {"gzip": ["gzip", "-c", "-n"], "bzip2": ["bzip2", "-c"], "xz": ["xz", "-c", "-T1"],
         "zstd": ["zstd", "-q", "-c"]}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compress(kind: str, data: bytes, **options: object) -> bytes:
    """``data`` compressed in memory by the Python library of ``kind``."""
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data, **options)  # type: ignore[arg-type]
    return zstandard.ZstdCompressor(**options).compress(data)  # type: ignore[arg-type]


def compress_file(kind: str, source: Path, target: Path) -> Path:
    """``source`` compressed into ``target`` by the command-line tool of ``kind``."""
    with open(target, "wb") as out:
        subprocess.run([*TOOLS[kind], str(source)], stdout=out, check=True)
    return target


def zstd_stream(data: bytes, *, chunk: int = 1 << 20, window_log: int = 0) -> bytes:
    """A zstd frame written by the streaming compressor: no content size in its header."""
    buffer = io.BytesIO()
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(buffer, closefd=False) as writer:
        for start in range(0, len(data), chunk):
            writer.write(data[start:start + chunk])
    return buffer.getvalue()


def gzip_zeros(size: int, level: int = 6, fill: int = 0) -> bytes:
    """``size`` bytes of ``fill`` (zeros) as one gzip member, compressed piece by piece (a bomb when large)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    piece = bytes([fill]) * min(size, 1 << 20)
    parts = []
    for start in range(0, size, len(piece)):
        parts.append(compressor.compress(piece[: size - start]))
    return b"".join(parts) + compressor.flush()


def disk_like(size: int, *, density: float = 0.03, seed: int = 1) -> bytes:
    """A raw disk of ``size`` bytes: each MiB starts with ``density`` of random bytes, then zeros."""
    rng = random.Random(seed)
    mib = 1 << 20
    used = max(1, int(mib * density))
    return b"".join(rng.randbytes(min(used, size - start)) + bytes(max(0, min(mib, size - start) - used))
                    for start in range(0, size, mib))


def zstd_header(content_size: int | None, window_log: int = 20) -> bytes:
    """A zstd frame header (no dictionary, no checksum, not single-segment) declaring what it is told."""
    fcs_flag = 0 if content_size is None else 3  # 3: an 8-byte frame content size
    descriptor = bytes([fcs_flag << 6])
    window = bytes([(window_log - 10) << 3])  # exponent only, mantissa 0
    fcs = b"" if content_size is None else content_size.to_bytes(8, "little")
    return ZSTD_MAGIC + descriptor + window + fcs


def zstd_lying_frame(content_size: int | None, window_log: int = 20, body: bytes = b"") -> bytes:
    """A frame header that declares ``content_size`` and ``window_log``, then one last raw block of ``body``."""
    block_header = (1 | (0 << 1) | (len(body) << 3)).to_bytes(3, "little")  # last block, raw
    return zstd_header(content_size, window_log) + block_header + body


def _xz_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_xz_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def xz_declaring(data: bytes, declared: int) -> bytes:
    """One xz stream of ``data`` (one block) whose index, footer and CRCs are rewritten to declare ``declared``.

    The block itself is untouched: liblzma finds the lie only when it reaches the index.
    """
    stream = lzma.compress(data, format=lzma.FORMAT_XZ)
    footer = stream[-12:]
    index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
    index = stream[-12 - index_size:-12]
    count, pos = _read_xz_varint(index, 1)
    assert count == 1, "lzma.compress writes one block for small data"
    unpadded, pos = _read_xz_varint(index, pos)
    records = b"\0" + _xz_varint(1) + _xz_varint(unpadded) + _xz_varint(declared)
    records += bytes(-len(records) % 4)
    new_index = records + zlib.crc32(records).to_bytes(4, "little")
    backward = (len(new_index) // 4 - 1).to_bytes(4, "little")
    flags = footer[8:10]
    new_footer = zlib.crc32(backward + flags).to_bytes(4, "little") + backward + flags + b"YZ"
    return stream[:-12 - index_size] + new_index + new_footer


def gzip_named(data: bytes, name: bytes) -> bytes:
    """A gzip member whose header stores ``name`` as the original file name (FNAME), written by hand."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    header = b"\x1f\x8b\x08\x08" + bytes(4) + b"\x00\x03" + name + b"\0"
    trailer = zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")
    return header + body + trailer


def gzip_with_header(data: bytes, *, extra: bytes = b"", name: bytes = b"", comment: bytes = b"") -> bytes:
    """One gzip member whose header carries the FEXTRA, FNAME and FCOMMENT fields given (written by hand)."""
    flags = (0x04 if extra else 0) | (0x08 if name else 0) | (0x10 if comment else 0)
    header = b"\x1f\x8b\x08" + bytes([flags]) + bytes(4) + b"\x00\x03"
    if extra:
        header += len(extra).to_bytes(2, "little") + extra
    header += (name + b"\0" if name else b"") + (comment + b"\0" if comment else b"")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    trailer = zlib.crc32(data).to_bytes(4, "little") + (len(data) & 0xFFFFFFFF).to_bytes(4, "little")
    return header + body + trailer


def sparse_disk(size: int, data: int, *, seed: int = 4) -> bytes:
    """A raw disk of ``size`` bytes holding ``data`` random bytes at its start and zeros after (a fresh disk)."""
    return random.Random(seed).randbytes(data) + bytes(size - data)


def zstd_with_dictionary(data: bytes) -> bytes:
    """A zstd frame that needs a dictionary to decode (none is ever given)."""
    rng = random.Random(3)
    samples = [rng.randbytes(16) + b"common words " * rng.randint(1, 40) for _ in range(300)]
    dictionary = zstandard.train_dictionary(2048, samples)
    return zstandard.ZstdCompressor(dict_data=dictionary).compress(data)


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    """``data`` with the byte at ``offset`` (negative: from the end) XORed with ``mask``."""
    damaged = bytearray(data)
    damaged[offset] ^= mask
    return bytes(damaged)


def random_after_magic(kind: str, size: int = 4096, seed: int = 7) -> bytes:
    """The format's magic (as libmagic wants it), then random bytes."""
    magic = {"gzip": b"\x1f\x8b\x08\x00", "bzip2": b"BZh91AY&SY", "xz": b"\xfd7zXZ\x00", "zstd": ZSTD_MAGIC}[kind]
    return magic + random.Random(seed).randbytes(size)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def urandom_disk(size: int) -> bytes:
    """Incompressible data, for streams that must not compress well."""
    return os.urandom(size)
