"""The guest's partition table and the filesystem signature of each partition.

Not a plugin: the ``os_type`` plugin uses it. :func:`read_layout` takes a ``read(offset, size)`` callable over the
*guest* bytes (reached through the disk format's own mapping; a short read at the end of the disk is
fine) and the guest disk size, and returns a :class:`GuestLayout`. It reads only the few sectors it
needs, never outside ``[0, disk_size)``, and never more than :data:`READ_CAP` bytes per call, whatever
the disk size. Anything odd in the layout (a partition past the end, overlapping partitions, a GPT
with a bad CRC or an absurd entry count, an EBR loop, a boot sector that lies about its sector size)
becomes a ``(code, detail)`` pair in :attr:`GuestLayout.problems`; a problem never raises. An
exception of the ``read`` callable itself (an I/O error) propagates, except
:class:`ReadBudgetExhausted`, which ends the read like the cap does. A damaged primary GPT sends
the reader to the backup GPT in the last sector, as UEFI firmware does. Filesystem signatures
are :mod:`._filesystems`'.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ._filesystems import OEM_IDS, probe

Reader = Callable[[int, int], bytes]

#: The most bytes one :func:`read_layout` call reads; past it the call stops with ``layout.read_budget``.
READ_CAP = 4 << 20
#: The most logical partitions followed along an MBR extended partition's EBR chain.
MAX_EBR = 64
#: The most GPT entries read; a header claiming more is a ``partition.gpt_entries`` problem.
MAX_GPT_ENTRIES = 256
#: GPT sector sizes tried, in order: the header is at LBA 1.
GPT_SECTOR_SIZES = (512, 4096)
MBR_SECTOR = 512
#: The bytes from a partition's start that its filesystem probe may read (Btrfs's superblock at 64 KiB).
PROBE_SPAN = (64 << 10) + 512
MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_PROTECTIVE = 0xEE


@dataclass(frozen=True)
class Partition:
    """One partition: byte ``start`` and ``size`` on the guest disk.

    ``type_id`` is the MBR type byte (``"0x07"``) or the GPT type GUID (upper case). ``name`` is the
    GPT partition name: untrusted guest text, kept as is; callers must escape it before showing it.
    ``filesystem`` is the signature found at the partition start, or None.
    """

    index: int
    start: int
    size: int
    type_id: str
    name: str = ""
    filesystem: str | None = None


@dataclass(frozen=True)
class GuestLayout:
    """The guest disk's layout: ``partition_table`` is ``"mbr"``, ``"gpt"`` or ``"none"``.

    ``filesystem`` is the filesystem of the whole disk when there is no partition table.
    ``problems`` are ``(code, detail)`` pairs; ``bytes_read`` is what the call read.
    """

    partition_table: str
    partitions: tuple[Partition, ...] = ()
    filesystem: str | None = None
    problems: tuple[tuple[str, str], ...] = ()
    bytes_read: int = 0


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


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little") if len(data) >= offset + 4 else 0


# --- partition tables ------------------------------------------------------------------------


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """The four ``(status, type, first LBA, sectors)`` entries of an MBR or EBR sector."""
    return [struct.unpack_from("<B3xB3xII", sector, 446 + 16 * n) for n in range(4)]


def _mbr(reader: _Reader, sector0: bytes, parts: list[Partition]) -> None:
    """The primary entries, then the logical partitions of the first extended partition's EBR chain."""
    extended: tuple[int, int] | None = None
    for number, (status, ptype, first, count) in enumerate(_mbr_entries(sector0), start=1):
        if ptype == 0:
            continue
        if status not in (0x00, 0x80):
            reader.problem("partition.mbr_entry", f"entry {number}: status byte 0x{status:02x}")
            continue
        if count == 0:
            reader.problem("partition.mbr_entry", f"entry {number}: type 0x{ptype:02x} of zero sectors")
            continue
        if ptype in MBR_EXTENDED:
            if extended is None:
                extended = (first, count)
            else:
                reader.problem("partition.mbr_entry", f"entry {number}: a second extended partition")
            continue
        if ptype == MBR_PROTECTIVE:
            reader.problem("partition.gpt_missing", f"entry {number}: protective MBR entry but no GPT header")
        parts.append(Partition(number, first * MBR_SECTOR, count * MBR_SECTOR, f"0x{ptype:02x}"))
    if extended is not None:
        _ebr_chain(reader, extended, parts)


def _ebr_chain(reader: _Reader, extended: tuple[int, int], parts: list[Partition]) -> None:
    ext_first, ext_count = extended
    seen: set[int] = set()
    ebr = ext_first
    index = 5
    while True:
        if ebr in seen:
            reader.problem("partition.ebr_loop", f"EBR chain returns to sector {ebr}")
            return
        if len(seen) >= MAX_EBR:
            reader.problem("partition.ebr_count", f"more than {MAX_EBR} logical partitions")
            return
        seen.add(ebr)
        sector = reader.read(ebr * MBR_SECTOR, MBR_SECTOR)
        if len(sector) < MBR_SECTOR or sector[510:512] != b"\x55\xaa":
            reader.problem("partition.mbr_entry", f"EBR at sector {ebr}: no boot signature")
            return
        entries = _mbr_entries(sector)
        _status, ptype, first, count = entries[0]
        if ptype != 0 and count:
            parts.append(Partition(index, (ebr + first) * MBR_SECTOR, count * MBR_SECTOR, f"0x{ptype:02x}"))
            index += 1
        _status, next_type, next_first, _next_count = entries[1]
        if next_type not in MBR_EXTENDED:
            return
        if next_first >= ext_count:
            reader.problem("partition.past_end", f"EBR at sector {ebr}: next EBR outside the extended partition")
            return
        ebr = ext_first + next_first


def _gpt_header(reader: _Reader) -> tuple[int, bytes] | None:
    """``(sector size, header sector)`` of the first GPT header found at LBA 1, or None."""
    for sector in GPT_SECTOR_SIZES:
        header = reader.read(sector, sector if sector == 512 else 512)
        if header[:8] == b"EFI PART":
            return sector, header
    return None


def _protective_mbr(reader: _Reader, sector0: bytes) -> None:
    """A GPT disk's sector 0 should hold a protective MBR (one entry of type 0xee)."""
    types = [e[1] for e in _mbr_entries(sector0)] if sector0[510:512] == b"\x55\xaa" else []
    if MBR_PROTECTIVE not in types:
        if any(types):  # hybrid ISOs do this; firmware may then follow either table
            reader.problem("partition.gpt_hybrid_mbr", "sector 0 holds an MBR of its own beside the GPT")
        else:
            reader.problem("partition.gpt_protective_mbr", "no protective MBR entry (type 0xee) in sector 0")


def _gpt(reader: _Reader, sector: int, header: bytes, parts: list[Partition], which: str) -> bool:
    """Check a GPT header's and entries' CRCs and geometry, then read the entries; False if unusable."""
    size = _u32(header, 12)
    if not 92 <= size <= len(header):
        reader.problem("partition.gpt_header", f"{which} header size {size}")
        return False
    stored = _u32(header, 16)
    if zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) != stored:
        reader.problem("partition.gpt_crc", f"{which} GPT header CRC32 does not match")
        return False
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if not 128 <= entry_size <= 4096 or entry_size % 8:
        reader.problem("partition.gpt_entry_size", f"{which} entry size {entry_size}")
        return False
    if count > MAX_GPT_ENTRIES:
        reader.problem("partition.gpt_entries", f"{which}: {count} entries (at most {MAX_GPT_ENTRIES} are read)")
        return False
    offset, length = entries_lba * sector, count * entry_size
    if entries_lba < 2 or offset + length > reader.disk_size:
        reader.problem("partition.gpt_entries", f"{which} entries array at LBA {entries_lba} is outside the disk")
        return False
    table = reader.read(offset, length)
    if zlib.crc32(table) != entries_crc:
        reader.problem("partition.gpt_crc", f"{which} GPT entries array CRC32 does not match")
        return False
    for number in range(count):
        entry = table[number * entry_size : number * entry_size + 128]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        type_id = str(uuid.UUID(bytes_le=entry[:16])).upper()
        name = entry[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        if last < first:
            reader.problem("partition.bad_range", f"entry {number + 1}: last LBA {last} before first {first}")
            continue
        parts.append(Partition(number + 1, first * sector, (last - first + 1) * sector, type_id, name))
    return True


def _backup_gpt(reader: _Reader, parts: list[Partition]) -> bool:
    """Read the backup GPT in the disk's last sector, as UEFI firmware does when the primary is bad."""
    for sector in GPT_SECTOR_SIZES:
        if reader.disk_size < 3 * sector:
            continue
        header = reader.read(reader.disk_size - sector, 512)
        if header[:8] == b"EFI PART":
            if _gpt(reader, sector, header, parts, "backup"):
                reader.problem("partition.gpt_backup_used", "the primary GPT is unusable; its backup was read")
                return True
            return False
    return False


def _check_ranges(reader: _Reader, parts: list[Partition]) -> None:
    """Report partitions past the disk end and overlapping pairs."""
    for part in parts:
        if part.start + part.size > reader.disk_size:
            reader.problem("partition.past_end", f"partition {part.index} ends at byte {part.start + part.size} "
                           f"of a {reader.disk_size}-byte disk")
    ordered = sorted(parts, key=lambda p: (p.start, p.index))
    reach: Partition | None = None  # the partition reaching furthest so far
    for part in ordered:
        if reach is not None and part.start < reach.start + reach.size:
            reader.problem("partition.overlap", f"partitions {reach.index} and {part.index} overlap")
        if reach is None or part.start + part.size > reach.start + reach.size:
            reach = part


def read_layout(read: Reader, disk_size: int, *, cap: int = READ_CAP,
                prefetch: Callable[[list[tuple[int, int]]], None] | None = None) -> GuestLayout:
    """The partition table, partitions and filesystem signatures of the guest disk behind ``read``.

    ``prefetch``, if given, is told the ``(offset, size)`` ranges the partition probes are about to
    read, so that a costly reader (one ``qemu-img`` run per miss) can fetch them all at once.
    """
    reader = _Reader(read, max(disk_size, 0), cap)
    table = "none"
    parts: list[Partition] = []
    whole: str | None = None
    try:
        sector0 = reader.read(0, MBR_SECTOR)
        gpt = _gpt_header(reader)
        protective = sector0[510:512] == b"\x55\xaa" and MBR_PROTECTIVE in [e[1] for e in _mbr_entries(sector0)]
        if gpt is not None:
            table = "gpt"
            _protective_mbr(reader, sector0)
            if not _gpt(reader, gpt[0], gpt[1], parts, "primary"):
                _backup_gpt(reader, parts)
        elif protective and _backup_gpt(reader, parts):
            table = "gpt"
            reader.problem("partition.gpt_missing", "no primary GPT header at LBA 1")
        elif sector0[510:512] == b"\x55\xaa" and _is_mbr(sector0):
            table = "mbr"
            _mbr(reader, sector0, parts)
        _check_ranges(reader, parts)
        if table == "none":
            whole = probe(reader, 0, reader.disk_size, "disk")
        else:
            if prefetch is not None:
                prefetch([(p.start, min(p.size, PROBE_SPAN)) for p in parts if p.start < reader.disk_size])
            for number, part in enumerate(parts):
                if part.start < reader.disk_size:
                    fs = probe(reader, part.start, part.size, f"partition {part.index}")
                    parts[number] = Partition(part.index, part.start, part.size, part.type_id, part.name, fs)
    except ReadBudgetExhausted:
        reader.problem("layout.read_budget", f"stopped after reading {reader.used} bytes (cap {reader.cap})")
    return GuestLayout(table, tuple(parts), whole, tuple(reader.problems), reader.used)


def _is_mbr(sector0: bytes) -> bool:
    """A 0x55AA sector 0 is an MBR unless it is a filesystem's boot sector (NTFS, BitLocker, exFAT, FAT)."""
    if bytes(sector0[3:11]) in OEM_IDS:
        return False
    return not (sector0[82:87] == b"FAT32" or sector0[54:59] in (b"FAT12", b"FAT16", b"FAT  "))
