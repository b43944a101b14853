"""Reading a table of little-endian entries (QED L1, VDI block map) in bounded chunks."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

from importhooks.data import ImageData


class TableEnds(Exception):
    """The file ends inside the table: ``entry`` is the first entry missing."""

    def __init__(self, entry: int) -> None:
        super().__init__(entry)
        self.entry = entry


def native(raw: bytes, typecode: str) -> array[int]:
    """Little-endian entries (``typecode`` ``I``: u32, ``Q``: u64) as an array in host order."""
    entries = array(typecode)
    entries.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover - little-endian hosts only in CI
        entries.byteswap()
    return entries


def table_chunks(data: ImageData, offset: int, total: int, typecode: str,
                 chunk_entries: int) -> Iterator[tuple[int, array[int]]]:
    """Yield ``(first index, entries)`` for the ``total`` entries at ``offset``, at most ``chunk_entries``
    at a time; raise :class:`TableEnds` where the file ends first."""
    entry_bytes = array(typecode).itemsize
    for first in range(0, total, chunk_entries):
        count = min(chunk_entries, total - first)
        raw = data.read_at(offset + first * entry_bytes, count * entry_bytes)
        if len(raw) != count * entry_bytes:
            raise TableEnds(first + len(raw) // entry_bytes)
        yield first, native(raw, typecode)
