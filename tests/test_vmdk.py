"""The vmdk plugin on real images: qemu-img makes them, byte patches in vmdk_images make the attacks.

Every hostile case asserts its own finding code, a reject, and no
``pipeline.plugin_failed``; every benign case asserts accept and the facts.
"""
# ruff: noqa: F401, F811 - the fixtures pristine and copy come from tests/vmdk_checks.py

from __future__ import annotations

import subprocess

import pytest
from importhooks_plugins.formats import vmdk

from importhooks import Verdict

from . import images
from . import vmdk_images as v
from .helpers import codes
from .vmdk_checks import (
    accepted_with_warnings,
    audit,
    copy,
    detail,
    pristine,
    qemu_opens,
    qemu_same_disk,
    rejected_with,
)

SECTOR = 512


# -- benign -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "subformat", "version", "compressed"), [
    ("sparse", "monolithicSparse", 1, False),
    ("sparse_data", "monolithicSparse", 1, False),
    ("stream", "streamOptimized", 3, True),
    ("stream_data", "streamOptimized", 3, True),
])
def test_benign_vmdk_is_accepted_with_facts(settings, copy, name, subformat, version, compressed):
    path = copy(name)
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings
    facts = result.layers[-1].facts
    assert facts["disk_format"] == "vmdk"
    assert facts["subformat"] == subformat
    assert facts["compressed_clusters"] is compressed
    assert facts["cluster_size"] == 65536
    assert facts["format_version"] == version
    assert facts["virtual_size"] == (64 << 20 if name in ("sparse", "stream") else 4 << 20)


def test_stream_optimized_with_footer_is_accepted(settings, copy):
    path = v.with_footer(copy("stream_data"))
    subprocess.run(["qemu-img", "check", "-f", "vmdk", str(path)], check=True, capture_output=True)
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.layers[-1].facts["subformat"] == "streamOptimized"


def test_vmware_style_descriptor_is_accepted(settings, copy):
    """RDONLY extent, encoding and isNativeSnapshot keys, CRLF line ends: what VMware exports write."""
    path = v.rewrite_descriptor(copy("stream"), lambda text: text.replace(
        'parentCID=ffffffff', 'encoding="UTF-8"\nparentCID=ffffffff\nisNativeSnapshot="no"').replace(
        "RW 131072", "RDONLY 131072").replace("\n", "\r\n"))
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings


@pytest.mark.parametrize("name", ["disk.img", "My Disk (copy #2).vmdk", "ubuntu-22.04_server.vmdk"])
def test_extent_named_after_any_plain_file_is_accepted(settings, copy, name):
    """qemu-img names the extent after the file it wrote; any plain file name is the image naming itself."""
    path = v.rewrite_descriptor(copy("sparse"), v.replace_line("RW ", f'RW 131072 SPARSE "{name}"'))
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings


# -- claims -------------------------------------------------------------------------


def test_vmdk_claimed_raw_is_a_claim_mismatch(settings, copy):
    assert codes(audit(settings, copy("sparse_data"), disk_format="raw")) == ["format.claim_mismatch"]


def test_raw_claimed_vmdk_is_a_claim_mismatch(settings, raw_file):
    assert codes(audit(settings, raw_file, disk_format="vmdk")) == ["format.claim_mismatch"]


# -- descriptor-only and multi-file layouts ------------------------------------------


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
def test_descriptor_only_files_are_rejected(settings, tmp_path, subformat):
    path = v.created(tmp_path / "disk.vmdk", subformat)
    result = rejected_with(settings, path, "vmdk.descriptor_only", disk_format="vmdk")
    assert repr(subformat) in detail(result, "vmdk.descriptor_only")


def test_descriptor_only_file_without_create_type_is_invalid(settings, tmp_path):
    path = tmp_path / "disk.vmdk"
    path.write_text('# Disk DescriptorFile\nversion=1\nRW 2048 FLAT "/etc/passwd" 0\n')
    rejected_with(settings, path, "format.invalid", disk_format="vmdk")


def test_extent_of_a_split_disk_is_rejected(settings, tmp_path):
    v.created(tmp_path / "split.vmdk", "twoGbMaxExtentSparse")
    rejected_with(settings, tmp_path / "split-s001.vmdk", "vmdk.descriptor_location", disk_format="vmdk")


# -- the sparse extent header --------------------------------------------------------


@pytest.mark.parametrize(("length", "code"), [
    # oslo.utils cannot finish a header or descriptor cut short: disk_format rejects and stops the run.
    (4, "format.invalid"), (40, "format.invalid"), (64, "format.invalid"), (100, "format.invalid"),
    (511, "format.invalid"), (512, "format.invalid"), (1000, "format.invalid"), (10240, "format.invalid"),
    # Past the descriptor, only this plugin sees that the grain directory or grain data is missing.
    (10752, "vmdk.truncated"), (12000, "vmdk.truncated"), (32768, "vmdk.truncated"), (65535, "vmdk.truncated"),
])
def test_truncated_images(settings, pristine, tmp_path, length, code):
    path = v.truncated(pristine["sparse"], tmp_path / "cut.vmdk", length)
    rejected_with(settings, path, code, disk_format="vmdk")


@pytest.mark.parametrize("length", [0, 4, 64, 100, 511])
def test_truncated_header_is_a_finding_not_an_exception(pristine, length):
    """Defence in depth: if disk_format ever let a short header through, the parser names it."""
    with pytest.raises(vmdk.Problem) as problem:
        vmdk.SparseHeader.parse(pristine["sparse"].read_bytes()[:length])
    assert problem.value.code is vmdk.TRUNCATED


@pytest.mark.parametrize("length", [1000, 10240])
def test_truncated_descriptor_is_a_finding_not_an_exception(pristine, length):
    header = vmdk.SparseHeader.parse(pristine["sparse"].read_bytes()[:SECTOR])
    with pytest.raises(vmdk.Problem) as problem:
        vmdk.check_header(header, length // SECTOR)
    assert problem.value.code is vmdk.TRUNCATED


@pytest.mark.parametrize(("fields", "code", "why"), [
    ({"capacity": 0}, "vmdk.header", "capacity 0"),
    ({"num_gtes_per_gt": 1024}, "vmdk.header", "numGTEsPerGT"),
    ({"num_gtes_per_gt": 0}, "vmdk.header", "numGTEsPerGT"),
    ({"grain_size": 0}, "vmdk.header", "grainSize"),
    ({"grain_size": vmdk.GRAIN_QEMU_MAX_SECTORS * 2}, "vmdk.header", "grainSize"),
    ({"version": 4}, "vmdk.header", "version"),
    ({"version": 0}, "vmdk.header", "version"),
    ({"descriptor_offset": 1 << 30}, "vmdk.descriptor_location", "descriptorOffset"),
    ({"descriptor_offset": 2}, "vmdk.descriptor_location", "descriptorOffset"),
    ({"descriptor_offset": 0}, "vmdk.descriptor_location", "no embedded descriptor"),
    ({"gd_offset": 1}, "vmdk.table_location", "gdOffset"),
    ({"gd_offset": 1 << 40}, "vmdk.truncated", "gdOffset"),
    ({"rgd_offset": 0}, "vmdk.table_location", "rgdOffset"),
    ({"overhead": 1 << 50}, "vmdk.truncated", "grain data"),
    ({"gd_offset": v.GD_AT_END}, "vmdk.footer_mismatch", "marker"),  # 'at end', but no footer follows
])
def test_bad_header_fields(settings, copy, fields, code, why):
    path = v.patch_header(copy("sparse"), **fields)
    result = rejected_with(settings, path, code, disk_format="vmdk")
    assert why in detail(result, code)


@pytest.mark.parametrize(("fields", "why"), [
    ({"grain_size": 96}, "grainSize"),
    ({"grain_size": 4096}, "grainSize"),
    ({"flags": 0x3 | (1 << 9)}, "flags"),
    ({"compress_algorithm": 2}, "compressAlgorithm"),
    ({"num_gtes_per_gt": 256}, "numGTEsPerGT"),
])
def test_header_fields_qemu_tolerates_are_warnings(settings, copy, fields, why):
    """qemu opens these (grains are read as the header says, files stay self-contained): a warning only."""
    path = v.patch_header(copy("sparse_data"), **fields)
    qemu_opens(path)
    result = accepted_with_warnings(settings, path, "vmdk.header_unusual")
    assert why in detail(result, "vmdk.header_unusual")


def test_footer_in_an_uncompressed_image_is_a_warning(settings, copy, pristine):
    """qemu reads the footer of any sparse image whose gdOffset is 'at end', compressed or not."""
    path = v.with_footer(copy("sparse_data"))
    qemu_opens(path)
    qemu_same_disk(pristine["sparse_data"], path)
    result = accepted_with_warnings(settings, path, "vmdk.header_unusual", "vmdk.subformat_mismatch")
    assert "footer" in detail(result, "vmdk.header_unusual")
    assert result.layers[-1].facts["subformat"] == "monolithicSparse"


def test_damaged_newline_check_bytes_are_a_warning(settings, copy):
    path = v.patch_bytes(copy("sparse"), 73, b"\n \n\n")  # what a text-mode transfer does to "\n \r\n"
    qemu_opens(path)
    result = accepted_with_warnings(settings, path, "vmdk.header_unusual")
    assert "newline" in detail(result, "vmdk.header_unusual")


@pytest.mark.parametrize("size", [21, 100, vmdk.DESCRIPTOR_MAX_SECTORS + 1, 1 << 40])
def test_descriptor_size_larger_than_needed_is_a_warning(settings, copy, pristine, size):
    """qemu ignores descriptorSize (it reads sector 1 to the NUL): an area reaching over the grain tables
    and data of a fully allocated image, or past its end, changes nothing any reader sees."""
    path = v.patch_header(copy("sparse_big"), descriptor_size=size)
    qemu_opens(path)
    qemu_same_disk(pristine["sparse_big"], path)
    result = accepted_with_warnings(settings, path, "vmdk.descriptor_size")
    assert str(size) in detail(result, "vmdk.descriptor_size")
    assert result.layers[-1].facts["virtual_size"] == 4 << 20


def test_descriptor_text_reaching_into_the_grain_directory(settings, copy):
    """Text past the sectors the header gives the descriptor, into the grain directory, is not a descriptor."""
    path = v.patch_header(copy("sparse_data"), descriptor_size=40)
    end = SECTOR + len(v.descriptor_text(path))
    v.patch_bytes(path, end, b"\n" + b"#" * (35 * SECTOR - end))  # one comment line over both directories
    rejected_with(settings, path, "vmdk.table_location", disk_format="vmdk")


def test_absurd_descriptor_size_in_a_small_file(settings, copy):
    """Below 1 MiB oslo.utils cannot finish reading the descriptor: disk_format rejects first."""
    rejected_with(settings, v.patch_header(copy("sparse"), descriptor_size=1 << 40), "format.invalid")


@pytest.mark.parametrize(("fields", "why"), [
    ({"capacity": 1 << 40}, "capacity"),
    ({"grain_size": 256}, "grain_size"),
    ({"gd_offset": v.GD_AT_END}, "another footer"),
])
def test_footer_that_disagrees_with_the_header(settings, copy, fields, why):
    path = v.with_footer(copy("stream_data"))
    v.patch_header(path, at=path.stat().st_size - 2 * SECTOR, **fields)
    result = rejected_with(settings, path, "vmdk.footer_mismatch", disk_format="vmdk")
    assert why in detail(result, "vmdk.footer_mismatch")


def test_footer_pointing_outside_the_file(settings, copy):
    path = v.with_footer(copy("stream_data"))
    v.patch_header(path, at=path.stat().st_size - 2 * SECTOR, gd_offset=path.stat().st_size // SECTOR)
    rejected_with(settings, path, "vmdk.truncated", disk_format="vmdk")


def test_footer_missing(settings, copy):
    path = v.patch_header(copy("stream_data"), gd_offset=v.GD_AT_END)
    rejected_with(settings, path, "vmdk.footer_mismatch", disk_format="vmdk")


def test_other_formats_are_left_alone(settings, tmp_path):
    result = audit(settings, images.qcow2_image(tmp_path / "disk.qcow2"), disk_format="qcow2")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert not any(f.code.startswith("vmdk.") for f in result.findings)
