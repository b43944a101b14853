"""The os_type verdict where readers of a disk disagree (issue 11): partition tables that list
different partitions, and Windows installation media whose trees differ by reader. Each disk is built
by real tools (:mod:`tests.guest_images`, :mod:`tests.media_images`), most wrapped in qcow2 by
``qemu-img``, and claimed ``linux``: the verdict must be ``os_type.mismatch``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from importhooks import Verdict

from . import disk_builders as db
from . import guest_images as gi
from . import media_images as mi
from .helpers import audit, codes, rejected_with
from .test_os_type import convert
from .test_partition_tables import PROTECTIVE


def _mismatch_detail(result) -> str:
    return next(f.detail for f in result.findings if f.code == "os_type.mismatch") or ""


def test_ntfs_only_the_mbr_lists_beside_a_gpt_is_rejected_through_qcow2(settings, tmp_path):
    """A GPT of ext4 and an MBR without protective entry (firmware, Linux and Windows use it) listing NTFS."""
    raw = gi.gpt_with_nested_mbr(tmp_path / "d.raw", ["start=18432, size=16384, type=7"])
    gi.splice(raw, 18432 * 512, gi.filesystem_file(tmp_path / "n.fs", "ntfs"))
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "d.qcow2"), "os_type.mismatch", os_type="linux")
    assert "MBR partition 1: ntfs" in _mismatch_detail(result) and result.detected["filesystems"] == ["ext4", "ntfs"]
    assert "partition.tables_disagree" in codes(result)


def test_ntfs_in_the_4096_byte_gpt_beside_a_512_byte_one_is_rejected(settings, tmp_path):
    raw = gi.gpt_two_sector_sizes(tmp_path / "d.raw")
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "d.qcow2"), "os_type.mismatch", os_type="linux")
    assert "GPT 4096 partition 1: ntfs" in _mismatch_detail(result)


def test_ntfs_superfloppy_under_a_gpt_is_rejected(settings, tmp_path):
    """Raw, the disk_format plugin already rejects the GPT without protective MBR; inside qcow2 os_type must."""
    raw = gi.superfloppy_with_gpt(tmp_path / "d.raw")
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "d.qcow2"), "os_type.mismatch", os_type="linux")
    assert "whole disk: ntfs" in _mismatch_detail(result)
    assert "os_type" not in result.properties and "partition.whole_disk_filesystem" in codes(result)


@pytest.mark.parametrize("disk_format", ["iso", "qcow2"])
def test_windows_media_claimed_linux_are_rejected(settings, tmp_path, disk_format):
    """A UDF bridge whose ISO 9660 trees show only a README: Windows reads the UDF part."""
    image = mi.hide_from_iso9660(mi.udf_bridge(tmp_path / "w.iso", mi.media_tree(tmp_path / "t")),
                                 ("bootmgr", "sources", "efi", "install.wim", "microsoft"))
    path = image if disk_format == "iso" else convert(image, "qcow2", tmp_path / "w.qcow2")
    result = rejected_with(settings, path, "os_type.mismatch", os_type="linux", disk_format=disk_format)
    assert "whole disk: Windows installation media (UDF: bootmgr, UDF: efi/microsoft/, UDF: sources/install.wim)" \
        in _mismatch_detail(result)
    assert result.detected["os_type_detected"] == "windows"


def test_windows_media_in_a_hybrid_iso_with_a_gpt_claimed_linux_are_rejected(settings, tmp_path):
    efi = gi.filesystem_file(tmp_path / "efi.img", "vfat")
    image = mi.xorriso_media(tmp_path / "w.iso", mi.media_tree(tmp_path / "t"), "-append_partition", "2", "0xef",
                             str(efi), "-appended_part_as_gpt")
    result = rejected_with(settings, image, "os_type.mismatch", os_type="linux", disk_format="iso")
    assert "Joliet: sources/install.wim" in _mismatch_detail(result)
    assert result.detected["partition_table"] == "gpt" and "iso9660" in result.detected["filesystems"]


def test_windows_media_claimed_windows_and_linux_media_claimed_linux_are_accepted(settings, tmp_path):
    windows = mi.udf_media(tmp_path / "w.udf")
    result = audit(settings, windows, os_type="windows")
    assert result.verdict is Verdict.ACCEPT and result.properties["os_type"] == "windows"
    linux = mi.xorriso_media(tmp_path / "l.iso", mi.media_tree(tmp_path / "t", ("README.TXT", "efi/boot/bootx64.efi")))
    result = audit(settings, linux, os_type="linux", disk_format="iso")
    assert result.verdict is Verdict.ACCEPT and result.properties["os_type"] == "linux"
    assert [f.code for f in result.findings if f.code.startswith("os_type.")] == ["os_type.unverified"]


def test_ntfs_behind_an_mbr_of_4096_byte_sectors_is_rejected_through_qcow2(settings, tmp_path):
    raw = tmp_path / "d.raw"
    gi.mbr_4k_disk(raw, "ntfs")
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "d.qcow2"), "os_type.mismatch", os_type="linux")
    assert "MBR 4096 partition 1: ntfs" in _mismatch_detail(result)


def test_usb_installation_media_claimed_linux_are_rejected_through_qcow2(settings, tmp_path):
    """A Media Creation Tool-like stick: an MBR partition holding FAT32 with bootmgr, efi/microsoft, sources."""
    raw = tmp_path / "usb.raw"
    with open(raw, "wb") as handle:
        handle.truncate(48 * gi.MIB)
    db.run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw), stdin=b"label: dos\nstart=2048, type=c\n")
    gi.splice(raw, gi.MIB, mi.fat_media(tmp_path / "p.fat", 32))
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "usb.qcow2"), "os_type.mismatch", os_type="linux")
    assert "partition 1: Windows installation media (FAT: bootmgr, FAT: efi/microsoft/, FAT: sources/install.wim)" \
        in _mismatch_detail(result)


def test_exfat_installation_media_claimed_linux_are_rejected_through_vhdx(settings, tmp_path):
    raw = tmp_path / "x.raw"
    with open(raw, "wb") as handle:
        handle.truncate(24 * gi.MIB)
    db.run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw), stdin=b"label: dos\nstart=2048, type=7\n")
    gi.splice(raw, gi.MIB, mi.exfat_media(tmp_path / "p.exfat"))
    result = rejected_with(settings, convert(raw, "vhdx", tmp_path / "x.vhdx"), "os_type.mismatch", os_type="linux")
    assert "exFAT: sources/install.wim" in _mismatch_detail(result)


def _hybrid_overlap(tmp_path: Path) -> Path:
    disk = gi.gpt_with_nested_mbr(tmp_path / "d.raw", [PROTECTIVE, "start=10240, size=16384, type=7"])
    gi.splice(disk, 10240 * 512, gi.filesystem_file(tmp_path / "n.fs", "ntfs"))
    return disk


@pytest.mark.parametrize(("build", "evidence"), [
    (lambda tmp_path: gi.gpt_backup_differs(tmp_path / "d.raw"), "GPT backup partition 2: ntfs"),
    (_hybrid_overlap, "MBR partition 2: ntfs"),
    (lambda tmp_path: gi.extended_disk_with_ntfs_in_ebr_slot_3(tmp_path / "d.raw"), "partition 6: ntfs"),
])
def test_ntfs_only_one_reading_of_the_tables_shows_is_rejected_through_qcow2(settings, tmp_path, build, evidence):
    path = convert(build(tmp_path), "qcow2", tmp_path / "d.qcow2")
    result = rejected_with(settings, path, "os_type.mismatch", os_type="linux")
    assert evidence in _mismatch_detail(result)
