"""Disk format detection through the real pipeline, on images made by the real tools.

Every test builds its images with qemu-img, sfdisk, sgdisk, mkfs.* or xorriso (see
:mod:`tests.disk_builders`), runs ``Pipeline.from_settings(settings).run(...)`` with
every built-in plugin, and checks the verdict, the findings and the facts the
``disk_format`` plugin recorded. Tests whose docstring starts with "Was ..." are
regressions of bugs found here in ``plugins/formats/disk_format.py`` and since fixed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Settings, Verdict
from importhooks.settings import DISK_FORMATS

from . import disk_builders as b
from .helpers import codes

Builder = Callable[[Path], Path]


def audit(settings: Settings, path: Path, disk_format: str | None = None) -> ImportResult:
    """Run the whole pipeline over ``path``; the run must leave its work_dir empty and never fail a plugin."""
    result = Pipeline.from_settings(settings).run(ImportRequest(path, claims=Claims(disk_format=disk_format)))
    assert settings.work_dir is not None and list(settings.work_dir.iterdir()) == []
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    return result


def with_formats(settings: Settings, *extra: str) -> Settings:
    """``settings`` that also accept ``extra`` disk formats."""
    return settings.replace(disk_formats=(*settings.disk_formats, *extra))


# --- benign images: detected, the right facts, accepted --------------------------------------------


def _qemu(kind: str, size: str = "1M") -> Builder:
    return lambda path: b.qemu_image(path, kind, size)


def _qcow2_with_data(path: Path) -> Path:
    image = b.qemu_image(path, "qcow2_v3", "4M")
    b.write_clusters(image, "qcow2", (0, 65536), (3 << 20, 4096))
    return image


def _vmdk_stream_with_data(path: Path) -> Path:
    source = b.raw_random(path.with_suffix(".src"), 1 << 20)
    return b.convert(source, path, "vmdk", "subformat=streamOptimized")


def _fs(kind: str) -> Builder:
    return lambda path: b.filesystem(path, kind)


#: name -> (builder, settings' extra formats, expected facts). Sizes are small: detection reads the whole file.
BENIGN: dict[str, tuple[Builder, tuple[str, ...], dict[str, Any]]] = {
    "raw zeros": (b.raw_zeros, (), {"disk_format": "raw", "partition_table": "none", "virtual_size": 1 << 20}),
    "raw random": (b.raw_random, (), {"disk_format": "raw", "partition_table": "none"}),
    "raw with MBR (sfdisk)": (b.mbr_disk, (), {"disk_format": "raw", "partition_table": "mbr"}),
    "raw with GPT (sgdisk)": (b.gpt_disk, (), {"disk_format": "raw", "partition_table": "gpt"}),
    "ext4 at sector 0": (_fs("ext4"), (), {"disk_format": "raw", "partition_table": "none"}),
    "xfs at sector 0": (_fs("xfs"), (), {"disk_format": "raw", "partition_table": "none"}),
    "vfat at sector 0": (_fs("vfat"), (), {"disk_format": "raw", "partition_table": "none"}),
    "vfat with one FAT at sector 0": (_fs("vfat_one_fat"), (), {"disk_format": "raw", "partition_table": "none"}),
    "ntfs at sector 0": (_fs("ntfs"), (), {"disk_format": "raw", "partition_table": "none"}),
    "exfat at sector 0": (_fs("exfat"), (), {"disk_format": "raw", "partition_table": "none"}),
    "qcow2 v2": (_qemu("qcow2_v2"), (), {"disk_format": "qcow2", "virtual_size": 1 << 20}),
    "qcow2 v3": (_qemu("qcow2_v3"), (), {"disk_format": "qcow2", "virtual_size": 1 << 20}),
    "qcow2 v3 with data (qemu-io)": (_qcow2_with_data, (), {"disk_format": "qcow2", "virtual_size": 4 << 20}),
    "vmdk monolithicSparse": (_qemu("vmdk_sparse"), (), {"disk_format": "vmdk", "virtual_size": 1 << 20}),
    "vmdk streamOptimized": (_qemu("vmdk_stream"), (), {"disk_format": "vmdk", "virtual_size": 1 << 20}),
    "vmdk streamOptimized with data": (_vmdk_stream_with_data, (), {"disk_format": "vmdk",
                                                                    "virtual_size": 1 << 20}),
    "vhd dynamic": (_qemu("vhd_dynamic"), (), {"disk_format": "vhd"}),
    "vhd fixed": (_qemu("vhd_fixed"), (), {"disk_format": "vhd", "subformat": "fixed", "virtual_size": 1 << 20}),
    "vhdx": (_qemu("vhdx"), (), {"disk_format": "vhdx", "virtual_size": 1 << 20}),
    "vdi": (_qemu("vdi"), (), {"disk_format": "vdi", "virtual_size": 1 << 20}),
    "iso (xorriso -as mkisofs)": (b.iso_image, (), {"disk_format": "iso"}),
    "hybrid iso, isohdpfx MBR": (b.hybrid_iso_mbr, (), {"disk_format": "iso", "partition_table": "mbr"}),
    "hybrid iso, MBR and GPT with an EFI partition": (b.hybrid_iso_gpt, (), {"disk_format": "iso",
                                                                            "partition_table": "gpt"}),
    "iso with a GPT in its system area": (b.gpt_iso, (), {"disk_format": "iso", "partition_table": "gpt"}),
    "luks (qemu-img, allowed)": (b.luks_image, ("luks",), {"disk_format": "luks"}),
}


def image_path(directory: Path, facts: dict[str, Any]) -> Path:
    """``image.FORMAT``: qemu-img names a VMDK's extent after its file, and the vmdk plugin wants ``.vmdk``."""
    return directory / f"image.{facts['disk_format']}"


@pytest.mark.parametrize("name", list(BENIGN))
def test_benign_image_is_detected_and_accepted(settings: Settings, tmp_path: Path, name: str) -> None:
    builder, extra, facts = BENIGN[name]
    path = builder(image_path(tmp_path, facts))
    result = audit(with_formats(settings, *extra), path)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert {key: result.detected.get(key) for key in facts} == facts
    assert result.detected["actual_size"] == path.stat().st_size
    # The claim of the detected format is accepted too.
    claimed = audit(with_formats(settings, *extra), path, disk_format=facts["disk_format"])
    assert claimed.verdict is Verdict.ACCEPT, claimed.findings


@pytest.mark.parametrize("kind", ["vfat_one_fat", "ntfs", "exfat"])
def test_filesystem_boot_sector_that_oslo_takes_for_an_mbr(settings: Settings, tmp_path: Path, kind: str) -> None:
    """The case oslo.utils gets wrong: a boot sector ends in 0x55AA like an MBR, so oslo says 'gpt' and fails it.

    (oslo.utils excludes a FAT boot sector only with two FATs and media byte 0xF8:
    ``mkfs.vfat -f 1`` is enough to fall through.) importhooks accepts a raw disk.
    """
    from oslo_utils.imageutils import format_inspector as fi

    path = b.filesystem(tmp_path / f"{kind}.raw", kind)
    assert path.read_bytes()[510:512] == b"\x55\xaa"
    inspector = fi.detect_file_format(str(path))
    assert inspector is not None and str(inspector) == "gpt"
    with pytest.raises(fi.SafetyCheckFailed):
        inspector.safety_check()
    result = audit(settings, path, "raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["disk_format"] == "raw" and result.detected["partition_table"] == "none"


def test_plain_iso_has_no_partition_table(settings: Settings, tmp_path: Path) -> None:
    result = audit(settings, b.iso_image(tmp_path / "plain.iso"), "iso")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["partition_table"] == "none"  # the os_type plugin's reading: an ISO 9660 volume
    assert result.detected["filesystems"] == ["iso9660"]


def test_benign_qed_is_accepted_when_allowed(settings: Settings, tmp_path: Path) -> None:
    """Was format.unsafe: oslo.utils bans QED outright; the qed plugin checks it instead (fixed in 88d6ff6)."""
    path = b.qemu_image(tmp_path / "disk.qed", "qed")
    result = audit(with_formats(settings, "qed"), path, "qed")
    assert result.detected.get("disk_format") == "qed"
    assert result.verdict is Verdict.ACCEPT, result.findings


def test_qed_is_detected_as_qed(settings: Settings, tmp_path: Path) -> None:
    """Detection itself is right: the format is named qed and, allowed, not refused as not_allowed."""
    path = b.qemu_image(tmp_path / "disk.qed", "qed")
    result = audit(with_formats(settings, "qed"), path, "qed")
    assert result.detected.get("disk_format") == "qed"
    assert "format.not_allowed" not in codes(result) and "format.claim_mismatch" not in codes(result)


# --- the detected format must be allowed ------------------------------------------------------------


@pytest.mark.parametrize("kind, detected", [("qed", "qed"), ("luks", "luks")])
def test_formats_outside_the_defaults_are_not_allowed(settings: Settings, tmp_path: Path, kind: str,
                                                      detected: str) -> None:
    path = b.luks_image(tmp_path / "x") if kind == "luks" else b.qemu_image(tmp_path / "x", kind)
    result = audit(settings, path)
    assert result.verdict is Verdict.REJECT
    assert "format.not_allowed" in codes(result)
    assert result.detected.get("disk_format") == detected


@pytest.mark.parametrize("name", ["qcow2 v3", "vmdk streamOptimized", "vhd fixed", "iso (xorriso -as mkisofs)",
                                  "hybrid iso, isohdpfx MBR"])
def test_detected_format_outside_disk_formats_is_not_allowed(settings: Settings, tmp_path: Path, name: str) -> None:
    builder, _extra, facts = BENIGN[name]
    path = builder(image_path(tmp_path, facts))
    only_raw = settings.replace(disk_formats=("raw",))
    result = audit(only_raw, path)  # no claim: the data alone decides
    assert result.verdict is Verdict.REJECT
    assert "format.not_allowed" in codes(result)
    assert result.detected["disk_format"] == facts["disk_format"]
    lying = audit(only_raw, path, "raw")  # an allowed claim does not help
    assert {"format.not_allowed", "format.claim_mismatch"} <= set(codes(lying))


# --- claims that do not match the data --------------------------------------------------------------

MISMATCHES = [
    ("qcow2 v3", "raw"),
    ("qcow2 v2", "vmdk"),
    ("raw zeros", "qcow2"),
    ("raw with MBR (sfdisk)", "iso"),
    ("raw with GPT (sgdisk)", "vhd"),
    ("vmdk monolithicSparse", "raw"),
    ("vmdk streamOptimized", "qcow2"),
    ("iso (xorriso -as mkisofs)", "raw"),
    ("hybrid iso, isohdpfx MBR", "raw"),
    ("vhd dynamic", "vhdx"),
    ("vhd fixed", "raw"),
    ("vhdx", "vhd"),
    ("vdi", "qcow2"),
    ("ntfs at sector 0", "vhd"),
]


@pytest.mark.parametrize("name, claim", MISMATCHES)
def test_claim_that_does_not_match_the_data(settings: Settings, tmp_path: Path, name: str, claim: str) -> None:
    builder, extra, facts = BENIGN[name]
    result = audit(with_formats(settings, *extra), builder(image_path(tmp_path, facts)), claim)
    assert result.verdict is Verdict.REJECT
    mismatch = [f for f in result.findings if f.code == "format.claim_mismatch"]
    assert len(mismatch) == 1, result.findings
    assert facts["disk_format"] in mismatch[0].message and claim in mismatch[0].message
    assert result.detected["disk_format"] == facts["disk_format"]


# --- polyglots ----------------------------------------------------------------------------------------


def _iso_with_qcow2_backing_header(tmp_path: Path) -> Path:
    iso = b.iso_image(tmp_path / "evil.iso")
    header = b.qcow2_header_with_backing(tmp_path)
    assert iso.read_bytes()[: len(header)] == bytes(len(header))  # the plain ISO's system area is free
    return b.overwrite(iso, 0, header)


def _qcow2_with_vhd_footer(tmp_path: Path) -> Path:
    return b.append(b.qemu_image(tmp_path / "evil.qcow2", "qcow2_v3"), b.vhd_footer(tmp_path))


def _qcow2_with_vdi_signature(tmp_path: Path) -> Path:
    qcow2 = b.qemu_image(tmp_path / "evil.qcow2", "qcow2_v3")
    assert qcow2.read_bytes()[0x40:0x48] == bytes(8)  # snapshots_offset: 0 without snapshots
    return b.overwrite(qcow2, 0x40, struct.pack("<I", 0xBEDA107F))


def _qcow2_with_mbr(tmp_path: Path) -> Path:
    qcow2 = b.qemu_image(tmp_path / "evil.qcow2", "qcow2_v3")
    mbr = b.mbr_disk(tmp_path / "mbr.raw").read_bytes()[446:512]
    assert qcow2.read_bytes()[446:512] == bytes(66)
    return b.overwrite(qcow2, 446, mbr)


def _iso_pvd(tmp_path: Path) -> bytes:
    iso = b.iso_image(tmp_path / "source.iso").read_bytes()
    return iso[32768 : 32768 + 2048]


def _vmdk_with_iso_descriptor(tmp_path: Path) -> Path:
    vmdk = b.qemu_image(tmp_path / "evil.vmdk", "vmdk_sparse")
    return b.overwrite(vmdk, 32768, _iso_pvd(tmp_path))


def _vhdx_with_iso_descriptor(tmp_path: Path) -> Path:
    vhdx = b.qemu_image(tmp_path / "evil.vhdx", "vhdx")
    assert vhdx.read_bytes()[32768 : 32768 + 2048] == bytes(2048)  # inside the VHDX file-type identifier area
    return b.overwrite(vhdx, 32768, _iso_pvd(tmp_path))


def _iso_with_vhd_footer(tmp_path: Path) -> Path:
    return b.append(b.iso_image(tmp_path / "evil.iso"), b.vhd_footer(tmp_path))


def _vdi_with_qcow2_magic(tmp_path: Path) -> Path:
    vdi = b.qemu_image(tmp_path / "evil.vdi", "vdi")
    header = bytearray(b.qcow2_header_with_backing(tmp_path)[:0x40])
    return b.overwrite(vdi, 0, bytes(header))


#: name -> (builder, the formats oslo.utils must see at once)
POLYGLOTS: dict[str, tuple[Callable[[Path], Path], set[str]]] = {
    "iso whose system area holds a qcow2 header with a backing file": (_iso_with_qcow2_backing_header,
                                                                         {"iso", "qcow2"}),
    "qcow2 with a valid VHD footer in its last sector": (_qcow2_with_vhd_footer, {"qcow2", "vhd"}),
    "qcow2 with the VDI signature at 0x40": (_qcow2_with_vdi_signature, {"qcow2", "vdi"}),
    "qcow2 with an MBR partition table in its first sector": (_qcow2_with_mbr, {"qcow2", "gpt"}),
    "vmdk with an ISO primary volume descriptor at 32 KiB": (_vmdk_with_iso_descriptor, {"vmdk", "iso"}),
    "vhdx with an ISO primary volume descriptor at 32 KiB": (_vhdx_with_iso_descriptor, {"vhdx", "iso"}),
    "iso with a VHD footer in its last sector": (_iso_with_vhd_footer, {"iso", "vhd"}),
    "vdi whose first 64 bytes are a qcow2 header with a backing file": (_vdi_with_qcow2_magic, {"vdi", "qcow2"}),
}


@pytest.mark.parametrize("name", list(POLYGLOTS))
def test_polyglot_is_rejected(settings: Settings, tmp_path: Path, name: str) -> None:
    builder, formats = POLYGLOTS[name]
    path = builder(tmp_path)
    for claim in (None, *sorted(formats - {"gpt"})):
        result = audit(settings, path, claim)
        assert result.verdict is Verdict.REJECT
        polyglot = [f for f in result.findings if f.code == "format.polyglot"]
        assert len(polyglot) == 1, (claim, result.findings)
        said = f"{polyglot[0].message} {polyglot[0].detail}"
        assert all(fmt in said for fmt in formats), said
        assert result.detected.get("disk_format") is None  # no format was decided


def test_oslo_sees_both_formats_of_the_iso_qcow2_polyglot(tmp_path: Path) -> None:
    """The ISO+qcow2 polyglot is one to oslo.utils' own detector too (its ``formats`` lists both)."""
    from oslo_utils.imageutils import format_inspector as fi

    path = _iso_with_qcow2_backing_header(tmp_path)
    with open(path, "rb") as handle:
        wrapper = fi.InspectWrapper(handle)
        while wrapper.read(65536):
            pass
        wrapper.close()
    assert sorted(str(i) for i in wrapper.formats or []) == ["iso", "qcow2"]
    with pytest.raises(fi.ImageFormatError):
        _ = wrapper.format


def test_hybrid_iso_with_a_vhd_footer_is_a_polyglot(settings: Settings, tmp_path: Path) -> None:
    """Was accepted as iso: the footer was only looked for when oslo matched one format (fixed in 88d6ff6)."""
    path = b.append(b.hybrid_iso_mbr(tmp_path / "evil.iso"), b.vhd_footer(tmp_path))
    result = audit(settings, path, "iso")
    assert "format.polyglot" in codes(result), result.findings


@pytest.mark.parametrize("source", ["mbr", "gpt", "ntfs"])
def test_fixed_vhd_of_a_partitioned_disk_is_vhd(settings: Settings, tmp_path: Path, source: str) -> None:
    """Was raw (claim vhd: mismatch): sector 0's 0x55AA made oslo say 'gpt' and the footer was not looked for.

    Every real Windows or Linux disk has an MBR, a GPT or an NTFS boot sector there (fixed in 88d6ff6).
    """
    disk = {"mbr": b.mbr_disk, "gpt": b.gpt_disk, "ntfs": _fs("ntfs")}[source](tmp_path / "disk.raw")
    vhd = b.convert(disk, tmp_path / "disk.vhd", "vpc", "subformat=fixed,force_size=on")
    result = audit(settings, vhd, "vhd")
    assert result.detected.get("disk_format") == "vhd" and result.detected.get("subformat") == "fixed"
    assert result.verdict is Verdict.ACCEPT, result.findings


def test_fixed_vhd_of_a_blank_disk_is_vhd_and_its_footer_gives_the_size(settings: Settings, tmp_path: Path) -> None:
    """The working case next to the bug above: no 0x55AA at sector 0."""
    disk = b.raw_random(tmp_path / "disk.raw", 1 << 20)
    vhd = b.convert(disk, tmp_path / "disk.vhd", "vpc", "subformat=fixed,force_size=on")
    result = audit(settings, vhd, "vhd")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["subformat"] == "fixed" and result.detected["virtual_size"] == 1 << 20


# --- damaged magic: neither the format nor raw ------------------------------------------------------

#: name -> (builder of a real image, how many leading bytes to keep: too few for its header)
TRUNCATED: dict[str, tuple[Builder, int]] = {
    "qcow2 (QFI\\xfb), first 100 bytes": (_qemu("qcow2_v3"), 100),
    "qcow2 (QFI\\xfb), first 511 bytes": (_qemu("qcow2_v2"), 511),
    "vmdk (KDMV), first 48 bytes": (_qemu("vmdk_sparse"), 48),
    "vmdk (KDMV), first 2 KiB (descriptor cut)": (_qemu("vmdk_sparse"), 2048),
    "vhd (conectix), first 300 bytes": (_qemu("vhd_dynamic"), 300),
    "vhdx (vhdxfile), first 64 KiB": (_qemu("vhdx"), 64 << 10),
    "vhdx (vhdxfile), first 200 KiB (region table cut)": (_qemu("vhdx"), 200 << 10),
    "vdi, first 256 bytes": (_qemu("vdi"), 256),
    "qed, first 100 bytes": (_qemu("qed"), 100),
    "luks, first 300 bytes": (b.luks_image, 300),
}


@pytest.mark.parametrize("name", list(TRUNCATED))
def test_truncated_header_is_invalid_not_raw(settings: Settings, tmp_path: Path, name: str) -> None:
    builder, keep = TRUNCATED[name]
    path = builder(tmp_path / "image")
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    for claim in (None, "raw"):
        result = audit(with_formats(settings, "qed", "luks"), path, claim)
        assert result.verdict is Verdict.REJECT
        assert "format.invalid" in codes(result), result.findings
        assert result.detected.get("disk_format") != "raw"


MAGIC_GARBAGE = {
    "QFI\\xfb": b"QFI\xfb",
    "KDMV": b"KDMV",
    "COWD": b"COWD",  # VMware 3 sparse extent: qemu probes and opens it as vmdk (see test_qemu_probe.py)
    "conectix": b"conectix",
    "vhdxfile": b"vhdxfile",
    "QED\\0": b"QED\x00",
    "LUKS\\xba\\xbe": b"LUKS\xba\xbe",
}


GARBAGE_CASES = [(magic, length) for magic in MAGIC_GARBAGE for length in (4096, 400_000)]


@pytest.mark.parametrize("magic, length", GARBAGE_CASES)
def test_magic_followed_by_garbage_is_never_raw(settings: Settings, tmp_path: Path, magic: str, length: int) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(MAGIC_GARBAGE[magic] + random.Random(length).randbytes(length))
    for claim in (None, "raw"):
        result = audit(with_formats(settings, "qed", "luks"), path, claim)
        assert result.verdict is Verdict.REJECT, result.findings
        assert result.detected.get("disk_format") != "raw"
        assert any(f.severity.value == "error" for f in result.findings)


def test_vhdx_magic_with_garbage_is_invalid(settings: Settings, tmp_path: Path) -> None:
    """Was ACCEPTED as vhdx with virtual_size 0 (fixed in 88d6ff6).

    The VHDX inspector raised on the region table at 192 KiB; InspectWrapper dropped
    it, but its format_match stayed true and its null safety check passed.
    """
    path = tmp_path / "garbage.vhdx"
    path.write_bytes(b"vhdxfile" + random.Random(7).randbytes(400_000))
    result = audit(settings, path, "vhdx")
    assert result.verdict is Verdict.REJECT
    assert "format.invalid" in codes(result), result.findings


def test_vmdk_with_a_bad_version_is_invalid(settings: Settings, tmp_path: Path) -> None:
    """Was vmdk.descriptor ('No descriptor found'): the same inspector-that-raised gap (fixed in 88d6ff6)."""
    path = b.qemu_image(tmp_path / "bad.vmdk", "vmdk_sparse")
    b.overwrite(path, 4, struct.pack("<I", 99))  # version 99: the descriptor is intact
    result = audit(settings, path, "vmdk")
    assert result.verdict is Verdict.REJECT
    assert "format.invalid" in codes(result), result.findings


# --- text, empty and random data -----------------------------------------------------------------


def test_text_with_a_non_ascii_character_is_judged(settings: Settings, tmp_path: Path) -> None:
    """Was pipeline.plugin_failed (fixed in 88d6ff6).

    oslo's VMDKInspector.format_match raised AttributeError ('vmdktype') when the first
    512 bytes are printable text and the first chunk does not decode as ASCII.
    """
    path = tmp_path / "notes.txt"
    path.write_bytes(("#cloud-config\n" + "# just text\n" * 60 + "# café\n").encode())
    result = Pipeline.from_settings(settings).run(ImportRequest(path, claims=Claims(disk_format="raw")))
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    assert result.verdict is Verdict.ACCEPT and result.detected["disk_format"] == "raw"


def test_ascii_text_is_raw(settings: Settings, tmp_path: Path) -> None:
    """Plain ASCII text (what the VMDK inspector tries as a descriptor) is a raw disk."""
    path = tmp_path / "notes.txt"
    path.write_bytes(("#cloud-config\n" + "# just text\n" * 60).encode())
    result = audit(settings, path, "raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["disk_format"] == "raw"


def test_zero_length_file_is_empty(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    for claim in (None, "raw", "qcow2"):
        result = audit(settings, path, claim)
        assert codes(result) == ["data.empty"]
        assert result.verdict is Verdict.REJECT


@pytest.mark.parametrize("size", [1, 511, 513, 70_000])
@pytest.mark.parametrize("claim", DISK_FORMATS)
def test_random_bytes_under_every_claim(settings: Settings, tmp_path: Path, claim: str, size: int) -> None:
    path = tmp_path / "random"
    path.write_bytes(random.Random(size).randbytes(size))
    result = audit(settings.replace(disk_formats=DISK_FORMATS), path, claim)
    assert result.detected.get("disk_format") == "raw"
    if claim == "raw":
        assert result.verdict is Verdict.ACCEPT, result.findings
    else:
        assert result.verdict is Verdict.REJECT
        assert "format.claim_mismatch" in codes(result)


def test_truncated_iso_is_invalid(settings: Settings, tmp_path: Path) -> None:
    path = b.iso_image(tmp_path / "cut.iso")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(min(size - 4096, 40 << 10))
    result = audit(settings, path, "iso")
    assert result.verdict is Verdict.REJECT and "format.invalid" in codes(result), result.findings
