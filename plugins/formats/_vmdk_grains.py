"""A stream-optimized VMDK read two ways must give one disk: grain tables and grain markers agree.

qemu reads a stream-optimized VMDK at random, through the grain directory and
tables. A streaming reader (an OVF import that consumes the file as it arrives)
reads it front to back and places each compressed grain at the LBA its *marker*
names, skipping the table, directory and footer markers. A grain whose marker names
another LBA than the table entry pointing at it, or a grain no table points at, is
a sector the two readers see differently. This module builds both maps, LBA to the
sector of its grain, and :func:`disagreement` names the first difference.
"""

from __future__ import annotations

import struct
from typing import Protocol

SECTOR = 512
GRAIN_MARKER = struct.Struct("<QI")  # LBA, compressed size (nonzero)
METADATA_MARKER = struct.Struct("<QII")  # sectors that follow, size 0, type
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
ZEROED_GRAIN = 1  # a grain table entry meaning "reads as zeros" when the zeroed-grain flag is set


class Reader(Protocol):
    """A seekable binary reader (``ImageData.open()``)."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...


class GrainError(Exception):
    """The maps cannot be built (a table or marker outside the file, or too many grains)."""


def table_map(handle: Reader, *, gd_offset: int, capacity: int, grain: int, gtes: int, zeroed: bool,
              max_grains: int) -> dict[int, int]:
    """LBA (in sectors) to grain sector, as qemu reads it through the grain directory and tables."""
    tables = -(-capacity // (gtes * grain))
    handle.seek(gd_offset * SECTOR)
    directory = handle.read(tables * 4)
    if len(directory) != tables * 4:
        raise GrainError(f"grain directory at sector {gd_offset} ends after the file")
    grains: dict[int, int] = {}
    for table, (gt_offset,) in enumerate(struct.iter_unpack("<I", directory)):
        if gt_offset == 0:
            continue
        handle.seek(gt_offset * SECTOR)
        entries = handle.read(gtes * 4)
        if len(entries) != gtes * 4:
            raise GrainError(f"grain table {table} at sector {gt_offset} ends after the file")
        for index, (sector,) in enumerate(struct.iter_unpack("<I", entries)):
            if sector == 0 or (zeroed and sector == ZEROED_GRAIN):
                continue
            lba = (table * gtes + index) * grain
            if lba < capacity:
                grains[lba] = sector
        if len(grains) > max_grains:
            raise GrainError(f"more than {max_grains} allocated grains")
    return grains


def marker_map(handle: Reader, *, start: int, end: int, max_grains: int) -> dict[int, int]:
    """LBA to grain sector, as a streaming reader finds the grain markers from sector ``start`` to byte ``end``."""
    grains: dict[int, int] = {}
    position = start * SECTOR
    while position + METADATA_MARKER.size <= end:
        handle.seek(position)
        lba, size, kind = METADATA_MARKER.unpack(handle.read(METADATA_MARKER.size))
        if size:
            if lba in grains:
                raise GrainError(f"two grain markers for LBA {lba}")
            grains[lba] = position // SECTOR
            if len(grains) > max_grains:
                raise GrainError(f"more than {max_grains} grain markers")
            position += -(-(GRAIN_MARKER.size + size) // SECTOR) * SECTOR
        elif kind == MARKER_EOS:
            break
        elif kind in (MARKER_GT, MARKER_GD, MARKER_FOOTER):
            position += (1 + lba) * SECTOR  # the marker sector, then its metadata sectors
        else:
            raise GrainError(f"unknown marker type {kind} at sector {position // SECTOR}")
    if position > end:
        raise GrainError(f"a grain or metadata marker runs past the end of the stream at byte {end}")
    return grains


def disagreement(tables: dict[int, int], markers: dict[int, int]) -> str | None:
    """The first LBA whose grain the two maps place differently, described; None if they agree."""
    for lba in sorted(tables.keys() | markers.keys()):
        by_table, by_marker = tables.get(lba), markers.get(lba)
        if by_table != by_marker:
            table_says = "no grain" if by_table is None else f"sector {by_table}"
            markers_say = "no grain" if by_marker is None else f"sector {by_marker}"
            return f"LBA {lba}: grain tables say {table_says}, grain markers say {markers_say}"
    return None
