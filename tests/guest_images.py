"""Real guest disks for the guest layout tests: ``sfdisk`` partition tables with real filesystems.

Each filesystem is made by its own ``mkfs`` in a separate (sparse) file, then spliced into the
partitioned image at its partition's offset with Python: no loop devices, no root. The splice
copies only the non-zero chunks, so a 300 MiB XFS partition stays sparse.

System packages (Debian), beside those of :mod:`tests.disk_builders`: util-linux (``mkswap``),
btrfs-progs (``mkfs.btrfs``), udftools (``mkudffs``), fdisk (``fdisk -b 4096`` for a GPT of
4096-byte sectors, ``sfdisk --label-nested dos`` for hybrid MBRs). Installation media are
:mod:`tests.media_images`'.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .disk_builders import run

MIB = 1 << 20
#: mkfs commands for a filesystem spanning the whole file, the file given last.
MKFS: dict[str, tuple[str, ...]] = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "ext2": ("mkfs.ext2", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "vfat": ("mkfs.vfat",),
    "ntfs": ("mkntfs", "-q", "-F", "-f"),
    "exfat": ("mkfs.exfat",),
    "swap": ("mkswap",),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
    "udf": ("mkudffs", "--media-type=hd"),
}
#: The size of each filesystem's partition (about the smallest its mkfs accepts).
SIZE = {"ext4": 8 * MIB, "ext2": 8 * MIB, "xfs": 300 * MIB, "vfat": 8 * MIB, "ntfs": 8 * MIB,
        "exfat": 8 * MIB, "swap": 4 * MIB, "btrfs": 120 * MIB, "udf": 8 * MIB}
MBR_TYPE = {"ext4": "83", "ext2": "83", "xfs": "83", "btrfs": "83", "swap": "82", "vfat": "c", "ntfs": "7",
            "exfat": "7"}
LINUX_FS_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_TYPE = {"swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "vfat": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "ntfs": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "exfat": "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"}


def filesystem_file(path: Path, kind: str) -> Path:
    """A sparse file of :data:`SIZE` holding a filesystem of ``kind`` made by its ``mkfs``."""
    with open(path, "wb") as handle:
        handle.truncate(SIZE[kind])
    run(*MKFS[kind], str(path))
    return path


def splice(image: Path, offset: int, source: Path, chunk: int = MIB) -> None:
    """Copy ``source`` into ``image`` at ``offset``, skipping all-zero chunks (the image stays sparse)."""
    with open(source, "rb") as src, open(image, "r+b") as dst:
        position = 0
        while data := src.read(chunk):
            if data.count(0) != len(data):
                dst.seek(offset + position)
                dst.write(data)
            position += len(data)


def partitioned_disk(path: Path, label: str, kinds: list[str]) -> list[int]:
    """A raw disk with an ``sfdisk`` table (``label`` ``dos`` or ``gpt``) of one partition per filesystem
    of ``kinds``, each made by its mkfs and spliced in; returns the partitions' byte offsets."""
    starts: list[int] = []
    lines = [f"label: {label}"]
    position = MIB
    for kind in kinds:
        starts.append(position)
        kind_type = MBR_TYPE[kind] if label == "dos" else GPT_TYPE.get(kind, LINUX_FS_GUID)
        lines.append(f"start={position // 512}, size={SIZE[kind] // 512}, type={kind_type}")
        position += SIZE[kind]
    with open(path, "wb") as handle:
        handle.truncate(position + MIB)  # room for the backup GPT
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path), stdin=("\n".join(lines) + "\n").encode())
    for index, (kind, start) in enumerate(zip(kinds, starts, strict=True)):
        splice(path, start, filesystem_file(path.with_name(f"{path.name}.p{index + 1}"), kind))
    return starts


def extended_disk(path: Path) -> Path:
    """An MBR disk: three primary partitions, an extended one (4, at sector 6144) holding two logical
    ones (5 at sector 8192, 6 after it where sfdisk puts it), each 1024 sectors (``sfdisk``)."""
    with open(path, "wb") as handle:
        handle.truncate(8 * MIB)
    script = ("label: dos\nstart=2048, size=1024, type=83\nstart=3072, size=1024, type=83\n"
              "start=4096, size=1024, type=83\nstart=6144, size=8192, type=5\n"
              "start=8192, size=1024, type=83\nsize=1024, type=83\n")
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path), stdin=script.encode())
    return path


def fix_gpt_header_crc(path: Path, sector: int = 512) -> None:
    """Recompute the primary GPT header's CRC32 after an edit (so the edit itself is what is tested)."""
    with open(path, "r+b") as handle:
        handle.seek(sector)
        header = bytearray(handle.read(sector))
        (size,) = struct.unpack_from("<I", header, 12)
        header[16:20] = bytes(4)
        struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:size])))
        handle.seek(sector)
        handle.write(header)


def gpt_4k_disk(path: Path, kind: str) -> int:
    """A GPT of 4096-byte logical sectors (``fdisk -b 4096``) with one partition at LBA 256 (1 MiB)
    holding a filesystem of ``kind``; returns the partition's byte offset."""
    with open(path, "wb") as handle:
        handle.truncate(SIZE[kind] + 2 * MIB)
    last = 256 + SIZE[kind] // 4096 - 1
    run("fdisk", "-b", "4096", str(path), stdin=f"g\nn\n1\n256\n{last}\nw\n".encode())
    splice(path, MIB, filesystem_file(path.with_name(f"{path.name}.p1"), kind))
    return MIB


def mbr_4k_disk(path: Path, kind: str) -> int:
    """An MBR of 4096-byte logical sectors (``fdisk -b 4096``, a 4Kn disk's) with one partition at
    LBA 256 (1 MiB; sector 256 is 128 KiB in 512-byte sectors) holding ``kind``; returns its offset."""
    with open(path, "wb") as handle:
        handle.truncate(SIZE[kind] + 2 * MIB)
    last = 256 + SIZE[kind] // 4096 - 1
    run("fdisk", "-b", "4096", str(path), stdin=f"o\nn\np\n1\n256\n{last}\nw\n".encode())
    splice(path, MIB, filesystem_file(path.with_name(f"{path.name}.p1"), kind))
    return MIB


def lvm_label(path: Path, size: int = 4 * MIB) -> Path:
    """A disk whose sector 1 holds an LVM2 physical-volume label header (``LABELONE`` ... ``LVM2 001``),
    written field by field as lvm2's label format lays it out (no pvcreate: it needs a block device)."""
    label = bytearray(512)
    struct.pack_into("<8sQIIQ", label, 0, b"LABELONE", 1, 0, 32, int.from_bytes(b"LVM2 001", "little"))
    struct.pack_into("<I", label, 16, zlib.crc32(bytes(label[20:])) & 0xFFFFFFFF)
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(512)
        handle.write(label)
    return path


def bitlocker_volume(path: Path) -> Path:
    """What BitLocker leaves at a volume's start: an NTFS-like boot sector whose OEM id is ``-FVE-FS-``
    (made from a real mkntfs volume with that id written over, as BitLocker's own header has it)."""
    filesystem_file(path, "ntfs")
    with open(path, "r+b") as handle:
        handle.seek(3)
        handle.write(b"-FVE-FS-")
    return path


def refs_volume(path: Path, size: int = 8 * MIB) -> Path:
    """The first sector of a ReFS volume, field by field (no mkfs.refs outside Windows): a jump, the
    ``ReFS`` file system name, the ``FSRS`` identifier, 512-byte sectors."""
    boot = bytearray(512)
    boot[0:3] = b"\x00\x00\x00"
    boot[3:11] = b"ReFS\0\0\0\0"
    boot[16:20] = b"FSRS"
    struct.pack_into("<HH", boot, 20, 0x200, 0)  # length and checksum of the boot sector header
    struct.pack_into("<QII", boot, 24, size // 512, 512, 8)  # sectors, bytes per sector, sectors per cluster
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.write(boot)
    return path


# --- disks whose partition tables disagree -------------------------------------------------------

NTFS_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"


def gpt_with_nested_mbr(path: Path, mbr_lines: list[str], *, size: int = 40 * MIB) -> Path:
    """A GPT (``sfdisk``) of one ext4 partition at 1 MiB, whose sector 0 is then rewritten by
    ``sfdisk --label-nested dos`` with ``mbr_lines`` (no ``type=ee`` line: no protective entry)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path),
        stdin=f"label: gpt\nstart=2048, size={SIZE['ext4'] // 512}, type={LINUX_FS_GUID}\n".encode())
    splice(path, MIB, filesystem_file(path.with_name(f"{path.name}.ext4"), "ext4"))
    run("sfdisk", "--label-nested", "dos", "--no-reread", "--no-tell-kernel", "-q", str(path),
        stdin=("\n".join(mbr_lines) + "\n").encode())
    return path


def gpt_two_sector_sizes(path: Path) -> Path:
    """Two GPTs on one disk: ``fdisk -b 4096`` makes one of 4096-byte sectors (NTFS at 1 MiB), then
    ``sgdisk -j 64`` one of 512-byte sectors whose entries array is moved to sector 64 so that the
    4096-byte GPT's header (byte 4096) and entries (byte 8192) survive (ext4 at 16 MiB)."""
    gpt_4k_disk(path, "ntfs")
    with open(path, "r+b") as handle:
        handle.truncate(32 * MIB)
    before = path.read_bytes()[4096 : 8192 + 16384]
    run("sgdisk", "-j", "64", "-n", f"1:32768:+{SIZE['ext4'] // 1024}K", "-t", "1:8300", str(path))
    assert path.read_bytes()[4096 : 8192 + 16384] == before, "sgdisk overwrote the 4096-byte GPT"
    splice(path, 16 * MIB, filesystem_file(path.with_name(f"{path.name}.ext4"), "ext4"))
    return path


def gpt_backup_from(path: Path, other: Path) -> Path:
    """Replace ``path``'s backup GPT (its last 33 sectors) by ``other``'s, both ``sfdisk`` disks of one
    size: each GPT stays valid on its own, and the backup lists what ``other`` lists."""
    size = path.stat().st_size
    assert other.stat().st_size == size
    with open(other, "rb") as handle:
        handle.seek(size - 33 * 512)
        backup = handle.read()
    with open(path, "r+b") as handle:
        handle.seek(size - 33 * 512)
        handle.write(backup)
    return path


def superfloppy_with_gpt(path: Path, size: int = 32 * MIB) -> Path:
    """An NTFS volume over the whole disk (``mkntfs``, sector 0 its boot sector, no protective MBR)
    whose sectors 1-33 and last 33 sectors hold a GPT made by ``sfdisk`` for the same size: one ext4
    partition at 16 MiB. A reader of the table sees ext4; a reader of the whole disk, NTFS."""
    table = path.with_name(f"{path.name}.gpt")
    with open(table, "wb") as handle:
        handle.truncate(size)
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(table),
        stdin=f"label: gpt\nstart=32768, size={SIZE['ext4'] // 512}, type={LINUX_FS_GUID}\n".encode())
    with open(path, "wb") as handle:
        handle.truncate(size)
    run(*MKFS["ntfs"], str(path))
    data = table.read_bytes()
    with open(path, "r+b") as handle:
        for offset in (512, size - 33 * 512):
            handle.seek(offset)
            handle.write(data[offset : offset + 33 * 512])
    splice(path, 16 * MIB, filesystem_file(path.with_name(f"{path.name}.ext4"), "ext4"))
    return path


def extended_disk_with_ntfs_in_ebr_slot_3(path: Path) -> Path:
    """An MBR disk (``sfdisk``): an extended partition at sector 2048 holding one ext4 logical partition;
    then the first EBR's third entry is made to point at an NTFS volume later in the extended partition.
    Windows reads an EBR's first two entries; Linux reads all four."""
    with open(path, "wb") as handle:
        handle.truncate(40 * MIB)
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path),
        stdin=b"label: dos\nstart=2048, size=79872, type=5\nstart=4096, size=16384, type=83\n")
    splice(path, 4096 * 512, filesystem_file(path.with_name(f"{path.name}.ext4"), "ext4"))
    splice(path, 24576 * 512, filesystem_file(path.with_name(f"{path.name}.ntfs"), "ntfs"))
    with open(path, "r+b") as handle:
        handle.seek(2048 * 512 + 446 + 32)
        handle.write(struct.pack("<B3xB3xII", 0, 0x07, 24576 - 2048, SIZE["ntfs"] // 512))
    return path


def gpt_backup_differs(path: Path, size: int = 24 * MIB) -> Path:
    """A GPT (``sfdisk``) listing ext4 at 1 MiB whose backup comes from a second ``sfdisk`` disk of the
    same size that also lists a basic-data partition at sector 18432, holding NTFS: both GPTs are
    valid; only readers of the backup see the NTFS partition."""
    ext4 = f"start=2048, size=16384, type={LINUX_FS_GUID}\n"
    other = path.with_name(f"{path.name}.other")
    for disk, lines in ((path, ext4), (other, ext4 + f"start=18432, size=16384, type={NTFS_TYPE}\n")):
        with open(disk, "wb") as handle:
            handle.truncate(size)
        run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk), stdin=f"label: gpt\n{lines}".encode())
    gpt_backup_from(path, other)
    splice(path, 18432 * 512, filesystem_file(path.with_name(f"{path.name}.ntfs"), "ntfs"))
    return path
