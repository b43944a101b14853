"""A qcow2's standard clusters read from the file without qemu-img (:mod:`importhooks_plugins.formats._guest_reads`).

Differential: for every image (built by ``qemu-img``/``qemu-io``), the bytes the fast path returns for a
guest range are those ``qemu-img convert -O raw`` of the whole image has there, and which ranges take the
fast path and which go to qemu-img is asserted (``qemu-img map`` says which clusters are compressed or
allocated). In an audit, which ranges went which way is what ``_guest_reads`` logs for each guest read, and
which qemu-img runs happened is what oslo.concurrency's ``processutils`` logs.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from importhooks_plugins.formats._guest_reads import Qcow2Map, guest_bytes, qcow2_map

from importhooks import Verdict
from importhooks.settings import PluginSettings

from . import guest_images as gi
from . import qcow2_images as q
from .helpers import audit, codes

KIB, MIB = 1 << 10, 1 << 20
VIRTUAL = 8 * MIB


def reader(path: Path) -> Callable[[int, int], bytes]:
    def read_at(offset: int, size: int) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    return read_at


def mapped(path: Path) -> Qcow2Map:
    image = qcow2_map(reader(path), path.stat().st_size)
    assert image is not None
    return image


def qemu_io(path: Path, *commands: str) -> Path:
    args = [arg for command in commands for arg in ("-c", command)]
    subprocess.run(["qemu-io", "-f", "qcow2", *args, str(path)], check=True, capture_output=True)
    return path


def random_raw(path: Path, size: int, data: int) -> Path:
    """``size`` bytes: ``data`` random bytes (every cluster different), then zeros (left unallocated)."""
    with open(path, "wb") as handle:
        handle.write(os.urandom(data))
        handle.truncate(size)
    return path


def oracle(path: Path, tmp_path: Path) -> bytes:
    """The whole guest disk as qemu reads it."""
    out = tmp_path / "oracle.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(path), str(out)], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


def qemu_map(path: Path) -> list[dict[str, object]]:
    done = subprocess.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", str(path)],
                          capture_output=True, check=True)
    return list(json.loads(done.stdout))


def touches(entries: list[dict[str, object]], offset: int, size: int, *, compressed: bool = False,
            data: bool = False) -> bool:
    """Whether ``qemu-img map`` has a data extent (a compressed one: data with no host ``offset``, which is
    how qemu 7.2 shows it) overlapping the range."""
    for entry in entries:
        start, length = int(str(entry["start"])), int(str(entry["length"]))
        if start < offset + size and offset < start + length and entry["data"]:
            if data or (compressed and "offset" not in entry):
                return True
    return False


def probe_ranges(virtual: int, cluster: int) -> list[tuple[int, int]]:
    """128 KiB blocks over the disk, and ranges that straddle clusters and L2 tables, in 512-byte units."""
    ranges = [(start, 128 * KIB) for start in range(0, virtual, 256 * KIB)]
    ranges += [(512, 512), (cluster - 512, 1024), (3 * cluster - 512, 2 * cluster), (virtual - 4096, 4096)]
    span = cluster * (cluster // 8)
    ranges += [(span - 1024, 2048), (2 * span - 512, cluster + 1024)]
    return sorted({(offset, size) for offset, size in ranges if offset + size <= virtual})


def differential(path: Path, tmp_path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The probe ranges read fast (each compared with qemu's bytes) and those left to qemu-img."""
    image = mapped(path)
    truth = oracle(path, tmp_path)
    assert len(truth) == image.virtual_size
    read_at, file_size = reader(path), path.stat().st_size
    fast, slow = [], []
    for offset, size in probe_ranges(image.virtual_size, image.cluster_size):
        got = guest_bytes(read_at, file_size, image, offset, size, allocated=True)
        if got is None:
            slow.append((offset, size))
        else:
            assert got == truth[offset : offset + size], (path.name, offset, size)
            fast.append((offset, size))
    return fast, slow


def build_written(tmp_path: Path, options: tuple[str, ...]) -> Path:
    """Data in several patterns, overwritten clusters, a zeroed range and a discarded one."""
    path = q.converted(tmp_path / "w.qcow2", random_raw(tmp_path / "w.raw", VIRTUAL, 3 * MIB), *options)
    return qemu_io(path, "write -P 0x11 1m 192k", "write -P 0x22 1088k 64k",  # overwritten
                   "write -P 0x33 5m 4k", "write -P 0x44 7m 1536", "write -z 2m 128k", "discard 2560k 128k")


SHAPES: dict[str, tuple[str, ...]] = {
    "v3, 64 KiB clusters": ("compat=1.1",),
    "v2 (compat=0.10)": ("compat=0.10",),
    "512-byte clusters": ("cluster_size=512",),
    "v2, 4 KiB clusters": ("compat=0.10", "cluster_size=4k"),
    "2 MiB clusters": ("cluster_size=2M",),
    "preallocation=metadata": ("preallocation=metadata",),
    "preallocation=falloc": ("preallocation=falloc",),
    "preallocation=full": ("preallocation=full",),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_standard_clusters_read_what_qemu_reads(shape: str, tmp_path: Path) -> None:
    path = build_written(tmp_path, SHAPES[shape])
    fast, slow = differential(path, tmp_path)
    assert slow == [] and len(fast) == len(probe_ranges(VIRTUAL, mapped(path).cluster_size))


def test_internal_snapshots_read_the_active_tables(tmp_path: Path) -> None:
    path = q.converted(tmp_path / "s.qcow2", random_raw(tmp_path / "s.raw", VIRTUAL, 2 * MIB))
    subprocess.run(["qemu-img", "snapshot", "-c", "before", str(path)], check=True)
    qemu_io(path, "write -P 0x66 0 1m", "discard 1m 256k", "write -P 0x77 6m 64k")
    subprocess.run(["qemu-img", "snapshot", "-c", "after", str(path)], check=True)
    qemu_io(path, "write -P 0x88 64k 64k")  # copy-on-write of a cluster both snapshots share
    fast, slow = differential(path, tmp_path)
    assert slow == [] and (0, 128 * KIB) in fast


def test_compressed_clusters_go_to_qemu_img(tmp_path: Path) -> None:
    raw = random_raw(tmp_path / "c.raw", VIRTUAL, 4 * MIB)
    with open(raw, "r+b") as handle:
        handle.seek(MIB)
        handle.write(bytes(range(256)) * 4096)  # 1 MiB that compresses
    path = q.converted(tmp_path / "c.qcow2", raw, compress=True)
    qemu_io(path, "write -P 0x99 2m 256k")  # standard clusters among the compressed ones
    entries = qemu_map(path)
    fast, slow = differential(path, tmp_path)
    assert slow and fast and (2 * MIB, 128 * KIB) in fast
    for offset, size in slow:
        assert touches(entries, offset, size, compressed=True)
    for offset, size in fast:
        assert not touches(entries, offset, size, compressed=True)


@pytest.mark.parametrize("cluster", ["16k", "128k", "2M"])
def test_extended_l2_subclusters_read_what_qemu_reads(cluster: str, tmp_path: Path) -> None:
    """Subclusters allocated, zeroed, discarded and left unallocated within one cluster."""
    raw = random_raw(tmp_path / "x.raw", VIRTUAL, 0)
    path = q.converted(tmp_path / "x.qcow2", raw, "extended_l2=on", f"cluster_size={cluster}")
    sub = {"16k": 512, "128k": 4 * KIB, "2M": 64 * KIB}[cluster]
    qemu_io(path, f"write -P 0x11 {sub} {sub}", f"write -P 0x22 {5 * sub} {3 * sub}", f"write -z {6 * sub} {sub}",
            f"write -P 0x33 {MIB + sub} {sub}", f"write -P 0x44 3m {MIB}", f"discard {3 * MIB + 64 * KIB} {sub}",
            f"write -z {7 * MIB} {2 * sub}", "write -P 0x55 6m 64k")
    fast, slow = differential(path, tmp_path)
    assert slow == [] and (0, 128 * KIB) in fast


def invalid_bitmap(tmp_path: Path) -> Path:
    path = q.written(tmp_path / "b.qcow2", "8M", (0, 8 * KIB), options=("extended_l2=on", "cluster_size=128k"))
    bitmap = q.read_u64(path, q.l2_table(path) + 8)
    assert bitmap == 0b11  # subclusters 0 and 1 allocated
    q.patch_bytes(path, q.l2_table(path) + 8, struct.pack(">Q", bitmap | 1 << 32))  # and subcluster 0 zero
    return path


def test_an_invalid_subcluster_bitmap_goes_to_qemu_img(tmp_path: Path) -> None:
    path = invalid_bitmap(tmp_path)
    image = mapped(path)
    read_at, size = reader(path), path.stat().st_size
    assert guest_bytes(read_at, size, image, 0, 4096, allocated=True) is None
    assert guest_bytes(read_at, size, image, 128 * KIB, 4096, allocated=True) == bytes(4096)
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read 0 4k", str(path)], capture_output=True, text=True)
    assert "error" in (done.stdout + done.stderr).lower()  # what qemu makes of it


def test_allocated_clusters_need_vouching(tmp_path: Path) -> None:
    path = q.written(tmp_path / "v.qcow2", "8M", (0, 64 * KIB))
    image = mapped(path)
    read_at, size = reader(path), path.stat().st_size
    assert guest_bytes(read_at, size, image, 0, 4096, allocated=False) is None
    assert guest_bytes(read_at, size, image, 0, 4096, allocated=True) == b"\x5a" * 4096
    assert guest_bytes(read_at, size, image, MIB, 4096, allocated=False) == bytes(4096)


# -- hostile tables: never read where qemu would read something else -------------------------


def first_data_entry(path: Path) -> int:
    entry = q.l2_entry(path, 0)
    assert entry & 0x00FFFFFFFFFFFE00
    return entry


def hostile(tmp_path: Path, name: str) -> Path:
    path = q.written(tmp_path / f"{name}.qcow2", "8M", (0, 128 * KIB))
    copied = 1 << 63
    if name == "onto L1 table":
        q.set_l2_entry(path, 0, copied | q.read_field(path, "l1_table_offset"))
    elif name == "onto refcount table":
        q.set_l2_entry(path, 0, copied | q.read_field(path, "refcount_table_offset"))
    elif name == "past the end":
        q.set_l2_entry(path, 0, copied | (1 << 40))
    elif name == "two entries, one cluster":
        q.set_l2_entry(path, 1, first_data_entry(path))
    elif name == "onto the header":  # offset 0: unallocated to qemu whatever the flags say
        q.set_l2_entry(path, 0, copied)
    elif name == "low bits set":
        q.set_l2_entry(path, 0, first_data_entry(path) | 0x200)
    return path


HOSTILE = {
    "onto L1 table": "qcow2.overlap",
    "onto refcount table": "qcow2.overlap",
    "past the end": "qcow2.l2_table",
    "two entries, one cluster": "qemu.check_corrupt",
    "low bits set": "qcow2.l2_table",
}


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """Messages of a logger (``_guest_reads`` or oslo's ``processutils``) so far."""
    caplog.set_level(logging.DEBUG, logger="oslo_concurrency.processutils")
    caplog.set_level(logging.DEBUG, logger="importhooks_plugins.formats._guest_reads")

    def messages(logger: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger]

    return messages


READS = "importhooks_plugins.formats._guest_reads"
QEMU = "oslo_concurrency.processutils"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_mappings_are_rejected_before_any_guest_read(name: str, settings, tmp_path: Path, logs) -> None:
    path = hostile(tmp_path, name)
    result = audit(settings, path, os_type="linux")
    assert result.verdict is Verdict.REJECT and HOSTILE[name] in codes(result)
    assert logs(READS) == []  # no guest read at all, direct or through qemu-img
    assert not [m for m in logs(QEMU) if "qemu-img convert" in m]


@pytest.mark.parametrize("name", ["past the end", "low bits set", "onto the header"])
def test_unsound_entries_are_never_read_directly(name: str, tmp_path: Path) -> None:
    path = hostile(tmp_path, name)
    image = mapped(path)
    assert guest_bytes(reader(path), path.stat().st_size, image, 0, 4096, allocated=True) is None
    assert guest_bytes(reader(path), path.stat().st_size, image, 64 * KIB, 4096, allocated=True) == b"\x5a" * 4096


# -- in an audit ----------------------------------------------------------------------------


def linux_qcow2(tmp_path: Path, *options: str) -> tuple[Path, Path]:
    raw = tmp_path / "l.raw"
    gi.partitioned_disk(raw, "gpt", ["vfat", "ext4"])
    return raw, q.converted(tmp_path / "l.qcow2", raw, *options)


@pytest.mark.parametrize("options", [(), ("compat=0.10", "cluster_size=4k"), ("extended_l2=on", "cluster_size=128k")])
def test_a_checked_qcow2_is_read_without_qemu_img_convert(options, settings, tmp_path: Path, logs) -> None:
    raw, path = linux_qcow2(tmp_path, *options)
    expected = audit(settings, raw, os_type="linux")
    result = audit(settings, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT and result.detected["qemu_img_check"] == "passed"
    for fact in ("partition_table", "filesystems", "os_type_detected"):
        assert result.detected[fact] == expected.detected[fact]
    assert result.detected["filesystems"] == ["vfat", "ext4"]
    assert not [m for m in logs(QEMU) if "qemu-img convert" in m]
    reads = logs(READS)
    assert reads and all(m.endswith(": tables") or m.endswith(": kept") for m in reads), reads


def test_without_qemu_img_check_allocated_clusters_go_to_qemu_img(settings, tmp_path: Path, logs) -> None:
    _raw, path = linux_qcow2(tmp_path)
    unchecked = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("qemu_img",)))
    result = audit(unchecked, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT and result.detected["filesystems"] == ["vfat", "ext4"]
    assert "qemu_img_check" not in result.detected
    assert [m for m in logs(QEMU) if "qemu-img convert" in m]
    assert any(m.endswith(": qemu-img") for m in logs(READS)) and not any(m.endswith(": tables") for m in logs(READS))


def test_a_compressed_qcow2_still_goes_to_qemu_img(settings, tmp_path: Path, logs) -> None:
    raw = tmp_path / "l.raw"
    gi.partitioned_disk(raw, "gpt", ["vfat", "ext4"])
    path = q.converted(tmp_path / "c.qcow2", raw, compress=True)
    result = audit(settings, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT and result.detected["compressed_clusters"] is True
    assert result.detected["filesystems"] == ["vfat", "ext4"]
    assert [m for m in logs(QEMU) if "qemu-img convert" in m]
    assert any("0+131072 (qcow2): qemu-img" in m for m in logs(READS))


def test_a_partly_scanned_qcow2_goes_to_qemu_img(settings, tmp_path: Path, logs) -> None:
    """The qcow2 plugin did not walk every L2 table (max_l2_scan_bytes): its clusters are not vouched for."""
    _raw, path = linux_qcow2(tmp_path)
    partly = settings.replace(plugin={"qcow2": {"max_l2_scan_bytes": 1024}})
    result = audit(partly, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT and codes(result) == ["qcow2.scan_limit"]
    assert result.detected["qemu_img_check"] == "passed" and result.detected["filesystems"] == ["vfat", "ext4"]
    assert [m for m in logs(QEMU) if "qemu-img convert" in m]
    assert not any(m.endswith(": tables") for m in logs(READS))
