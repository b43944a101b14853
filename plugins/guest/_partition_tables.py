"""MBR (with its EBR chains) and GPT partition tables, read as the union of what their readers see.

Used by :mod:`._guest_layout`, whose reader clamps every read to the disk and counts it against
its cap. Where two well-known readers could see different partitions, every partition either
would see is returned:

* every extended partition of the MBR is followed (Linux follows all of them, not just the first),
  and in each EBR every data entry is a logical partition and every link is followed (Windows uses
  entries 1 and 2, Linux scans all four);
* a GPT's backup (at the primary's alternate LBA and in the last sector) is read even when the
  primary is good: a partition only the backup lists is kept (``partition.gpt_backup_differs``);
* :func:`read_gpt` is called once per sector size whose header is at LBA 1 (512 and 4096 bytes).

Problems are ``(code, detail)`` pairs given to the reader; nothing here raises on bad data.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol

#: The most logical partitions (EBRs) followed along an MBR's extended partitions.
MAX_EBR = 64
#: The most GPT entries read; a header claiming more is a ``partition.gpt_entries`` problem.
MAX_GPT_ENTRIES = 256
MBR_SECTOR = 512
MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_PROTECTIVE = 0xEE


@dataclass(frozen=True)
class Partition:
    """One partition: byte ``start`` and ``size`` on the guest disk.

    ``type_id`` is the MBR type byte (``"0x07"``) or the GPT type GUID (upper case). ``name`` is the
    GPT partition name: untrusted guest text, kept as is; callers must escape it before showing it.
    ``filesystem`` is the signature found at the partition start, or None. ``table`` says which
    table lists it: ``"MBR"``, ``"GPT"``, ``"GPT 4096"`` (4096-byte sectors), each with ``" backup"``
    for a partition only a backup GPT lists, and ``"MBR 4096"`` for the MBR read with 4096-byte
    sectors. ``windows_media`` lists the Windows boot and setup files of a FAT, ISO 9660 or UDF
    filesystem at its start (:mod:`._optical_media`, :mod:`._fat_media`).
    """

    index: int
    start: int
    size: int
    type_id: str
    name: str = ""
    filesystem: str | None = None
    table: str = "MBR"
    windows_media: tuple[str, ...] = ()


class TableReader(Protocol):
    """What the table readers need of the layout reader."""

    @property
    def disk_size(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def problem(self, code: str, detail: str) -> None: ...


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little") if len(data) >= offset + 4 else 0


def mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """The four ``(status, type, first LBA, sectors)`` entries of an MBR or EBR sector."""
    return [struct.unpack_from("<B3xB3xII", sector, 446 + 16 * n) for n in range(4)]


def has_protective_entry(sector0: bytes) -> bool:
    return sector0[510:512] == b"\x55\xaa" and MBR_PROTECTIVE in [e[1] for e in mbr_entries(sector0)]


# --- MBR ---------------------------------------------------------------------------------------


def read_mbr(reader: TableReader, sector0: bytes, *, beside_gpt: bool, sector: int = MBR_SECTOR) -> list[Partition]:
    """The primary entries, then the logical partitions of every extended partition's EBR chain.

    Beside a GPT, a protective entry (0xee) is the GPT's and is not returned; without one, it is
    returned with a ``partition.gpt_missing`` problem. An entry with a bad status byte is returned
    too (with a ``partition.mbr_entry`` problem): some reader may still use it. ``sector`` is the
    logical sector size the entries count in (the table is labelled ``MBR 4096`` for 4096).
    """
    table = "MBR" if sector == MBR_SECTOR else f"MBR {sector}"
    parts: list[Partition] = []
    extended: list[tuple[int, int]] = []
    for number, (status, ptype, first, count) in enumerate(mbr_entries(sector0), start=1):
        if ptype == 0:
            continue
        if count == 0:
            reader.problem("partition.mbr_entry", f"entry {number}: type 0x{ptype:02x} of zero sectors")
            continue
        if status not in (0x00, 0x80):
            reader.problem("partition.mbr_entry", f"entry {number}: status byte 0x{status:02x}")
        if ptype in MBR_EXTENDED:
            if extended:
                reader.problem("partition.mbr_entry", f"entry {number}: a second extended partition (read too)")
            extended.append((first, count))
            continue
        if ptype == MBR_PROTECTIVE:
            if beside_gpt:
                continue
            reader.problem("partition.gpt_missing", f"entry {number}: protective MBR entry but no GPT header")
        parts.append(Partition(number, first * sector, count * sector, f"0x{ptype:02x}", table=table))
    seen: set[int] = set()
    for ext in extended:
        _ebr_chain(reader, ext, parts, seen, sector)
    return parts


def _ebr_chain(reader: TableReader, extended: tuple[int, int], parts: list[Partition], seen: set[int],
               sector_size: int) -> None:
    """Every EBR reachable from the extended partition: each data entry is a logical partition."""
    ext_first, ext_count = extended
    queue = deque([ext_first])
    while queue:
        ebr = queue.popleft()
        if ebr in seen:
            reader.problem("partition.ebr_loop", f"EBR chain returns to sector {ebr}")
            continue
        if len(seen) >= MAX_EBR:
            reader.problem("partition.ebr_count", f"more than {MAX_EBR} logical partitions")
            return
        seen.add(ebr)
        sector = reader.read(ebr * sector_size, MBR_SECTOR)
        if len(sector) < MBR_SECTOR or sector[510:512] != b"\x55\xaa":
            reader.problem("partition.mbr_entry", f"EBR at sector {ebr}: no boot signature")
            continue
        for _status, ptype, first, count in mbr_entries(sector):
            if ptype == 0 or count == 0:
                continue
            if ptype not in MBR_EXTENDED:
                index = 5 + sum(1 for p in parts if p.index >= 5)
                parts.append(Partition(index, (ebr + first) * sector_size, count * sector_size, f"0x{ptype:02x}",
                                       table="MBR" if sector_size == MBR_SECTOR else f"MBR {sector_size}"))
            elif first >= ext_count:
                reader.problem("partition.past_end", f"EBR at sector {ebr}: next EBR outside the extended partition")
            else:
                queue.append(ext_first + first)


def boot_sector_table(sector0: bytes) -> bool:
    """Whether a filesystem boot sector's bytes 446-509 also read as an MBR table, as Linux reads them:
    every status byte 0x00 or 0x80 and at least one entry in use."""
    entries = mbr_entries(sector0)
    return all(e[0] in (0x00, 0x80) for e in entries) and any(e[1] and e[3] for e in entries)


# --- GPT ---------------------------------------------------------------------------------------


def gpt_label(sector: int) -> str:
    return "GPT" if sector == 512 else f"GPT {sector}"


def _gpt(reader: TableReader, sector: int, header: bytes, which: str, table: str,
         problem: ProblemSink) -> list[Partition] | None:
    """Check a GPT header's and entries' CRCs and geometry, then read the entries; None if unusable."""
    size = _u32(header, 12)
    if not 92 <= size <= len(header):
        problem("partition.gpt_header", f"{which} header size {size}")
        return None
    stored = _u32(header, 16)
    if zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) != stored:
        problem("partition.gpt_crc", f"{which} GPT header CRC32 does not match")
        return None
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if not 128 <= entry_size <= 4096 or entry_size % 8:
        problem("partition.gpt_entry_size", f"{which} entry size {entry_size}")
        return None
    if count > MAX_GPT_ENTRIES:
        problem("partition.gpt_entries", f"{which}: {count} entries (at most {MAX_GPT_ENTRIES} are read)")
        return None
    offset, length = entries_lba * sector, count * entry_size
    if entries_lba < 2 or offset + length > reader.disk_size:
        problem("partition.gpt_entries", f"{which} entries array at LBA {entries_lba} is outside the disk")
        return None
    entries = reader.read(offset, length)
    if zlib.crc32(entries) != entries_crc:
        problem("partition.gpt_crc", f"{which} GPT entries array CRC32 does not match")
        return None
    parts = []
    for number in range(count):
        entry = entries[number * entry_size : number * entry_size + 128]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        type_id = str(uuid.UUID(bytes_le=entry[:16])).upper()
        name = entry[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        if last < first:
            problem("partition.bad_range", f"{which} entry {number + 1}: last LBA {last} before first {first}")
            continue
        parts.append(Partition(number + 1, first * sector, (last - first + 1) * sector, type_id, name, table=table))
    return parts


class ProblemSink(Protocol):
    def __call__(self, code: str, detail: str) -> None: ...


def _quiet(code: str, detail: str) -> None:
    """Problems of a backup GPT read beside a good primary: the primary is what a damaged backup hides."""


def _backup_header(reader: TableReader, sector: int, lba: int) -> bytes | None:
    if lba <= 1 or (lba + 1) * sector > reader.disk_size:
        return None
    header = reader.read(lba * sector, 512)
    return header if header[:8] == b"EFI PART" else None


def read_backup_only(reader: TableReader, sector: int) -> list[Partition] | None:
    """The backup GPT in the disk's last sector, as UEFI firmware reads it when the primary is unusable."""
    header = _backup_header(reader, sector, reader.disk_size // sector - 1)
    if header is None or reader.disk_size < 3 * sector:
        return None
    which = "backup" if sector == MBR_SECTOR else f"backup {gpt_label(sector)}"
    parts = _gpt(reader, sector, header, which, gpt_label(sector), reader.problem)
    if parts is not None:
        reader.problem("partition.gpt_backup_used", f"the primary {gpt_label(sector)} is unusable; its backup was read")
    return parts


def read_gpt(reader: TableReader, sector: int, header: bytes) -> list[Partition]:
    """The GPT whose primary header (at LBA 1 of ``sector``-byte sectors) is ``header``.

    A usable primary is read with its backup (at the primary's alternate LBA and in the last
    sector), and a partition only the backup lists is added; an unusable primary sends the reader to
    the backup in the last sector.
    """
    label = gpt_label(sector)
    primary = _gpt(reader, sector, header, f"primary {label}" if sector != 512 else "primary", label, reader.problem)
    if primary is None:
        return read_backup_only(reader, sector) or []
    known = {(p.start, p.size, p.type_id) for p in primary}
    last = reader.disk_size // sector - 1
    for lba in sorted({struct.unpack_from("<Q", header, 32)[0], last}):
        backup_header = _backup_header(reader, sector, lba)
        backup = None if backup_header is None else _gpt(reader, sector, backup_header, "backup", label, _quiet)
        extra = [p for p in backup or [] if (p.start, p.size, p.type_id) not in known]
        if extra:
            reader.problem("partition.gpt_backup_differs", f"the {label} backup at LBA {lba} lists partitions the "
                           f"primary does not: {', '.join(str(p.index) for p in extra)}")
            primary += [Partition(p.index, p.start, p.size, p.type_id, p.name, table=f"{label} backup") for p in extra]
            known |= {(p.start, p.size, p.type_id) for p in extra}
    return primary
