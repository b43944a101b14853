"""Detection agrees with qemu's own format probe where oslo.utils' inspectors do not.

qemu-img guesses a format from the first 512 bytes when none is given; oslo.utils
reaches further for VMDK descriptor text (any printable text with createType="
in the first MiB) and does not know some formats qemu probes (COWD, parallels,
bochs, cloop). Each test shows what ``qemu-img info`` makes of the file, then runs
the whole pipeline: text qemu calls raw is raw, and what qemu probes as a format is
never raw (issue 11's "union of what readers see, or reject").
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from importhooks_plugins.formats._detector import qemu_probes_vmdk

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Settings, Verdict

from . import disk_builders as b
from .helpers import codes

Builder = Callable[[Path], Path]


def audit(settings: Settings, path: Path, disk_format: str | None = None) -> ImportResult:
    """Run the whole pipeline over ``path``; the run must leave its work_dir empty and never fail a plugin."""
    result = Pipeline.from_settings(settings).run(ImportRequest(path, claims=Claims(disk_format=disk_format)))
    assert settings.work_dir is not None and list(settings.work_dir.iterdir()) == []
    assert "pipeline.plugin_failed" not in codes(result), result.findings
    return result


# --- VMDK descriptor text: a VMDK exactly where qemu's probe says so -----------------------------

#: The rest of a monolithicFlat descriptor qemu opens: CIDs, createType, one flat extent (a file beside it).
_DESCRIPTOR_REST = b'CID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "extent.bin" 0\n'

#: name -> (text, whether qemu probes it as vmdk). qemu's probe reads the first 512 bytes.
PROBE_SAMPLES: dict[str, tuple[bytes, bool]] = {
    "version first": (b"version=1\n" + _DESCRIPTOR_REST, True),
    "qemu-img's header comment": (b"# Disk DescriptorFile\nversion=1\n" + _DESCRIPTOR_REST, True),
    "comments, lines of spaces, CRLF": (b"# a\r\n   \r\n \n#\nversion=3\r\n" + _DESCRIPTOR_REST, True),
    "version 2": (b"version=2\n" + _DESCRIPTOR_REST, True),
    "an empty line before version": (b"# Disk DescriptorFile\n\nversion=1\n" + _DESCRIPTOR_REST, False),
    "a tab before version": (b"\tversion=1\n" + _DESCRIPTOR_REST, False),
    "spaces before version": (b"  version=1\n" + _DESCRIPTOR_REST, False),
    "version 4": (b"version=4\n" + _DESCRIPTOR_REST, False),
    "createType in prose": (b"Notes on the import.\nversion=1\n" + _DESCRIPTOR_REST, False),
    "a comment longer than the probe": (b"#" + b"-" * 600 + b"\nversion=1\n" + _DESCRIPTOR_REST, False),
    "comments filling the probe": (b"# note\n" * 80 + b"version=1\n" + _DESCRIPTOR_REST, False),
}


def _qemu_format(path: Path) -> str:
    """The format qemu-img's probe gives ``path`` (it opens it too: the samples are openable either way)."""
    run = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return str(json.loads(run.stdout)["format"])


@pytest.mark.parametrize("name", list(PROBE_SAMPLES))
def test_vmdk_text_is_detected_where_qemu_probes_it(settings: Settings, tmp_path: Path, name: str) -> None:
    """Was format.claim_mismatch and vmdk.descriptor for text qemu calls raw: oslo.utils takes any printable
    text containing createType=" for a descriptor. Now qemu's probe decides: raw there is raw here, and
    what qemu probes as a descriptor is a (rejected) VMDK, never raw."""
    text, probed = PROBE_SAMPLES[name]
    (tmp_path / "extent.bin").write_bytes(bytes(4096))
    path = tmp_path / "sample"
    path.write_bytes(text)
    assert _qemu_format(path) == ("vmdk" if probed else "raw")
    assert qemu_probes_vmdk(text) is probed
    result = audit(settings, path, "raw")
    if probed:
        assert result.verdict is Verdict.REJECT
        assert {"format.claim_mismatch", "vmdk.descriptor_only"} <= set(codes(result)), result.findings
        assert result.detected["disk_format"] == "vmdk"
    else:
        assert result.verdict is Verdict.ACCEPT, result.findings
        assert result.detected["disk_format"] == "raw"
        assert codes(audit(settings, path, "vmdk")) == ["format.claim_mismatch"]


@pytest.mark.parametrize("chunk_size", [1, 17, 512, 64 << 10])
def test_vmdk_text_verdict_does_not_depend_on_the_chunk_size(settings: Settings, tmp_path: Path,
                                                             chunk_size: int) -> None:
    """oslo.utils' VMDK inspector parses text as it arrives; the verdict is the same at every chunk size.

    (With chunks shorter than the text, oslo finds no createType in the first one, so
    text qemu probes as a descriptor is format.invalid rather than vmdk.descriptor_only.)
    """
    chunked = settings.replace(plugin={"disk_format": {"chunk_size": chunk_size}})
    (tmp_path / "extent.bin").write_bytes(bytes(4096))
    for name, (text, probed) in PROBE_SAMPLES.items():
        path = tmp_path / "sample"
        path.write_bytes(text)
        result = audit(chunked, path, "raw")
        if probed:
            assert result.verdict is Verdict.REJECT, (name, result.findings)
            assert {"vmdk.descriptor_only", "format.invalid"} & set(codes(result)), (name, result.findings)
        else:
            assert result.verdict is Verdict.ACCEPT, (name, result.findings)
            assert result.detected["disk_format"] == "raw", name


def test_raw_disk_with_descriptor_text_in_its_first_blocks_is_raw(settings: Settings, tmp_path: Path) -> None:
    """The issue's case: a raw disk (text in its first MiB) that merely mentions createType="..."."""
    path = tmp_path / "notes.img"
    page = b"Build notes.\n" + b'The appliance was exported with createType="monolithicFlat" first.\n' * 6
    path.write_bytes(page.ljust(1 << 20, b"."))
    assert _qemu_format(path) == "raw"
    result = audit(settings, path, "raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.detected["disk_format"] == "raw" and result.detected["virtual_size"] == 1 << 20


def test_text_qemu_probes_but_oslo_cannot_read_is_invalid_not_raw(settings: Settings, tmp_path: Path) -> None:
    """No createType: oslo.utils does not call it vmdk, qemu's probe does (and then refuses to open it)."""
    path = tmp_path / "sample"
    path.write_bytes(b"# Disk DescriptorFile\nversion=1\nRW 8 FLAT \"extent.bin\" 0\n")
    run = subprocess.run(["qemu-img", "info", str(path)], capture_output=True, text=True)
    assert run.returncode != 0 and "VMDK" in run.stderr, run.stderr
    for claim in ("raw", "vmdk", None):
        result = audit(settings, path, claim)
        assert result.verdict is Verdict.REJECT and "format.invalid" in codes(result), result.findings


def test_cowd_extent_is_invalid_not_raw(settings: Settings, tmp_path: Path) -> None:
    """Was accepted as raw: oslo.utils does not know a COWD (VMware 3) header, but qemu's probe opens it as
    vmdk and follows the parentFileNameHint it finds at 0x200 to a host file."""
    path = tmp_path / "cowd"
    header = b"COWD" + struct.pack("<IIIIIII", 1, 3, 2048, 16, 4, 1, 8)  # version, flags, sectors, grain, GD
    text = b'CID=12345678\nparentCID=ffffffff\nparentFileNameHint="/etc/hostname"\n'
    path.write_bytes(header.ljust(512, b"\0") + text.ljust(4096 - 512, b"\0"))
    run = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True)
    info = json.loads(run.stdout)
    assert info["format"] == "vmdk" and info["backing-filename"] == "/etc/hostname", info
    result = audit(settings, path, "raw")
    assert result.verdict is Verdict.REJECT and "format.invalid" in codes(result), result.findings


# --- formats qemu probes and oslo.utils does not know: never raw ---------------------------------


def _parallels(path: Path) -> Path:
    b.qemu_img("create", "-q", "-f", "parallels", str(path), "4M")
    return path


def _bochs(path: Path) -> Path:
    """A growing Bochs redolog header (qemu-img cannot create one): magic, type, subtype, version 2."""
    names = b"Bochs Virtual HD Image".ljust(32, b"\0") + b"Redolog".ljust(16, b"\0") + b"Growing".ljust(16, b"\0")
    header = names + struct.pack("<IIIIIIQ", 0x00020000, 512, 8, 1, 1 << 20, 0, 8 << 20)
    path.write_bytes(header.ljust(512, b"\0") + b"\xff" * 32 + bytes(4096 - 544))
    return path


def _cloop(path: Path) -> Path:
    """A cloop 2.0 header (its shell-script preamble), one 64 KiB block, no data."""
    preamble = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    path.write_bytes((preamble.ljust(128, b"\0") + struct.pack(">IIQQ", 65536, 1, 144, 144)).ljust(4096, b"\0"))
    return path


@pytest.mark.parametrize(("name", "builder"), [("parallels", _parallels), ("bochs", _bochs), ("cloop", _cloop)])
def test_format_only_qemu_probes_is_not_raw(settings: Settings, tmp_path: Path, name: str, builder: Builder) -> None:
    """Were accepted as raw: oslo.utils does not know these formats, but qemu's probe opens them as one."""
    path = builder(tmp_path / "disk.img")
    assert _qemu_format(path) == name
    for claim in ("raw", None):
        result = audit(settings, path, claim)
        assert result.verdict is Verdict.REJECT and codes(result) == ["format.not_allowed"], result.findings
        assert f"({name})" in result.findings[0].message
