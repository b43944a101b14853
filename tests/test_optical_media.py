"""Windows installation media (issue 11): Windows boot and setup files seen by any ISO 9660, Joliet,
Rock Ridge or UDF reader of an image are Windows evidence.

Media are made by ``xorriso`` (ISO 9660 + Joliet + Rock Ridge), ``genisoimage -udf`` (a UDF bridge, as
Windows media are) and ``mkudffs`` + ``udfclient`` (UDF alone, files written without mounting);
:func:`tests.media_images.hide_from_iso9660` then renames the files in the ISO 9660 trees only.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from importhooks_plugins.guest._fat_media import MAX_CHAIN
from importhooks_plugins.guest._filesystems import os_evidence
from importhooks_plugins.guest._guest_layout import READ_CAP, read_layout
from importhooks_plugins.guest._optical_media import MAX_DIRECTORIES, MAX_PATH_TABLE

from . import disk_builders as db
from . import guest_images as gi
from . import media_images as mi
from .test_guest_layout import layout_of, problem_codes

ALL = ("bootmgr", "efi/microsoft/", "sources/install.wim")
HIDE = ("bootmgr", "sources", "efi", "install.wim", "microsoft")


def test_iso_with_joliet_and_rock_ridge_names(tmp_path: Path) -> None:
    layout = layout_of(mi.xorriso_media(tmp_path / "w.iso", mi.media_tree(tmp_path / "t")))
    assert layout.partition_table == "none" and layout.filesystem == "iso9660" and layout.problems == ()
    assert layout.windows_media == tuple(f"{tree}: {path}" for tree in ("ISO 9660", "Joliet") for path in ALL)
    (evidence,) = os_evidence(layout).windows
    assert evidence.startswith("whole disk: Windows installation media (ISO 9660: bootmgr, ")


def test_install_esd_is_evidence_too(tmp_path: Path) -> None:
    tree = mi.media_tree(tmp_path / "t", ("README.TXT", "sources/install.esd"))
    layout = layout_of(mi.xorriso_media(tmp_path / "w.iso", tree, "-joliet-long"))
    assert layout.windows_media == ("ISO 9660: sources/install.esd", "Joliet: sources/install.esd")


def test_udf_bridge_is_read_through_all_three_trees(tmp_path: Path) -> None:
    layout = layout_of(mi.udf_bridge(tmp_path / "w.iso", mi.media_tree(tmp_path / "t")))
    assert layout.filesystem == "udf" and layout.problems == ()
    assert layout.windows_media == tuple(f"{tree}: {path}" for tree in ("ISO 9660", "Joliet", "UDF") for path in ALL)


def test_files_only_udf_lists_are_found(tmp_path: Path) -> None:
    """The ISO 9660, Joliet and Rock Ridge trees show a README and renamed files; Windows reads UDF."""
    image = mi.hide_from_iso9660(mi.udf_bridge(tmp_path / "w.iso", mi.media_tree(tmp_path / "t")), HIDE)
    listing = db.run("xorriso", "-indev", str(image), "-find", "/").stdout.decode()
    assert "README.TXT" in listing and "bootmgr" not in listing and "sources" not in listing
    layout = layout_of(image)
    assert layout.windows_media == tuple(f"UDF: {path}" for path in ALL)
    assert os_evidence(layout).detected == "windows"


def test_udf_reserve_sequence_is_read_when_the_main_one_is_damaged(tmp_path: Path) -> None:
    """Readers fall back to the reserve volume descriptor sequence; so does this one."""
    image = mi.hide_from_iso9660(mi.udf_bridge(tmp_path / "w.iso", mi.media_tree(tmp_path / "t")), HIDE)
    anchor = image.read_bytes()[256 * 2048 : 256 * 2048 + 32]
    main_length, main, reserve_length, reserve = struct.unpack_from("<IIII", anchor, 16)
    assert main != reserve
    db.overwrite(image, main * 2048, bytes(main_length))
    layout = layout_of(image)
    assert layout.windows_media == tuple(f"UDF: {path}" for path in ALL) and layout.problems == ()
    db.overwrite(image, reserve * 2048, bytes(reserve_length))
    assert problem_codes(layout_of(image)) == ["media.udf_unreadable"]


def test_rock_ridge_names_alone_are_read(tmp_path: Path) -> None:
    """Without Joliet, and ISO 9660 names renamed: only the Rock Ridge NM names say bootmgr."""
    image = tmp_path / "w.iso"
    db.run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(image), str(mi.media_tree(tmp_path / "t")))
    data = image.read_bytes()
    image.write_bytes(data.replace(b"BOOTMGR.;1", b"QOOTMGR.;1").replace(b"BOOTMGR;1", b"QOOTMGR;1"))
    assert "ISO 9660: bootmgr" in layout_of(image).windows_media


def test_a_rock_ridge_name_in_a_continuation_area_is_read(tmp_path: Path) -> None:
    """xorriso splits a 200-letter name's NM entry between the record and a CE continuation area; the
    record's part becomes padding (PD) and the continued part ``bootmgr``, which xorriso then lists."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / ("b" * 200)).write_bytes(b"x")
    image = tmp_path / "w.iso"
    db.run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(image), str(tree))
    data = bytearray(image.read_bytes())
    first, rest = data.find(b"NMx\x01\x01"), data.find(b"NMZ\x01\x00")  # 120 bytes (CONTINUE), then 90 in CE
    assert 0 < first < rest
    data[first : first + 2] = b"PD"
    data[rest : rest + 16] = b"NM\x0c\x01\x00bootmgrST\x04\x01"
    image.write_bytes(bytes(data))
    assert "'/bootmgr'" in db.run("xorriso", "-indev", str(image), "-find", "/").stdout.decode()
    assert layout_of(image).windows_media == ("ISO 9660: bootmgr",)


def test_an_impossible_iso_block_size_is_a_problem(tmp_path: Path) -> None:
    image = mi.xorriso_media(tmp_path / "w.iso", mi.media_tree(tmp_path / "t"))
    db.overwrite(image, (32 << 10) + 128, struct.pack("<H", 3) + struct.pack(">H", 3))
    layout = layout_of(image)
    assert problem_codes(layout) == ["media.iso_block_size"] and layout.windows_media[0].startswith("Joliet: ")


def test_a_directory_only_the_path_table_lists_is_read(tmp_path: Path) -> None:
    """ISO 9660 with Rock Ridge (no Joliet) whose sources directory record is renamed (ISO and Rock Ridge
    name): Linux walks the records and misses it; the L and M path tables, which some readers use to
    find a directory, still list SOURCES (a path table entry has no length byte before its name)."""
    image = tmp_path / "w.iso"
    tree = mi.media_tree(tmp_path / "t", ("README.TXT", "sources/install.wim"))
    db.run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(image), str(tree))
    assert image.read_bytes().count(b"\x07SOURCES") == 1
    mi.hide_from_iso9660(image, ("sources",))
    listing = db.run("xorriso", "-indev", str(image), "-find", "/").stdout.decode()
    assert "sources" not in listing and "qources/install.wim" in listing
    assert layout_of(image).windows_media == ("ISO 9660 path table: sources/install.wim",)


def test_a_path_table_over_the_limit_is_a_problem(tmp_path: Path) -> None:
    image = mi.xorriso_media(tmp_path / "w.iso", mi.media_tree(tmp_path / "t"))
    size = MAX_PATH_TABLE + 2  # the primary volume's path table size, both-endian
    db.overwrite(image, (32 << 10) + 132, size.to_bytes(4, "little") + size.to_bytes(4, "big"))
    layout = layout_of(image)
    assert problem_codes(layout) == ["media.directories"] and "Joliet: bootmgr" in layout.windows_media


def test_udf_alone_written_by_udfclient(tmp_path: Path) -> None:
    layout = layout_of(mi.udf_media(tmp_path / "w.udf"))
    assert layout.filesystem == "udf" and layout.problems == ()
    assert layout.windows_media == tuple(f"UDF: {path}" for path in ALL)


@pytest.mark.parametrize("option", ["--ad=short", "--ad=long", "--noefe", "--spartable", "--udfrev=1.02"])
def test_udf_layouts_mkudffs_makes(tmp_path: Path, option: str) -> None:
    """Short and long allocation descriptors (the default embeds them), plain File Entries, a sparable
    partition map, UDF 1.02 as Windows media use; udfinfo counts the files udfclient wrote."""
    image = mi.udf_media(tmp_path / "w.udf", ("bootmgr", "efi/microsoft/boot/bcd"), 8 * gi.MIB, option)
    assert "numfiles=2\n" in db.run("udfinfo", str(image)).stdout.decode()
    layout = layout_of(image)
    assert layout.windows_media == ("UDF: bootmgr", "UDF: efi/microsoft/") and layout.problems == ()


def test_a_udf_volume_this_reader_cannot_walk_is_a_problem(tmp_path: Path) -> None:
    """mkudffs for a CD-R: a virtual partition map (VAT), which is not read: fail closed."""
    image = tmp_path / "vat.udf"
    with open(image, "wb") as handle:
        handle.truncate(8 * gi.MIB)
    db.run("mkudffs", "--media-type=cdr", "--blocksize=512", str(image))
    layout = layout_of(image)
    assert layout.filesystem == "udf" and problem_codes(layout) == ["media.udf_unreadable"]
    assert "Virtual Partition" in layout.problems[0][1]


def test_linux_media_are_not_windows_evidence(tmp_path: Path) -> None:
    tree = mi.media_tree(tmp_path / "t", ("README.TXT", "efi/boot/bootx64.efi", "boot/grub/grub.cfg",
                                          "casper/vmlinuz", "sources.list"))
    for image in (mi.xorriso_media(tmp_path / "l.iso", tree), mi.udf_bridge(tmp_path / "l.udf", tree)):
        layout = layout_of(image)
        assert layout.windows_media == () and layout.problems == () and os_evidence(layout).detected == "unknown"


def test_hybrid_iso_with_a_gpt_is_read_at_the_whole_disk(tmp_path: Path) -> None:
    """A GPT in the system area (xorriso ``-appended_part_as_gpt``) lists no partition at sector 0: the
    ISO 9660 filesystem there is probed as the whole disk's."""
    efi = tmp_path / "efi.img"
    with open(efi, "wb") as handle:
        handle.truncate(1440 << 10)
    db.run("mkfs.vfat", str(efi))
    image = mi.xorriso_media(tmp_path / "w.iso", mi.media_tree(tmp_path / "t"), "-append_partition", "2",
                             "0xef", str(efi), "-appended_part_as_gpt")
    layout = layout_of(image)
    assert layout.partition_table == "gpt" and layout.filesystem == "iso9660"
    assert "vfat" in [p.filesystem for p in layout.partitions]
    assert "partition.whole_disk_filesystem" not in problem_codes(layout)
    assert "ISO 9660: sources/install.wim" in layout.windows_media and os_evidence(layout).detected == "windows"


def test_too_many_directories_is_a_problem(tmp_path: Path) -> None:
    """Many directories all named ``sources``, by Rock Ridge, each looked into: the cap stops the walk."""
    tree = tmp_path / "t"
    for number in range(MAX_DIRECTORIES + 2):
        (tree / f"dir{number:04}").mkdir(parents=True)
        (tree / f"dir{number:04}" / "x").write_bytes(b"x")
    image = tmp_path / "w.iso"
    db.run("xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(image), str(tree))
    data = image.read_bytes()
    for number in range(MAX_DIRECTORIES + 2):  # Rock Ridge NM names dir0000... become "sources"
        old = b"NM\x0c\x01\x00" + f"dir{number:04}".encode()
        assert old in data
        data = data.replace(old, b"NM\x0c\x01\x00sources")
    image.write_bytes(data)
    layout = layout_of(image)
    assert "media.directories" in problem_codes(layout)


@pytest.fixture(scope="module")
def media_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    base = tmp_path_factory.mktemp("media")
    return {"bridge": mi.udf_bridge(base / "w.iso", mi.media_tree(base / "t")).read_bytes(),
            "fat": mi.fat_media(base / "w.fat", 16, size=16 * gi.MIB).read_bytes(),
            "exfat": mi.exfat_media(base / "w.exfat").read_bytes()}


@settings(derandomize=True, max_examples=80, deadline=None)
@given(kind=st.sampled_from(["bridge", "fat", "exfat"]),
       edits=st.lists(st.tuples(st.integers(32 << 10, (64 << 10) - 1) | st.integers(0, 2200 << 10),
                                st.binary(min_size=1, max_size=8)), min_size=1, max_size=10))
def test_fuzz_media_never_raises_nor_reads_past_the_cap(media_bytes: dict[str, bytes], kind: str,
                                                        edits: list[tuple[int, bytes]]) -> None:
    """Random edits of the volume descriptors, directories, path tables, UDF descriptors, FAT boot
    sector, FATs and directories, exFAT boot sector, FAT, bitmap and entry sets of real media."""
    original = media_bytes[kind]
    data = bytearray(original)
    for offset, blob in edits:
        data[offset : offset + len(blob)] = blob
    del data[len(original) :]
    total = 0

    def read(offset: int, length: int) -> bytes:
        nonlocal total
        assert 0 <= offset and 0 < length and offset + length <= len(data)
        total += length
        return bytes(data[offset : offset + length])

    layout = read_layout(read, len(data), cap=1 << 20)
    assert total == layout.bytes_read <= min(READ_CAP, 1 << 20)
    assert all(entry.split(": ", 1)[1] in (*ALL, "sources/install.esd") for entry in layout.windows_media)


# --- USB installation media: FAT ------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 16, 32])
def test_fat_installation_media_short_and_long_names(tmp_path: Path, bits: int) -> None:
    """``microsoft`` has the short name ``MICROS~1``: only its long name matches."""
    size = {12: 8, 16: 40, 32: 40}[bits] * gi.MIB
    layout = layout_of(mi.fat_media(tmp_path / "w.img", bits, size=size))
    assert layout.filesystem == "vfat" and layout.problems == ()
    assert layout.windows_media == tuple(f"FAT: {path}" for path in ALL)
    assert os_evidence(layout).detected == "windows"


def test_a_long_name_whose_checksum_fails_is_ignored_as_readers_ignore_it(tmp_path: Path) -> None:
    image = mi.fat_media(tmp_path / "w.img", 32)
    data = bytearray(image.read_bytes())
    at = data.find("micro".encode("utf-16-le"))  # the long-name entry of efi/microsoft
    assert at > 0
    data[at - 1 + 13] ^= 0xFF  # its checksum byte (offset 13 of the 32-byte entry, name starts at 1)
    image.write_bytes(bytes(data))
    assert layout_of(image).windows_media == ("FAT: bootmgr", "FAT: sources/install.wim")


def test_a_fat_directory_chain_past_the_limit_is_a_problem(tmp_path: Path) -> None:
    """The root directory's chain in the first FAT is edited to run on for MAX_CHAIN + 40 clusters."""
    image = mi.fat_media(tmp_path / "w.img", 32)
    data = image.read_bytes()
    reserved, root = struct.unpack_from("<H", data, 14)[0], struct.unpack_from("<I", data, 44)[0]
    links = b"".join(struct.pack("<I", n + 1) for n in range(root, root + MAX_CHAIN + 40))
    db.overwrite(image, reserved * 512 + 4 * root, links)
    assert "media.directories" in problem_codes(layout_of(image))


def test_fat32_active_fat_without_mirroring_is_followed_too(tmp_path: Path) -> None:
    """ExtFlags 0x81: mirroring off, FAT 2 active (Windows reads it); FAT 1 (Linux's) ends the root
    directory after its first cluster, before the entries of the Windows files."""
    fillers = tuple(f"readme{number:02}.txt" for number in range(20))
    image = mi.fat_media(tmp_path / "w.img", 32, (*fillers, *mi.WINDOWS_MEDIA_FILES))
    data = image.read_bytes()
    reserved, root = struct.unpack_from("<H", data, 14)[0], struct.unpack_from("<I", data, 44)[0]
    fat_size, cluster = struct.unpack_from("<I", data, 36)[0] * 512, data[13] * 512
    assert struct.unpack_from("<I", data, reserved * 512 + 4 * root)[0] & 0x0FFFFFFF < 0x0FFFFFF8
    assert b"BOOTMGR" not in data[(reserved * 512 + 2 * fat_size):][:cluster]  # not in the root's first cluster
    db.overwrite(image, reserved * 512 + 4 * root, struct.pack("<I", 0x0FFFFFFF))  # FAT 1: root ends here
    assert layout_of(image).windows_media == ()  # what Linux sees
    db.overwrite(image, 40, struct.pack("<H", 0x81))
    assert layout_of(image).windows_media == tuple(f"FAT: {path}" for path in ALL)


def test_fat_linux_esp_is_not_windows_evidence(tmp_path: Path) -> None:
    image = mi.fat_media(tmp_path / "esp.img", 32, ("EFI/BOOT/BOOTX64.EFI", "EFI/ubuntu/grub.cfg"))
    layout = layout_of(image)
    assert layout.windows_media == () and os_evidence(layout).detected == "unknown"


def test_fat_impossible_geometry_is_a_problem(tmp_path: Path) -> None:
    image = mi.fat_media(tmp_path / "w.img", 16)
    db.overwrite(image, 14, b"\0\0")  # no reserved sectors
    layout = layout_of(image)
    assert layout.filesystem == "vfat" and problem_codes(layout) == ["media.fat_unreadable"]


# --- installation media on exFAT ---------------------------------------------------------------


def test_exfat_installation_media(tmp_path: Path) -> None:
    """mkfs.exfat, then entry sets written by test code (no tool writes exFAT unmounted); fsck.exfat
    accepts the volume (:func:`tests.media_images.exfat_media`)."""
    layout = layout_of(mi.exfat_media(tmp_path / "w.img"))
    assert layout.filesystem == "exfat" and layout.problems == ()
    assert layout.windows_media == tuple(f"exFAT: {path}" for path in ALL)
    assert os_evidence(layout).detected == "windows"


def test_exfat_entry_set_whose_checksum_fails_is_ignored_as_fsck_ignores_it(tmp_path: Path) -> None:
    image = mi.exfat_media(tmp_path / "w.img")
    data = bytearray(image.read_bytes())
    data[data.find("bootmgr".encode("utf-16-le"))] ^= 1
    image.write_bytes(bytes(data))
    fsck = subprocess.run(["fsck.exfat", "-n", str(image)], capture_output=True, text=True, check=False)
    assert fsck.returncode != 0 and "checksum" in fsck.stdout + fsck.stderr
    assert layout_of(image).windows_media == ("exFAT: efi/microsoft/", "exFAT: sources/install.wim")


def test_exfat_impossible_geometry_is_a_problem(tmp_path: Path) -> None:
    image = mi.exfat_media(tmp_path / "w.img")
    db.overwrite(image, 109, b"\x20")  # 2^32 sectors per cluster
    assert problem_codes(layout_of(image)) == ["media.fat_unreadable"]
