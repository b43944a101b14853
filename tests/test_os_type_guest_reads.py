"""Guest reads of a layer shared by nested_headers and os_type, and a qcow2's unallocated ranges read as zeros
without qemu-img (:mod:`importhooks_plugins.formats._guest_reads`).

Images are made by ``qemu-img``/``qemu-io``; qemu is the oracle (``qemu-img map`` says what it reads as zeros).
Which qemu-img runs happened is what oslo.concurrency's ``processutils`` logs for each command it runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from importhooks_plugins.formats._guest_reads import Qcow2Map, qcow2_map, unallocated

from importhooks import Verdict
from importhooks.settings import PluginSettings

from . import guest_images as gi
from . import images
from . import qcow2_images as q
from .helpers import audit, codes

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 128 * KIB  # os_type's guest block


def reader(path: Path) -> Callable[[int, int], bytes]:
    def read_at(offset: int, size: int) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    return read_at


def mapped(path: Path) -> Qcow2Map | None:
    return qcow2_map(reader(path), path.stat().st_size)


def qemu_zero_ranges(path: Path) -> list[tuple[int, int]]:
    """``(start, end)`` of what qemu reads as zeros with no data behind it (``qemu-img map``)."""
    done = subprocess.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", str(path)],
                          capture_output=True, check=True)
    return [(e["start"], e["start"] + e["length"]) for e in json.loads(done.stdout) if e["zero"] and not e["data"]]


def qemu_reads_zeros(zeros: list[tuple[int, int]], offset: int, size: int) -> bool:
    covered = offset
    for start, end in sorted(zeros):
        if start <= covered < end:
            covered = end
    return covered >= offset + size


def probe_ranges(virtual: int, cluster: int) -> list[tuple[int, int]]:
    """os_type's blocks over the first and last MiBs, and ranges that straddle clusters and L2 tables."""
    ranges = [(start, BLOCK) for start in range(0, 2 * MIB, BLOCK)]
    ranges += [(virtual - BLOCK * k, BLOCK) for k in range(1, 5)]
    ranges += [(512, 512), (cluster - 512, 1024), (cluster * 3 - 512, 2 * cluster), (virtual // 2 - 512, 4096)]
    return [(offset, size) for offset, size in ranges if 0 <= offset and offset + size <= virtual]


SHAPES: dict[str, tuple[str, tuple[str, ...], tuple[tuple[int, int], ...]]] = {
    # name: (virtual size, qemu-img create options, writes (offset, length))
    "v3 64 KiB clusters, two L2 tables": ("4G", (), ((0, 64 * KIB), (200 * KIB, 4 * KIB), (3 * GIB, MIB))),
    "v2 (compat=0.10)": ("1G", ("compat=0.10",), ((MIB, 512), (512 * MIB, 64 * KIB))),
    "512-byte clusters (an L2 table maps 32 KiB)": ("64M", ("cluster_size=512",), ((40 * KIB, 512), (MIB + 512, 4096))),
    "extended L2 entries (4 KiB subclusters)": ("1G", ("extended_l2=on", "cluster_size=128k"),
                                                ((4 * KIB, 4 * KIB), (MIB + 64 * KIB, 512))),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_unallocated_ranges_are_those_qemu_reads_as_zeros(shape, tmp_path):
    size, options, writes = SHAPES[shape]
    path = q.written(tmp_path / "w.qcow2", size, *writes, options=options)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -z 1536k 64k", "-c", "discard 0 64k", str(path)],
                   check=True, capture_output=True)  # a zero-flag cluster, and a discarded one
    image = mapped(path)
    assert image is not None
    zeros = qemu_zero_ranges(path)
    found = []
    for offset, length in probe_ranges(image.virtual_size, image.cluster_size):
        if unallocated(reader(path), path.stat().st_size, image, offset, length):
            assert qemu_reads_zeros(zeros, offset, length), (shape, offset, length)
            found.append(offset)
    assert found, "some ranges are unallocated in every shape"
    for offset, length in writes:  # what the guest wrote is never answered without qemu-img
        assert not unallocated(reader(path), path.stat().st_size, image, offset, length)


def test_an_empty_qcow2_is_unallocated_throughout(tmp_path):
    path = q.create(tmp_path / "e.qcow2", "100G")
    image = mapped(path)
    assert image is not None and image.virtual_size == 100 * GIB
    for offset, length in probe_ranges(image.virtual_size, image.cluster_size):
        assert unallocated(reader(path), path.stat().st_size, image, offset, length)
    assert not unallocated(reader(path), path.stat().st_size, image, image.virtual_size - 512, 1024)  # past the end


def test_compressed_clusters_go_to_qemu(tmp_path):
    raw = q.compressible_raw(tmp_path / "d.raw", 2 * MIB)
    with open(raw, "r+b") as handle:
        handle.truncate(8 * MIB)  # 6 MiB of zeros after the data: qemu-img convert leaves them unallocated
    path = q.converted(tmp_path / "c.qcow2", raw, compress=True)
    image = mapped(path)
    assert image is not None
    read_at, file_size = reader(path), path.stat().st_size
    assert not any(unallocated(read_at, file_size, image, offset, BLOCK) for offset in range(0, 2 * MIB, BLOCK))
    assert unallocated(read_at, file_size, image, 4 * MIB, BLOCK)
    assert qemu_reads_zeros(qemu_zero_ranges(path), 4 * MIB, BLOCK)


def test_images_with_other_files_or_encryption_are_not_mapped(tmp_path):
    assert mapped(images.qcow2_with_backing_file(tmp_path / "b.qcow2")) is None
    assert mapped(q.create(tmp_path / "d.qcow2", "64M", f"data_file={tmp_path / 'd.data'}")) is None
    assert mapped(q.encrypted(tmp_path / "x.qcow2", "aes")) is None
    assert mapped(images.raw_image(tmp_path / "r.raw")) is None


@pytest.fixture
def qemu_runs(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """The qemu-img command lines of a subcommand that ``processutils.execute`` ran, from its log."""
    caplog.set_level(logging.DEBUG, logger="oslo_concurrency.processutils")

    def runs(subcommand: str) -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "oslo_concurrency.processutils"]
        return [line for line in lines if line.startswith("Running cmd") and f"qemu-img {subcommand} " in line]

    return runs


def test_an_unallocated_qcow2_is_read_without_qemu_img_convert(settings, tmp_path, qemu_runs):
    sparse = tmp_path / "s.raw"
    with open(sparse, "wb") as handle:
        handle.truncate(GIB)
    empty = q.create(tmp_path / "e.qcow2", "1G")
    expected = audit(settings, sparse, os_type="linux")  # the same guest, read directly
    assert not qemu_runs("convert")
    result = audit(settings, empty, os_type="linux")
    assert result.verdict is Verdict.ACCEPT and codes(result) == codes(expected) == ["os_type.unverified"]
    for fact in ("partition_table", "filesystems", "os_type_detected"):
        assert result.detected[fact] == expected.detected[fact]
    assert not qemu_runs("convert")  # nested_headers and os_type read only unallocated ranges
    qcow2_runs = [run for run in qemu_runs("info") + qemu_runs("check") if "-f qcow2" in run]
    assert len(qcow2_runs) == 2  # qemu-img info and check of the image itself still run


def test_a_guest_block_is_read_by_qemu_img_once_per_layer(settings, tmp_path, qemu_runs):
    raw = tmp_path / "l.raw"
    gi.partitioned_disk(raw, "gpt", ["vfat", "ext4"])
    path = tmp_path / "l.qcow2"  # compressed: its blocks go to qemu-img (test_qcow2_direct_reads.py)
    images.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    result = audit(settings, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT and result.detected["filesystems"] == ["vfat", "ext4"]
    sector_0 = [run for run in qemu_runs("convert") if '"offset": 0, "size": 131072' in run]
    assert len(sector_0) == 1  # nested_headers fetched it; os_type reused it
    alone = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("nested_headers",)))
    before = len(qemu_runs("convert"))
    assert audit(alone, path, os_type="linux").detected == result.detected
    assert len([run for run in qemu_runs("convert")[before:] if '"offset": 0, "size": 131072' in run]) == 1
