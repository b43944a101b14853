"""The vmdk plugin's embedded-descriptor rules on real images (plugins/formats/_vmdk_descriptor.py).

qemu-img makes the images, vmdk_images rewrites their descriptor in place. Every
hostile case asserts its own finding code and a reject; every benign one that
qemu-img opens it and that importhooks accepts it. UTF-8 descriptors: qemu reads
bytes and ignores the embedded extents, VMware decodes the text in its declared
encoding, so what every reader decodes alike is accepted and the rest rejected.
"""
# ruff: noqa: F401, F811 - the fixtures pristine and copy come from tests/vmdk_checks.py

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Callable

import pytest
from importhooks_plugins.formats import _vmdk_descriptor as vd

from importhooks import Verdict

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
    qemu_same_disk(pristine["sparse_data"], path)
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


def _cid(value: str) -> Callable[[str], str]:
    return lambda text: re.sub(r"\nCID=[0-9a-fA-F]+\n", f"\nCID={value}\n", text)


def test_leftover_of_qemus_cid_rewrite_is_accepted(settings, copy):
    """qemu rewrites the CID on its first write; a shorter CID leaves the old text's last bytes after the NUL.

    A 12-digit CID (qemu writes at most 8) makes the leftover certain: 3 to 7 bytes of the last line.
    """
    path = v.rewrite_descriptor(copy("sparse_data"), _cid("ffffffffffff"))
    run = subprocess.run(["qemu-io", "-f", "vmdk", "-c", "write -P 0x5a 0 4k", str(path)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    text = v.descriptor_text(path)
    region = path.read_bytes()[SECTOR : 21 * SECTOR]
    tail = region[len(text) + 1 :].split(b"\0", 1)[0]
    assert tail and text.encode().endswith(tail), region[: len(text) + 16]
    qemu_opens(path)
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, result.findings


@pytest.mark.parametrize("tail", [b'483647"\n', b"47\n\0\0x", b'RW 1 Z\n'])
def test_data_after_the_nul_that_qemu_would_not_leave(settings, copy, tail):
    """Longer than a CID rewrite leaves, followed by more data, or not the text's own end."""
    rejected_with(settings, v.rewrite_descriptor(copy("sparse"), lambda text: text, tail=tail),
                  "vmdk.descriptor_syntax", disk_format="vmdk")


def test_descriptor_without_terminating_nul(settings, copy):
    path = copy("sparse")
    header = v.read_header(path)
    v.patch_bytes(path, SECTOR, b"#" * header["descriptor_size"] * SECTOR)
    rejected_with(settings, path, "vmdk.descriptor_syntax", disk_format="vmdk")


def test_empty_descriptor(settings, copy):
    path = v.rewrite_descriptor(copy("sparse"), lambda text: "")
    rejected_with(settings, path, "vmdk.descriptor_location", disk_format="vmdk")


@pytest.mark.parametrize("change", [v.add_line_after("RW ", 'RW 2048 FLAT "/etc/passwd" 0'),
                                    v.replace_line("createType", 'createType="monolithicFlat"')])
def test_oslo_checks_the_descriptor_when_the_vmdk_plugin_is_disabled(settings, copy, change):
    """disk_format leaves the embedded descriptor to the vmdk plugin only while that plugin runs."""
    path = v.rewrite_descriptor(copy("sparse"), change)
    without = settings.replace(plugins=dataclasses.replace(settings.plugins, disabled=("vmdk",)))
    result = rejected_with(without, path, "vmdk.descriptor", disk_format="vmdk")
    assert not any(f.code.startswith("vmdk.") and f.code != "vmdk.descriptor" for f in result.findings)
