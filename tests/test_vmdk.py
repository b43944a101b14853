"""The vmdk plugin on real images: qemu-img makes them, byte patches in vmdk_images make the attacks.

Every hostile case asserts its own finding code, a reject, and no
``pipeline.plugin_failed``; every benign case asserts accept and the facts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from importhooks_plugins import vmdk

from importhooks import Claims, ImportRequest, Pipeline, Verdict

from . import images
from . import vmdk_images as v
from .helpers import codes

SECTOR = 512


def audit(settings, path: Path, **claims):
    return Pipeline.from_settings(settings).run(ImportRequest(path=path, claims=Claims(**claims)))


def rejected_with(settings, path: Path, code: str, **claims):
    """Audit ``path``; assert a reject naming ``code``, no plugin failure, no untrusted text in messages."""
    result = audit(settings, path, **claims)
    found = codes(result)
    assert result.verdict is Verdict.REJECT, found
    assert code in found, (code, [(f.code, f.detail) for f in result.findings])
    assert "pipeline.plugin_failed" not in found
    for finding in result.findings:
        assert "passwd" not in finding.message and "/" not in finding.message, finding
    return result


def detail(result, code: str) -> str:
    return " ".join(f.detail or "" for f in result.findings if f.code == code)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """Images made once per module; tests patch copies of them."""
    base = tmp_path_factory.mktemp("vmdk")
    return {
        "sparse": v.created(base / "sparse.vmdk", "monolithicSparse"),
        "stream": v.created(base / "stream.vmdk", "streamOptimized"),
        "sparse_data": v.converted(base / "sparse_data.vmdk", "monolithicSparse"),
        "stream_data": v.converted(base / "stream_data.vmdk", "streamOptimized"),
        "sparse_big": v.converted(base / "sparse_big.vmdk", "monolithicSparse", random=3 << 20),
    }


@pytest.fixture
def copy(pristine, tmp_path):
    def make(name: str) -> Path:
        return Path(shutil.copy(pristine[name], tmp_path / f"{name}.vmdk"))

    return make


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


# -- the embedded descriptor ---------------------------------------------------------

SMUGGLED = 'RW 2048 FLAT "/etc/passwd" 0'


def test_second_extent_smuggled_into_the_embedded_descriptor(settings, copy):
    path = copy("sparse_data")
    size = path.stat().st_size
    v.rewrite_descriptor(path, v.add_line_after("RW ", SMUGGLED))
    assert path.stat().st_size == size and SMUGGLED in v.descriptor_text(path)
    result = rejected_with(settings, path, "vmdk.extents", disk_format="vmdk")
    assert {"vmdk.extent_type", "vmdk.file_reference", "vmdk.capacity_mismatch"} <= set(codes(result))
    assert "'/etc/passwd'" in detail(result, "vmdk.file_reference")


def test_second_sparse_extent_without_a_slash(settings, copy):
    """No '/' anywhere, so oslo.utils' check passes it: only this plugin catches it."""
    path = v.rewrite_descriptor(copy("sparse"), v.add_line_after("RW ", 'RW 131072 SPARSE "other.vmdk"'))
    result = rejected_with(settings, path, "vmdk.extents", disk_format="vmdk")
    assert "vmdk.descriptor" not in codes(result)


@pytest.mark.parametrize(("line", "code"), [
    ('RW 131072 FLAT "/etc/passwd" 0', "vmdk.extent_type"),
    ('RW 131072 VMFS "disk-flat.vmdk"', "vmdk.extent_type"),
    ('RW 131072 VMFSRDM "disk-rdm.vmdk"', "vmdk.extent_type"),
    ('RW 131072 ZERO', "vmdk.extent_type"),
    ('RW 131072 SPARSE "nbd:localhost:10809"', "vmdk.file_reference"),
    ('RW 131072 SPARSE "..vmdk"', "vmdk.file_reference"),
    ('RW 131072 SPARSE "disk-flat.vmdk"', "vmdk.file_reference"),
    ('RW 131072 SPARSE "disk-s001.vmdk"', "vmdk.file_reference"),
    ('RW 131072 SPARSE ".hidden.vmdk"', "vmdk.file_reference"),
    ('RW 131072 SPARSE "disk.vmdk;reboot"', "vmdk.file_reference"),
    ('RW 131072 SPARSE "C:disk.vmdk"', "vmdk.file_reference"),
    ('RW 131072 SPARSE ""', "vmdk.file_reference"),
    ('RW 131072 SPARSE "disk.vmdk" 0', "vmdk.descriptor_syntax"),
    ('NOACCESS 131072 SPARSE "disk.vmdk"', "vmdk.extents"),
    ('RW 2048 SPARSE "disk.vmdk"', "vmdk.capacity_mismatch"),
    ('RW -131072 SPARSE "disk.vmdk"', "vmdk.descriptor_syntax"),
])
def test_bad_extent_line(settings, copy, line, code):
    path = v.rewrite_descriptor(copy("sparse"), v.replace_line("RW ", line))
    rejected_with(settings, path, code, disk_format="vmdk")


@pytest.mark.parametrize("create_type", ["monolithicFlat", "twoGbMaxExtentSparse", "vmfs", "vmfsRDM",
                                         "partitionedDevice", "custom"])
def test_create_type_other_than_single_file_sparse(settings, copy, create_type):
    path = v.rewrite_descriptor(copy("sparse"), v.replace_line("createType", f'createType="{create_type}"'))
    result = rejected_with(settings, path, "vmdk.create_type", disk_format="vmdk")
    assert repr(create_type) in detail(result, "vmdk.create_type")


def test_create_type_disagreeing_with_the_header(settings, copy):
    path = v.rewrite_descriptor(copy("sparse"), v.replace_line("createType", 'createType="streamOptimized"'))
    rejected_with(settings, path, "vmdk.subformat_mismatch", disk_format="vmdk")


@pytest.mark.parametrize("change", [
    v.add_line_after("createType", 'parentFileNameHint="/etc/passwd"'),
    v.add_line_after("createType", '# parentFileNameHint="base.vmdk"'),
    v.replace_line("parentCID", "parentCID=1234abcd"),
])
def test_linked_clone_is_rejected(settings, copy, change):
    rejected_with(settings, v.rewrite_descriptor(copy("sparse"), change), "vmdk.parent", disk_format="vmdk")


@pytest.mark.parametrize(("change", "tail", "code"), [
    (v.add_line_after("createType", "ddb.comment = \"caf\xe9\""), b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "# createType=\"monolithicFlat\""), b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "createType=\"monolithicSparse\""), b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "uuid=1234"), b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "this is not a descriptor line"), b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "version=1\x0bRW 2048 FLAT \"x\" 0"), b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", 'changeTrackPath="disk-ctk.vmdk"'), b"", "vmdk.file_reference"),
    (lambda text: text, SMUGGLED.encode() + b"\n", "vmdk.descriptor_syntax"),
    (lambda text: text + "\n" * vmdk.DESCRIPTOR_MAX_LINES, b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "ddb.x = \"" + "a" * vmdk.DESCRIPTOR_MAX_LINE_LENGTH + "\""), b"",
     "vmdk.descriptor_syntax"),
])
def test_descriptor_text_that_cannot_be_trusted(settings, copy, change, tail, code):
    path = v.rewrite_descriptor(copy("sparse"), change, tail=tail)
    rejected_with(settings, path, code, disk_format="vmdk")


def test_descriptor_without_terminating_nul(settings, copy):
    path = copy("sparse")
    header = v.read_header(path)
    v.patch_bytes(path, SECTOR, b"#" * header["descriptor_size"] * SECTOR)
    rejected_with(settings, path, "vmdk.descriptor_syntax", disk_format="vmdk")


def test_empty_descriptor(settings, copy):
    path = v.rewrite_descriptor(copy("sparse"), lambda text: "")
    rejected_with(settings, path, "vmdk.descriptor_location", disk_format="vmdk")


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
    ({"grain_size": 96}, "vmdk.header", "grainSize"),
    ({"grain_size": 1 << 20}, "vmdk.header", "grainSize"),
    ({"grain_size": 0}, "vmdk.header", "grainSize"),
    ({"flags": 0x3 | (1 << 9)}, "vmdk.header", "flags"),
    ({"compress_algorithm": 2}, "vmdk.header", "compressAlgorithm"),
    ({"version": 4}, "vmdk.header", "version"),
    ({"version": 0}, "vmdk.header", "version"),
    ({"descriptor_offset": 1 << 30}, "vmdk.descriptor_location", "descriptorOffset"),
    ({"descriptor_offset": 2}, "vmdk.descriptor_location", "descriptorOffset"),
    ({"descriptor_offset": 0}, "vmdk.descriptor_location", "no embedded descriptor"),
    ({"gd_offset": 10}, "vmdk.table_location", "gdOffset"),
    ({"gd_offset": 1 << 40}, "vmdk.truncated", "gdOffset"),
    ({"rgd_offset": 0}, "vmdk.table_location", "rgdOffset"),
    ({"overhead": 1 << 50}, "vmdk.truncated", "grain data"),
    ({"gd_offset": v.GD_AT_END}, "vmdk.table_location", "not stream-optimized"),
])
def test_bad_header_fields(settings, copy, fields, code, why):
    path = v.patch_header(copy("sparse"), **fields)
    result = rejected_with(settings, path, code, disk_format="vmdk")
    assert why in detail(result, code)


def test_damaged_newline_check_bytes(settings, copy):
    path = v.patch_bytes(copy("sparse"), 73, b"\n \n\n")  # what a text-mode transfer does to "\n \r\n"
    result = rejected_with(settings, path, "vmdk.header", disk_format="vmdk")
    assert "newline" in detail(result, "vmdk.header")


@pytest.mark.parametrize("size", [vmdk.DESCRIPTOR_MAX_SECTORS + 1, 1 << 40])
def test_absurd_descriptor_size(settings, copy, size):
    """A file over 1 MiB, so oslo.utils' capped read of the descriptor completes and this plugin runs."""
    path = v.patch_header(copy("sparse_big"), descriptor_size=size)
    result = rejected_with(settings, path, "vmdk.descriptor_size", disk_format="vmdk")
    assert str(size) in detail(result, "vmdk.descriptor_size")


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
