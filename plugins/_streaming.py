"""Pieces the unpacking plugins (``compression``, ``zip``) share: the sparse output writer and the ratio budget."""

from __future__ import annotations

import os

KiB, MiB = 1 << 10, 1 << 20
#: The output is written in aligned blocks; all-zero 64 KiB pieces are left as holes.
BLOCK, HOLE = 1 * MiB, 64 * KiB
ZERO_BLOCK, ZERO_HOLE = bytes(BLOCK), bytes(HOLE)


def parse_ratio(value: object) -> float:
    """Parse a ``max_ratio`` option: a number of 1 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ValueError(f"expected a ratio of 1 or more such as 100, got {value!r}")
    return float(value)


def ratio_exceeded(out: int, consumed: int, upload: int, max_ratio: float, grace: int) -> bool:
    """Whether ``out`` bytes, past ``grace``, exceed ``max_ratio`` times the input read so far or the upload."""
    return out > grace and out > max_ratio * min(max(consumed, 1), upload)


class SparseWriter:
    """Writes the output in order, in aligned blocks, leaving every all-zero 64 KiB as a hole."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = bytearray()
        self._flushed = 0
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        start = 0
        if self._pending:
            start = min(len(data), BLOCK - len(self._pending))
            self._pending += data[:start]
            if len(self._pending) == BLOCK:
                self._put(self._pending, 0, BLOCK)
                self._pending.clear()
        while len(data) - start >= BLOCK:
            self._put(data, start, start + BLOCK)
            start += BLOCK
        self._pending += data[start:]

    def close(self) -> None:
        self._put(self._pending, 0, len(self._pending))
        os.ftruncate(self._fd, self.size)

    def _put(self, buf: bytes | bytearray, start: int, end: int) -> None:
        offset = self._flushed - start
        self._flushed += end - start
        if end - start == BLOCK and buf.startswith(ZERO_BLOCK, start, end):
            return
        view = memoryview(buf)
        for at in range(start, end, HOLE):
            stop = min(at + HOLE, end)
            while at < stop and not buf.startswith(ZERO_HOLE[:stop - at], at, stop):
                written = os.pwrite(self._fd, view[at:stop], offset + at)  # may write less: go on
                if written <= 0:
                    raise OSError("pwrite wrote nothing")
                at += written
