"""plugins/guest/_guest_layout.py: partition tables and filesystem signatures of real guest disks, and hostile edits.

Every disk is made by the real tools (``sfdisk``, ``sgdisk``, ``mkfs.*``, ``mkntfs``, ``mkswap``) and
read through a plain ``open().seek/read`` callable that fails the test on any read outside the image.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from importhooks_plugins.guest._filesystems import os_evidence
from importhooks_plugins.guest._guest_layout import READ_CAP, GuestLayout, read_layout

from . import disk_builders as db
from . import guest_images as gi


def layout_of(path: Path, **kwargs: int) -> GuestLayout:
    """The layout of the raw disk ``path``, read with seek/read; any read outside the file fails."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        def read(offset: int, length: int) -> bytes:
            assert 0 <= offset and 0 < length and offset + length <= size, (offset, length, size)
            handle.seek(offset)
            return handle.read(length)
        return read_layout(read, size, **kwargs)


def problem_codes(layout: GuestLayout) -> list[str]:
    return [code for code, _detail in layout.problems]


@pytest.fixture(scope="module")
def mbr_windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mbr") / "disk.raw"
    gi.partitioned_disk(path, "dos", ["ext4", "ntfs", "vfat"])
    return path


@pytest.fixture(scope="module")
def gpt_linux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt") / "disk.raw"
    gi.partitioned_disk(path, "gpt", ["ext4", "swap", "xfs"])
    return path


# --- real disks ------------------------------------------------------------------------------


def test_mbr_disk_with_ext4_ntfs_vfat(mbr_windows: Path) -> None:
    layout = layout_of(mbr_windows)
    assert layout.partition_table == "mbr" and layout.problems == ()
    assert [(p.index, p.type_id, p.filesystem) for p in layout.partitions] == [
        (1, "0x83", "ext4"), (2, "0x07", "ntfs"), (3, "0x0c", "vfat")]
    assert layout.partitions[0].start == gi.MIB and layout.partitions[0].size == gi.SIZE["ext4"]
    assert os_evidence(layout).detected == "windows"
    assert layout.bytes_read < 64 << 10


def test_gpt_disk_with_ext4_swap_xfs(gpt_linux: Path) -> None:
    layout = layout_of(gpt_linux)
    assert layout.partition_table == "gpt" and layout.problems == ()
    assert [p.filesystem for p in layout.partitions] == ["ext4", "swap", "xfs"]
    assert layout.partitions[1].type_id == gi.GPT_TYPE["swap"]
    assert [p.start for p in layout.partitions] == [gi.MIB, 9 * gi.MIB, 13 * gi.MIB]
    assert os_evidence(layout).detected == "linux"
    assert layout.bytes_read < 64 << 10  # a 300 MiB disk, a few sectors read


@pytest.mark.parametrize("kind", ["ext4", "ext2", "xfs", "ntfs", "exfat", "btrfs", "vfat", "swap"])
def test_bare_filesystem_at_sector_0(tmp_path: Path, kind: str) -> None:
    layout = layout_of(gi.filesystem_file(tmp_path / f"{kind}.raw", kind))
    assert layout.partition_table == "none" and layout.partitions == () and layout.problems == ()
    assert layout.filesystem == kind
    expected = {"ntfs": "windows", "exfat": "unknown", "vfat": "unknown"}.get(kind, "linux")
    assert os_evidence(layout).detected == expected


def test_ext3_has_a_journal_but_no_ext4_features(tmp_path: Path) -> None:
    path = tmp_path / "ext3.raw"
    with open(path, "wb") as handle:
        handle.truncate(8 << 20)
    db.run("mkfs.ext3", "-q", "-F", str(path))
    assert layout_of(path).filesystem == "ext3"


@pytest.mark.parametrize(("make", "kind"), [(gi.bitlocker_volume, "bitlocker"), (gi.refs_volume, "refs")])
def test_windows_only_volumes_are_windows_evidence(tmp_path: Path, make, kind) -> None:
    whole = layout_of(make(tmp_path / "v.raw"))
    assert whole.partition_table == "none" and whole.filesystem == kind
    assert os_evidence(whole).windows == (f"whole disk: {kind}",)
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as handle:
        handle.truncate(12 << 20)
    db.run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk),
           stdin=b"label: gpt\nstart=2048, size=16384, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n")
    gi.splice(disk, 1 << 20, make(tmp_path / "p.raw"))
    layout = layout_of(disk)
    assert [p.filesystem for p in layout.partitions] == [kind] and os_evidence(layout).detected == "windows"


@pytest.mark.parametrize(("label", "type_id", "evidence"), [
    ("gpt", "AF9B60A0-1431-4F62-BC68-3311714A69AD", "Windows dynamic disk (LDM data)"),
    ("gpt", "E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D", "Windows Storage Spaces"),
    ("dos", "42", "Windows dynamic disk (MBR type 0x42)"),
])
def test_windows_only_partition_types_are_evidence(tmp_path: Path, label: str, type_id: str, evidence: str) -> None:
    disk = tmp_path / "d.raw"
    with open(disk, "wb") as handle:
        handle.truncate(4 << 20)
    db.run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk),
           stdin=f"label: {label}\nstart=2048, size=2048, type={type_id}\n".encode())
    assert os_evidence(layout_of(disk)).windows == (f"partition 1: {evidence}",)


def test_udf_and_lvm(tmp_path: Path) -> None:
    udf = layout_of(gi.filesystem_file(tmp_path / "udf.raw", "udf"))
    assert udf.partition_table == "none" and udf.filesystem == "udf"
    lvm = layout_of(gi.lvm_label(tmp_path / "pv.raw"))
    assert lvm.filesystem == "lvm" and os_evidence(lvm).detected == "linux"


@pytest.mark.parametrize("kind", ["ext4", "ntfs"])
def test_gpt_of_4096_byte_sectors(tmp_path: Path, kind: str) -> None:
    disk = tmp_path / "g4.raw"
    start = gi.gpt_4k_disk(disk, kind)
    layout = layout_of(disk)
    assert layout.partition_table == "gpt" and layout.problems == ()
    (part,) = layout.partitions
    assert (part.start, part.size, part.filesystem) == (start, gi.SIZE[kind], kind)


def test_luks_and_iso(tmp_path: Path) -> None:
    assert layout_of(db.luks_image(tmp_path / "luks.raw")).filesystem == "luks"
    iso = layout_of(db.iso_image(tmp_path / "plain.iso"))
    assert iso.partition_table == "none" and iso.filesystem == "iso9660"


def test_hybrid_isos(tmp_path: Path) -> None:
    mbr = layout_of(db.hybrid_iso_mbr(tmp_path / "mbr.iso"))
    assert mbr.partition_table == "mbr" and mbr.problems == ()
    assert [(p.start, p.type_id, p.filesystem) for p in mbr.partitions] == [(0, "0x17", "iso9660")]
    gpt = layout_of(db.hybrid_iso_gpt(tmp_path / "gpt.iso"))
    assert gpt.partition_table == "gpt" and problem_codes(gpt) == ["partition.gpt_hybrid_mbr"]
    assert [p.filesystem for p in gpt.partitions] == ["iso9660", "vfat"]


def test_extended_partition_logical_chain(tmp_path: Path) -> None:
    layout = layout_of(gi.extended_disk(tmp_path / "ext.raw"))
    assert layout.problems == ()
    assert [(p.index, p.start // 512, p.size // 512) for p in layout.partitions[:4]] == [
        (1, 2048, 1024), (2, 3072, 1024), (3, 4096, 1024), (5, 8192, 1024)]
    sixth = layout.partitions[4]
    assert len(layout.partitions) == 5 and sixth.index == 6 and sixth.size == 1024 * 512
    assert 9216 * 512 < sixth.start < 14336 * 512


def test_empty_and_huge_disks_read_little() -> None:
    assert read_layout(lambda offset, size: b"", 0) == GuestLayout("none")
    layout = read_layout(lambda offset, size: bytes(size), 1 << 40)
    assert layout.partition_table == "none" and layout.filesystem is None
    assert layout.bytes_read < 64 << 10


def test_read_cap_is_a_problem(gpt_linux: Path) -> None:
    layout = layout_of(gpt_linux, cap=2048)
    assert "layout.read_budget" in problem_codes(layout)
    assert layout.bytes_read <= 2048


# --- hostile edits of real disks ---------------------------------------------------------------

MBR_ENTRY = 446


def test_mbr_entry_past_the_end(tmp_path: Path) -> None:
    disk = db.mbr_disk(tmp_path / "d.raw")
    db.overwrite(disk, MBR_ENTRY + 12, struct.pack("<I", 0xFFFFFFF0))
    assert "partition.past_end" in problem_codes(layout_of(disk))


def test_mbr_overlapping_entries(tmp_path: Path) -> None:
    disk = db.mbr_disk(tmp_path / "d.raw")
    db.overwrite(disk, MBR_ENTRY + 16 + 8, struct.pack("<I", 9))  # entry 2 starts inside entry 1
    layout = layout_of(disk)
    assert problem_codes(layout) == ["partition.overlap"]


def test_mbr_bad_status_byte(tmp_path: Path) -> None:
    disk = db.mbr_disk(tmp_path / "d.raw")
    db.overwrite(disk, MBR_ENTRY, b"\x42")
    assert "partition.mbr_entry" in problem_codes(layout_of(disk))


def test_ebr_loop(tmp_path: Path) -> None:
    disk = gi.extended_disk(tmp_path / "ext.raw")
    data = disk.read_bytes()
    first_ebr = 6144
    (next_rel,) = struct.unpack_from("<I", data, first_ebr * 512 + MBR_ENTRY + 16 + 8)
    second = (first_ebr + next_rel) * 512
    db.overwrite(disk, second + MBR_ENTRY + 16, bytes([0, 0, 0, 0, 5, 0, 0, 0]) + struct.pack("<II", 0, 1))
    layout = layout_of(disk)
    assert "partition.ebr_loop" in problem_codes(layout)
    assert [p.index for p in layout.partitions] == [1, 2, 3, 5, 6]


def test_ebr_self_loop(tmp_path: Path) -> None:
    disk = gi.extended_disk(tmp_path / "ext.raw")
    db.overwrite(disk, 6144 * 512 + MBR_ENTRY + 16, bytes([0, 0, 0, 0, 5, 0, 0, 0]) + struct.pack("<II", 0, 1))
    assert "partition.ebr_loop" in problem_codes(layout_of(disk))


GPT_HEADER = 512


def test_gpt_header_crc_wrong(tmp_path: Path) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, GPT_HEADER + 40, b"\x01")  # first usable LBA, CRC left stale
    layout = layout_of(disk)
    assert layout.partition_table == "gpt"
    assert problem_codes(layout) == ["partition.gpt_crc", "partition.gpt_backup_used"]
    assert layout.partitions  # read from the backup, as firmware would


def test_gpt_entries_crc_wrong(tmp_path: Path) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, 2 * 512 + 56, "evil".encode("utf-16-le"))  # a name, entries CRC left stale
    layout = layout_of(disk)
    assert problem_codes(layout) == ["partition.gpt_crc", "partition.gpt_backup_used"]
    assert "evil" not in [p.name for p in layout.partitions]


def test_gpt_both_headers_broken(tmp_path: Path) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    size = disk.stat().st_size
    db.overwrite(disk, GPT_HEADER + 40, b"\x01")
    db.overwrite(disk, size - 512 + 40, b"\x01")
    layout = layout_of(disk)
    assert problem_codes(layout) == ["partition.gpt_crc", "partition.gpt_crc"] and not layout.partitions


def test_gpt_primary_wiped_backup_read(tmp_path: Path) -> None:
    """A zeroed primary header hides nothing: the protective MBR sends us to the backup, like firmware."""
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, GPT_HEADER, bytes(512))
    layout = layout_of(disk)
    assert layout.partition_table == "gpt" and layout.partitions
    assert problem_codes(layout) == ["partition.gpt_backup_used", "partition.gpt_missing"]


def test_ntfs_behind_a_broken_primary_gpt(tmp_path: Path) -> None:
    disk = tmp_path / "w.raw"
    gi.partitioned_disk(disk, "gpt", ["vfat", "ntfs"])
    db.overwrite(disk, GPT_HEADER + 16, b"\0\0\0\0")  # header CRC zeroed
    layout = layout_of(disk)
    assert [p.filesystem for p in layout.partitions] == ["vfat", "ntfs"] and os_evidence(layout).detected == "windows"


def test_gpt_huge_entry_count(tmp_path: Path) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, GPT_HEADER + 80, struct.pack("<I", 0xFFFFFFFF))
    gi.fix_gpt_header_crc(disk)
    layout = layout_of(disk)
    assert problem_codes(layout) == ["partition.gpt_entries", "partition.gpt_backup_used"]
    assert layout.bytes_read < 64 << 10


@pytest.mark.parametrize("entry_size", [3, 0, 1 << 20, 132])
def test_gpt_absurd_entry_size(tmp_path: Path, entry_size: int) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, GPT_HEADER + 84, struct.pack("<I", entry_size))
    gi.fix_gpt_header_crc(disk)
    assert problem_codes(layout_of(disk)) == ["partition.gpt_entry_size", "partition.gpt_backup_used"]


def test_gpt_entry_past_the_end(tmp_path: Path) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    data = bytearray(disk.read_bytes())
    struct.pack_into("<Q", data, 2 * 512 + 128 + 40, 1 << 40)  # entry 2's last LBA
    disk.write_bytes(bytes(data))
    count, size = struct.unpack_from("<II", data, GPT_HEADER + 80)
    db.overwrite(disk, GPT_HEADER + 88, struct.pack("<I", zlib.crc32(bytes(data[1024 : 1024 + count * size]))))
    gi.fix_gpt_header_crc(disk)
    layout = layout_of(disk)  # the untouched backup's entry 2 now differs from the primary's: both are kept
    assert problem_codes(layout) == ["partition.gpt_backup_differs", "partition.past_end"]
    assert [(p.index, p.table) for p in layout.partitions] == [(1, "GPT"), (2, "GPT"), (2, "GPT backup")]


def test_gpt_names_are_kept(tmp_path: Path) -> None:
    disk = tmp_path / "g.raw"
    with open(disk, "wb") as handle:
        handle.truncate(1 << 20)
    db.run("sgdisk", "-n", "1:0:0", "-c", "1:<b>root</b>", str(disk))
    (part,) = layout_of(disk).partitions
    assert part.name == "<b>root</b>" and part.type_id == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def test_gpt_without_protective_mbr(tmp_path: Path) -> None:
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, 510, b"\0\0")
    assert problem_codes(layout_of(disk)) == ["partition.gpt_protective_mbr"]


def test_fat_boot_sector_lies_about_sector_size(tmp_path: Path) -> None:
    disk = gi.filesystem_file(tmp_path / "fat.raw", "vfat")
    db.overwrite(disk, 11, struct.pack("<H", 3))
    layout = layout_of(disk)
    assert layout.partition_table == "none" and layout.filesystem is None
    assert problem_codes(layout) == ["partition.sector_size"]


def test_ntfs_partition_lies_about_sector_size(mbr_windows: Path, tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"")
    gi.splice(disk, 0, mbr_windows)
    with open(disk, "r+b") as handle:
        handle.truncate(mbr_windows.stat().st_size)
    ntfs = 1 * gi.MIB + gi.SIZE["ext4"]
    db.overwrite(disk, ntfs + 11, struct.pack("<H", 0x8000))
    layout = layout_of(disk)
    assert problem_codes(layout) == ["partition.sector_size"] and layout.partitions[1].filesystem is None


# --- fuzz: mutate the first 34 sectors of a real GPT disk -------------------------------------


@pytest.fixture(scope="module")
def gpt_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return db.gpt_disk(tmp_path_factory.mktemp("fuzz") / "g.raw").read_bytes()


@settings(derandomize=True, max_examples=50, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 34 * 512 - 1), st.binary(min_size=1, max_size=16)), max_size=12),
       fix=st.sampled_from(["none", "header", "both"]))
def test_fuzz_gpt_head_never_raises(gpt_bytes: bytes, edits: list[tuple[int, bytes]], fix: str) -> None:
    """Random edits of the protective MBR, GPT header and entries; ``fix`` recomputes the header CRC
    (``header``), or the entries array CRC too (``both``), so the fuzz reaches the entries themselves."""
    data = bytearray(gpt_bytes)
    for offset, blob in edits:
        data[offset : offset + len(blob)] = blob
    del data[len(gpt_bytes) :]
    lba, count, entry_size = struct.unpack_from("<QII", data, GPT_HEADER + 72)
    if fix == "both" and lba * 512 + count * entry_size <= len(data):
        entries = bytes(data[lba * 512 : lba * 512 + count * entry_size])
        struct.pack_into("<I", data, GPT_HEADER + 88, zlib.crc32(entries))
    if fix != "none":
        size = min(max(struct.unpack_from("<I", data, GPT_HEADER + 12)[0], 92), 512)
        data[GPT_HEADER + 16 : GPT_HEADER + 20] = bytes(4)
        struct.pack_into("<I", data, GPT_HEADER + 16, zlib.crc32(bytes(data[GPT_HEADER : GPT_HEADER + size])))
    total = 0

    def read(offset: int, length: int) -> bytes:
        nonlocal total
        assert 0 <= offset and 0 < length and offset + length <= len(data)
        total += length
        return bytes(data[offset : offset + length])

    layout = read_layout(read, len(data))
    assert total == layout.bytes_read <= READ_CAP
    assert layout.partition_table in ("mbr", "gpt", "none")
    for part in layout.partitions:
        assert isinstance(part.name, str)

