"""Builders of real disk images for the detection and fuzz tests, made with the real tools.

Every image is made by the program that makes such images in the wild: ``qemu-img``
(qcow2, VMDK, VHD, VHDX, VDI, QED, LUKS), ``sfdisk`` and ``sgdisk`` (MBR and GPT
partition tables), ``mkfs.*`` (filesystems at sector 0) and ``xorriso`` (ISO 9660,
plain and hybrid). Polyglots and damaged images are made by editing those real
images in place, never by writing a whole format by hand.

System packages (Debian): qemu-utils, fdisk, gdisk, e2fsprogs, xfsprogs, dosfstools,
ntfs-3g, exfatprogs, xorriso, isolinux (``isohdpfx.bin`` and ``isolinux.bin`` for
the classic installer-style hybrid ISO).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

from .images import qemu_img_luks

SECTOR = 512
#: The isolinux files of Debian's isolinux package: an installer-style hybrid ISO's MBR and boot loader.
ISOHYBRID_MBR = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
#: The EFI System Partition type GUID, for a GPT partition appended to an ISO.
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def run(*command: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; a failure raises with its stderr (a test must never pass on a half-made image)."""
    done = subprocess.run(list(command), input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return done


def qemu_img(*args: str) -> None:
    """``qemu-img ARGS``."""
    run("qemu-img", *args)


# --- raw disks ---------------------------------------------------------------------


def raw_zeros(path: Path, size: int = 1 << 20) -> Path:
    """A raw disk of zeros (written, not sparse)."""
    path.write_bytes(bytes(size))
    return path


def raw_random(path: Path, size: int = 1 << 20, seed: int = 1) -> Path:
    """A raw disk of pseudo-random bytes that start with no known magic and no boot signature.

    The first and last sectors are zeroed so the random data cannot by chance look
    like a header, a ``0x55AA`` boot signature or a VHD footer.
    """
    data = bytearray(random.Random(seed).randbytes(size))
    data[:SECTOR] = bytes(SECTOR)
    data[-SECTOR:] = bytes(SECTOR)
    path.write_bytes(bytes(data))
    return path


def mbr_disk(path: Path, size: int = 256 << 10) -> Path:
    """A raw disk with an MBR partition table of two partitions (``sfdisk``)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    last = size // SECTOR
    script = f"label: dos\nstart=8, size={last // 2 - 8}, type=83\nstart={last // 2}, type=c\n"
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path), stdin=script.encode())
    return path


def gpt_disk(path: Path, size: int = 256 << 10) -> Path:
    """A raw disk with a GPT (protective MBR, primary and backup tables) of two partitions (``sgdisk``)."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("sgdisk", "-a", "8", "-n", "1:40:+64K", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8300", str(path))
    return path


#: mkfs commands for a filesystem spanning the whole file, the file given last.
MKFS: dict[str, tuple[str, ...]] = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "vfat": ("mkfs.vfat",),
    "vfat_one_fat": ("mkfs.vfat", "-f", "1"),
    "ntfs": ("mkntfs", "-q", "-F", "-f"),
    "exfat": ("mkfs.exfat",),
}
#: The smallest size each mkfs accepts, with some room.
MKFS_SIZE = {"ext4": 4 << 20, "xfs": 300 << 20, "vfat": 4 << 20, "vfat_one_fat": 4 << 20, "ntfs": 4 << 20,
             "exfat": 4 << 20}


def filesystem(path: Path, kind: str) -> Path:
    """A bare filesystem at sector 0 of a raw disk, no partition table (``mkfs.KIND``).

    The file is sparse where the filesystem wrote nothing (xfs needs 300 MiB).
    """
    with open(path, "wb") as handle:
        handle.truncate(MKFS_SIZE[kind])
    run(*MKFS[kind], str(path))
    return path


# --- qemu-img formats ----------------------------------------------------------------

#: ``qemu-img create`` arguments of each image kind the tests use: (format, options).
QEMU_KINDS: dict[str, tuple[str, str]] = {
    "qcow2_v2": ("qcow2", "compat=0.10,cluster_size=4096"),
    "qcow2_v3": ("qcow2", "compat=1.1,cluster_size=4096"),
    "vmdk_sparse": ("vmdk", "subformat=monolithicSparse"),
    "vmdk_stream": ("vmdk", "subformat=streamOptimized"),
    "vhd_dynamic": ("vpc", "subformat=dynamic"),
    "vhd_fixed": ("vpc", "subformat=fixed,force_size=on"),
    "vhdx": ("vhdx", "log_size=1M,block_size=1M"),
    "vdi": ("vdi", ""),
    "qed": ("qed", "cluster_size=4096"),
}


def qemu_image(path: Path, kind: str, size: str = "1M") -> Path:
    """A benign, empty image of ``kind`` (a key of :data:`QEMU_KINDS`) made by ``qemu-img create``."""
    fmt, options = QEMU_KINDS[kind]
    qemu_img("create", "-q", "-f", fmt, *(("-o", options) if options else ()), str(path), size)
    return path


#: One pristine copy of each LUKS image made in this session: qemu-img needs seconds per LUKS image.
_LUKS_MADE: dict[tuple[str, str], Path] = {}


def qemu_image_descriptor(path: Path, size: str = "1M") -> Path:
    """A descriptor-only VMDK (``subformat=monolithicFlat``): a text file naming a ``-flat.vmdk`` extent."""
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(path), size)
    return path


def luks_image(path: Path, size: str = "1M", passphrase: str = "not-a-secret") -> Path:
    """A LUKS1 image made by qemu's luks driver (low PBKDF2 time), copied from a cache after the first."""
    made = _LUKS_MADE.get((size, passphrase))
    if made is not None and made.exists():
        shutil.copyfile(made, path)
        return path
    qemu_img_luks("create", "-q", "-f", "luks", "--object", f"secret,id=sec0,data={passphrase}",
                  "-o", "key-secret=sec0,iter-time=10", str(path), size)
    pristine = path.with_name(path.name + ".pristine")  # tests may cut or edit ``path`` itself
    shutil.copyfile(path, pristine)
    _LUKS_MADE[(size, passphrase)] = pristine
    return path


def qcow2_with_backing_file(path: Path, backing: str = "/etc/passwd", size: str = "1G") -> Path:
    """A qcow2 whose backing file is a host path (``-u``: qemu-img does not open it)."""
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", str(path), size)
    return path


def convert(source: Path, path: Path, fmt: str, options: str = "") -> Path:
    """``qemu-img convert -O FMT`` of a raw disk (e.g. a fixed VHD of a partitioned disk)."""
    qemu_img("convert", "-q", "-f", "raw", "-O", fmt, *(("-o", options) if options else ()), str(source), str(path))
    return path


def write_clusters(path: Path, fmt: str, *writes: tuple[int, int]) -> None:
    """Write a pattern at (offset, length) pairs into an image with ``qemu-io`` (so it is not empty)."""
    commands: list[str] = []
    for offset, length in writes:
        commands += ["-c", f"write -P 0x5a {offset} {length}"]
    run("qemu-io", "-f", fmt, *commands, str(path))


# --- ISO 9660 ------------------------------------------------------------------------


def _iso_tree(root: Path, *, boot: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.TXT").write_text("importhooks test image\n")
    if boot:
        (root / "isolinux").mkdir(exist_ok=True)
        (root / "isolinux" / "isolinux.bin").write_bytes(ISOLINUX_BIN.read_bytes())
    return root


def iso_image(path: Path) -> Path:
    """A plain ISO 9660 image (``xorriso -as mkisofs``): its 32 KiB system area is all zeros."""
    tree = _iso_tree(path.with_name(path.name + ".tree"), boot=False)
    run("xorriso", "-as", "mkisofs", "-quiet", "-no-pad", "-V", "IMPORTHOOKS", "-o", str(path), str(tree))
    return path


_ELTORITO = ("-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
             "-boot-info-table")


def hybrid_iso_mbr(path: Path) -> Path:
    """An installer-style hybrid ISO: isolinux's ``isohdpfx.bin`` MBR and a partition in the system area."""
    tree = _iso_tree(path.with_name(path.name + ".tree"), boot=True)
    run("xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-isohybrid-mbr", str(ISOHYBRID_MBR),
        *_ELTORITO, str(tree))
    return path


def _efi_partition(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(1440 << 10)
    run("mkfs.vfat", str(path))
    return path


def hybrid_iso_gpt(path: Path) -> Path:
    """A hybrid ISO with a GPT: isohdpfx MBR plus an appended EFI system partition in a GPT.

    Built like the UEFI-bootable installer ISOs of the big distributions
    (``-isohybrid-gpt-basdat``, ``-append_partition 2 0xef``).
    """
    tree = _iso_tree(path.with_name(path.name + ".tree"), boot=True)
    efi = _efi_partition(path.with_name(path.name + ".efi"))
    run("xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-isohybrid-mbr", str(ISOHYBRID_MBR),
        *_ELTORITO, "-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::", "-no-emul-boot",
        "-isohybrid-gpt-basdat", "-append_partition", "2", "0xef", str(efi), str(tree))
    return path


def gpt_iso(path: Path) -> Path:
    """An ISO whose system area holds a GPT with the appended partition only (``-appended_part_as_gpt``)."""
    tree = _iso_tree(path.with_name(path.name + ".tree"), boot=False)
    efi = _efi_partition(path.with_name(path.name + ".efi"))
    run("xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-append_partition", "2", ESP_GUID, str(efi),
        "-appended_part_as_gpt", str(tree))
    return path


# --- editing real images ---------------------------------------------------------------


def overwrite(path: Path, offset: int, data: bytes) -> Path:
    """Write ``data`` at ``offset`` of an existing file, in place."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return path


def append(path: Path, data: bytes) -> Path:
    """Append ``data`` to an existing file."""
    with open(path, "ab") as handle:
        handle.write(data)
    return path


def vhd_footer(work: Path, size: str = "64K") -> bytes:
    """The 512-byte footer of a real fixed VHD made by ``qemu-img`` (a valid checksum)."""
    vhd = qemu_image(work / "footer-source.vhd", "vhd_fixed", size)
    footer = vhd.read_bytes()[-SECTOR:]
    assert footer.startswith(b"conectix")
    return footer


def qcow2_header_with_backing(work: Path, backing: str = "/etc/passwd") -> bytes:
    """The leading bytes of a real qcow2 with a backing file: header, extensions and the backing name."""
    image = qcow2_with_backing_file(work / "backing-source.qcow2", backing)
    head = image.read_bytes()[:4096]
    offset, length = struct.unpack(">QI", head[8:20])
    assert 0 < offset and offset + length <= len(head)
    return head[: offset + length]


def vhdx_metadata_offset(path: Path) -> int:
    """The file offset of a VHDX's metadata region, from its region table at 192 KiB."""
    with open(path, "rb") as handle:
        handle.seek(192 << 10)
        table = handle.read(64 << 10)
    _sig, _sum, count, _reserved = struct.unpack("<4sIII", table[:16])
    for index in range(count):
        entry = table[16 + 32 * index : 48 + 32 * index]
        if entry[:16] == bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e"):  # 8B7CA206-4790-4B9A-B8FE-575F050F886E
            (offset,) = struct.unpack("<Q", entry[16:24])
            return int(offset)
    raise AssertionError(f"{path}: no metadata region in the VHDX region table")
