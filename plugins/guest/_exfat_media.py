"""Windows boot and setup files on an exFAT volume (installation media too large for FAT32).

exFAT names a file by a set of directory entries: a File entry (0x85), a Stream Extension (0xC0)
with the first cluster and length, and File Name entries (0xC1) of UTF-16 characters. Linux and
Windows both refuse an entry set whose checksum fails; so does :func:`exfat_setup_files`. A
directory's clusters follow the FAT, or are contiguous when its stream says NoFatChain; at most
:data:`._fat_media.MAX_CHAIN` clusters are read per directory, and at most
:data:`._optical_media.MAX_DIRECTORIES` directories. A boot sector giving an impossible geometry
is a ``media.fat_unreadable`` problem.
"""

from __future__ import annotations

from ._fat_media import MAX_CHAIN
from ._optical_media import Entries, MediaReader, TooManyDirectories, lookup


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little") if len(data) >= offset + 2 else 0


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little") if len(data) >= offset + 4 else 0


def _u64(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 8], "little") if len(data) >= offset + 8 else 0


def set_checksum(entries: bytes) -> int:
    """The SetChecksum of a directory entry set (its own field, bytes 2-3, left out)."""
    total = 0
    for index, byte in enumerate(entries):
        if index not in (2, 3):
            total = ((0x8000 if total & 1 else 0) + (total >> 1) + byte) & 0xFFFF
    return total


class _ExFat:
    def __init__(self, reader: MediaReader, base: int, boot: bytes) -> None:
        sector_shift, cluster_shift = (boot[108], boot[109]) if len(boot) > 109 else (0, 0)
        if not 9 <= sector_shift <= 12 or sector_shift + cluster_shift > 25:
            raise ValueError(f"bytes-per-sector shift {sector_shift}, sectors-per-cluster shift {cluster_shift}")
        self.reader, self.base = reader, base
        self.sector = 1 << sector_shift
        self.cluster = self.sector << cluster_shift
        self.fat = _u32(boot, 80) * self.sector
        self.heap = _u32(boot, 88) * self.sector
        self.last = _u32(boot, 92) + 1
        self.root = _u32(boot, 96)

    def _chain(self, first: int, length: int, contiguous: bool) -> bytes:
        chunks: list[bytes] = []
        cluster, seen = first, set[int]()
        count = (length + self.cluster - 1) // self.cluster if contiguous else self.last
        while 2 <= cluster <= self.last and cluster not in seen and len(seen) < count:
            if len(seen) >= MAX_CHAIN:
                self.reader.problem("media.directories", f"exFAT: a directory of more than {MAX_CHAIN} clusters")
                break
            seen.add(cluster)
            chunks.append(self.reader.read(self.base + self.heap + (cluster - 2) * self.cluster, self.cluster))
            cluster = cluster + 1 if contiguous else _u32(self.reader.read(self.base + self.fat + 4 * cluster, 4), 0)
        return b"".join(chunks)

    def directory(self, handle: object) -> Entries:
        assert isinstance(handle, tuple)
        first, length, contiguous = handle
        return _entries(self._chain(first, length, contiguous))


def _entries(data: bytes) -> Entries:
    entries: Entries = []
    at = 0
    while at + 32 <= len(data) and data[at] != 0:
        kind = data[at]
        if kind != 0x85:
            at += 32
            continue
        count = data[at + 1]
        whole = data[at : at + 32 * (count + 1)]
        at += 32 * (count + 1) if count >= 2 else 32
        if count < 2 or len(whole) < 32 * (count + 1) or set_checksum(whole) != _u16(whole, 2) \
                or whole[32] != 0xC0:
            continue
        stream = whole[32:64]
        name_length = stream[3]
        name = b"".join(whole[offset + 2 : offset + 32] for offset in range(64, len(whole), 32)
                        if whole[offset] == 0xC1)
        text = name[: 2 * name_length].decode("utf-16-le", errors="replace")
        directory = _u16(whole, 4) & 0x10
        child = (_u32(stream, 20), _u64(stream, 24), bool(stream[1] & 2)) if directory else None
        entries.append((frozenset({text.lower()}), child))
    return entries


def exfat_setup_files(reader: MediaReader, base: int, boot: bytes) -> tuple[str, ...]:
    """The Windows boot and setup files of the exFAT volume whose boot sector (at ``base``) is ``boot``."""
    try:
        volume = _ExFat(reader, base, boot)
    except ValueError as exc:
        reader.problem("media.fat_unreadable", f"exFAT boot sector: {exc}")
        return ()
    try:
        return tuple(lookup("exFAT", (volume.root, 0, False), volume.directory))
    except TooManyDirectories:
        reader.problem("media.directories", "exFAT: too many directories to read")
        return ()
