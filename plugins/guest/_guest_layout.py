"""The guest's partition tables and the filesystem signature of each partition.

Not a plugin: the ``os_type`` plugin uses it. :func:`read_layout` takes a ``read(offset, size)`` callable over the
*guest* bytes (reached through the disk format's own mapping; a short read at the end of the disk is
fine) and the guest disk size, and returns a :class:`GuestLayout`. It reads only the few sectors it
needs, never outside ``[0, disk_size)``, and never more than :data:`READ_CAP` bytes per call, whatever
the disk size. Anything odd in the layout (a partition past the end, overlapping partitions, a GPT
with a bad CRC or an absurd entry count, an EBR loop, a boot sector that lies about its sector size,
two tables that disagree) becomes a ``(code, detail)`` pair in :attr:`GuestLayout.problems`; a problem
never raises. An exception of the ``read`` callable itself (an I/O error) propagates, except
:class:`ReadBudgetExhausted`, which ends the read like the cap does.

Where two readers (firmware, Linux, Windows) could see different partitions, the layout holds every
partition either sees: the MBR and every GPT (512- and 4096-byte sectors, primary and backup) are all
read whenever they exist, and the whole disk is probed for a filesystem beside the tables. Tables are
:mod:`._partition_tables`', filesystem signatures :mod:`._filesystems`', the Windows files of
installation media :mod:`._optical_media`', :mod:`._fat_media`' and :mod:`._exfat_media`'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ._exfat_media import exfat_setup_files
from ._fat_media import fat_setup_files
from ._filesystems import OEM_IDS, WINDOWS_PARTITION_TYPES, probe
from ._optical_media import OPTICAL, windows_setup_files
from ._partition_tables import (
    MAX_EBR,
    MAX_GPT_ENTRIES,
    MBR_SECTOR,
    Partition,
    boot_sector_table,
    gpt_label,
    has_protective_entry,
    mbr_entries,
    read_backup_only,
    read_gpt,
    read_mbr,
)

__all__ = ["GPT_SECTOR_SIZES", "MAX_EBR", "MAX_GPT_ENTRIES", "PROBE_SPAN", "READ_CAP", "GuestLayout", "Partition",
           "ReadBudgetExhausted", "read_layout"]

Reader = Callable[[int, int], bytes]

#: The most bytes one :func:`read_layout` call reads; past it the call stops with ``layout.read_budget``.
READ_CAP = 4 << 20
#: GPT sector sizes: a header at LBA 1 of each is read (both, when both exist).
GPT_SECTOR_SIZES = (512, 4096)
#: The bytes from a partition's start that its filesystem probe may read (Btrfs's superblock at 64 KiB).
PROBE_SPAN = (64 << 10) + 512


@dataclass(frozen=True)
class GuestLayout:
    """The guest disk's layout: ``partition_table`` is ``"gpt"`` (a GPT was read, maybe beside an MBR),
    ``"mbr"`` or ``"none"``.

    ``filesystem`` is the filesystem found at byte 0 of the whole disk when no partition starts
    there (with or without a partition table: a superfloppy); ``windows_media`` the Windows boot and
    setup files of the FAT, exFAT, ISO 9660 or UDF filesystem there. ``problems`` are ``(code, detail)`` pairs;
    ``bytes_read`` is what the call read.
    """

    partition_table: str
    partitions: tuple[Partition, ...] = ()
    filesystem: str | None = None
    problems: tuple[tuple[str, str], ...] = ()
    bytes_read: int = 0
    windows_media: tuple[str, ...] = ()


class ReadBudgetExhausted(Exception):
    """The read cap is reached; a ``read`` callable with a budget of its own may raise it too."""


@dataclass
class _Reader:
    """Clamps every read to the disk and counts the bytes against :data:`READ_CAP`."""

    read_fn: Reader
    disk_size: int
    cap: int = READ_CAP
    used: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0 or offset >= self.disk_size:
            return b""
        size = min(size, self.disk_size - offset)
        if self.used + size > self.cap:
            raise ReadBudgetExhausted
        self.used += size
        data = self.read_fn(offset, size)
        return bytes(data[:size])

    def problem(self, code: str, detail: str) -> None:
        self.problems.append((code, detail))


def _protective_mbr(reader: _Reader, sector0: bytes) -> None:
    """A GPT disk's sector 0 should hold a protective MBR (one entry of type 0xee) and nothing else."""
    types = [e[1] for e in mbr_entries(sector0)] if sector0[510:512] == b"\x55\xaa" else []
    if any(t not in (0, 0xEE) for t in types):  # hybrid ISOs and Boot Camp do this; readers may follow either
        reader.problem("partition.gpt_hybrid_mbr", "sector 0 holds an MBR of its own beside the GPT; both are read")
    elif 0xEE not in types:
        reader.problem("partition.gpt_protective_mbr", "no protective MBR entry (type 0xee) in sector 0")


def _gpts(reader: _Reader, sector0: bytes) -> tuple[bool, list[Partition]]:
    """Every GPT: a header at LBA 1 of each sector size, else a backup behind a protective MBR."""
    headers = []
    for sector in GPT_SECTOR_SIZES:
        header = reader.read(sector, 512)
        if header[:8] == b"EFI PART":
            headers.append((sector, header))
    parts: list[Partition] = []
    if headers:
        _protective_mbr(reader, sector0)
        if len(headers) > 1:
            reader.problem("partition.gpt_sector_sizes", "GPT headers for both 512- and 4096-byte sectors; both read")
        for sector, header in headers:
            parts += read_gpt(reader, sector, header)
        return True, parts
    if has_protective_entry(sector0):
        for sector in GPT_SECTOR_SIZES:
            backup = read_backup_only(reader, sector)
            if backup is not None:
                reader.problem("partition.gpt_missing", f"no primary {gpt_label(sector)} header at LBA 1")
                return True, backup
    return False, parts


def _merge(reader: _Reader, gpt: list[Partition], mbr: list[Partition]) -> list[Partition]:
    """GPT partitions, then the MBR's: an MBR entry mirroring a GPT partition (same start and size) is
    dropped unless its type is Windows evidence; any other is kept, as ``partition.tables_disagree``."""
    ranges = {(p.start, p.size) for p in gpt}
    extra = [p for p in mbr if (p.start, p.size) not in ranges or p.type_id in WINDOWS_PARTITION_TYPES]
    unmirrored = [p for p in extra if (p.start, p.size) not in ranges]
    if gpt and unmirrored:
        reader.problem("partition.tables_disagree", "the MBR lists partitions the GPT does not: "
                       + ", ".join(f"{p.index} (type {p.type_id})" for p in unmirrored))
    return gpt + extra


def _check_ranges(reader: _Reader, parts: list[Partition]) -> None:
    """Report partitions past the disk end, and overlapping pairs of one table."""
    for part in parts:
        if part.start + part.size > reader.disk_size:
            reader.problem("partition.past_end", f"partition {part.index} ends at byte {part.start + part.size} "
                           f"of a {reader.disk_size}-byte disk")
    for table in dict.fromkeys(p.table for p in parts):
        ordered = sorted((p for p in parts if p.table == table), key=lambda p: (p.start, p.index))
        reach: Partition | None = None  # the partition reaching furthest so far
        for part in ordered:
            if reach is not None and part.start < reach.start + reach.size:
                reader.problem("partition.overlap", f"partitions {reach.index} and {part.index} overlap")
            if reach is None or part.start + part.size > reach.start + reach.size:
                reach = part


def _probe_all(reader: _Reader, parts: list[Partition],
               prefetch: Callable[[list[tuple[int, int]]], None] | None) -> list[Partition]:
    """Each partition with the filesystem at its start (and an optical one's Windows files); a start
    shared by several partitions is probed once."""
    inside = [p for p in parts if p.start < reader.disk_size]
    if prefetch is not None:
        prefetch(list(dict.fromkeys((p.start, min(p.size, PROBE_SPAN)) for p in inside)))
    found: dict[tuple[int, int], tuple[str | None, tuple[str, ...]]] = {}
    probed = []
    for part in parts:
        if part.start < reader.disk_size:
            key = (part.start, part.size)
            if key not in found:
                fs = probe(reader, part.start, part.size, f"partition {part.index}")
                found[key] = fs, _media(reader, part.start, fs)
            fs, media = found[key]
            part = replace(part, filesystem=fs, windows_media=media)
        probed.append(part)
    return probed


@dataclass
class _Quiet:
    """The layout reader without its problems: for a reading of the disk that may well be wrong."""

    inner: _Reader

    @property
    def disk_size(self) -> int:
        return self.inner.disk_size

    def read(self, offset: int, size: int) -> bytes:
        return self.inner.read(offset, size)

    def problem(self, code: str, detail: str) -> None:
        pass


def _mbr_4096(reader: _Reader, sector0: bytes, beside_gpt: bool, known: list[Partition],
              prefetch: Callable[[list[tuple[int, int]]], None] | None) -> list[Partition]:
    """The MBR read as a disk of 4096-byte logical sectors (4Kn) reads it; a partition of that reading is
    kept where a filesystem is found at a start no other table gives (``partition.mbr_sector_size``)."""
    quiet = _Quiet(reader)
    starts = {p.start for p in known}
    candidates = [p for p in read_mbr(quiet, sector0, beside_gpt=beside_gpt, sector=4096)
                  if p.start not in starts and p.start < reader.disk_size]
    if prefetch is not None and candidates:
        prefetch([(p.start, min(p.size, PROBE_SPAN)) for p in candidates])
    found = []
    for part in candidates:
        fs = probe(quiet, part.start, part.size, f"partition {part.index}")
        if fs is not None:
            found.append(replace(part, filesystem=fs, windows_media=_media(reader, part.start, fs)))
    if found:
        reader.problem("partition.mbr_sector_size", "read with 4096-byte sectors, the MBR points at filesystems "
                       "too: " + ", ".join(f"partition {p.index} ({p.filesystem})" for p in found))
    return found


def _media(reader: _Reader, base: int, filesystem: str | None) -> tuple[str, ...]:
    """Windows boot and setup files of a FAT, exFAT, ISO 9660 or UDF filesystem at ``base`` (an optical one is
    read from its start to the disk's end, as a whole-disk reader would)."""
    if filesystem == "vfat":
        return fat_setup_files(reader, base, reader.read(base, 512))
    if filesystem == "exfat":
        return exfat_setup_files(reader, base, reader.read(base, 512))
    return windows_setup_files(reader, base, reader.disk_size - base) if filesystem in OPTICAL else ()


def read_layout(read: Reader, disk_size: int, *, cap: int = READ_CAP,
                prefetch: Callable[[list[tuple[int, int]]], None] | None = None) -> GuestLayout:
    """The partition tables, partitions and filesystem signatures of the guest disk behind ``read``.

    ``prefetch``, if given, is told the ``(offset, size)`` ranges the partition probes are about to
    read, so that a costly reader (one ``qemu-img`` run per miss) can fetch them all at once.
    """
    reader = _Reader(read, max(disk_size, 0), cap)
    table = "none"
    parts: list[Partition] = []
    whole: str | None = None
    media: tuple[str, ...] = ()
    try:
        sector0 = reader.read(0, MBR_SECTOR)
        has_gpt, gpt = _gpts(reader, sector0)
        signed = sector0[510:512] == b"\x55\xaa"
        mbr: list[Partition] = []
        has_mbr = signed and (_is_mbr(sector0) or boot_sector_table(sector0))
        if has_mbr:
            mbr = read_mbr(reader, sector0, beside_gpt=has_gpt)
            table = "mbr"
        if has_gpt:
            table = "gpt"
        parts = _merge(reader, gpt, mbr)
        _check_ranges(reader, parts)
        parts = _probe_all(reader, parts, prefetch)
        if has_mbr:
            parts += _mbr_4096(reader, sector0, has_gpt, parts, prefetch)
        if not any(p.start == 0 for p in parts):
            whole = probe(reader, 0, reader.disk_size, "disk")
            media = _media(reader, 0, whole)
            if whole is not None and whole not in OPTICAL and table != "none":
                reader.problem("partition.whole_disk_filesystem", f"filesystem {whole} at sector 0 beside "
                               "the partition table: a reader of the whole disk sees it, one of the table does not")
    except ReadBudgetExhausted:
        reader.problem("layout.read_budget", f"stopped after reading {reader.used} bytes (cap {reader.cap})")
    return GuestLayout(table, tuple(parts), whole, tuple(reader.problems), reader.used, media)


def _is_mbr(sector0: bytes) -> bool:
    """A 0x55AA sector 0 is an MBR unless it is a filesystem's boot sector (NTFS, BitLocker, exFAT, FAT)."""
    if bytes(sector0[3:11]) in OEM_IDS:
        return False
    return not (sector0[82:87] == b"FAT32" or sector0[54:59] in (b"FAT12", b"FAT16", b"FAT  "))
