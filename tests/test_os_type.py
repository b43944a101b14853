"""The os_type plugin: the claim held against real guest disks, read raw and through every disk format.

Disks are made by ``sfdisk``/``mkfs.*``/``mkntfs`` (:mod:`tests.guest_images`) and converted with the
real ``qemu-img``; the plugin reads them through ``qemu-img convert`` of raw slices.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from importhooks_plugins.guest._guest_blocks import BLOCK, GuestBlocks

from importhooks import Severity, Verdict
from importhooks.settings import PluginSettings

from . import compression_images as ci
from . import disk_builders as db
from . import guest_images as gi
from . import images
from . import ova_images as o
from .helpers import audit, codes, rejected_with

#: qemu-img output format per Glance disk format.
QEMU_FORMATS = {"qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc", "vhdx": "vhdx", "vdi": "vdi"}


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw guest disks: a Windows-like GPT (ESP + NTFS), an MBR Windows disk, Linux GPT and MBR disks,
    a mixed disk, and a FAT-only disk."""
    base = tmp_path_factory.mktemp("guests")
    layouts = {
        "windows_gpt": ("gpt", ["vfat", "ntfs"]),
        "windows_mbr": ("dos", ["ntfs"]),
        "linux_gpt": ("gpt", ["vfat", "ext4", "swap"]),
        "linux_mbr": ("dos", ["ext4", "xfs"]),
        "mixed_mbr": ("dos", ["ext4", "ntfs"]),
        "fat_only": ("dos", ["vfat"]),
    }
    made = {}
    for name, (label, kinds) in layouts.items():
        made[name] = base / f"{name}.raw"
        gi.partitioned_disk(made[name], label, kinds)
    return made


def convert(raw: Path, disk_format: str, target: Path) -> Path:
    images.qemu_img("convert", "-f", "raw", "-O", QEMU_FORMATS[disk_format], str(raw), str(target))
    return target


def as_format(disks: dict[str, Path], name: str, disk_format: str, tmp_path: Path) -> Path:
    return disks[name] if disk_format == "raw" else convert(disks[name], disk_format, tmp_path / f"{name}.img")


FORMATS = ["raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"]


@pytest.mark.parametrize("disk_format", FORMATS)
def test_ntfs_claimed_linux_is_rejected_through_every_format(settings, workdir, disks, tmp_path, disk_format):
    path = as_format(disks, "windows_gpt", disk_format, tmp_path)
    result = rejected_with(settings, path, "os_type.mismatch", os_type="linux")
    finding = next(f for f in result.findings if f.code == "os_type.mismatch")
    assert finding.stage == "set_protected_properties" and finding.plugin == "os_type"
    assert "os_type windows" in finding.message and "partition 2: ntfs" in (finding.detail or "")
    assert result.detected["filesystems"] == ["vfat", "ntfs"] and result.detected["partition_table"] == "gpt"
    assert result.detected["os_type_detected"] == "windows"
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("disk_format", FORMATS)
def test_linux_claimed_linux_is_accepted_with_its_facts(settings, workdir, disks, tmp_path, disk_format):
    path = as_format(disks, "linux_gpt", disk_format, tmp_path)
    result = audit(settings, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert not [f for f in result.findings if f.code.startswith(("os_type.", "partition."))]
    assert result.properties["os_type"] == "linux"
    assert result.properties["importhooks_os_type_detected"] == "linux"
    assert result.properties["importhooks_partition_table"] == "gpt"
    assert result.properties["importhooks_filesystems"] == "vfat,ext4,swap"
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(("name", "table", "found"), [
    ("windows_mbr", "mbr", ["ntfs"]),
    ("mixed_mbr", "mbr", ["ext4", "ntfs"]),  # a Linux root does not excuse an NTFS system partition
])
def test_mbr_windows_claimed_linux_is_rejected(settings, disks, tmp_path, name, table, found):
    path = convert(disks[name], "qcow2", tmp_path / "d.qcow2")
    result = rejected_with(settings, path, "os_type.mismatch", os_type="linux")
    assert result.detected["partition_table"] == table and result.detected["filesystems"] == found


def test_windows_claimed_windows_is_accepted(settings, disks, tmp_path):
    result = audit(settings, convert(disks["windows_gpt"], "vhdx", tmp_path / "w.vhdx"), os_type="windows")
    assert result.verdict is Verdict.ACCEPT and result.findings == ()
    assert result.properties["os_type"] == "windows"


@pytest.mark.parametrize("disk_format", ["raw", "vdi"])
def test_windows_claimed_with_only_linux_filesystems_is_a_warning(settings, disks, tmp_path, disk_format):
    result = audit(settings, as_format(disks, "linux_mbr", disk_format, tmp_path), os_type="windows")
    assert result.verdict is Verdict.ACCEPT
    (finding,) = [f for f in result.findings if f.code == "os_type.not_windows"]
    assert finding.severity is Severity.WARNING and "ext4" in (finding.detail or "")
    assert result.properties["os_type"] == "windows"  # the user pays for a licence; the claim stands


def test_no_claim_gets_the_detected_os_type(settings, disks, tmp_path):
    result = audit(settings, convert(disks["windows_mbr"], "vmdk", tmp_path / "w.vmdk"))
    assert result.verdict is Verdict.ACCEPT and result.findings == ()
    assert result.properties["os_type"] == "windows"


@pytest.mark.parametrize("what", ["empty", "fat_only", "luks"])
def test_nothing_to_tell_by_is_an_info_finding_and_accepted(settings, disks, tmp_path, what):
    if what == "empty":
        path = images.qcow2_image(tmp_path / "e.qcow2", "1G")
    elif what == "luks":
        path = tmp_path / "d.luks"
        settings = settings.replace(disk_formats=(*settings.disk_formats, "luks"))
        images.qemu_img_luks("create", "-f", "luks", "--object", "secret,id=s0,data=pw", "-o", "key-secret=s0",
                             str(path), "16M")
    else:
        path = disks["fat_only"]
    result = audit(settings, path, os_type="linux")
    assert result.verdict is Verdict.ACCEPT
    (finding,) = [f for f in result.findings if f.code.startswith("os_type.")]
    assert finding.code == "os_type.unverified" and finding.severity is Severity.INFO
    assert result.properties["os_type"] == "linux"
    assert result.properties["importhooks_os_type_detected"] == "unknown"


def test_nothing_to_tell_by_can_be_made_to_reject(settings, disks):
    strict = settings.replace(plugin={"os_type": {"unverified": "error"}})
    rejected_with(strict, disks["fat_only"], "os_type.unverified", os_type="linux")
    assert audit(strict, disks["fat_only"]).verdict is Verdict.ACCEPT  # no claim: nothing to verify


def test_ntfs_claimed_linux_inside_gzip_is_rejected(settings, disks, tmp_path):
    qcow2 = convert(disks["windows_gpt"], "qcow2", tmp_path / "w.qcow2")
    path = ci.compress_file("gzip", qcow2, tmp_path / "w.qcow2.gz")
    gz = settings.replace(container_formats=("bare", "compressed"))
    result = rejected_with(gz, path, "os_type.mismatch", os_type="linux", container_format="compressed")
    assert [layer.kind for layer in result.layers] == ["staged", "decompressed"]
    assert result.detected["disk_format"] == "qcow2" and result.detected["filesystems"] == ["vfat", "ntfs"]


def test_ntfs_claimed_linux_inside_an_ova_is_rejected(settings, disks, tmp_path):
    vmdk = tmp_path / "w.vmdk"
    images.qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(disks["windows_mbr"]), str(vmdk))
    path = o.package(vmdk.read_bytes()).write(tmp_path / "w.ova")
    ova = settings.replace(container_formats=("bare", "ova"))
    result = rejected_with(ova, path, "os_type.mismatch", os_type="linux", container_format="ova")
    assert result.detected["filesystems"] == ["ntfs"]


def test_a_read_failure_rejects(settings, disks, tmp_path):
    broken = settings.replace(plugin={"os_type": {"binary": str(tmp_path / "no-such-qemu-img")}})
    result = rejected_with(broken, convert(disks["linux_gpt"], "vdi", tmp_path / "l.vdi"),  # read by qemu-img
                           "os_type.read_failed", os_type="linux")
    assert "qemu-img program not found" in next(f.detail for f in result.findings if f.code == "os_type.read_failed")


def test_a_disabled_format_plugin_means_qemu_never_opens_the_disk(settings, disks, tmp_path):
    no_vdi = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("vdi",)))
    result = audit(no_vdi, convert(disks["windows_gpt"], "vdi", tmp_path / "w.vdi"), os_type="linux")
    (finding,) = [f for f in result.findings if f.code.startswith("os_type.")]
    assert finding.code == "os_type.unverified" and "vdi plugin is disabled" in (finding.detail or "")


def test_layout_problems_are_findings_through_qcow2(settings, tmp_path):
    raw = tmp_path / "o.raw"
    with open(raw, "wb") as handle:
        handle.truncate(16 << 20)
    db.run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw),
           stdin=b"label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=8192, type=7\n")
    db.overwrite(raw, 446 + 16 + 8, (4096).to_bytes(4, "little"))  # entry 2 now starts inside entry 1
    gi.splice(raw, 4096 * 512, gi.filesystem_file(tmp_path / "n.fs", "ntfs"))
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "o.qcow2"), "os_type.mismatch", os_type="linux")
    overlap = next(f for f in result.findings if f.code == "partition.overlap")
    assert overlap.severity is Severity.WARNING and overlap.plugin == "os_type"


def test_too_many_gpt_entries_rejects_even_with_a_good_backup(settings, tmp_path):
    disk = db.gpt_disk(tmp_path / "g.raw")
    db.overwrite(disk, 512 + 80, (100_000).to_bytes(4, "little"))
    gi.fix_gpt_header_crc(disk)
    result = rejected_with(settings, disk, "partition.gpt_entries")
    assert "partition.gpt_backup_used" in codes(result)


def test_facts_appear_in_the_audit_json(disks, tmp_path, workdir):
    config = tmp_path / "importhooks.toml"
    config.write_text(f"work_dir = {str(workdir)!r}\n[plugins]\nentry_points = false\n")
    script = Path(sys.executable).with_name("importhooks")
    proc = subprocess.run([str(script), "audit", "--config", str(config), "--format", "json",
                           str(disks["windows_mbr"])], capture_output=True, text=True, timeout=120)
    record = json.loads(proc.stdout.splitlines()[0])
    assert record["detected"]["partition_table"] == "mbr"
    assert record["detected"]["filesystems"] == ["ntfs"]
    assert record["detected"]["os_type_detected"] == "windows"
    assert record["properties"]["os_type"] == "windows"


# --- the block cache over qemu-img reads ------------------------------------------------------


@hsettings(max_examples=60, deadline=None)
@given(size=st.integers(1, 8 * BLOCK), reads=st.lists(st.tuples(st.integers(0, 9 * BLOCK),
                                                                 st.sampled_from([1, 17, 512, 64 << 10])),
                                                       max_size=12))
def test_blocks_return_the_guest_bytes_and_never_read_past_the_disk(size, reads):
    guest = bytes(i * 7 % 251 for i in range(size))
    asked: list[tuple[int, int]] = []

    def fetch(ranges: list[tuple[int, int]]) -> bytes:
        for offset, length in ranges:
            assert offset % 512 == 0 and length % 512 == 0 and 0 < length and offset + length <= size
            asked.append((offset, length))
        return b"".join(guest[offset : offset + length] for offset, length in ranges)

    blocks = GuestBlocks(fetch, size, 64 * BLOCK)
    sectors = size // 512 * 512
    for offset, length in reads:
        got = blocks.read(offset, length)
        assert got == guest[:sectors][offset : offset + length]
    assert len(asked) == len(set(asked))  # each block fetched once


def test_ntfs_on_a_gpt_of_4096_byte_sectors_through_vhdx(settings, tmp_path):
    raw = tmp_path / "w4k.raw"
    gi.gpt_4k_disk(raw, "ntfs")
    result = rejected_with(settings, convert(raw, "vhdx", tmp_path / "w4k.vhdx"), "os_type.mismatch", os_type="linux")
    assert result.detected["partition_table"] == "gpt" and result.detected["filesystems"] == ["ntfs"]


def test_a_bitlocker_system_partition_claimed_linux_is_rejected_through_qcow2(settings, tmp_path):
    """BitLocker hides NTFS from a signature reader, but only Windows makes a BitLocker volume."""
    raw = tmp_path / "bl.raw"
    gi.partitioned_disk(raw, "gpt", ["vfat", "ntfs"])
    gi.splice(raw, gi.MIB + gi.SIZE["vfat"], gi.bitlocker_volume(tmp_path / "bl.vol"))
    result = rejected_with(settings, convert(raw, "qcow2", tmp_path / "bl.qcow2"), "os_type.mismatch", os_type="linux")
    assert result.detected["filesystems"] == ["vfat", "bitlocker"]
    assert "partition 2: bitlocker" in next(f.detail for f in result.findings if f.code == "os_type.mismatch")


@pytest.mark.parametrize(("guest", "verdict"), [
    ('ovf:id="1" vmw:osType="windows2019srv_64Guest"', Verdict.REJECT),
    ('ovf:id="1" ovf:osType="winNetStandardGuest"', Verdict.REJECT),
    ('ovf:id="94" vmw:osType="ubuntu64Guest"', Verdict.ACCEPT),
])
def test_an_ova_whose_descriptor_names_a_windows_guest(settings, tmp_path, guest, verdict):
    """An empty disk says nothing; the OVF descriptor's guest id can still say Windows (never the reverse)."""
    vmdk = o.stream_vmdk(tmp_path / "e.vmdk")
    path = o.package(vmdk, os_type=guest).write(tmp_path / "g.ova")
    ova = settings.replace(container_formats=("bare", "ova"))
    result = audit(ova, path, os_type="linux", container_format="ova")
    assert result.verdict is verdict, result.findings
    if verdict is Verdict.REJECT:
        detail = next(f.detail for f in result.findings if f.code == "os_type.mismatch")
        assert "OVF descriptor: guest 'win" in (detail or "")

