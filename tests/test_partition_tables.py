"""Partition tables that disagree (issue 11): where firmware, Linux and Windows could see different
partitions, the layout holds every partition either sees.

Disks are made by ``sfdisk`` (also ``--label-nested dos`` for hybrid MBRs), ``sgdisk``, ``fdisk -b 4096``
and ``mkntfs``/``mkfs.ext4``; a few entries are then edited by hand, as a hostile uploader would.
"""

from __future__ import annotations

import struct
from pathlib import Path

from importhooks_plugins.guest._filesystems import os_evidence

from . import disk_builders as db
from . import guest_images as gi
from .test_guest_layout import MBR_ENTRY, layout_of, problem_codes

#: A protective entry for ``sfdisk --label-nested dos`` (a hybrid MBR keeps one).
PROTECTIVE = "start=1, size=2047, type=ee"

def test_gpt_beside_an_mbr_without_protective_entry_reads_the_mbr_too(tmp_path: Path) -> None:
    """No 0xee entry: firmware, Linux and Windows use the MBR, whose NTFS partition the GPT omits."""
    disk = gi.gpt_with_nested_mbr(tmp_path / "d.raw", ["start=18432, size=16384, type=7"])
    gi.splice(disk, 18432 * 512, gi.filesystem_file(tmp_path / "n.fs", "ntfs"))
    layout = layout_of(disk)
    assert layout.partition_table == "gpt"
    assert [(p.table, p.index, p.filesystem) for p in layout.partitions] == [("GPT", 1, "ext4"), ("MBR", 1, "ntfs")]
    assert problem_codes(layout) == ["partition.gpt_hybrid_mbr", "partition.tables_disagree"]
    assert os_evidence(layout).windows == ("MBR partition 1: ntfs",)


def test_hybrid_mbr_entry_overlapping_a_gpt_partition_is_read(tmp_path: Path) -> None:
    """A hybrid MBR (0xee plus an NTFS entry starting inside the GPT's ext4 partition)."""
    disk = gi.gpt_with_nested_mbr(tmp_path / "d.raw", [PROTECTIVE, "start=10240, size=16384, type=7"])
    gi.splice(disk, 10240 * 512, gi.filesystem_file(tmp_path / "n.fs", "ntfs"))
    layout = layout_of(disk)
    assert [(p.table, p.start // 512, p.filesystem) for p in layout.partitions] == [
        ("GPT", 2048, "ext4"), ("MBR", 10240, "ntfs")]
    assert "partition.tables_disagree" in problem_codes(layout) and os_evidence(layout).detected == "windows"


def test_hybrid_mbr_mirroring_the_gpt_adds_no_partition(tmp_path: Path) -> None:
    disk = gi.gpt_with_nested_mbr(tmp_path / "d.raw", [PROTECTIVE, "start=2048, size=16384, type=83"])
    layout = layout_of(disk)
    assert [(p.table, p.filesystem) for p in layout.partitions] == [("GPT", "ext4")]
    assert problem_codes(layout) == ["partition.gpt_hybrid_mbr"] and os_evidence(layout).detected == "linux"


def test_gpts_of_512_and_4096_byte_sectors_are_both_read(tmp_path: Path) -> None:
    layout = layout_of(gi.gpt_two_sector_sizes(tmp_path / "d.raw"))
    assert [(p.table, p.start, p.filesystem) for p in layout.partitions] == [
        ("GPT", 16 * gi.MIB, "ext4"), ("GPT 4096", gi.MIB, "ntfs")]
    assert problem_codes(layout) == ["partition.gpt_sector_sizes"]
    assert os_evidence(layout).windows == ("GPT 4096 partition 1: ntfs",)


def test_a_valid_backup_gpt_listing_more_than_the_primary_is_read(tmp_path: Path) -> None:
    """Primary: ext4 only; backup (valid on its own, from a second sfdisk disk): ext4 and NTFS."""
    layout = layout_of(gi.gpt_backup_differs(tmp_path / "d.raw"))
    assert [(p.table, p.index, p.filesystem) for p in layout.partitions] == [
        ("GPT", 1, None), ("GPT backup", 2, "ntfs")]
    assert problem_codes(layout) == ["partition.gpt_backup_differs"]
    assert os_evidence(layout).windows == ("GPT backup partition 2: ntfs",)


def test_a_broken_backup_beside_a_good_primary_is_no_problem(tmp_path: Path) -> None:
    """A resized disk has no backup in its last sector; a damaged backup hides nothing the primary shows."""
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, disk.stat().st_size - 512 + 40, b"\x01")
    layout = layout_of(disk)
    assert layout.problems == () and len(layout.partitions) == 2


def test_a_superfloppy_with_a_gpt_is_read_both_ways(tmp_path: Path) -> None:
    """mkntfs over the whole disk, then a GPT (no protective MBR: sector 0 stays NTFS's boot sector)."""
    layout = layout_of(gi.superfloppy_with_gpt(tmp_path / "d.raw"))
    assert layout.partition_table == "gpt" and layout.filesystem == "ntfs"
    assert [p.filesystem for p in layout.partitions] == ["ext4"]
    assert problem_codes(layout) == ["partition.gpt_protective_mbr", "partition.whole_disk_filesystem"]
    assert os_evidence(layout).windows == ("whole disk: ntfs",)


def test_a_table_in_a_filesystem_boot_sector_is_read_as_linux_reads_it(tmp_path: Path) -> None:
    """Valid status bytes and an entry in an NTFS boot sector: Linux reads the entries, Windows the volume."""
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as handle:
        handle.truncate(32 * gi.MIB)
    db.run(*gi.MKFS["ntfs"], str(disk))
    db.overwrite(disk, MBR_ENTRY, struct.pack("<B3xB3xII", 0, 0x83, 32768, 16384))
    gi.splice(disk, 16 * gi.MIB, gi.filesystem_file(tmp_path / "e.fs", "ext4"))
    layout = layout_of(disk)
    assert layout.partition_table == "mbr" and layout.filesystem == "ntfs"
    assert [p.filesystem for p in layout.partitions] == ["ext4"]
    assert problem_codes(layout) == ["partition.whole_disk_filesystem"] and os_evidence(layout).detected == "windows"


def test_every_entry_of_an_ebr_is_a_logical_partition(tmp_path: Path) -> None:
    """Linux reads all four entries of an EBR, Windows the first two: an NTFS volume in entry 3 is read."""
    layout = layout_of(gi.extended_disk_with_ntfs_in_ebr_slot_3(tmp_path / "d.raw"))
    assert [(p.index, p.start // 512, p.filesystem) for p in layout.partitions] == [
        (5, 4096, "ext4"), (6, 24576, "ntfs")]
    assert layout.problems == () and os_evidence(layout).detected == "windows"


def test_a_second_extended_partition_is_followed(tmp_path: Path) -> None:
    """sfdisk makes one extended partition; a second MBR entry of type 0x05 pointing at an NTFS volume's
    EBR is read too (Linux follows every extended partition)."""
    disk = gi.extended_disk(tmp_path / "ext.raw")
    with open(disk, "r+b") as handle:
        handle.truncate(32 * gi.MIB)
    ebr = bytearray(512)
    ebr[446:462] = struct.pack("<B3xB3xII", 0, 0x07, 2048, 16384)
    ebr[510:512] = b"\x55\xaa"
    db.overwrite(disk, 16384 * 512, bytes(ebr))
    gi.splice(disk, (16384 + 2048) * 512, gi.filesystem_file(tmp_path / "n.fs", "ntfs"))
    entries = disk.read_bytes()[MBR_ENTRY : MBR_ENTRY + 64]
    assert entries[48 + 4] == 0x05  # sfdisk put the extended partition in entry 4; entry 3 becomes a second one
    db.overwrite(disk, MBR_ENTRY + 32, struct.pack("<B3xB3xII", 0, 0x05, 16384, 2048 + 16384))
    layout = layout_of(disk)
    assert [(p.index, p.start // 512, p.filesystem) for p in layout.partitions if p.index >= 5] == [
        (5, 16384 + 2048, "ntfs"), (6, 8192, None), (7, 11264, None)]
    assert "partition.mbr_entry" in problem_codes(layout) and os_evidence(layout).detected == "windows"


def test_an_mbr_of_4096_byte_sectors_is_read_both_ways(tmp_path: Path) -> None:
    """``fdisk -b 4096``: read with 512-byte sectors the entry points at 128 KiB, where nothing is; a 4Kn
    reader finds NTFS at 1 MiB."""
    disk = tmp_path / "d.raw"
    start = gi.mbr_4k_disk(disk, "ntfs")
    layout = layout_of(disk)
    assert [(p.table, p.start, p.filesystem) for p in layout.partitions] == [
        ("MBR", 256 * 512, None), ("MBR 4096", start, "ntfs")]
    assert problem_codes(layout) == ["partition.mbr_sector_size"]
    assert os_evidence(layout).windows == ("MBR 4096 partition 1: ntfs",)


def test_an_ordinary_mbr_disk_has_no_second_reading(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    gi.partitioned_disk(disk, "dos", ["ext4", "ntfs", "vfat"])
    layout = layout_of(disk)
    assert {p.table for p in layout.partitions} == {"MBR"} and layout.problems == ()
