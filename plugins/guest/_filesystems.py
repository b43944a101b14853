"""Filesystem signatures at a partition's start, and what the filesystems found say of the guest OS.

Used by :mod:`._guest_layout`: :func:`probe` reads through the layout reader (whose reads are
clamped to the disk and counted against its cap) and reports a boot sector that lies about its
sector size as a problem. :func:`os_evidence` turns a layout into Windows and Linux evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._guest_layout import GuestLayout

#: Filesystems that make a disk look like a Linux guest for :func:`os_evidence`.
LINUX_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "swap", "lvm"})
#: Filesystems only Windows makes: NTFS, a BitLocker-encrypted volume, ReFS.
WINDOWS_FILESYSTEMS = frozenset({"ntfs", "bitlocker", "refs"})
#: Boot-sector OEM ids (bytes 3-10) of the filesystems :func:`_boot_sector` recognises by them.
OEM_IDS = {b"NTFS    ": "ntfs", b"-FVE-FS-": "bitlocker", b"EXFAT   ": "exfat"}


class Prober(Protocol):
    """What :func:`probe` needs of the layout reader."""

    def read(self, offset: int, size: int) -> bytes: ...

    def problem(self, code: str, detail: str) -> None: ...


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little") if len(data) >= offset + 2 else 0


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little") if len(data) >= offset + 4 else 0


def _boot_sector(reader: Prober, head: bytes, where: str) -> str | None:
    """NTFS, BitLocker, exFAT or FAT from a boot sector, checking its bytes-per-sector (exFAT: its shift).

    A BitLocker volume keeps an NTFS-like boot sector whose OEM id is ``-FVE-FS-``.
    """
    kind = OEM_IDS.get(bytes(head[3:11]))
    if kind == "exfat":
        shift = head[108] if len(head) > 108 else 0
        if not 9 <= shift <= 12:
            reader.problem("partition.sector_size", f"{where}: exFAT bytes-per-sector shift {shift}")
            return None
        return "exfat"
    if kind is None and (head[82:87] == b"FAT32" or head[54:59] in (b"FAT12", b"FAT16", b"FAT  ")):
        kind = "vfat"
    if kind is None:
        return None
    sector = _u16(head, 11)
    if sector not in (512, 1024, 2048, 4096):
        reader.problem("partition.sector_size", f"{where}: {kind} boot sector says {sector} bytes per sector")
        return None
    return kind


def _ext(head: bytes) -> str | None:
    """ext2/3/4 from the superblock at 1024: extents, 64bit or flex_bg → ext4, a journal → ext3."""
    sb = head[1024:2048]
    if sb[56:58] != b"\x53\xef" or not _u32(sb, 0) or not _u32(sb, 4) or _u32(sb, 24) > 6 or _u32(sb, 20) > 1:
        return None  # also sane inode and block counts, block size and first data block: not stray bytes
    compat, incompat = _u32(sb, 0x5C), _u32(sb, 0x60)
    if incompat & (0x40 | 0x80 | 0x200):
        return "ext4"
    return "ext3" if compat & 0x4 else "ext2"


def probe(reader: Prober, base: int, size: int, where: str) -> str | None:
    """The filesystem whose signature is at byte ``base`` of a region of ``size`` bytes, or None."""
    head = reader.read(base, min(size, 4096))
    if head[:6] == b"LUKS\xba\xbe":
        return "luks"
    if head[:4] == b"XFSB":
        return "xfs"
    if head[3:11] == b"ReFS\0\0\0\0" and head[16:20] == b"FSRS":
        return "refs"
    found = _boot_sector(reader, head, where)
    if found is not None or bytes(head[3:11]) in OEM_IDS:
        return found
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    for sector in range(4):
        label = head[sector * 512 : sector * 512 + 32]
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            return "lvm"
    found = _ext(head)
    if found is not None:
        return found
    if size >= (64 << 10) + 72 and reader.read(base + (64 << 10) + 64, 8) == b"_BHRfS_M":
        return "btrfs"
    return _optical(reader, base, size)


def _optical(reader: Prober, base: int, size: int) -> str | None:
    """ISO 9660 or UDF from the volume recognition sequence at 32 KiB (2 KiB descriptors)."""
    iso = False
    for number in range(16):
        offset = (32 << 10) + 2048 * number
        if offset + 6 > size:
            break
        ident = reader.read(base + offset, 6)[1:6]
        if ident in (b"NSR02", b"NSR03"):
            return "udf"
        if ident == b"CD001":
            iso = True
        elif ident not in (b"BEA01", b"BOOT2", b"CDW02", b"TEA01"):
            break
    return "iso9660" if iso else None


#: Partition types only Windows makes (GPT type GUIDs, MBR type bytes).
WINDOWS_PARTITION_TYPES = {
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved partition",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery partition",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Windows dynamic disk (LDM metadata)",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "Windows dynamic disk (LDM data)",
    "E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D": "Windows Storage Spaces",
    "0x42": "Windows dynamic disk (MBR type 0x42)",
}


@dataclass(frozen=True)
class OsEvidence:
    """What in a layout points at Windows or Linux, each as a short description (``"partition 2: ntfs"``)."""

    windows: tuple[str, ...] = ()
    linux: tuple[str, ...] = ()

    @property
    def detected(self) -> str:
        """``windows`` if anything points at Windows (it wins: licences follow it), ``linux``, or ``unknown``."""
        return "windows" if self.windows else "linux" if self.linux else "unknown"


def os_evidence(layout: GuestLayout) -> OsEvidence:
    """Windows evidence: an NTFS, BitLocker or ReFS volume, a partition type only Windows makes, or
    Windows boot and setup files on installation media (ISO 9660 or UDF).

    Linux evidence: ext2/3/4, XFS, Btrfs, swap or an LVM physical volume. FAT (an EFI system
    partition), exFAT, ISO 9660, UDF and LUKS point at neither. A partition is named by its index,
    with its table's name first when the partitions come from more than one table (``MBR partition 1``).
    """
    windows: list[str] = []
    linux: list[str] = []
    tables = {p.table for p in layout.partitions}
    found = [(f"partition {p.index}" if len(tables) == 1 else f"{p.table} partition {p.index}",
              p.filesystem, p.type_id, p.windows_media) for p in layout.partitions]
    if layout.filesystem is not None:
        found.append(("whole disk", layout.filesystem, "", layout.windows_media))
    for where, filesystem, type_id, media in found:
        if filesystem in WINDOWS_FILESYSTEMS:
            windows.append(f"{where}: {filesystem}")
        elif filesystem in LINUX_FILESYSTEMS:
            linux.append(f"{where}: {filesystem}")
        if type_id in WINDOWS_PARTITION_TYPES:
            windows.append(f"{where}: {WINDOWS_PARTITION_TYPES[type_id]}")
        if media:
            windows.append(f"{where}: Windows installation media ({', '.join(media)})")
    return OsEvidence(tuple(windows), tuple(linux))
