"""Grain tables against grain markers in stream-optimized VMDKs (plugins/formats/_vmdk_grains.py).

qemu reads a stream-optimized VMDK through its grain tables; a streaming reader
places each grain where its marker says. qemu-img makes the images; the tests patch
a marker or a table entry in place and show what qemu-img reads (``compare``), then
that importhooks rejects the image both readers would not see alike.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from importhooks import Verdict

from . import vmdk_images as v
from .vmdk_checks import audit, detail, qemu_opens, qemu_same_disk, rejected_with

SECTOR = 512


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> Path:
    """4 MiB disk, 256 KiB of noise first (four grains that do not compress) and text at the end."""
    return v.converted(tmp_path_factory.mktemp("grains") / "stream.vmdk", "streamOptimized")


@pytest.fixture
def copy(stream, tmp_path):
    return Path(shutil.copy(stream, tmp_path / "copy.vmdk"))


def grain_table_entry(path: Path, lba: int) -> int:
    """Byte offset of the grain table entry for ``lba`` (the images have one grain table)."""
    header = v.read_header(path)
    directory = path.read_bytes()[header["gd_offset"] * SECTOR :][:4]
    (table,) = struct.unpack("<I", directory)
    return table * SECTOR + 4 * (lba // header["grain_size"])


def grain_sector(path: Path, lba: int) -> int:
    (sector,) = struct.unpack_from("<I", path.read_bytes(), grain_table_entry(path, lba))
    return int(sector)


def test_qemus_stream_has_markers_and_tables_that_agree(settings, copy):
    assert [grain_sector(copy, lba) for lba in (0, 128)] == [128, 257]  # marker sectors, as walked
    result = audit(settings, copy, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings


def test_vmware_layout_with_footer_and_end_of_stream_marker(settings, copy):
    """The walk skips the footer marker and its sector and stops at the end-of-stream marker."""
    path = v.with_footer(copy)
    qemu_opens(path)
    assert audit(settings, path, disk_format="vmdk").verdict is Verdict.ACCEPT


def test_marker_naming_another_lba(settings, copy, stream):
    """qemu still reads the grain at LBA 128 through the table; a streaming reader would put it at 1024."""
    v.patch_bytes(copy, grain_sector(copy, 128) * SECTOR, struct.pack("<Q", 1024))
    qemu_same_disk(stream, copy)
    result = rejected_with(settings, copy, "vmdk.grain_markers", disk_format="vmdk")
    assert "LBA 128" in detail(result, "vmdk.grain_markers")


def test_grain_no_table_points_at(settings, copy, stream):
    """Unallocated in the table (qemu reads zeros), still in the stream: a streaming reader writes it."""
    v.patch_bytes(copy, grain_table_entry(copy, 256), struct.pack("<I", 0))
    differs = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(stream), str(copy)],
                             capture_output=True, text=True)
    assert differs.returncode == 1, differs.stdout + differs.stderr  # qemu now reads another disk
    result = rejected_with(settings, copy, "vmdk.grain_markers", disk_format="vmdk")
    assert "LBA 256: grain tables say no grain" in detail(result, "vmdk.grain_markers")


def test_two_markers_for_one_lba(settings, copy):
    v.patch_bytes(copy, grain_sector(copy, 384) * SECTOR, struct.pack("<Q", 256))
    result = rejected_with(settings, copy, "vmdk.grain_markers", disk_format="vmdk")
    assert "two grain markers for LBA 256" in detail(result, "vmdk.grain_markers")


def _after_last_grain(path: Path) -> int:
    """Byte offset just after the last grain of the stream (where a streaming reader reads its next marker)."""
    data = path.read_bytes()
    last = max(grain_sector(path, lba) for lba in range(0, 8192, 128))
    (size,) = struct.unpack_from("<I", data, last * SECTOR + 8)
    return last * SECTOR + -(-(12 + size) // SECTOR) * SECTOR


def test_unknown_metadata_marker(settings, copy):
    end = _after_last_grain(copy)
    with open(copy, "r+b") as handle:
        handle.seek(end)
        handle.write(struct.pack("<QII", 0, 0, 7).ljust(SECTOR, b"\0"))
    qemu_opens(copy)
    result = rejected_with(settings, copy, "vmdk.grain_markers", disk_format="vmdk")
    assert "unknown marker type 7" in detail(result, "vmdk.grain_markers")


def test_marker_running_past_the_end(settings, copy):
    last = max(grain_sector(copy, lba) for lba in range(0, 8192, 128))
    v.patch_bytes(copy, last * SECTOR + 8, struct.pack("<I", 1 << 30))
    result = rejected_with(settings, copy, "vmdk.grain_markers", disk_format="vmdk")
    assert "past the end" in detail(result, "vmdk.grain_markers")


def test_grain_after_the_end_of_stream_marker(settings, copy, stream):
    """An end-of-stream marker before the last grain: a streaming reader stops there, qemu reads on."""
    last = max(grain_sector(copy, lba) for lba in range(0, 8192, 128))
    data = copy.read_bytes()
    (size,) = struct.unpack_from("<I", data, last * SECTOR + 8)
    grain = data[last * SECTOR : last * SECTOR + -(-(12 + size) // SECTOR) * SECTOR]
    v.patch_bytes(copy, last * SECTOR, bytes(SECTOR) + grain)  # an EOS sector, then the grain one sector on
    v.patch_bytes(copy, grain_table_entry(copy, struct.unpack_from("<Q", grain)[0]), struct.pack("<I", last + 1))
    qemu_same_disk(stream, copy)
    result = rejected_with(settings, copy, "vmdk.grain_markers", disk_format="vmdk")
    assert "grain markers say no grain" in detail(result, "vmdk.grain_markers")


def test_max_grains_option(settings, copy):
    """Comparing is bounded by [plugin.vmdk] max_grains; an image over it is not judged sound."""
    result = rejected_with(settings.replace(plugin={"vmdk": {"max_grains": 2}}), copy, "vmdk.grain_markers",
                           disk_format="vmdk")
    assert "more than 2" in detail(result, "vmdk.grain_markers")
    assert audit(settings.replace(plugin={"vmdk": {"max_grains": 64}}), copy,
                 disk_format="vmdk").verdict is Verdict.ACCEPT
