"""qcow2 metadata integrity: overlapping tables, and L2 entries that map guest data outside the file or onto metadata.

Images are made by qemu-img and qemu-io, then one entry is patched; each test also
asks ``qemu-img check`` what it sees, so the expectations are qemu's and not only ours.
The template's layout (qemu 7.2, 64 KiB clusters): header 0, refcount table 0x10000,
refcount block 0x20000, L1 table 0x30000, L2 table 0x40000, data 0x50000 to 0x7ffff.
"""

from __future__ import annotations

import random
import shutil
import struct
import time
from pathlib import Path

import pytest
from importhooks_plugins.formats import qcow2 as plugin

from importhooks import Claims, ImportRequest, Pipeline, Verdict

from . import qcow2_images as qi
from .disk_builders import run
from .helpers import Copy, audit, codes, copier, rejected_with
from .images import qemu_img

COPIED = 1 << 63
COMPRESSED = 1 << 62
HEADER, REFTABLE, REFBLOCK, L1, L2, DATA, END = 0, 0x10000, 0x20000, 0x30000, 0x40000, 0x50000, 0x80000


def with_options(settings, **options):
    return settings.replace(plugin={"qcow2": options})


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("qcow2-integrity")
    written = qi.written(base / "written.qcow2", "64M", (0, 128 << 10), (32 << 20, 64 << 10))
    assert (qi.read_field(written, "refcount_table_offset"), qi.refcount_block(written),
            qi.read_field(written, "l1_table_offset"), qi.l2_table(written), written.stat().st_size) == (
        REFTABLE, REFBLOCK, L1, L2, END)
    assert qi.l2_entry(written, 0) == COPIED | DATA
    return {"written": written}


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, ".qcow2")


# -- benign layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("options, size, writes", [
    ((), "64M", ((0, 1 << 20), (32 << 20, 1 << 20), ((64 << 20) - 65536, 65536))),
    (("compat=0.10",), "64M", ((0, 1 << 20), (40 << 20, 4096))),
    (("cluster_size=512",), "1G", ((0, 65536), ((1 << 30) - 512, 512))),  # L1 of 32768 entries: two chunks
    (("cluster_size=2M",), "64M", ((0, 3 << 20),)),
    (("refcount_bits=1",), "64M", ((0, 1 << 20),)),
    (("refcount_bits=64", "lazy_refcounts=on"), "64M", ((0, 1 << 20),)),
    (("compression_type=zstd",), "8M", ((4096, 4096),)),
])
def test_written_images_are_accepted_and_qemu_img_check_agrees(settings, tmp_path: Path, options: tuple[str, ...],
                                                                size: str, writes) -> None:
    path = qi.written(tmp_path / "disk.qcow2", size, *writes, options=options)
    assert qi.check(path)[0] == 0
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.findings == () and result.detected["compressed_clusters"] is False


def test_zero_clusters_discards_and_compressed_rewrites_are_accepted(settings, tmp_path: Path) -> None:
    raw = qi.compressible_raw(tmp_path / "data.raw")
    path = qi.converted(tmp_path / "disk.qcow2", raw, compress=True)
    qi.write_clusters(path, "qcow2", (65536, 65536))  # a normal cluster among compressed ones
    images_io = ["write -z 0 65536", "write -z -u 131072 65536", "discard 196608 65536"]
    run("qemu-io", "-f", "qcow2", *(arg for command in images_io for arg in ("-c", command)), str(path))
    assert qi.check(path)[0] == 0
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["compressed_clusters"] is True


# -- L2 entries: host offsets ----------------------------------------------------------------


@pytest.mark.parametrize("entry, code", [
    (COPIED | (1 << 50), "qcow2.l2_table"),  # 1 PiB: qemu would grow the file that far on a write
    (COPIED | END, "qcow2.l2_table"),  # the first cluster past the end of the file
    (COPIED | DATA + 512, "qcow2.l2_table"),  # unaligned
    (COPIED | (1 << 56) | DATA, "qcow2.l2_table"),  # reserved bit 56
    (COPIED | DATA | 2, "qcow2.l2_table"),  # reserved bit 1
    (COPIED | L1, "qcow2.overlap"),  # the guest reads, and writes, the L1 table
    (COPIED | L2, "qcow2.overlap"),  # ... its own L2 table
    (COPIED | REFBLOCK, "qcow2.overlap"),
    (COPIED | REFTABLE, "qcow2.overlap"),
    (COPIED | L1 | 1, "qcow2.overlap"),  # "reads as zeros", but the cluster stays allocated there
    (COMPRESSED | (5 << 54) | (END - 256), "qcow2.l2_table"),  # compressed bytes running past the end
    (COMPRESSED | L1 + 100, "qcow2.overlap"),
])
def test_bad_l2_entries_are_rejected_as_qemu_img_check_does(settings, copy: Copy, entry: int, code: str) -> None:
    path = qi.set_l2_entry(copy("written"), 0, entry)
    assert qi.check(path)[0] == 2  # qemu-img check: corruptions
    result = rejected_with(settings, path, code)
    assert codes(result) == [code]
    assert "compressed_clusters" not in result.detected


def test_data_on_metadata_that_qemu_img_check_calls_clean_is_rejected(settings, copy: Copy) -> None:
    # Refcounts made to match: qemu-img check sees nothing, the guest still reads the L1 table.
    path = qi.set_l2_entry(copy("written"), 0, L1)  # no "copied" flag: refcount 2 is consistent
    qi.set_refcount(path, L1 // 65536, 2)
    qi.set_refcount(path, DATA // 65536, 0)
    assert qi.check(path)[0] == 0
    result = rejected_with(settings, path, "qcow2.overlap")
    assert "L1 table" in (result.findings[0].detail or "")


def test_l2_entries_in_a_later_l2_table_are_checked(settings, tmp_path: Path) -> None:
    path = qi.written(tmp_path / "disk.qcow2", "2G", (0, 65536), (1536 << 20, 65536))  # L1 entries 0 and 3
    assert qi.check(path)[0] == 0 and audit(settings, path).accepted
    qi.set_l2_entry(path, 0, COPIED | (1 << 45), l1_index=3)
    rejected_with(settings, path, "qcow2.l2_table")


def test_extended_l2_entry_with_bit_0_set_is_rejected(settings, tmp_path: Path) -> None:
    path = qi.written(tmp_path / "disk.qcow2", "8M", (0, 65536), options=("extended_l2=on",))
    before = audit(settings, path)
    assert "qcow2.l2_table" not in codes(before)
    entry = qi.l2_entry(path, 0, stride=16)
    rejected_with(settings, qi.set_l2_entry(path, 0, entry | 1, stride=16), "qcow2.l2_table")


# -- tables on each other ----------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"l1_table_offset": REFTABLE},
    {"l1_table_offset": REFBLOCK},
    {"l1_table_offset": HEADER},
    {"refcount_table_offset": HEADER},
    {"refcount_table_clusters": 3},  # runs over the refcount block and the L1 table
])
def test_tables_overlapping_each_other_or_the_header(settings, copy: Copy, fields: dict[str, int]) -> None:
    path = copy("written")
    for name, value in fields.items():
        qi.patch_field(path, name, value)
    assert qi.check(path)[0] != 0
    rejected_with(settings, path, "qcow2.overlap")


@pytest.mark.parametrize("entry", [COPIED | REFBLOCK, COPIED | L1, COPIED | REFTABLE])
def test_l1_entry_naming_another_table_as_its_l2_table(settings, copy: Copy, entry: int) -> None:
    path = qi.set_l1_entry(copy("written"), 0, entry)
    assert qi.check(path)[0] == 2
    assert codes(rejected_with(settings, path, "qcow2.overlap")) == ["qcow2.overlap"]


def test_refcount_table_entry_naming_another_table(settings, copy: Copy) -> None:
    path = qi.patch_bytes(copy("written"), REFTABLE + 8, struct.pack(">Q", L1))
    assert qi.check(path)[0] != 0
    rejected_with(settings, path, "qcow2.overlap")
    twice = qi.patch_bytes(copy("written"), REFTABLE + 8, struct.pack(">Q", REFBLOCK))
    assert "two refcount table entries" in (rejected_with(settings, twice, "qcow2.overlap").findings[0].detail or "")


@pytest.mark.parametrize("entry", [REFBLOCK + 8, 1 << 50, REFBLOCK | 1])
def test_bad_refcount_table_entries(settings, copy: Copy, entry: int) -> None:
    path = qi.patch_bytes(copy("written"), REFTABLE, struct.pack(">Q", entry))
    rejected_with(settings, path, "qcow2.refcount_table")


def test_shared_l2_table_with_consistent_refcounts_is_still_an_overlap(settings, tmp_path: Path) -> None:
    path = qi.written(tmp_path / "disk.qcow2", "1G", (0, 65536), (512 << 20, 65536))  # L1 entries 0 and 1
    first, second = qi.l2_table(path, 0), qi.l2_table(path, 1)
    data, orphan = qi.l2_entry(path, 0) & ~COPIED, qi.l2_entry(path, 0, l1_index=1) & ~COPIED
    qi.set_l1_entry(path, 0, first)
    qi.set_l1_entry(path, 1, first)  # both guest halves on one L2 table, as if a snapshot shared it
    qi.set_l2_entry(path, 0, data)
    for cluster, refcount in ((first, 2), (data, 2), (second, 0), (orphan, 0)):
        qi.set_refcount(path, cluster // 65536, refcount)
    assert qi.check(path)[0] == 0  # qemu-img check: consistent
    assert "name one L2 table" in (rejected_with(settings, path, "qcow2.overlap").findings[0].detail or "")


def test_l2_table_shared_across_l1_chunks(settings, tmp_path: Path) -> None:
    # 512-byte clusters, 1 GiB: 32768 L1 entries, read in two chunks; the duplicate is in the second.
    path = qi.written(tmp_path / "disk.qcow2", "1G", (0, 512), ((1 << 30) - 512, 512), options=("cluster_size=512",))
    l1 = qi.read_field(path, "l1_table_offset")
    qi.set_l1_entry(path, 32767, qi.read_u64(path, l1))
    assert qi.check(path)[0] == 2
    assert "L2 table" in (rejected_with(settings, path, "qcow2.overlap").findings[0].detail or "")


def test_32_mib_l1_table_of_one_l2_table_is_rejected_quickly(settings, copy: Copy) -> None:
    path = copy("written")
    entries = (32 << 20) // 8
    with open(path, "r+b") as handle:
        handle.seek(L1)
        handle.write(struct.pack(">Q", COPIED | L2) * entries)
    qi.patch_field(path, "l1_size", entries)
    qi.patch_field(path, "size", entries << 29)
    started = time.monotonic()
    result = audit(settings, path)
    assert "qcow2.overlap" in codes(result) and result.verdict is Verdict.REJECT
    assert time.monotonic() - started < 10


def test_snapshot_tables_on_active_tables(settings, copy: Copy) -> None:
    path = copy("written")
    qemu_img("snapshot", "-c", "one", str(path))
    allowed = with_options(settings, allow_snapshots=True)
    assert audit(allowed, path).accepted
    table = qi.read_field(path, "snapshots_offset")
    on_l1 = qi.patch_field(shutil.copyfile(path, path.with_name("t.qcow2")), "snapshots_offset", L1)
    rejected_with(allowed, on_l1, "qcow2.overlap")
    l1_on_reftable = shutil.copyfile(path, path.with_name("l.qcow2"))
    qi.patch_bytes(l1_on_reftable, table, struct.pack(">Q", REFTABLE))
    found = rejected_with(allowed, l1_on_reftable, "qcow2.overlap").findings
    assert any("snapshot 0 L1 table" in (f.detail or "") for f in found if f.code == "qcow2.overlap")


# -- data_file_raw ----------------------------------------------------------------------------


def test_data_file_raw_bit_without_a_data_file_is_rejected(settings, copy: Copy) -> None:
    path = copy("written")
    qi.patch_bytes(path, 88, struct.pack(">Q", plugin.AUTOCLEAR_DATA_FILE_RAW))  # autoclear features
    result = rejected_with(settings, path, "qcow2.data_file_raw")
    assert codes(result) == ["qcow2.data_file_raw"]
    done = qi.check(path)
    assert done[0] == 1  # qemu-img cannot even open it to check it


# -- limits and damage ------------------------------------------------------------------------


def test_metadata_limit_stops_the_overlap_check_with_a_note(settings, copy: Copy) -> None:
    path = qi.set_l2_entry(copy("written"), 0, COPIED | L1)
    result = audit(with_options(settings, max_metadata_clusters=3), path)  # no room for the L1 and L2 tables
    assert "qcow2.scan_limit" in codes(result) and "qcow2.overlap" not in codes(result)
    assert "qemu.check_corrupt" in codes(result)  # qemu-img check still runs, and still sees it
    assert result.verdict is Verdict.REJECT


def test_random_table_damage_never_crashes(settings, templates: dict[str, Path], tmp_path: Path) -> None:
    """Fuzz the tables, not the header: every image ends in a verdict, none in a plugin failure."""
    rng = random.Random(20261203)
    pipeline = Pipeline.from_settings(settings)
    verdicts = set()
    for round_ in range(60):
        path = tmp_path / f"fuzz{round_}.qcow2"
        shutil.copyfile(templates["written"], path)
        for _ in range(rng.randint(1, 3)):
            table = rng.choice([REFTABLE, REFBLOCK, L1, L2])
            entry = rng.choice([0, COPIED | rng.randrange(END // 65536) * 65536, rng.getrandbits(64),
                                COPIED | rng.randrange(1 << 40), COMPRESSED | rng.getrandbits(62)])
            qi.patch_bytes(path, table + 8 * rng.randrange(4), struct.pack(">Q", entry))
        result = pipeline.run(ImportRequest(path=path, claims=Claims()))
        assert not {"pipeline.plugin_failed", "data.read_budget"} & set(codes(result)), result.findings
        verdicts.add(result.verdict)
    assert verdicts == {Verdict.ACCEPT, Verdict.REJECT}


def test_zero_flag_in_a_version_2_image_is_rejected(settings, tmp_path: Path) -> None:
    # qemu fails every read of it ("Zero cluster entry found in pre-v3 image"), qemu-img check calls the
    # image clean, and a reader that predates version 3 reads the cluster's data.
    path = qi.written(tmp_path / "v2.qcow2", "64M", (0, 65536), options=("compat=0.10",))
    assert audit(settings, path).accepted
    qi.set_l2_entry(path, 0, qi.l2_entry(path, 0) | 1)
    assert qi.check(path)[0] == 0
    assert codes(rejected_with(settings, path, "qcow2.l2_table")) == ["qcow2.l2_table"]
