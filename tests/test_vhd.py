"""The VHD plugin on real images: benign ones made by qemu-img, hostile ones byte-patched from them
(checksums fixed, so each attack reaches the check it is aimed at)."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pytest

from importhooks import ImportResult, Severity, Verdict

from . import helpers
from . import vhd_images as vi
from .helpers import Copy, assert_messages_omit, audit, codes, copier, cut_copy

EIB = 1 << 60
HOST_PATH = "/etc/passwd"


def rejected_with(settings, path: Path, code: str, **claims) -> ImportResult:
    result = helpers.rejected_with(settings, path, code, **claims)
    assert_messages_omit(result, HOST_PATH, str(path))  # user messages: no host paths, no image text
    return result


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Benign images, built once per module; tests patch copies of them."""
    base = tmp_path_factory.mktemp("vhd")
    raw = vi.data_raw(base / "data.raw")
    return {
        "fixed": vi.vhd(base / "fixed.vhd", "fixed"),
        "fixed_forced": vi.vhd(base / "forced.vhd", "fixed", force_size=True),
        "dynamic": vi.vhd(base / "dynamic.vhd", "dynamic"),
        "dynamic_forced": vi.vhd(base / "dynamic-forced.vhd", "dynamic", "1G", force_size=True),
        "dynamic_data": vi.vhd(base / "dynamic-data.vhd", "dynamic", raw=raw),
        "fixed_data": vi.vhd(base / "fixed-data.vhd", "fixed", raw=raw),
    }


@pytest.fixture
def copy(templates: dict[str, Path], tmp_path: Path) -> Copy:
    return copier(templates, tmp_path, "-copy.vhd")


# -- benign ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fixed", "fixed_forced", "dynamic", "dynamic_forced", "dynamic_data",
                                  "fixed_data"])
def test_benign_vhds_are_accepted_with_facts(settings, templates, name):
    path = templates[name]
    result = audit(settings, path, disk_format="vhd")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.findings == ()
    facts = result.detected
    assert facts["disk_format"] == "vhd"
    info = vi.qemu_info(path, "vpc")
    assert facts["virtual_size"] == info["virtual-size"]  # what the hypervisor will see
    if name.startswith("fixed"):
        assert facts["subformat"] == "fixed" and "cluster_size" not in facts
        assert facts["virtual_size"] == path.stat().st_size - 512
    else:
        assert facts["subformat"] == "dynamic" and facts["cluster_size"] == info["cluster-size"] == 2 << 20


def test_claim_mismatch_both_ways(settings, templates, raw_file):
    rejected_with(settings, templates["dynamic"], "format.claim_mismatch", disk_format="raw")
    rejected_with(settings, templates["fixed"], "format.claim_mismatch", disk_format="raw")
    rejected_with(settings, templates["fixed"], "format.claim_mismatch", disk_format="vhdx")
    assert codes(audit(settings, raw_file, disk_format="vhd")) == ["format.claim_mismatch"]


# -- the footer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dynamic", "fixed"])
def test_differencing_disk_is_rejected(settings, copy, name):
    path = copy(name)
    vi.patch_vhd_footer(path, disk_type=4)
    result = rejected_with(settings, path, "vhd.differencing")
    assert result.detected["subformat"] == "differencing"


def test_differencing_disk_with_a_parent_path_names_no_path(settings, copy):
    path = copy("dynamic")
    vi.patch_vhd_footer(path, disk_type=4)
    vi.patch_vhd_header(path, parent_name=HOST_PATH.encode("utf-16-be"),
                        locator0=(b"W2ru", 512, 2 * len(HOST_PATH), 0, 0x600))
    result = rejected_with(settings, path, "vhd.differencing")
    assert all(HOST_PATH not in (f.detail or "") for f in result.findings)


@pytest.mark.parametrize("name", ["dynamic", "fixed"])
def test_unknown_disk_type(settings, copy, name):
    path = copy(name)
    vi.patch_vhd_footer(path, disk_type=5)
    rejected_with(settings, path, "vhd.disk_type")


@pytest.mark.parametrize(("change", "name"), [
    ({"version": 0x00020000}, "dynamic"),
    ({"version": 0x00020000}, "fixed"),
    ({"features": 0x102}, "dynamic"),
])
def test_footer_version_and_features(settings, copy, change, name):
    path = copy(name)
    vi.patch_vhd_footer(path, **change)
    rejected_with(settings, path, "vhd.footer_invalid")


def test_dynamic_disk_without_a_valid_footer_at_the_end(settings, copy):
    path = copy("dynamic")
    vi.patch_vhd_footer(path, copies="end", fix=False, current_size=1 << 30)
    rejected_with(settings, path, "vhd.footer_invalid")


def test_footer_copy_that_differs_is_a_polyglot(settings, copy):
    path = copy("dynamic")  # the copy at offset 0 (read by qemu, oslo.utils) says 1 GiB, the end 10 MiB
    vi.patch_vhd_footer(path, copies="head", original_size=1 << 30, current_size=1 << 30)
    rejected_with(settings, path, "vhd.footer_mismatch")


def test_fixed_disk_starting_with_a_footer_is_a_polyglot(settings, copy):
    path = copy("fixed")  # qemu would take sector 0 for the footer, other readers the last sector
    size = path.stat().st_size
    vi.write_at(path, 0, vi.read_at(path, size - 512, 512))
    rejected_with(settings, path, "vhd.footer_mismatch")


# -- sizes and geometry -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fixed_forced", "dynamic_forced"])
def test_four_exbibyte_vhd_is_over_the_size_limit(settings, copy, name):
    path = copy(name)
    vi.patch_vhd_footer(path, original_size=4 * EIB, current_size=4 * EIB)
    result = rejected_with(settings, path, "format.virtual_size_too_large")
    assert result.detected["virtual_size"] == 4 * EIB
    assert "vhd.size_invalid" in codes(result)  # and over the VHD maximum


def test_current_size_hidden_behind_the_original_size(settings, copy):
    path = copy("dynamic_forced")  # oslo.utils reads the original size (1 GiB), qemu the current one
    vi.patch_vhd_footer(path, current_size=2000 << 30)
    result = rejected_with(settings, path, "vhd.size_invalid")
    # disk_format reads the current size, as qemu does, so its size limit sees 2000 GiB too.
    assert "format.virtual_size_too_large" in codes(result)
    assert result.detected["virtual_size"] == 2000 << 30


def test_current_size_not_whole_sectors(settings, copy):
    path = copy("dynamic_forced")
    vi.patch_vhd_footer(path, original_size=(1 << 30) + 100, current_size=(1 << 30) + 100)
    rejected_with(settings, path, "vhd.size_invalid")


@pytest.mark.parametrize("change", [{"heads": 17}, {"cylinders": 600}])
def test_geometry_out_of_range_or_larger_than_the_disk(settings, copy, change):
    path = copy("fixed")  # 10 MiB: qemu's geometry is 302/4/17; 600 cylinders describe about 20 MiB
    vi.patch_vhd_footer(path, **change)
    rejected_with(settings, path, "vhd.geometry")


def test_geometry_smaller_than_the_disk_is_a_warning(settings, copy):
    path = copy("fixed")  # Virtual PC sizes by geometry: qemu 7.2 would show one cylinder less
    vi.patch_vhd_footer(path, creator_app=b"vpc ", cylinders=301)
    result = audit(settings, path)
    (warning,) = [f for f in result.findings if f.code == "vhd.geometry_size"]
    assert warning.severity is Severity.WARNING and "vpc" in (warning.detail or "")
    assert not any(f.code.startswith("vhd.") and f.severity is Severity.ERROR for f in result.findings)


def test_fixed_disk_size_must_match_the_file(settings, copy):
    path = copy("fixed_forced")
    vi.patch_vhd_footer(path, original_size=5 << 20, current_size=5 << 20)
    rejected_with(settings, path, "vhd.size_mismatch")


def test_fixed_disk_with_a_data_offset(settings, copy):
    path = copy("fixed")
    vi.patch_vhd_footer(path, data_offset=512)
    rejected_with(settings, path, "vhd.data_offset")


@pytest.mark.parametrize("offset", [0, 100, 1 << 40, 0xFFFFFFFFFFFFFFFF])
def test_dynamic_header_outside_the_file(settings, copy, offset):
    path = copy("dynamic")
    vi.patch_vhd_footer(path, data_offset=offset)
    rejected_with(settings, path, "vhd.data_offset")


# -- the dynamic disk header -------------------------------------------------------------------


@pytest.mark.parametrize(("change", "fix"), [
    ({"cookie": b"cxspars3"}, True),
    ({"block_size": 4 << 20}, False),  # checksum left stale
    ({"version": 0x00020000}, True),
    ({"data_offset": 0}, True),
])
def test_dynamic_header_invalid(settings, copy, change, fix):
    path = copy("dynamic")
    vi.patch_vhd_header(path, fix=fix, **change)
    rejected_with(settings, path, "vhd.header_invalid")


@pytest.mark.parametrize("block_size", [3 << 20, 512, 512 << 20, 0])
def test_block_size_out_of_range(settings, copy, block_size):
    path = copy("dynamic")
    vi.patch_vhd_header(path, block_size=block_size)
    rejected_with(settings, path, "vhd.block_size")


@pytest.mark.parametrize("change", [
    {"parent_name": HOST_PATH.encode("utf-16-be")},
    {"locator0": (b"W2ku", 512, 22, 0, 0x600)},
])
def test_parent_locator_in_a_dynamic_disk(settings, copy, change):
    path = copy("dynamic")
    vi.patch_vhd_header(path, **change)
    rejected_with(settings, path, "vhd.parent_locator")


@pytest.mark.parametrize("change", [
    {"max_table_entries": 5},  # 5 x 2 MiB < 10 MiB
    {"table_offset": 1 << 40},
    {"table_offset": 600},  # over the header
    {"table_offset": 0},  # over the footer copy
])
def test_block_allocation_table_invalid(settings, copy, change):
    path = copy("dynamic")
    vi.patch_vhd_header(path, **change)
    rejected_with(settings, path, "vhd.table")


def test_table_entries_over_the_option(settings, templates):
    limited = settings.replace(plugin={"vhd": {"max_table_entries": 4}})
    result = rejected_with(limited, templates["dynamic"], "vhd.table")
    assert "max_table_entries" in (result.findings[-1].detail or "")
    assert audit(settings, templates["dynamic"]).verdict is Verdict.ACCEPT


def test_block_allocation_table_entries(settings, copy):
    template = copy("dynamic_data")
    bat = vi.vhd_bat(template)
    used = [index for index, sector in enumerate(bat) if sector != 0xFFFFFFFF]
    assert len(used) >= 2
    size = template.stat().st_size
    cases = {
        "past the end": (used[0], size // 512),
        "over the footer at the end": (used[0], size // 512 - 2),
        "over the header": (used[0], 1),
        "over the footer copy": (used[0], 0),
        "over another block": (used[1], bat[used[0]]),
    }
    for label, (index, sector) in cases.items():
        path = template.with_name(f"bat-{label.replace(' ', '-')}.vhd")
        shutil.copy(template, path)
        vi.set_vhd_bat_entry(path, index, sector)
        result = rejected_with(settings, path, "vhd.block_offset")
        assert f"BAT entry {index}" in (result.findings[-1].detail or "") or "overlap" in (
            result.findings[-1].detail or ""), label


# -- truncated files --------------------------------------------------------------------------


def test_truncated_dynamic_vhd_is_rejected_at_every_length(settings, copy):
    template = copy("dynamic_data")
    size = template.stat().st_size
    for length in (8, 511, 512, 700, 1536, 2048, size // 2, size - 512, size - 1):
        result = audit(settings, cut_copy(template, length))
        assert result.verdict is Verdict.REJECT, (length, result.findings)
        assert any(c.startswith(("vhd.", "format.")) for c in codes(result)), (length, result.findings)


def test_truncated_fixed_vhd_is_a_raw_disk(settings, copy):
    path = copy("fixed")  # without its footer a fixed VHD is just its disk: raw, so the claim is wrong
    path.write_bytes(vi.read_at(path, 0, path.stat().st_size - 1))
    result = rejected_with(settings, path, "format.claim_mismatch", disk_format="vhd")
    assert result.detected["disk_format"] == "raw"


def test_no_footer_checksum_no_vhd(settings, copy):
    path = copy("fixed")  # a last sector with a wrong checksum is data, not a footer
    vi.patch_vhd_footer(path, copies="end", fix=False, disk_type=4)
    assert audit(settings, path).detected["disk_format"] == "raw"
    assert struct.unpack(">I", vi.read_at(path, path.stat().st_size - 452, 4)) == (4,)



def test_randomly_damaged_vhds_end_in_findings(settings, templates, tmp_path):
    """Random bytes in the footer, header and BAT (checksums fixed): a finding every time, never a crash,
    and never an image this plugin passes that qemu then reads differently."""
    rng = random.Random(1729)
    image = templates["dynamic_data"].read_bytes()
    for attempt in range(25):
        path = tmp_path / f"damaged-{attempt}.vhd"
        path.write_bytes(vi.damaged_vhd(image, rng))
        found = set(codes(audit(settings, path)))
        assert not found or not found <= {"qemu.mismatch", "qemu.failed"}, (attempt, found)
