"""Raw disks with disk images inside them, for the nested_headers tests: the real tools only.

Partition tables come from ``sfdisk``/``sgdisk``, the inner images from ``qemu-img create``
(with ``-b``/``-u`` for backing files), and ``dd`` copies an inner image into a partition.
Two inner images qemu-img cannot make (a VHDX or VHD with a parent) are real images with one
field edited in place, as the detection tests do.
"""

from __future__ import annotations

import struct
from pathlib import Path

from . import disk_builders as db

SECTOR = 512
MIB = 1 << 20
#: The default disk: 24 MiB, partition 1 at 1 MiB (10 MiB: room for an 8 MiB VHDX), partition 2 after it.
DISK_SIZE = 24 * MIB
PART1, PART1_SECTORS = 2048, 20480
PART2, PART2_SECTORS = PART1 + PART1_SECTORS, 16384
#: The VHDX file parameters metadata item (CAA16737-FA36-4D43-B3B6-33F0AA44E76B, on-disk order).
VHDX_FILE_PARAMETERS = bytes.fromhex("3767a1ca36fa434db3b633f0aa44e76b")


def blank(path: Path, size: int = DISK_SIZE) -> Path:
    """A sparse file of zeros."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def mbr_disk(path: Path, script: str | None = None, size: int = DISK_SIZE) -> Path:
    """A raw disk with an ``sfdisk`` DOS table (by default two Linux partitions, :data:`PART1`, :data:`PART2`)."""
    blank(path, size)
    script = script or (f"label: dos\nstart={PART1}, size={PART1_SECTORS}, type=83\n"
                        f"start={PART2}, size={PART2_SECTORS}, type=83\n")
    db.run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path), stdin=script.encode())
    return path


def logical_disk(path: Path) -> Path:
    """A DOS table with one primary and an extended partition holding two logical ones (5 at :data:`PART2`)."""
    return mbr_disk(path, f"label: dos\nstart={PART1}, size={PART1_SECTORS - 2048}, type=83\n"
                          f"start={PART2 - 2048}, type=5\n"
                          f"start={PART2}, size={PART2_SECTORS // 2}, type=83\n"
                          f"start={PART2 + PART2_SECTORS // 2 + 2048}, type=83\n")


def gpt_disk(path: Path, size: int = DISK_SIZE) -> Path:
    """A raw disk with an ``sgdisk`` GPT of two partitions at :data:`PART1` and :data:`PART2`."""
    blank(path, size)
    db.run("sgdisk", "-n", f"1:{PART1}:{PART2 - 1}", "-t", "1:8300", "-n", f"2:{PART2}:{PART2 + PART2_SECTORS - 1}",
           "-t", "2:8300", str(path))
    return path


#: Where :func:`dual_gpt_disk`'s 4 KiB-sector GPT puts its partition 1, in 512-byte sectors (4 MiB).
GPT_4K_PART1 = 8192


def dual_gpt_disk(path: Path, size: int = 32 * MIB) -> Path:
    """A disk with two GPTs: one of 4096-byte sectors (``fdisk -b 4096``, header at byte 4096, partition 1 at
    4 MiB) and one of 512-byte sectors (``sgdisk -j 64``, entries moved clear of it, partitions at 1 and 2 MiB).

    A device of 512-byte logical sectors shows the second table, a 4Kn device the first.
    """
    blank(path, size)
    first, last = GPT_4K_PART1 // 8, GPT_4K_PART1 // 4 - 1  # in 4096-byte sectors: 4 MiB to 8 MiB
    db.run("fdisk", "-b", "4096", str(path), stdin=f"g\nn\n1\n{first}\n{last}\nw\n".encode())
    db.run("sgdisk", "-j", "64", "-n", "1:2048:4095", "-n", "2:4096:8191", str(path))
    return path


#: Where :func:`bsd_disk` puts slice a of its BSD disklabel, in sectors from the disk's start.
BSD_SLICE_A, BSD_SLICE_A_SECTORS = 4096, 4096


def bsd_disk(path: Path) -> Path:
    """A DOS table whose partition 1 (type 0xa5, FreeBSD) holds a BSD disklabel with slice a at
    :data:`BSD_SLICE_A`, written by fdisk's nested BSD disklabel editor (``b``)."""
    mbr_disk(path, f"label: dos\nstart={PART1}, size={PART1_SECTORS}, type=a5\n")
    last = BSD_SLICE_A + BSD_SLICE_A_SECTORS - 1
    db.run("fdisk", str(path), stdin=f"b\n1\ny\nn\na\n{BSD_SLICE_A}\n{last}\nw\nq\n".encode())
    return path


def many_gpt_entries(path: Path, entries: int = 512) -> Path:
    """A GPT (``sgdisk -S``) of ``entries`` entries, two used: more than the layout reader reads."""
    blank(path)
    db.run("sgdisk", "-S", str(entries), "-n", f"1:{PART1}:{PART2 - 1}", "-n", f"2:{PART2}:{PART2 + PART2_SECTORS - 1}",
           str(path))
    return path


def dd(image: Path, disk: Path, sector: int) -> Path:
    """Copy ``image`` into ``disk`` at ``sector`` (``dd ... conv=notrunc``)."""
    db.run("dd", f"if={image}", f"of={disk}", "bs=512", f"seek={sector}", "conv=notrunc", "status=none")
    return disk


def inner(kind: str, path: Path) -> Path:
    """A small inner image of ``kind``: ``qcow2``, ``qcow2_backing`` ... (see :data:`SAFE` and :data:`UNSAFE`)."""
    if kind in db.QEMU_KINDS:
        return db.qemu_image(path, kind)
    if kind == "qcow2_backing":
        return db.qcow2_with_backing_file(path, "/etc/passwd", "1M")
    if kind == "qcow2_data_file":
        db.qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={path}.data,data_file_raw=on", str(path), "1M")
        return path
    if kind == "parallels":
        db.qemu_img("create", "-q", "-f", "parallels", str(path), "1M")
        return path
    if kind == "qcow1_backing":
        db.qemu_img("create", "-q", "-f", "qcow", "-u", "-b", "/etc/passwd", "-F", "raw", str(path), "1M")
        return path
    if kind == "qed_backing":
        db.qemu_img("create", "-q", "-f", "qed", "-u", "-b", "/etc/passwd", "-F", "raw", str(path), "1M")
        return path
    if kind == "vmdk_parent":
        base = db.qemu_image(path.with_name(path.name + ".base.vmdk"), "vmdk_sparse")
        db.qemu_img("create", "-q", "-f", "vmdk", "-b", str(base), "-F", "vmdk", str(path), "1M")
        return path
    if kind == "vmdk_descriptor":
        return db.qemu_image_descriptor(path)
    if kind == "vhdx_parent":
        return vhdx_with_parent_flag(db.qemu_image(path, "vhdx"))
    if kind == "vhd_differencing":
        return vhd_differencing(db.qemu_image(path, "vhd_dynamic"))
    if kind == "luks":
        return db.luks_image(path)
    raise KeyError(kind)


#: Inner images that name no other file, and the format reported for each.
SAFE = {"qcow2_v3": "qcow2", "qcow2_v2": "qcow2", "qed": "qed", "vmdk_sparse": "vmdk", "vmdk_stream": "vmdk",
        "vhdx": "vhdx", "vhd_dynamic": "vhd", "vdi": "vdi", "parallels": "parallels"}
#: Inner images that do, and a word the finding's detail must hold.
UNSAFE = {"qcow2_backing": "backing file", "qcow1_backing": "qcow (version 1) backing file",
          "qcow2_data_file": "data file", "qed_backing": "QED backing file",
          "vmdk_parent": "parentFileNameHint", "vmdk_descriptor": "descriptor file", "vhdx_parent": "has-parent",
          "vhd_differencing": "differencing"}


def vhdx_with_parent_flag(path: Path) -> Path:
    """Set the *has parent* flag in a real VHDX's file parameters (metadata items carry no checksum)."""
    region = db.vhdx_metadata_offset(path)
    with open(path, "r+b") as handle:
        handle.seek(region)
        table = handle.read(64 << 10)
        (count,) = struct.unpack_from("<H", table, 10)
        for index in range(count):
            guid, offset = struct.unpack_from("<16sI", table, 32 + 32 * index)
            if guid == VHDX_FILE_PARAMETERS:
                handle.seek(region + offset + 4)
                (flags,) = struct.unpack("<I", handle.read(4))
                handle.seek(region + offset + 4)
                handle.write(struct.pack("<I", flags | 2))
                return path
    raise AssertionError(f"{path}: no file parameters item")


def vhd_differencing(path: Path) -> Path:
    """Make a real dynamic VHD's footer copy (at offset 0) say disk type 4, differencing, with a valid checksum."""
    with open(path, "r+b") as handle:
        footer = bytearray(handle.read(SECTOR))
        assert footer.startswith(b"conectix")
        footer[60:64] = struct.pack(">I", 4)
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
        handle.seek(0)
        handle.write(footer)
    return path


def set_mbr_entry(disk: Path, number: int, kind: int, first: int, count: int) -> Path:
    """Write MBR entry ``number`` (1-4) of sector 0: a hybrid MBR beside a GPT, as gdisk's ``-h`` makes."""
    entry = struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", first, count)
    return db.overwrite(disk, 446 + 16 * (number - 1), entry)
