"""The qcow2 plugin on real images: benign ones made by qemu-img, hostile ones byte-patched from them."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest
from importhooks_plugins.formats import qcow2 as plugin

from importhooks import Claims, ImportRequest, Pipeline, Severity, Verdict

from . import images
from . import qcow2_images as qi
from .helpers import Copy, audit, codes, copier, rejected_with, truncate

EIB = 1 << 60


def with_options(settings, **options):
    return settings.replace(plugin={"qcow2": options})


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Benign images, built once per module; tests patch copies of them."""
    base = tmp_path_factory.mktemp("qcow2")
    raw = qi.compressible_raw(base / "data.raw")
    return {
        "v3": qi.create(base / "v3.qcow2"),
        "v2": qi.create(base / "v2.qcow2", "64M", "compat=0.10"),
        "data": qi.converted(base / "data.qcow2", raw),
        "compressed": qi.converted(base / "compressed.qcow2", raw, compress=True),
    }


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, ".qcow2")


# -- benign images --------------------------------------------------------------------


def test_v2_v3_and_data_images_are_accepted_with_facts(settings, copy: Copy) -> None:
    for name, version, virtual_size in (("v2", 2, 64 << 20), ("v3", 3, 64 << 20), ("data", 3, 4 << 20)):
        result = audit(settings, copy(name), disk_format="qcow2")
        assert result.verdict is Verdict.ACCEPT, (name, result.findings)
        assert result.findings == ()
        facts = result.detected
        assert facts["disk_format"] == "qcow2" and facts["virtual_size"] == virtual_size
        assert facts["format_version"] == version
        assert facts["cluster_size"] == 65536
        assert facts["compressed_clusters"] is False
        assert "subformat" not in facts


def test_compressed_image_is_accepted_and_says_so(settings, copy: Copy) -> None:
    result = audit(settings, copy("compressed"), disk_format="qcow2")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["compressed_clusters"] is True
    assert result.detected["format_version"] == 3


@pytest.mark.parametrize("options, cluster_size", [
    (("cluster_size=512",), 512),
    (("cluster_size=2M",), 2 << 20),
    (("compression_type=zstd",), 65536),
    (("refcount_bits=64", "lazy_refcounts=on"), 65536),
    (("preallocation=metadata",), 65536),
])
def test_other_benign_layouts_are_accepted(settings, tmp_path: Path, options: tuple[str, ...],
                                           cluster_size: int) -> None:
    path = qi.create(tmp_path / "disk.qcow2", "8M", *options)
    result = audit(settings, path, disk_format="qcow2")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["cluster_size"] == cluster_size
    assert result.detected["compressed_clusters"] is False


def test_compressed_zstd_image_and_16_byte_l2_entries(settings, tmp_path: Path) -> None:
    raw = qi.compressible_raw(tmp_path / "data.raw")
    zstd = qi.converted(tmp_path / "zstd.qcow2", raw, "compression_type=zstd", compress=True)
    result = audit(settings, zstd)
    assert result.verdict is Verdict.ACCEPT and result.detected["compressed_clusters"] is True
    # Extended L2 entries are 16 bytes; oslo.utils (disk_format) calls the feature unknown, but the
    # scan must still read the entries right, both ways.
    for compress in (True, False):
        path = qi.converted(tmp_path / f"x{compress}.qcow2", raw, "extended_l2=on", compress=compress)
        result = audit(settings, path)
        assert result.detected["compressed_clusters"] is compress
        assert not {"qcow2.l1_table", "qcow2.cluster_bits"} & set(codes(result))


def test_dirty_image_is_accepted_with_a_warning(settings, copy: Copy) -> None:
    path = qi.patch_field(copy("v3"), "incompatible_features", plugin.INCOMPAT_DIRTY)
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT
    assert [(f.code, f.severity) for f in result.findings] == [("qcow2.dirty", Severity.WARNING)]


def test_unknown_header_extensions_are_fine(settings, copy: Copy) -> None:
    path = qi.set_extensions(copy("v3"), *(qi.extension(0x1000 + i, b"x" * i) for i in range(10)))
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT, result.findings


def test_qcow2_claimed_raw_and_raw_claimed_qcow2_are_mismatches(settings, copy: Copy, raw_file: Path) -> None:
    assert codes(audit(settings, copy("v3"), disk_format="raw")) == ["format.claim_mismatch"]
    assert codes(audit(settings, raw_file, disk_format="qcow2")) == ["format.claim_mismatch"]


# -- backing and data files -------------------------------------------------------------


def _backing(tmp_path: Path, name: str, *, unchecked: bool, fmt: str = "raw") -> Path:
    path = tmp_path / "top.qcow2"
    images.qemu_img("create", "-f", "qcow2", *(["-u"] if unchecked else []), "-b", name, "-F", fmt, str(path), "1M")
    return path


@pytest.mark.parametrize("name, unchecked", [
    ("/etc/passwd", True),
    ("/etc/passwd", False),
    ("base.qcow2", False),
    ("../../../../etc/shadow", True),
    ('json:{"driver": "raw", "file": {"driver": "file", "filename": "/etc/passwd"}}', True),
])
def test_any_backing_file_is_rejected(settings, tmp_path: Path, name: str, unchecked: bool) -> None:
    fmt = "raw"
    if name == "base.qcow2":  # a relative name, resolved by qemu-img next to the image
        qi.create(tmp_path / name, "1M")
        fmt = "qcow2"
    path = _backing(tmp_path, name, unchecked=unchecked, fmt=fmt)
    for claim in ("qcow2", "raw"):
        result = rejected_with(settings, path, "qcow2.backing_file", disk_format=claim)
        assert codes(result).count("qcow2.backing_file") == 1
        assert all(name not in f.message and "etc" not in f.message for f in result.findings)


def test_backing_file_of_a_version_2_image_is_rejected(settings, tmp_path: Path) -> None:
    path = tmp_path / "v2.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "-u", "-b", "/etc/passwd", "-F", "raw", str(path),
                    "1M")
    result = rejected_with(settings, path, "qcow2.backing_file")
    assert result.detected["format_version"] == 2


def test_backing_file_size_without_offset_is_invalid(settings, copy: Copy) -> None:
    path = qi.patch_field(copy("v3"), "backing_file_size", 11)
    assert codes(rejected_with(settings, path, "qcow2.header_invalid")) == ["qcow2.header_invalid"]


def test_external_data_file_is_rejected(settings, tmp_path: Path) -> None:
    path = qi.create(tmp_path / "disk.qcow2", "1M", f"data_file={tmp_path / 'data.raw'}", "data_file_raw=on")
    result = rejected_with(settings, path, "qcow2.data_file")
    assert codes(result).count("qcow2.data_file") == 1
    assert all(str(tmp_path) not in f.message for f in result.findings)
    # Without the feature bit only the header extension names the file: oslo.utils misses it, this plugin not.
    qi.patch_field(path, "incompatible_features", 0)
    result = rejected_with(settings, path, "qcow2.data_file")
    finding = next(f for f in result.findings if f.code == "qcow2.data_file")
    assert finding.plugin == "qcow2" and "data.raw" in (finding.detail or "")


def test_data_file_extension_with_hostile_name_is_escaped(settings, copy: Copy) -> None:
    name = b"/etc/passwd\n\x1b[31m" + b"A" * 1000
    path = qi.set_extensions(copy("v3"), qi.extension(plugin.EXT_DATA_FILE, name))
    finding = next(f for f in rejected_with(settings, path, "qcow2.data_file").findings if f.code == "qcow2.data_file")
    assert "\n" not in (finding.detail or "") and "\x1b" not in (finding.detail or "")
    assert len(finding.detail or "") < 400 and "passwd" not in finding.message


# -- features, versions, sizes -----------------------------------------------------------


@pytest.mark.parametrize("bits", [1 << 5, 1 << 40, 1 << 63])
def test_unknown_incompatible_features_are_rejected(settings, copy: Copy, bits: int) -> None:
    path = qi.patch_field(copy("v3"), "incompatible_features", bits)
    assert codes(rejected_with(settings, path, "qcow2.unknown_features")).count("qcow2.unknown_features") == 1


def test_corrupt_image_is_rejected(settings, copy: Copy) -> None:
    path = qi.patch_field(copy("v3"), "incompatible_features", plugin.INCOMPAT_CORRUPT)
    assert codes(rejected_with(settings, path, "qcow2.corrupt")) == ["qcow2.corrupt"]


@pytest.mark.parametrize("fields", [
    {"incompatible_features": plugin.INCOMPAT_COMPRESSION},  # the bit without a compression type
    {"header_length": 112, "compression_type": 1},  # zstd without the bit
    {"header_length": 112, "compression_type": 9, "incompatible_features": plugin.INCOMPAT_COMPRESSION},
    {"refcount_order": 7},
    {"header_length": 100},
    {"header_length": 108},
    {"header_length": 65536 + 8},
    {"header_length": 0xFFFFFFF8},
    {"crypt_method": 7},
])
def test_invalid_header_fields(settings, copy: Copy, fields: dict[str, int]) -> None:
    path = copy("v3")
    for name, value in fields.items():
        qi.patch_field(path, name, value)
    rejected_with(settings, path, "qcow2.header_invalid")


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_unsupported_versions_are_rejected(settings, copy: Copy, version: int) -> None:
    rejected_with(settings, qi.patch_field(copy("v3"), "version", version), "qcow2.version")


@pytest.mark.parametrize("cluster_bits", [0, 8, 22, 63, 0xFFFFFFFF])
def test_absurd_cluster_bits_are_rejected(settings, copy: Copy, cluster_bits: int) -> None:
    result = rejected_with(settings, qi.patch_field(copy("v3"), "cluster_bits", cluster_bits), "qcow2.cluster_bits")
    assert "cluster_size" not in result.detected


def test_extended_l2_needs_16k_clusters(settings, tmp_path: Path) -> None:
    path = qi.create(tmp_path / "disk.qcow2", "1M", "extended_l2=on")
    rejected_with(settings, qi.patch_field(path, "cluster_bits", 13), "qcow2.cluster_bits")


@pytest.mark.parametrize("how", ["luks", "aes", "crypto_extension"])
def test_encrypted_images_are_rejected(settings, tmp_path: Path, how: str) -> None:
    path = tmp_path / "disk.qcow2"
    if how == "crypto_extension":
        qi.set_extensions(qi.create(path, "1M"), qi.extension(plugin.EXT_CRYPTO, struct.pack(">QQ", 65536, 4096)))
    else:
        qi.encrypted(path, how)
    assert codes(rejected_with(settings, path, "qcow2.encrypted")).count("qcow2.encrypted") == 1


def test_8_eib_virtual_size_is_rejected_without_reading_that_much(settings, copy: Copy) -> None:
    path = qi.patch_field(copy("v3"), "size", 8 * EIB)
    result = rejected_with(settings, path, "format.virtual_size_too_large")
    assert set(codes(result)) == {"format.virtual_size_too_large", "qcow2.l1_table"}
    assert result.detected["virtual_size"] == 8 * EIB
    assert "compressed_clusters" not in result.detected  # the tables were not walked
    assert result.elapsed_s < 5


# -- tables ------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"l1_table_offset": 0x30000 + 8},
    {"l1_table_offset": 1 << 55},
    {"l1_size": 0xFFFFFFFF},
    {"l1_size": (32 << 20) // 8},  # within qemu's limit, but far past the end of the file
    {"l1_size": 0},
])
def test_bad_l1_table_is_rejected(settings, copy: Copy, fields: dict[str, int]) -> None:
    path = copy("v3")
    for name, value in fields.items():
        qi.patch_field(path, name, value)
    result = rejected_with(settings, path, "qcow2.l1_table")
    assert "compressed_clusters" not in result.detected


@pytest.mark.parametrize("entry", [
    0x8000000000000000 | (1 << 30),  # an L2 table far past the end of the file
    0x8000000000000000 | 0x10000 + 512,  # unaligned
    0x8000000000000000 | 0x10000 | (1 << 60),  # reserved bits
])
def test_l1_entries_pointing_outside_are_rejected(settings, copy: Copy, entry: int) -> None:
    path = qi.set_l1_entry(copy("v3"), 0, entry)
    assert codes(rejected_with(settings, path, "qcow2.l1_table")) == ["qcow2.l1_table"]


def test_l1_entries_sharing_one_l2_table_are_an_overlap(settings, copy: Copy) -> None:
    # Two guest ranges on one L2 table: a write to one rewrites the other's mapping.
    path = copy("compressed")
    first = struct.unpack(">Q", path.read_bytes()[qi.read_field(path, "l1_table_offset"):][:8])[0]
    qi.patch_field(path, "size", 64 << 30)  # 128 L1 entries needed: make them, all alike
    l1 = qi.read_field(path, "l1_table_offset")
    qi.patch_field(path, "l1_size", 128)
    qi.patch_bytes(path, l1, struct.pack(">Q", first) * 128)
    result = rejected_with(settings, path, "qcow2.overlap")
    assert codes(result) == ["qcow2.overlap"]
    assert "compressed_clusters" not in result.detected


@pytest.mark.parametrize("fields", [
    {"refcount_table_offset": 0x10000 + 8},
    {"refcount_table_offset": 1 << 40},
    {"refcount_table_clusters": 0},
    {"refcount_table_clusters": 0xFFFFFFFF},
    {"refcount_table_clusters": 4},  # within the limit, past the end of the file
])
def test_bad_refcount_table_is_rejected(settings, copy: Copy, fields: dict[str, int]) -> None:
    path = copy("v3")
    for name, value in fields.items():
        qi.patch_field(path, name, value)
    assert codes(rejected_with(settings, path, "qcow2.refcount_table")) == ["qcow2.refcount_table"]


def test_scan_limit_leaves_compressed_clusters_unknown(settings, copy: Copy) -> None:
    result = audit(with_options(settings, max_l2_scan_bytes=0), copy("data"))
    assert result.verdict is Verdict.ACCEPT
    assert [(f.code, f.severity) for f in result.findings] == [("qcow2.scan_limit", Severity.INFO)]
    assert "compressed_clusters" not in result.detected
    few = audit(with_options(settings, max_metadata_clusters=3), copy("data"))  # header, L1, refcount table
    assert few.accepted and codes(few) == ["qcow2.scan_limit"] and "compressed_clusters" not in few.detected
    enough = audit(with_options(settings, max_l2_scan_bytes="64KiB"), copy("data"))
    assert enough.findings == () and enough.detected["compressed_clusters"] is False


# -- snapshots ---------------------------------------------------------------------------


@pytest.fixture
def snapshotted(copy: Copy) -> Path:
    path = copy("data")
    images.qemu_img("snapshot", "-c", "hidden", str(path))
    return path


def test_internal_snapshots_are_rejected_by_default(settings, snapshotted: Path) -> None:
    assert codes(rejected_with(settings, snapshotted, "qcow2.snapshots")) == ["qcow2.snapshots"]


def test_internal_snapshots_can_be_allowed(settings, snapshotted: Path) -> None:
    result = audit(with_options(settings, allow_snapshots=True), snapshotted)
    assert result.verdict is Verdict.ACCEPT
    assert [(f.code, f.severity) for f in result.findings] == [("qcow2.snapshots", Severity.INFO)]


@pytest.mark.parametrize("fields", [
    {"snapshots_offset": 1 << 40},
    {"snapshots_offset": 0x10000 + 8},
    {"nb_snapshots": 0xFFFFFFFF},
    {"nb_snapshots": 1000},  # the table runs past the end of the file
])
def test_bad_snapshot_table_is_rejected_when_snapshots_are_allowed(settings, snapshotted: Path,
                                                                   fields: dict[str, int]) -> None:
    for name, value in fields.items():
        qi.patch_field(snapshotted, name, value)
    rejected_with(with_options(settings, allow_snapshots=True), snapshotted, "qcow2.snapshot_table")
    rejected_with(settings, snapshotted, "qcow2.snapshots")


def test_snapshot_with_l1_table_outside_the_file(settings, snapshotted: Path) -> None:
    table = qi.read_field(snapshotted, "snapshots_offset")
    qi.patch_bytes(snapshotted, table, struct.pack(">QI", 1 << 40, 1))
    rejected_with(with_options(settings, allow_snapshots=True), snapshotted, "qcow2.snapshot_table")


# -- header extensions and truncation -----------------------------------------------------


def test_extension_longer_than_the_header_cluster(settings, copy: Copy) -> None:
    path = qi.set_extensions(copy("v3"), struct.pack(">II", 0x1234, 0xFFFFFF00))
    rejected_with(settings, path, "qcow2.header_invalid")


def test_too_many_extensions(settings, copy: Copy) -> None:
    many = [qi.extension(0x1234, b"") for _ in range(plugin.MAX_HEADER_EXTENSIONS + 1)]
    rejected_with(settings, qi.set_extensions(copy("v3"), *many), "qcow2.header_invalid")


def test_extension_one_byte_past_the_first_cluster(settings, copy: Copy) -> None:
    path = copy("v3")
    header_length = qi.read_field(path, "header_length")
    fits = 65536 - header_length - 8  # this much data ends exactly at the end of the first cluster
    assert audit(settings, qi.set_extensions(path, qi.extension(0x1234, b"\1" * fits), end=False)).accepted
    qi.patch_bytes(path, header_length + 4, struct.pack(">I", fits + 1))
    rejected_with(settings, path, "qcow2.header_invalid")


def test_extensions_running_past_the_end_of_the_file(settings, copy: Copy) -> None:
    path = qi.set_extensions(copy("v3"), qi.extension(0x1234, b"x" * 3000))
    result = rejected_with(settings, truncate(path, 1024), "qcow2.header_invalid")
    assert "running past" not in result.findings[0].message  # the user sees the summary only


@pytest.mark.parametrize("length", [10, 71, 72, 100, 103, 104, 511, 512, 600, 4096, 65536, 65536 + 100, 131072])
def test_truncated_images_are_rejected(settings, copy: Copy, length: int) -> None:
    # Under 512 bytes oslo.utils does not take the data for a qcow2 (a damaged one); from there on the
    # header parses, but the tables it points to are cut off.
    code = "format.invalid" if length < 512 else "qcow2.l1_table"
    result = rejected_with(settings, truncate(copy("v3"), length), code)
    assert all(f.severity is Severity.ERROR for f in result.findings)


def test_v3_header_longer_than_the_file(settings, copy: Copy) -> None:
    path = truncate(qi.patch_field(copy("v3"), "header_length", 4096), 1024)
    rejected_with(settings, path, "qcow2.header_invalid")


def test_random_header_damage_never_crashes(settings, templates: dict[str, Path], tmp_path: Path) -> None:
    """Fuzz: random header fields and bytes, each image must end in a verdict without a plugin failure."""
    rng = random.Random(20240229)
    pipeline = Pipeline.from_settings(with_options(settings, allow_snapshots=True))
    names = list(qi.FIELDS)
    for round_ in range(150):
        path = tmp_path / f"fuzz{round_}.qcow2"
        shutil.copyfile(templates[rng.choice(["v2", "v3", "compressed"])], path)
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            _offset, fmt = qi.FIELDS[name]
            bits = struct.calcsize(fmt) * 8
            value = rng.choice([0, 1, 7, 64, 1 << rng.randrange(bits), rng.getrandbits(bits), (1 << bits) - 1])
            qi.patch_field(path, name, value)
        if rng.random() < 0.3:
            qi.patch_bytes(path, rng.randrange(72, 400), rng.randbytes(rng.randint(1, 16)))
        result = pipeline.run(ImportRequest(path=path, claims=Claims()))
        assert not {"pipeline.plugin_failed", "data.read_budget"} & set(codes(result)), result.findings
        assert result.verdict in (Verdict.ACCEPT, Verdict.REJECT)
