"""The vmdk plugin on real images: qemu-img makes them, byte patches in vmdk_images make the attacks.

Every hostile case asserts its own finding code, a reject, and no
``pipeline.plugin_failed``; every benign case asserts accept and the facts.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from importhooks_plugins import _vmdk_descriptor as vd
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


def accepted_with_warnings(settings, path: Path, *warnings: str):
    """Audit ``path`` claimed vmdk; assert it is accepted, with exactly ``warnings`` as findings."""
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, [(f.code, f.detail) for f in result.findings]
    assert sorted(codes(result)) == sorted(warnings), result.findings
    assert all(f.severity.value == "warning" for f in result.findings)
    return result


def qemu_opens(path: Path) -> None:
    """qemu-img opens ``path`` as a VMDK and reads every sector (``check`` needs no parse of its own)."""
    for command in (["info", "-f", "vmdk"], ["convert", "-f", "vmdk", "-O", "raw"]):
        target = [str(path.with_suffix(".out"))] if command[0] == "convert" else []
        run = subprocess.run(["qemu-img", *command, str(path), *target], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    path.with_suffix(".out").unlink()


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


# -- UTF-8 descriptors ----------------------------------------------------------------

UTF8 = v.add_line_after("version", 'encoding="UTF-8"')


def with_name(name: str, *changes) -> Callable[[str], str]:
    """A descriptor change naming the extent ``name`` (after ``changes``)."""
    def change(text: str) -> str:
        for other in changes:
            text = other(text)
        return v.replace_line("RW ", f'RW 8192 SPARSE "{name}"')(text)

    return change


@pytest.mark.parametrize("name", ["disque-\u00e9t\u00e9.vmdk", "\u30c7\u30a3\u30b9\u30af.vmdk",
                                  "\u0434\u0438\u0441\u043a (copy).vmdk", "\uff21\uff22.vmdk"])
def test_utf8_descriptor_with_a_non_ascii_extent_name_is_accepted(settings, copy, pristine, name):
    """qemu opens it and reads exactly its ASCII twin; it was vmdk.descriptor_syntax (and oslo's vmdk.descriptor)."""
    path = v.rewrite_descriptor(copy("sparse_data"), with_name(name, UTF8), encoding="utf-8")
    qemu_opens(path)
    compare = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(pristine["sparse_data"]),
                              str(path)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings
    facts = result.layers[-1].facts
    assert facts["subformat"] == "monolithicSparse" and facts["virtual_size"] == 4 << 20


def test_utf8_comment_in_a_stream_optimized_descriptor_is_accepted(settings, copy):
    comment = v.add_line_after("createType", 'ddb.comment = "Serveur de fichiers \u2014 \u00e9t\u00e9"')
    path = v.rewrite_descriptor(copy("stream_data"), lambda text: UTF8(comment(text)), encoding="utf-8")
    qemu_opens(path)
    assert audit(settings, path, disk_format="vmdk").verdict is Verdict.ACCEPT


@pytest.mark.parametrize(("change", "encoding", "code", "why"), [
    # Another reader would decode the bytes to other characters, or cannot decode them.
    (with_name("disque-\u00e9.vmdk"), "utf-8", "vmdk.descriptor_syntax", "encoding ''"),
    (with_name("\u30c7\u30a3\u30b9\u30af.vmdk", v.add_line_after("version", 'encoding="Shift_JIS"')),
     "utf-8", "vmdk.descriptor_syntax", "encoding 'Shift_JIS'"),
    (with_name("disque-\u00e9.vmdk", UTF8), "latin-1", "vmdk.descriptor_syntax", "not UTF-8"),
    (with_name("\u8868.vmdk", v.add_line_after("version", 'encoding="Shift_JIS"')), "shift_jis",
     "vmdk.descriptor_syntax", "not UTF-8"),  # 0x955C: its second byte is a backslash to a byte reader
    # Invisible characters: C1 control (NEL, a line break elsewhere), bidi override, no-break space, BOM.
    (with_name("disk\u0085RW 8 FLAT x.vmdk", UTF8), "utf-8", "vmdk.descriptor_syntax", "invisible"),
    (with_name("kmd.\u202eexe.vmdk", UTF8), "utf-8", "vmdk.descriptor_syntax", "invisible"),
    (with_name("disk\u00a0name.vmdk", UTF8), "utf-8", "vmdk.descriptor_syntax", "invisible"),
    (lambda text: "\ufeff" + UTF8(text), "utf-8", "vmdk.descriptor_syntax", "invisible"),
    # Paths once compatibility forms or Windows' best-fit mapping apply.
    (with_name("..\uff0f..\uff0fetc\uff0fpasswd", UTF8), "utf-8", "vmdk.file_reference", "a path"),
    (with_name("\uff0e\uff0e\uff3cdisk.vmdk", UTF8), "utf-8", "vmdk.file_reference", "a path"),
    (with_name("c\uff1adisk.vmdk", UTF8), "utf-8", "vmdk.file_reference", "protocol or drive"),
    (with_name("disk\u00a5passwd.vmdk", UTF8), "utf-8", "vmdk.file_reference", "separator"),
    (with_name("disk\u2215passwd.vmdk", UTF8), "utf-8", "vmdk.file_reference", "separator"),
    (with_name("\uff0ehidden.vmdk", UTF8), "utf-8", "vmdk.file_reference", "not a plain file name"),
    (with_name("disk\uff0dflat.vmdk", UTF8), "utf-8", "vmdk.file_reference", "flat, split"),
    (with_name("\u00e9" * 128 + ".vmdk", UTF8), "utf-8", "vmdk.file_reference", "bytes"),
    # A size in other digits: Python's int() reads them, qemu's sscanf does not.
    (lambda text: UTF8(text).replace("RW 8192", "RW \u0668\u0661\u0669\u0662"), "utf-8",
     "vmdk.descriptor_syntax", "size"),
    (v.add_line_after("version", "create\u0422ype=\"monolithicFlat\""), "utf-8", "vmdk.descriptor_syntax",
     "unrecognised"),
])
def test_non_ascii_descriptor_text_that_cannot_be_trusted(settings, copy, change, encoding, code, why):
    path = v.rewrite_descriptor(copy("sparse_data"), change, encoding=encoding)
    result = rejected_with(settings, path, code, disk_format="vmdk")
    assert why in detail(result, code), detail(result, code)
    assert all((f.detail or "").isascii() for f in result.findings)  # names are escaped in details


def test_non_ascii_name_is_escaped_in_the_detail(settings, copy):
    path = v.rewrite_descriptor(copy("sparse_data"), with_name("d\u00e9j\u00e0/../passwd", UTF8),
                                encoding="utf-8")
    result = rejected_with(settings, path, "vmdk.file_reference", disk_format="vmdk")
    assert "d\\xe9j\\xe0/../passwd" in detail(result, "vmdk.file_reference")


@pytest.mark.parametrize("create_type", ['createType=monolithicSparse', 'createType = "monolithicSparse"'])
def test_create_type_not_written_as_oslo_reads_it(settings, copy, create_type):
    """oslo.utils finds createType by the substring 'createtype="'; the vmdk plugin, checking in its
    place, rejects what oslo would not find."""
    path = v.rewrite_descriptor(copy("sparse"), v.replace_line("createType", create_type))
    rejected_with(settings, path, "vmdk.create_type", disk_format="vmdk")


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


def test_create_type_disagreeing_with_the_header_is_a_warning(settings, copy):
    """qemu ignores createType in a sparse file and reads the grains as the header says: a warning only."""
    path = v.rewrite_descriptor(copy("sparse_data"), v.replace_line("createType", 'createType="streamOptimized"'))
    qemu_opens(path)
    result = accepted_with_warnings(settings, path, "vmdk.subformat_mismatch")
    assert result.layers[-1].facts["subformat"] == "monolithicSparse"  # what qemu reads: uncompressed grains


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
    (lambda text: text + "\n" * vd.DESCRIPTOR_MAX_LINES, b"", "vmdk.descriptor_syntax"),
    (v.add_line_after("createType", "ddb.x = \"" + "a" * vd.DESCRIPTOR_MAX_LINE_LENGTH + "\""), b"",
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
    compare = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(pristine["sparse_data"]),
                              str(path)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
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
    compare = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(pristine["sparse_big"]),
                              str(path)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
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
