"""The qed plugin on real images: benign ones made by qemu-img, hostile ones byte-patched from them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from importhooks_plugins.formats import qed as plugin

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Verdict
from importhooks.settings import PluginSettings

from . import images
from .helpers import Copy, audit, codes, copier, documented_options, patch, rejected_with, truncate, unpack_at

MIB = 1 << 20
KIB = 1 << 10


@pytest.fixture
def settings(settings):
    """QED is not in the default disk_formats; these tests are about what happens when a cloud allows it."""
    return settings.replace(disk_formats=(*settings.disk_formats, "qed"))


def qed_codes(result: ImportResult) -> list[str]:
    return [c for c in codes(result) if c.startswith("qed.")]


def read_u64(path: Path, offset: int) -> int:
    return unpack_at(path, offset, "<Q")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Benign and backing-file images, built once per module; tests patch copies of them."""
    base = tmp_path_factory.mktemp("qed")
    raw = base / "data.raw"
    with open(raw, "wb") as handle:  # data at 0 and at 40 MiB: two L2 tables
        handle.write(b"\x11" * 8192)
        handle.seek(40 * MIB)
        handle.write(b"\x22" * 8192)
        handle.truncate(64 * MIB)
    built = {name: base / f"{name}.qed" for name in ("empty", "small_clusters", "data", "backing", "backing_qcow2")}
    images.qemu_img("create", "-f", "qed", str(built["empty"]), "64M")
    images.qemu_img("create", "-f", "qed", "-o", "cluster_size=4096,table_size=2", str(built["small_clusters"]), "1G")
    images.qemu_img("convert", "-f", "raw", "-O", "qed", str(raw), str(built["data"]))
    images.qemu_img("create", "-f", "qed", "-u", "-b", "/etc/passwd", "-F", "raw", str(built["backing"]), "64M")
    images.qemu_img("create", "-f", "qed", "-u", "-b", "base.qcow2", "-F", "qcow2", str(built["backing_qcow2"]), "64M")
    return built


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, ".qed")


# -- benign ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "virtual_size", "cluster_size"), [
    ("empty", 64 * MIB, 64 * KIB),
    ("small_clusters", 1 << 30, 4 * KIB),
    ("data", 64 * MIB, 64 * KIB),
])
def test_benign_qed_passes_the_qed_checks_with_facts(settings, copy, name, virtual_size, cluster_size):
    path = copy(name)
    result = audit(settings, path, disk_format="qed")
    assert qed_codes(result) == []
    assert result.detected["disk_format"] == "qed"
    assert result.detected["virtual_size"] == virtual_size  # the header's image_size, not the file size
    assert result.detected["cluster_size"] == cluster_size


def test_benign_qed_is_accepted(settings, copy):
    result = audit(settings, copy("empty"), disk_format="qed")
    assert result.verdict is Verdict.ACCEPT, result.findings


def test_qed_is_banned_without_the_qed_plugin(settings, copy):
    """disk_format skips oslo's blanket QED ban only while the qed plugin checks the header."""
    without = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("qed",)))
    result = audit(without, copy("empty"), disk_format="qed")
    assert result.verdict is Verdict.REJECT
    assert "format.unsafe" in [f.code for f in result.findings]


def test_the_data_image_has_l2_tables(templates):
    """The L1 scan is exercised on real allocations, not only on an empty table."""
    path = templates["data"]
    l1 = read_u64(path, 40)
    entries = [read_u64(path, l1 + 8 * i) for i in range(64)]
    assert [e for e in entries if e] == [entries[0]] and entries[0] > l1


# -- backing files and features ------------------------------------------------------


def test_backing_file_is_rejected_even_when_claimed_raw(settings, copy):
    result = rejected_with(settings, copy("backing"), "qed.backing_file", disk_format="raw")
    assert "format.claim_mismatch" in codes(result)
    finding = next(f for f in result.findings if f.code == "qed.backing_file")
    assert "/etc/passwd" not in finding.message
    assert "'/etc/passwd'" in (finding.detail or "")  # escaped, for the operator
    assert all("/etc/passwd" not in f.message for f in result.findings)


def test_backing_file_with_a_format_is_rejected(settings, copy):
    rejected_with(settings, copy("backing_qcow2"), "qed.backing_file")


def test_backing_bit_alone_is_rejected(settings, copy):
    """The feature bit is what qemu acts on, whatever the name fields say."""
    path = copy("empty")
    patch(path, 16, "<Q", 0x1)
    rejected_with(settings, path, "qed.backing_file")


def test_backing_name_in_the_detail_is_bounded(settings, copy):
    path = copy("empty")
    patch(path, 16, "<Q", 0x1)
    patch(path, 56, "<II", 64, 60000)
    patch(path, 64, "<1000s", b"A" * 1000)
    result = rejected_with(settings, path, "qed.backing_file")
    detail = result.findings[-1].detail or ""
    assert "shortened" in detail and len(detail) < 400


@pytest.mark.parametrize(("offset", "value"), [
    pytest.param(16, 0x8, id="unknown-feature"),
    pytest.param(16, 1 << 63, id="high-feature"),
    pytest.param(24, 0x1, id="compat-feature"),
    pytest.param(32, 0x1, id="autoclear-feature"),
])
def test_unknown_feature_bits_are_rejected(settings, copy, offset, value):
    path = copy("empty")
    patch(path, offset, "<Q", value)
    rejected_with(settings, path, "qed.features")


def test_need_check_bit_is_accepted(settings, copy):
    path = copy("empty")
    patch(path, 16, "<Q", 0x2)
    assert qed_codes(audit(settings, path)) == []


# -- header fields, image size, L1 table ---------------------------------------------


HEADER_PATCHES = [
    pytest.param(4, "<I", 3000, "qed.header", id="cluster-not-power-of-two"),
    pytest.param(4, "<I", 2048, "qed.header", id="cluster-too-small"),
    pytest.param(4, "<I", 1 << 27, "qed.header", id="cluster-too-large"),
    pytest.param(8, "<I", 0, "qed.header", id="table-size-zero"),
    pytest.param(8, "<I", 3, "qed.header", id="table-size-not-power-of-two"),
    pytest.param(8, "<I", 32, "qed.header", id="table-size-too-large"),
    pytest.param(12, "<I", 0, "qed.header", id="header-size-zero"),
    pytest.param(12, "<I", 17, "qed.header", id="header-size-too-large"),
    pytest.param(12, "<I", 6, "qed.header", id="header-past-end-of-file"),
    pytest.param(12, "<I", 2, "qed.l1_table", id="header-over-l1-table"),
    pytest.param(48, "<Q", 64 * MIB + 1, "qed.image_size", id="image-size-unaligned"),
    pytest.param(48, "<Q", 1 << 62, "qed.image_size", id="image-size-beyond-tables"),
    pytest.param(48, "<Q", 2 << 40, "qed.image_size", id="image-size-over-max-image-size"),
    pytest.param(40, "<Q", 65536 + 512, "qed.l1_table", id="l1-unaligned"),
    pytest.param(40, "<Q", 0, "qed.l1_table", id="l1-over-header"),
    pytest.param(40, "<Q", 1 << 40, "qed.l1_table", id="l1-past-end-of-file"),
    pytest.param(40, "<Q", 2 * 65536, "qed.l1_table", id="l1-runs-past-end-of-file"),
]


@pytest.mark.parametrize(("offset", "fmt", "value", "code"), HEADER_PATCHES)
def test_hostile_header_field_is_rejected(settings, copy, offset, fmt, value, code):
    path = copy("empty")  # 5 clusters of 64 KiB: header, then a 4-cluster L1 table
    patch(path, offset, fmt, value)
    result = rejected_with(settings, path, code)
    assert qed_codes(result) == [code]


@pytest.mark.parametrize("entry", [
    pytest.param(0x12345, id="unaligned"),
    pytest.param(1 << 40, id="past-end-of-file"),
    pytest.param(-65536, id="table-runs-past-end-of-file"),  # the last cluster: the 4-cluster L2 does not fit
])
def test_l1_entry_out_of_range_is_rejected(settings, copy, entry):
    path = copy("data")
    l1 = read_u64(path, 40)
    if entry < 0:
        entry += path.stat().st_size
    patch(path, l1 + 8 * 7, "<Q", entry)
    result = rejected_with(settings, path, "qed.l1_table")
    assert "L1 entry 7" in (result.findings[-1].detail or "")


def test_max_l1_table_size_option(settings, copy):
    path = copy("empty")  # a 256 KiB L1 table
    limited = settings.replace(plugin={"qed": {"max_l1_table_size": "128KiB"}})
    result = rejected_with(limited, path, "qed.l1_table")
    assert "max_l1_table_size" in (result.findings[-1].detail or "")


# -- truncation, claims, fuzz --------------------------------------------------------


@pytest.mark.parametrize(("length", "expected"), [
    (3, set()),  # not even the magic: raw data
    (40, {"format.invalid"}),
    (300, {"format.invalid"}),
    (4096, {"qed.header"}),  # the first 64 KiB cluster is incomplete
    (65536 + 4096, {"qed.l1_table"}),
    (65536 * 4, {"qed.l1_table"}),
])
def test_truncated_qed_is_rejected(settings, copy, length, expected):
    path = copy("empty")
    truncate(path, length)
    result = audit(settings, path)
    if not expected:
        assert result.detected["disk_format"] == "raw"
        return
    assert result.verdict is Verdict.REJECT
    assert expected & set(codes(result)), result.findings


def test_qed_claimed_raw_is_a_mismatch(settings, copy):
    result = rejected_with(settings, copy("empty"), "format.claim_mismatch", disk_format="raw")
    assert result.detected["disk_format"] == "qed"


def test_raw_claimed_qed_is_a_mismatch(settings, raw_file):
    result = rejected_with(settings, raw_file, "format.claim_mismatch", disk_format="qed")
    assert qed_codes(result) == []


def test_qed_not_allowed_by_default(settings, copy):
    """Default settings refuse QED, whatever the plugin thinks of the header."""
    default = settings.replace(disk_formats=tuple(f for f in settings.disk_formats if f != "qed"))
    rejected_with(default, copy("empty"), "format.not_allowed")


def test_random_header_damage_never_crashes(settings, copy):
    """Fuzz the header fields: every outcome is a verdict, never a plugin failure."""
    rng = random.Random(20240612)
    pipeline = Pipeline.from_settings(settings)
    fields = [(4, 4), (8, 4), (12, 4), (16, 8), (40, 8), (48, 8), (56, 4), (60, 4)]
    path = copy("data")
    pristine = path.read_bytes()
    seen: set[str] = set()
    for _ in range(60):
        data = bytearray(pristine)
        for offset, width in rng.sample(fields, 2):
            value = rng.choice([0, 1, 4096, 65536, (1 << (8 * width)) - 1, rng.getrandbits(8 * width)])
            data[offset : offset + width] = value.to_bytes(width, "little")
        path.write_bytes(data)
        result = pipeline.run(ImportRequest(path=path, claims=Claims()))
        assert "pipeline.plugin_failed" not in codes(result), result.findings
        seen.update(qed_codes(result))
    assert {"qed.header", "qed.features", "qed.l1_table"} <= seen  # the damage was seen, not ignored


def test_documented_options_are_the_defaults(settings):
    section = plugin.importhooks_plugin_options().section
    documented = documented_options(f"formats/{section}.rst")
    pipeline = Pipeline.from_settings(settings.replace(plugin=documented["plugin"]))
    defaults = {o.name: o.default for o in plugin.importhooks_plugin_options().options}
    assert pipeline.options[section] == defaults
    assert set(documented["plugin"][section]) == set(defaults)
