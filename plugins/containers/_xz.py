"""The uncompressed size xz streams declare in their indexes, read from the end of the data (``compression``)."""

from __future__ import annotations

import zlib

from importhooks import ImportContext

XZ_MAGIC = b"\xfd7zXZ\x00"
#: The longest index read to learn the declared sizes, and the bytes read to find a footer.
MAX_XZ_INDEX, XZ_TAIL = 1 << 20, 64


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """An xz multibyte integer at ``pos``: (value, next position); ValueError if malformed."""
    value = 0
    for i, byte in enumerate(data[pos:pos + 9]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise ValueError("integer with a needless zero byte")
            return value, pos + i + 1
    raise ValueError("integer truncated or longer than 9 bytes")


def _xz_index(index: bytes) -> tuple[int, int]:
    """(bytes of blocks, declared uncompressed size) of one xz index; ValueError if malformed."""
    if index[:1] != b"\0" or zlib.crc32(index[:-4]) != int.from_bytes(index[-4:], "little"):
        raise ValueError("bad index indicator or CRC")
    count, pos = _varint(index, 1)
    if count > len(index) // 2:
        raise ValueError(f"{count} records in a {len(index)}-byte index")
    blocks = uncompressed = 0
    for _ in range(count):
        unpadded, pos = _varint(index, pos)
        size, pos = _varint(index, pos)
        blocks += (unpadded + 3) & ~3
        uncompressed += size
    if (pos + 3) & ~3 != len(index) - 4 or any(index[pos:-4]):
        raise ValueError("bad index padding")
    return blocks, uncompressed


def xz_declared_size(context: ImportContext) -> int | None:
    """The uncompressed size the xz indexes declare, read from the end; ``None`` if unreadable.

    Walks the streams backwards (stream padding, footer, index, header) with small
    reads, at most about one pass over the layer in all. ``None`` skips the early
    check; decoding judges the data, counting its output.
    """
    data = context.data
    end, total, budget = data.size, 0, data.bytes_read + data.size
    while end > 0:
        context.check()
        tail = data.read_at(max(0, end - XZ_TAIL), min(end, XZ_TAIL)).rstrip(b"\0")  # less stream padding
        end -= min(end, XZ_TAIL) - len(tail)
        if len(tail) < 12 or end < 32 or data.bytes_read > budget:
            return None  # long padding, a tiny file or too many streams: leave it to the decoder
        footer = tail[-12:]
        if footer[10:] != b"YZ" or zlib.crc32(footer[4:10]) != int.from_bytes(footer[:4], "little"):
            return None
        index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
        if index_size > min(MAX_XZ_INDEX, end - 24):
            return None
        try:
            blocks, uncompressed = _xz_index(data.read_at(end - 12 - index_size, index_size))
        except ValueError:
            return None
        start = end - 24 - index_size - blocks
        if start < 0 or data.read_at(start, 8) != XZ_MAGIC + footer[8:10]:
            return None
        total, end = total + uncompressed, start
    return total
