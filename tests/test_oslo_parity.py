"""Parity with oslo.utils' own inspector tests: every unsafe image there is rejected here, the safe ones pass.

oslo.utils' ``oslo_utils/tests/imageutils/test_format_inspector.py`` builds images
with qemu-img, mkisofs and byte patches and asserts that its inspectors refuse the
unsafe ones. importhooks is built on those inspectors but replaces some of their
checks (see ``plugins/formats/disk_format.py``), so this module rebuilds each construction
with this project's own builders and runs the whole pipeline on it: importhooks must
stay at least as strict. Test names follow oslo's test methods so a reviewer can
pair them. Where importhooks is stricter than oslo on an image oslo passes, the
test says why (qemu cannot open it, or two readers would see different disks).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Settings, Verdict

from . import disk_builders as b
from . import vmdk_images as v
from .helpers import codes

SECTOR = 512
MIB = 1 << 20
#: oslo reads its images at these block sizes; importhooks' disk_format at these chunk sizes.
CHUNK_SIZES = (1, 17, 512, 64 << 10, 1 << 20)
#: Header fields of a hosted sparse extent that oslo's footer test changes (byte offsets).
VMDK_VERSION, VMDK_DESCRIPTOR_OFFSET, VMDK_DESCRIPTOR_SIZE, VMDK_GD_OFFSET = 4, 28, 36, 56


def audit(settings: Settings, path: Path, claim: str | None) -> ImportResult:
    result = Pipeline.from_settings(settings).run(ImportRequest(path, claims=Claims(disk_format=claim)))
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    assert settings.work_dir is not None and list(settings.work_dir.iterdir()) == []
    return result


def rejected(settings: Settings, path: Path, claim: str | None, *expected: str) -> ImportResult:
    """The image is rejected (an error finding), naming one of ``expected`` if any are given."""
    result = audit(settings, path, claim)
    assert result.verdict is Verdict.REJECT, result.findings
    errors = {f.code for f in result.findings if f.severity.value == "error"}
    assert not expected or errors & set(expected), (expected, result.findings)
    return result


def accepted(settings: Settings, path: Path, claim: str, **facts: object) -> ImportResult:
    result = audit(settings, path, claim)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["disk_format"] == claim
    assert {key: result.detected.get(key) for key in facts} == facts
    return result


def qemu_info(path: Path, fmt: str | None = None) -> dict[str, object]:
    run = subprocess.run(["qemu-img", "info", "--output=json", *(("-f", fmt) if fmt else ()), str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout))


def patch(path: Path, offset: int, data: bytes) -> Path:
    """Overwrite bytes at ``offset`` (negative: from the end) in place."""
    with open(path, "r+b") as handle:
        handle.seek(offset, 0 if offset >= 0 else 2)
        handle.write(data)
    return path


# --- test_format, test_subformat, test_vdi: benign images of every size are accepted -----------------

#: oslo's format -> (qemu-img format and options, the disk_format importhooks reports).
QEMU_FORMATS = {
    "qcow2": ("qcow2", "", "qcow2"),
    "vhd": ("vpc", "", "vhd"),
    "vhdx": ("vhdx", "", "vhdx"),
    "vmdk": ("vmdk", "", "vmdk"),
    "vmdk streamOptimized": ("vmdk", "subformat=streamOptimized", "vmdk"),
    "vdi": ("vdi", "", "vdi"),
}


@pytest.mark.parametrize("size_mib", [7, 513, 2057])  # oslo's odd sizes (512 MiB is like 513 here)
@pytest.mark.parametrize("name", list(QEMU_FORMATS))
def test_format(settings: Settings, tmp_path: Path, name: str, size_mib: int) -> None:
    fmt, options, disk_format = QEMU_FORMATS[name]
    path = tmp_path / f"image.{disk_format}"
    b.qemu_img("create", "-q", "-f", fmt, *(("-o", options) if options else ()), str(path), f"{size_mib}M")
    size = qemu_info(path)["virtual-size"]
    accepted(settings, path, disk_format, virtual_size=size)


def test_format_luks(settings: Settings, tmp_path: Path) -> None:
    path = b.luks_image(tmp_path / "image.luks", "7M")
    accepted(settings.replace(disk_formats=(*settings.disk_formats, "luks")), path, "luks")


def test_format_gpt(settings: Settings, tmp_path: Path) -> None:
    """oslo's 'gpt': ten sectors, a protective MBR entry (0xEE) and nothing else: a raw disk here."""
    path = tmp_path / "protective.img"
    path.write_bytes(bytes(10 * SECTOR))
    patch(path, 446, struct.pack("<BBBBBBBBII", 0, 0, 2, 0, 0xEE, 0, 0, 0, 1, 0))
    patch(path, 510, b"\x55\xaa")
    accepted(settings, path, "raw", partition_table="mbr")


def test_subformat_iso9660(settings: Settings, tmp_path: Path) -> None:
    accepted(settings, b.iso_image(tmp_path / "image.iso"), "iso")


def test_subformat_udf(settings: Settings, tmp_path: Path) -> None:
    """oslo's UDF subformat: ``mkisofs -udf`` (genisoimage), an ISO 9660 volume with a UDF bridge."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README").write_text("importhooks\n")
    path = tmp_path / "image.iso"
    subprocess.run(["mkisofs", "-udf", "-V", "TEST", "-o", str(path), str(tree)], check=True, capture_output=True)
    assert b"NSR0" in path.read_bytes()[32 << 10 : 64 << 10]  # the UDF volume recognition sequence
    accepted(settings, path, "iso")


def test_invalid_data(settings: Settings, tmp_path: Path) -> None:
    """oslo reads its own source: raw. This module's source is printable text that contains createType="
    (oslo.utils' VMDK inspector alone would call it a descriptor); qemu, and importhooks, say raw."""
    path = Path(shutil.copyfile(__file__, tmp_path / "source.img"))
    assert b'createType="' in path.read_bytes()[: 1 << 20]
    assert qemu_info(path)["format"] == "raw"
    accepted(settings, path, "raw")


# --- VMDK --------------------------------------------------------------------------------------------


def test_vmdk_non_sparse_unsafe(settings: Settings, tmp_path: Path) -> None:
    path = v.created(tmp_path / "flat.vmdk", "monolithicFlat", "10M")
    rejected(settings, path, "vmdk", "vmdk.descriptor", "vmdk.descriptor_only")


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_vmdk_bad_descriptor_offset(settings: Settings, tmp_path: Path, subformat: str, chunk_size: int) -> None:
    path = v.patch_header(v.created(tmp_path / "image.vmdk", subformat, "10M"), descriptor_offset=0x400 // SECTOR)
    chunked = settings.replace(plugin={"disk_format": {"chunk_size": chunk_size}})
    rejected(chunked, path, "vmdk", "format.invalid", "vmdk.descriptor_location")


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_vmdk_bad_descriptor_mem_limit(settings: Settings, tmp_path: Path, subformat: str) -> None:
    """oslo's 'safe' side: a fully allocated 5 MiB VMDK whose descriptorSize says 2 MiB. qemu ignores the
    field and opens it; importhooks accepts it with the warning vmdk.descriptor_size, at every chunk size."""
    raw = b.raw_random(tmp_path / "image.raw", 5 * MIB)
    path = tmp_path / "image.vmdk"
    b.qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", "-S", "0",
               str(raw), str(path))
    v.patch_header(path, descriptor_size=(2 * MIB) // SECTOR)
    assert qemu_info(path, "vmdk")["virtual-size"] == 5 * MIB
    for chunk_size in CHUNK_SIZES[1:]:  # a byte at a time over 5 MiB would take minutes
        chunked = settings.replace(plugin={"disk_format": {"chunk_size": chunk_size}})
        result = accepted(chunked, path, "vmdk", virtual_size=5 * MIB)
        assert codes(result) == ["vmdk.descriptor_size"]


def _stream_with_footer_sentinel(tmp_path: Path) -> Path:
    """oslo's test_vmdk_with_footer first step: gdOffset 'at end' and three zero sectors appended."""
    path = v.created(tmp_path / "footer.vmdk", "streamOptimized", "10M")
    patch(path, VMDK_GD_OFFSET, struct.pack("<Q", v.GD_AT_END))
    with open(path, "ab") as handle:
        handle.write(bytes(3 * SECTOR))
    return path


def test_vmdk_with_footer(settings: Settings, tmp_path: Path) -> None:
    rejected(settings, _stream_with_footer_sentinel(tmp_path), "vmdk", "vmdk.footer", "vmdk.footer_mismatch")


def test_vmdk_with_footer_oslo_passes_but_qemu_cannot_read(settings: Settings, tmp_path: Path) -> None:
    """oslo's second step passes its check: a footer marker, and as the footer the header with only the low
    byte of gdOffset cleared. That directory lies 16 EiB into the file: qemu cannot open the image, and
    importhooks rejects it (vmdk.truncated) where oslo does not."""
    path = _stream_with_footer_sentinel(tmp_path)
    header = bytearray(path.read_bytes()[:SECTOR])
    header[VMDK_GD_OFFSET] = 0
    patch(path, -3 * SECTOR + 12, struct.pack("<I", 3))
    patch(path, -2 * SECTOR, bytes(header))
    run = subprocess.run(["qemu-img", "info", "-f", "vmdk", str(path)], capture_output=True, text=True)
    assert run.returncode != 0 and "l1 table" in run.stderr, run.stderr
    rejected(settings, path, "vmdk", "vmdk.truncated")


def test_vmdk_with_a_real_footer(settings: Settings, tmp_path: Path) -> None:
    """The safe footer, built the way VMware lays it out (vmdk_images.with_footer)."""
    path = v.with_footer(v.converted(tmp_path / "footer.vmdk", "streamOptimized"))
    assert qemu_info(path, "vmdk")["virtual-size"] == 4 * MIB
    accepted(settings, path, "vmdk", subformat="streamOptimized")


def _footer_field(offset: int, value: bytes) -> Callable[[Path], Path]:
    return lambda path: patch(path, -2 * SECTOR + offset, value)


#: oslo's test_vmdk_footer_checks, case by case: each change to a valid footer must be rejected.
FOOTER_BREAKERS: dict[str, Callable[[Path], Path]] = {
    "signature": _footer_field(0, b"leak"),
    "version": _footer_field(VMDK_VERSION, struct.pack("<I", 2)),
    "descriptor longer": _footer_field(VMDK_DESCRIPTOR_SIZE, struct.pack("<Q", 21)),
    "descriptor relocated": _footer_field(VMDK_DESCRIPTOR_OFFSET, struct.pack("<Q", 2)),
    "another footer": _footer_field(VMDK_GD_OFFSET, struct.pack("<Q", v.GD_AT_END)),
    "footer marker type": lambda path: patch(path, -3 * SECTOR + 12, struct.pack("<I", 7)),
    "footer marker size": lambda path: patch(path, -3 * SECTOR + 8, struct.pack("<I", 1)),
    "footer marker padding": lambda path: patch(path, -3 * SECTOR + 16, b"\x01" * 496),
    "end-of-stream type": lambda path: patch(path, -SECTOR + 12, struct.pack("<I", 7)),
    "end-of-stream size": lambda path: patch(path, -SECTOR + 8, struct.pack("<I", 1)),
    "end-of-stream padding": lambda path: patch(path, -SECTOR + 16, b"\x01" * 496),
}


@pytest.mark.parametrize("name", list(FOOTER_BREAKERS))
def test_vmdk_footer_checks(settings: Settings, tmp_path: Path, name: str) -> None:
    path = FOOTER_BREAKERS[name](v.with_footer(v.converted(tmp_path / "footer.vmdk", "streamOptimized")))
    rejected(settings, path, "vmdk", "vmdk.footer", "vmdk.footer_mismatch", "format.invalid")


#: oslo's test_vmdk_safety_checks: descriptor changes its check refuses (its passing descriptor, with an
#: unknown key, a 'ddb' line without '.' and an extent line without a type, is refused here too).
DESCRIPTOR_BREAKERS: dict[str, tuple[Callable[[str], str], str]] = {
    "createType without '='": (v.replace_line("createType", "createType monolithicFlat"), "vmdk.create_type"),
    "createType monolithicFlat": (v.replace_line("createType", 'createType="monolithicFlat"'), "vmdk.create_type"),
    "extent in an unknown mode": (v.add_line_after("RW ", "wronly 2048 somefile2.vmdk"), "vmdk.descriptor_syntax"),
    "extent naming a path": (v.add_line_after("RW ", "rw 2048 /etc/hosts"), "vmdk.file_reference"),
    "no extents": (v.replace_line("RW ", "# no extent"), "vmdk.extents"),
    "oslo's passing descriptor": (lambda text: "\n".join([
        "# a comment", 'createType="monolithicSparse"', "", " ", "someUnknownThing=foo", "ddb whatever",
        "rw 0 somefile.vmdk"]), "vmdk.descriptor_syntax"),
}


@pytest.mark.parametrize("name", list(DESCRIPTOR_BREAKERS))
def test_vmdk_safety_checks(settings: Settings, tmp_path: Path, name: str) -> None:
    change, code = DESCRIPTOR_BREAKERS[name]
    path = v.rewrite_descriptor(v.created(tmp_path / "image.vmdk", "monolithicSparse", "1M"), change)
    rejected(settings, path, "vmdk", code)


@pytest.mark.parametrize(("name", "fields", "codes_"), [
    ("unknown version", {"version": 0}, ("format.invalid", "vmdk.header")),
    ("descriptor location", {"descriptor_offset": 0}, ("format.invalid", "vmdk.descriptor_location")),
])
def test_vmdk_format_checks(settings: Settings, tmp_path: Path, name: str, fields: dict[str, int],
                            codes_: tuple[str, ...]) -> None:
    path = v.patch_header(v.created(tmp_path / "image.vmdk", "monolithicSparse", "1M"), **fields)
    rejected(settings, path, "vmdk", *codes_)
    rejected(settings, path, "raw", *codes_)


def test_vmdk_format_checks_zeros_are_raw(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "zeros.img"
    path.write_bytes(bytes(MIB))
    accepted(settings, path, "raw")


# --- qcow2, QED, ISO ----------------------------------------------------------------------------------


def test_qcow2_safety_checks_backing_file(settings: Settings, tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    backing.write_text("foobar")
    path = b.qcow2_with_backing_file(tmp_path / "image.qcow2", str(backing), "5M")
    rejected(settings, path, "qcow2", "qcow2.backing_file")


def test_qcow2_safety_checks_data_file(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "image.qcow2"
    b.qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data'},data_file_raw=on",
               str(path), "5M")
    rejected(settings, path, "qcow2", "qcow2.data_file")


@pytest.mark.parametrize(("name", "offset", "value", "code"), [
    ("an unknown feature in the highest byte", 0x48, b"\x01", "qcow2.unknown_features"),
    ("unassigned bit 7 of the lowest byte", 0x4F, b"\x80", "qcow2.unknown_features"),
    ("version 1", 0x04, struct.pack(">I", 1), "qcow2.version"),
    ("version 4", 0x04, struct.pack(">I", 4), "qcow2.version"),
])
def test_qcow2_feature_flag_checks(settings: Settings, tmp_path: Path, name: str, offset: int, value: bytes,
                                   code: str) -> None:
    path = patch(b.qemu_image(tmp_path / "image.qcow2", "qcow2_v3"), offset, value)
    rejected(settings, path, "qcow2", code)


def test_qed_always_unsafe(settings: Settings, tmp_path: Path) -> None:
    """Rejected on default settings (oslo bans QED outright; here an operator may allow it, see qed.rst)."""
    path = b.qemu_image(tmp_path / "image.qed", "qed", "10M")
    rejected(settings, path, "qed", "claims.disk_format_not_allowed")
    rejected(settings, path, None, "format.not_allowed")


def test_bad_iso_qcow2(settings: Settings, tmp_path: Path) -> None:
    """An ISO whose 32 KiB system area holds a qcow2 header: a polyglot."""
    qcow2 = b.qemu_image(tmp_path / "orig.qcow2", "qcow2_v3", "10M")
    path = b.iso_image(tmp_path / "bad.iso")
    patch(path, 0, qcow2.read_bytes()[: 32 << 10])
    for claim in ("iso", "qcow2", "raw"):
        rejected(settings, path, claim, "format.polyglot")


# --- test_gpt_mbr_check: protective MBRs ----------------------------------------------------------------


def _mbr(path: Path, *entries: tuple[int, int, int, int]) -> Path:
    """Ten sectors with a boot signature and ``(boot, start head, type, start LBA)`` partition entries."""
    data = bytearray(10 * SECTOR)
    data[510:512] = b"\x55\xaa"
    for index, (boot, start_head, kind, start_lba) in enumerate(entries):
        data[446 + 16 * index : 462 + 16 * index] = struct.pack("<BBBBBBBBII", boot, 0, start_head, 0, kind,
                                                                0, 0, 0, start_lba, 0)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("name", "entries"), [
    ("invalid boot flag", [(0x0A, 2, 0xEE, 1)]),
    ("no partitions defined", [(0, 2, 0, 1)]),
    ("invalid extra partitions", [(0, 2, 0xEE, 1), (0, 2, 0xEE, 1)]),
    ("invalid start CHS", [(0, 1, 0xEE, 1)]),
    ("invalid start LBA", [(0, 2, 0xEE, 2)]),
])
def test_gpt_mbr_check(settings: Settings, tmp_path: Path, name: str, entries: list[tuple[int, ...]]) -> None:
    rejected(settings, _mbr(tmp_path / "disk.img", *entries), "raw", "partition.mbr_invalid")


def test_gpt_mbr_check_tolerated(settings: Settings, tmp_path: Path) -> None:
    """oslo's passing case: non-EFI partitions may start anywhere."""
    path = _mbr(tmp_path / "disk.img", (0, 1, 0x8E, 2), (0, 2, 0x02, 1))
    accepted(settings, path, "raw", partition_table="mbr")
