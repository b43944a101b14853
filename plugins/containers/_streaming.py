"""Pieces the unpacking plugins (``compression``, ``zip``) share: the sparse output writer and the budgets.

Zero runs are written as holes, so they cost decoding time, not disk: the output is
held to two ratios. ``max_ratio`` applies to the *data*, the bytes the writer really
writes (every 64 KiB piece that is not all zeros); ``max_sparse_ratio`` applies to
all of the output, zeros included, and is high enough for any sparse disk a gzip, xz
or zstd stream can make but not for a pure zero run of zstd (32768:1) or bzip2 (over
a million to one), the bombs that cost the most time per compressed byte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from importhooks import PluginOption

KiB, MiB = 1 << 10, 1 << 20
#: The output is written in aligned blocks; all-zero 64 KiB pieces are left as holes.
BLOCK, HOLE = 1 * MiB, 64 * KiB
ZERO_BLOCK, ZERO_HOLE = bytes(BLOCK), bytes(HOLE)


def parse_ratio(value: object) -> float:
    """Parse a ``max_ratio`` option: a number of 1 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ValueError(f"expected a ratio of 1 or more such as 100, got {value!r}")
    return float(value)


def budget_options() -> tuple[PluginOption, ...]:
    """The ratio options both unpacking plugins declare, with the same defaults."""
    return (
        PluginOption("max_ratio", 100.0, "Most data bytes (output that is not all-zero 64 KiB pieces) per "
                     "compressed byte once the data passes ratio_grace, counted on the bytes read so far and on "
                     "the whole upload.", parse=parse_ratio),
        PluginOption("ratio_grace", 64 * MiB, "Data allowed before max_ratio applies.", size=True),
        PluginOption("max_sparse_ratio", 30000.0, "Most output bytes, zeros included, per compressed byte once "
                     "the output passes sparse_grace, counted like max_ratio; gzip (1032:1) and xz (about "
                     "7000:1) never reach it, a zstd (32768:1) or bzip2 zero run does.", parse=parse_ratio),
        PluginOption("sparse_grace", 256 * MiB, "Output, zeros included, allowed before max_sparse_ratio "
                     "applies.", size=True),
    )


def ratio_text(out: int, compressed: int) -> str:
    """A ratio for a message or detail, with one decimal (``1234.5:1``)."""
    return f"{out / max(compressed, 1):.1f}:1"


def over_budget(options: Mapping[str, Any], out: int, data: int, consumed: int, upload: int) -> str | None:
    """Why ``out`` bytes of output (``data`` of them written) from ``consumed`` compressed bytes are a bomb, or None.

    Both ratios count against the compressed bytes read so far and against the whole
    upload, the smaller (the upload matters for nested layers, whose ratios multiply).
    """
    base = min(max(consumed, 1), upload)
    if data > options["ratio_grace"] and data > options["max_ratio"] * base:
        return (f"{data} data bytes from {consumed} (upload {upload}), ratio {ratio_text(data, base)}, "
                f"max_ratio {options['max_ratio']:.1f}")
    if out > options["sparse_grace"] and out > options["max_sparse_ratio"] * base:
        return (f"{out} bytes, zeros included, from {consumed} (upload {upload}), ratio {ratio_text(out, base)}, "
                f"max_sparse_ratio {options['max_sparse_ratio']:.1f}")
    return None


def declared_over_budget(options: Mapping[str, Any], declared: int, size: int) -> str | None:
    """Why a declared output of ``declared`` bytes from ``size`` compressed bytes is a bomb, or None.

    A declared size may be all zeros, so only the sparse ratio applies to it.
    """
    if declared > options["sparse_grace"] and declared > options["max_sparse_ratio"] * max(size, 1):
        return (f"ratio {ratio_text(declared, size)} from {size} bytes, "
                f"max_sparse_ratio {options['max_sparse_ratio']:.1f}")
    return None


class SparseWriter:
    """Writes the output in order, in aligned blocks, leaving every all-zero 64 KiB as a hole.

    ``size`` counts every byte given; ``data`` the bytes written so far (whole 64 KiB
    pieces that are not all zeros; up to one block behind ``size``).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = bytearray()
        self._flushed = 0
        self.size = 0
        self.data = 0

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
            if buf.startswith(ZERO_HOLE[:stop - at], at, stop):
                continue
            self.data += stop - at
            while at < stop:
                written = os.pwrite(self._fd, view[at:stop], offset + at)  # may write less: go on
                if written <= 0:
                    raise OSError("pwrite wrote nothing")
                at += written
