"""The qemu-img check cross-check: corruptions reject, leaks warn, with the real qemu-img (and scripts
standing in for it where it must misbehave), under the same limits as qemu-img info."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from importhooks import Severity, Verdict

from . import qcow2_images as qi
from .disk_builders import write_clusters
from .helpers import codes
from .images import qemu_img
from .test_qemu_img import KEEP, QEMU_IMG, audit, recording_qemu_img, script

CLUSTER = 65536


def written_qcow2(path: Path) -> Path:
    return qi.written(path, "64M", (0, 128 << 10), (32 << 20, 65536))


def leaked(path: Path) -> Path:
    """A clean image plus one cluster at its end that has a refcount and no user: a leak, not a danger."""
    written_qcow2(path)
    end = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(bytes(CLUSTER))
    return qi.set_refcount(path, end // CLUSTER, 1)


def test_clean_images_of_every_checkable_format_pass(settings, workdir, tmp_path: Path) -> None:
    allowed = settings.replace(disk_formats=("raw", "qcow2", "vmdk", "vhdx", "vdi", "qed"))
    made = []
    for fmt in ("qcow2", "qed", "vdi", "vhdx", "vmdk"):
        path = tmp_path / f"ok.{fmt}"
        qemu_img("create", "-f", fmt, str(path), "4M")
        write_clusters(path, fmt, (0, 1 << 20))
        made.append(path)
    for path in made:
        result = audit(allowed, path, keep=KEEP | {"qed"})  # disk_format bans QED unless its plugin runs
        assert result.verdict is Verdict.ACCEPT and result.findings == (), (path.name, result.findings)
    assert list(workdir.iterdir()) == []


def test_corrupt_qcow2_is_rejected_by_qemu_img_check_alone(settings, tmp_path: Path) -> None:
    # The qcow2 plugin is not in KEEP: what rejects this is qemu-img check, not the inspector.
    path = qi.set_l2_entry(written_qcow2(tmp_path / "far.qcow2"), 0, (1 << 63) | (1 << 50))
    result = audit(settings, path)
    assert codes(result) == ["qemu.check_corrupt"]
    finding = result.findings[0]
    assert "corruptions 2" in (finding.detail or "") and str(tmp_path) not in finding.message
    with_plugin = audit(settings, path, keep=KEEP | {"qcow2"})  # the inspector sees it first
    assert codes(with_plugin) == ["qcow2.l2_table"]


def test_corrupt_vdi_and_qed_are_rejected(settings, tmp_path: Path) -> None:
    allowed = settings.replace(disk_formats=("qcow2", "vdi", "qed"))
    vdi = tmp_path / "bad.vdi"
    qemu_img("create", "-f", "vdi", str(vdi), "4M")
    write_clusters(vdi, "vdi", (0, 1 << 20))
    bmap = struct.unpack("<I", vdi.read_bytes()[0x154:0x158])[0]
    qi.patch_bytes(vdi, bmap, struct.pack("<I", 0x100))  # block 0 -> a block the image does not have
    qed = tmp_path / "bad.qed"
    qemu_img("create", "-f", "qed", str(qed), "4M")
    write_clusters(qed, "qed", (0, CLUSTER))
    l1 = struct.unpack("<Q", qed.read_bytes()[40:48])[0]
    l2 = struct.unpack("<Q", qed.read_bytes()[l1 : l1 + 8])[0]
    qi.patch_bytes(qed, l2, struct.pack("<Q", 1 << 40))  # cluster 0 -> 1 TiB into a 640 KiB file
    for path in (vdi, qed):
        result = audit(allowed, path, keep=KEEP | {"qed"})
        assert result.verdict is Verdict.REJECT
        assert codes(result) == ["qemu.check_corrupt"], (path.name, result.findings)


def test_leaks_alone_are_a_warning(settings, tmp_path: Path) -> None:
    path = leaked(tmp_path / "leaky.qcow2")
    assert qi.check(path)[0] == 3
    for keep in (KEEP, KEEP | {"qcow2"}):
        result = audit(settings, path, keep=keep)
        assert result.verdict is Verdict.ACCEPT
        assert [(f.code, f.severity) for f in result.findings] == [("qemu.check_leaks", Severity.WARNING)]
        assert "leaks 1" in (result.findings[0].detail or "")


def test_dirty_image_with_stale_refcounts_is_rejected(settings, tmp_path: Path) -> None:
    # lazy_refcounts and a crash: qemu repairs the refcounts when it opens the image read-write; a
    # read-only check counts them as corruptions, and the image is rejected until it is repaired.
    path = qi.create(tmp_path / "dirty.qcow2", "64M", "lazy_refcounts=on")
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 1M", "-c", "abort", str(path)],
                          capture_output=True, check=False)
    assert done.returncode != 0 and qi.read_field(path, "incompatible_features") & 1
    result = audit(settings, path, keep=KEEP | {"qcow2"})
    assert set(codes(result)) == {"qcow2.dirty", "qemu.check_corrupt"}
    qemu_img("check", "-r", "all", str(path))
    assert audit(settings, path, keep=KEEP | {"qcow2"}).findings == ()


def test_check_can_be_turned_off(settings, tmp_path: Path) -> None:
    recorder, log = recording_qemu_img(tmp_path)
    path = qi.set_l2_entry(written_qcow2(tmp_path / "far.qcow2"), 0, (1 << 63) | (1 << 50))
    result = audit(settings, path, binary=str(recorder), check=False)
    assert result.verdict is Verdict.ACCEPT  # nothing else in KEEP reads the tables
    assert [line for line in log.read_text().splitlines() if line in ("info", "check")] == ["info"]


def test_check_is_skipped_after_an_info_mismatch(settings, tmp_path: Path) -> None:
    recorder, log = recording_qemu_img(tmp_path)
    path = written_qcow2(tmp_path / "disk.qcow2")
    fake = script(tmp_path / "fake-info", f'[ "$1" = check ] && exec "{recorder}" "$@"\n'
                  'echo \'{"format": "qcow2", "virtual-size": 1}\'')
    result = audit(settings, path, binary=str(fake))
    assert codes(result) == ["qemu.mismatch"]
    assert not log.exists()


@pytest.mark.parametrize(("body", "code", "severity"), [
    ("exit 63", "qemu.skipped", Severity.INFO),
    ("echo 'qemu-img: Check failed: Input/output error' >&2; exit 1", "qemu.failed", Severity.ERROR),
    ("echo '{\"corruptions\": \"many\"}'; exit 2", "qemu.check_corrupt", Severity.ERROR),
    ("echo '{\"check-errors\": 1}'", "qemu.check_corrupt", Severity.ERROR),
    ("echo 'not json'; exit 3", "qemu.failed", Severity.ERROR),
    ("sleep 30", "qemu.timeout", Severity.ERROR),
])
def test_check_exit_statuses_and_failures(settings, tmp_path: Path, body: str, code: str,
                                          severity: Severity) -> None:
    """A script runs the real qemu-img info, and stands in for qemu-img check."""
    fake = script(tmp_path / "fake-check", f'[ "$1" = info ] && exec "{QEMU_IMG}" "$@"\n{body}')
    path = written_qcow2(tmp_path / "disk.qcow2")
    result = audit(settings, path, binary=str(fake), timeout="2s")
    assert [(f.code, f.severity) for f in result.findings] == [(code, severity)]
    assert result.verdict is (Verdict.ACCEPT if severity is Severity.INFO else Verdict.REJECT)
