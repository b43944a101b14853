"""The vdi plugin on real images: benign ones made by qemu-img, hostile ones byte-patched from them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from importhooks_plugins.formats import vdi as plugin

from importhooks import Claims, ImportRequest, Pipeline, Verdict

from . import images
from .helpers import Copy, audit, codes, copier, documented_options, patch, rejected_with, truncate, unpack_at

MIB = 1 << 20


def read_u32(path: Path, offset: int) -> int:
    return unpack_at(path, offset, "<I")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Benign images, built once per module; tests patch copies of them."""
    base = tmp_path_factory.mktemp("vdi")
    raw = base / "data.raw"
    with open(raw, "wb") as handle:  # data in blocks 0, 2 and 5 of a 8 MiB disk
        for block in (0, 2, 5):
            handle.seek(block * MIB)
            handle.write(bytes([block + 1]) * 4096)
        handle.truncate(8 * MIB)
    built = {
        "dynamic": base / "dynamic.vdi",
        "static": base / "static.vdi",
        "data": base / "data.vdi",
    }
    images.qemu_img("create", "-f", "vdi", "-o", "static=off", str(built["dynamic"]), "64M")
    images.qemu_img("create", "-f", "vdi", "-o", "static=on", str(built["static"]), "4M")
    images.qemu_img("convert", "-f", "raw", "-O", "vdi", str(raw), str(built["data"]))
    return built


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, ".vdi")


# -- benign ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "subformat", "virtual_size"), [
    ("dynamic", "dynamic", 64 * MIB),
    ("static", "fixed", 4 * MIB),
    ("data", "dynamic", 8 * MIB),
])
def test_benign_vdi_is_accepted_with_facts(settings, copy, name, subformat, virtual_size):
    path = copy(name)
    result = audit(settings, path, disk_format="vdi")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert not [f for f in result.findings if f.code.startswith("vdi.")]
    facts = result.detected
    assert facts["disk_format"] == "vdi"
    assert facts["subformat"] == subformat
    assert facts["cluster_size"] == MIB
    assert facts["virtual_size"] == virtual_size
    assert facts["actual_size"] == path.stat().st_size


def test_the_data_image_has_allocated_blocks(templates):
    """The block map scan is exercised on real allocations, not only on an empty map."""
    path = templates["data"]
    assert read_u32(path, 0x184) == 3  # blocks_allocated
    assert path.stat().st_size == read_u32(path, 0x158) + 3 * MIB


# -- hostile header fields ---------------------------------------------------------


HEADER_PATCHES = [
    pytest.param(0x4C, "<I", 3, "vdi.image_type", id="undo-image"),
    pytest.param(0x4C, "<I", 4, "vdi.image_type", id="diff-image"),
    pytest.param(0x4C, "<I", 9, "vdi.image_type", id="unknown-type"),
    pytest.param(0x1B8, "<16s", b"\x01" * 16, "vdi.parent", id="parent-uuid"),
    pytest.param(0x1A8, "<16s", b"\x02" * 16, "vdi.parent", id="link-uuid"),
    pytest.param(0x44, "<I", 0x00010000, "vdi.header", id="version-1.0"),
    pytest.param(0x48, "<I", 0x200, "vdi.header", id="header-size"),
    pytest.param(0x168, "<I", 4096, "vdi.header", id="sector-size"),
    pytest.param(0x178, "<I", 3 * MIB, "vdi.header", id="block-size-not-power-of-two"),
    pytest.param(0x178, "<I", 1 << 30, "vdi.header", id="block-size-too-large"),
    pytest.param(0x178, "<I", 512, "vdi.header", id="block-size-too-small"),
    pytest.param(0x17C, "<I", 512, "vdi.header", id="block-extra"),
    pytest.param(0x154, "<I", 0x201, "vdi.header", id="block-map-unaligned"),
    pytest.param(0x154, "<I", 0, "vdi.header", id="block-map-over-header"),
    pytest.param(0x158, "<I", 0x200, "vdi.header", id="data-over-block-map"),
    pytest.param(0x158, "<I", 0xFFFFFE00, "vdi.header", id="data-past-end-of-file"),
    pytest.param(0x170, "<Q", 65 * MIB, "vdi.header", id="disk-larger-than-block-map"),
    pytest.param(0x184, "<I", 65, "vdi.header", id="more-allocated-than-blocks"),
    pytest.param(0x180, "<I", 0x3FFFFFFF, "vdi.header", id="blocks-over-max-blocks"),
]


@pytest.mark.parametrize(("offset", "fmt", "value", "code"), HEADER_PATCHES)
def test_hostile_header_field_is_rejected(settings, copy, offset, fmt, value, code):
    path = copy("dynamic")
    patch(path, offset, fmt, value)
    result = rejected_with(settings, path, code)
    finding = next(f for f in result.findings if f.code == code)
    assert finding.plugin == "vdi" and finding.detail


def test_differencing_image_message_is_user_safe(settings, copy):
    path = copy("dynamic")
    patch(path, 0x54, "<20s", b"/etc/shadow secret\0\0")  # free text in the description field
    patch(path, 0x1B8, "<16s", b"\x01" * 16)
    result = rejected_with(settings, path, "vdi.parent")
    assert all("/etc/shadow" not in f.message and "/etc/shadow" not in (f.detail or "") for f in result.findings)


def test_max_blocks_option_bounds_the_block_map(settings, copy):
    path = copy("dynamic")  # 64 blocks
    limited = settings.replace(plugin={"vdi": {"max_blocks": 63}})
    result = rejected_with(limited, path, "vdi.header")
    assert "max_blocks" in (result.findings[-1].detail or "")
    assert audit(settings.replace(plugin={"vdi": {"max_blocks": 64}}), path).verdict is Verdict.ACCEPT


# -- hostile block maps --------------------------------------------------------------


def _entry(path: Path, index: int) -> int:
    return read_u32(path, read_u32(path, 0x154) + 4 * index)


def _set_entry(path: Path, index: int, value: int) -> None:
    patch(path, read_u32(path, 0x154) + 4 * index, "<I", value)


def test_entry_beyond_blocks_allocated(settings, copy):
    path = copy("data")
    _set_entry(path, 1, 3)  # only data blocks 0..2 exist
    result = rejected_with(settings, path, "vdi.block_map")
    assert "entry 1" in (result.findings[-1].detail or "")


def test_entry_past_the_end_of_the_file(settings, copy):
    path = copy("data")
    patch(path, 0x184, "<I", 4)  # header claims a fourth block
    _set_entry(path, 7, 3)
    result = rejected_with(settings, path, "vdi.block_map")
    assert "past the end of the file" in (result.findings[-1].detail or "")


def test_two_entries_sharing_a_data_block(settings, copy):
    path = copy("data")
    allocated = [i for i in range(8) if _entry(path, i) < plugin.BLOCK_ZERO]
    assert len(allocated) == 3
    _set_entry(path, allocated[1], _entry(path, allocated[0]))
    result = rejected_with(settings, path, "vdi.block_map")
    assert "mapped twice" in (result.findings[-1].detail or "")


def test_allocated_count_disagrees_with_header(settings, copy):
    path = copy("data")
    _set_entry(path, next(i for i in range(8) if _entry(path, i) == 2), plugin.BLOCK_ZERO)
    result = rejected_with(settings, path, "vdi.block_map")
    assert "blocks_allocated" in (result.findings[-1].detail or "")


def test_discarded_and_free_markers_are_accepted(settings, copy):
    path = copy("dynamic")
    _set_entry(path, 3, plugin.BLOCK_ZERO)
    _set_entry(path, 4, plugin.BLOCK_FREE)
    assert audit(settings, path).verdict is Verdict.ACCEPT


# -- truncation, claims, fuzz --------------------------------------------------------


@pytest.mark.parametrize(("name", "length", "expected"), [
    ("static", 0x50, {"format.invalid"}),
    ("static", 300, {"format.invalid"}),
    ("static", 511, {"format.invalid"}),
    ("dynamic", 512, {"vdi.header"}),
    ("dynamic", 600, {"vdi.header"}),
    ("static", 1024, {"vdi.block_map"}),
    ("static", 1024 + MIB + MIB // 2, {"vdi.block_map"}),
    ("data", 1024 + 2 * MIB + 1, {"vdi.block_map"}),
])
def test_truncated_vdi_is_rejected(settings, copy, name, length, expected):
    path = copy(name)
    truncate(path, length)
    result = audit(settings, path)
    assert result.verdict is Verdict.REJECT
    assert expected & set(codes(result)), result.findings


def test_vdi_claimed_raw_is_a_mismatch(settings, copy):
    result = rejected_with(settings, copy("dynamic"), "format.claim_mismatch", disk_format="raw")
    assert result.detected["disk_format"] == "vdi"


def test_raw_claimed_vdi_is_a_mismatch(settings, raw_file):
    result = rejected_with(settings, raw_file, "format.claim_mismatch", disk_format="vdi")
    assert result.detected["disk_format"] == "raw"
    assert not [c for c in codes(result) if c.startswith("vdi.")]


def test_random_header_and_block_map_damage_never_crashes(settings, copy):
    """Fuzz the header fields and the block map: every outcome is a verdict, never a plugin failure."""
    rng = random.Random(20240611)
    pipeline = Pipeline.from_settings(settings)
    fields = [0x44, 0x48, 0x4C, 0x154, 0x158, 0x168, 0x170, 0x174, 0x178, 0x17C, 0x180, 0x184, 0x200, 0x204]
    path = copy("data")
    pristine = path.read_bytes()
    rejected = 0
    for _ in range(40):
        data = bytearray(pristine)
        for offset in rng.sample(fields, 2):
            value = rng.choice([0, 1, 2, 0x200, 0xFFFFFFFF, 0xFFFFFFFE, rng.getrandbits(32)])
            data[offset : offset + 4] = value.to_bytes(4, "little")
        path.write_bytes(data)
        result = pipeline.run(ImportRequest(path=path, claims=Claims()))
        assert "pipeline.plugin_failed" not in codes(result), result.findings
        rejected += result.verdict is Verdict.REJECT
    assert rejected > 20  # the damage was seen, not ignored


def test_documented_options_are_the_defaults(settings):
    section = plugin.importhooks_plugin_options().section
    documented = documented_options(f"formats/{section}.rst")
    pipeline = Pipeline.from_settings(settings.replace(plugin=documented["plugin"]))
    defaults = {o.name: o.default for o in plugin.importhooks_plugin_options().options}
    assert pipeline.options[section] == defaults
    assert set(documented["plugin"][section]) == set(defaults)
