"""The nested_headers plugin: disk images hidden at partition starts, sector 1, LBA 1 and a wrapped guest's offset 0.

Every disk is made by ``sfdisk``/``sgdisk``, the inner images by ``qemu-img create`` (``-b``/``-u``
for backing files) and copied in with ``dd`` (:mod:`tests.nested_images`); wrapped disks are
``qemu-img convert``-ed, and read back by the plugin through ``qemu-img convert`` of raw slices.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from importhooks_plugins.formats import nested_headers as plugin
from importhooks_plugins.formats._nested_formats import examine, sniff

from importhooks import Verdict
from importhooks.settings import PluginSettings

from . import disk_builders as db
from . import guest_images as gi
from . import nested_images as ni
from .helpers import assert_messages_omit, audit, codes, rejected_with

NESTED = ("nested.header", "nested.unsafe", "nested.incomplete", "nested.read_failed")
#: Wrapping formats and their qemu-img names.
WRAPPERS = {"qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vdi": "vdi", "vhd": "vpc"}


def nested_codes(result) -> list[str]:
    return [code for code in codes(result) if code.startswith("nested.")]


def detail(result, code: str) -> str:
    return next(f.detail or "" for f in result.findings if f.code == code)


def disk_with(tmp_path: Path, kind: str, *, table: str = "dos", sector: int = ni.PART1) -> Path:
    """A raw disk with the inner image ``kind`` at ``sector``."""
    disk = tmp_path / f"{kind}-{table}.raw"
    {"dos": ni.mbr_disk, "gpt": ni.gpt_disk, "none": ni.blank}[table](disk)
    return ni.dd(ni.inner(kind, tmp_path / f"{kind}.inner"), disk, sector)


def wrap(raw: Path, fmt: str) -> Path:
    target = raw.with_suffix(f".{fmt}")
    db.convert(raw, target, WRAPPERS[fmt])
    return target


# --- controls ------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["dos", "gpt"])
@pytest.mark.parametrize("wrapper", ["raw", "qcow2"])
def test_plain_partitioned_disk_gets_no_finding(settings, workdir, tmp_path, label, wrapper):
    disk = tmp_path / "plain.raw"
    gi.partitioned_disk(disk, label, ["ext4", "vfat"])
    path = disk if wrapper == "raw" else wrap(disk, wrapper)
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert nested_codes(result) == [] and "nested_headers" not in result.detected
    assert list(workdir.iterdir()) == []


def test_hybrid_iso_gets_no_finding(settings, tmp_path):
    result = audit(settings, db.hybrid_iso_gpt(tmp_path / "hybrid.iso"))
    assert result.detected["disk_format"] == "iso"
    assert result.verdict is Verdict.ACCEPT and nested_codes(result) == [], result.findings


def test_luks_partition_is_ordinary(settings, tmp_path):
    result = audit(settings, disk_with(tmp_path, "luks"))
    assert result.verdict is Verdict.ACCEPT and nested_codes(result) == [], result.findings


# --- what is found inside a partition --------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ni.SAFE))
def test_self_contained_nested_image_is_only_a_warning(settings, tmp_path, kind):
    result = audit(settings, disk_with(tmp_path, kind))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert nested_codes(result) == ["nested.header"]
    assert result.detected["nested_headers"] == [f"partition 1 (byte {ni.PART1 * 512}): {ni.SAFE[kind]}"]
    assert next(f for f in result.findings if f.code == "nested.header").severity.value == "warning"


@pytest.mark.parametrize("kind", sorted(ni.UNSAFE))
def test_nested_image_naming_another_file_is_rejected(settings, tmp_path, kind):
    result = rejected_with(settings, disk_with(tmp_path, kind), "nested.unsafe")
    text = detail(result, "nested.unsafe")
    assert text.startswith(f"partition 1 (byte {ni.PART1 * 512}): ") and ni.UNSAFE[kind] in text
    assert_messages_omit(result, "/etc/passwd", str(tmp_path), "base.vmdk")


def test_the_backing_file_is_what_qemu_sees_in_the_partition(settings, tmp_path):
    """The threat is real: qemu-img opening partition 1 alone follows the backing file."""
    disk = disk_with(tmp_path, "qcow2_backing")
    part = tmp_path / "part1.img"
    db.run("dd", f"if={disk}", f"of={part}", "bs=512", f"skip={ni.PART1}", f"count={ni.PART1_SECTORS}", "status=none")
    info = json.loads(db.run("qemu-img", "info", "--output=json", str(part)).stdout)
    assert info["format"] == "qcow2" and info["backing-filename"] == "/etc/passwd"
    assert "b'/etc/passwd'" in detail(rejected_with(settings, disk, "nested.unsafe"), "nested.unsafe")


def test_gpt_partition_and_logical_partition_are_probed(settings, tmp_path):
    gpt = disk_with(tmp_path, "qcow2_backing", table="gpt", sector=ni.PART2)
    assert detail(rejected_with(settings, gpt, "nested.unsafe"), "nested.unsafe").startswith("partition 2 ")
    logical = ni.dd(ni.inner("qcow2_backing", tmp_path / "l.qcow2"), ni.logical_disk(tmp_path / "l.raw"), ni.PART2)
    assert detail(rejected_with(settings, logical, "nested.unsafe"), "nested.unsafe").startswith("partition 5 ")


def test_hybrid_mbr_entry_beside_the_gpt_is_probed_too(settings, tmp_path):
    """Firmware may follow the MBR of a hybrid disk, the kernel the GPT: both tables' partitions are probed.

    On a raw disk oslo.utils' MBR check rejects the extra entry already; inside a qcow2 only this plugin sees it.
    """
    hidden = 40960  # after both GPT partitions: no GPT entry covers it
    disk = disk_with(tmp_path, "qcow2_backing", table="gpt", sector=hidden)
    assert nested_codes(audit(settings, wrap(disk, "qcow2"))) == []  # nothing points there yet
    ni.set_mbr_entry(disk, 2, 0x83, hidden, 2048)
    assert "partition.mbr_invalid" in codes(rejected_with(settings, disk, "partition.mbr_invalid"))
    result = rejected_with(settings, wrap(disk, "qcow2"), "nested.unsafe")
    assert detail(result, "nested.unsafe").split(": ")[0].endswith(f"(byte {hidden * 512})")


def test_gpt_of_4096_byte_sectors_beside_one_of_512_is_probed_too(settings, tmp_path):
    """A 4Kn device reads the GPT at byte 4096, a 512-byte one the GPT at byte 512: both tables' partitions count."""
    disk = ni.dual_gpt_disk(tmp_path / "dual.raw")
    assert nested_codes(audit(settings, disk)) == []
    ni.dd(ni.inner("qcow2_backing", tmp_path / "i.qcow2"), disk, ni.GPT_4K_PART1)
    for path in (disk, wrap(disk, "qcow2")):
        result = rejected_with(settings, path, "nested.unsafe")
        assert detail(result, "nested.unsafe").split(": ")[0].endswith(f"(byte {ni.GPT_4K_PART1 * 512})")


def test_bsd_disklabel_slices_are_probed(settings, tmp_path):
    """Linux and the BSDs expose the slices of a disklabel in a FreeBSD partition as partitions of their own."""
    disk = ni.bsd_disk(tmp_path / "bsd.raw")
    assert nested_codes(audit(settings, disk)) == []
    ni.dd(ni.inner("qcow2_backing", tmp_path / "i.qcow2"), disk, ni.BSD_SLICE_A)
    assert detail(rejected_with(settings, disk, "nested.unsafe"), "nested.unsafe").startswith(
        f"partition 1 BSD slice a (byte {ni.BSD_SLICE_A * 512}): ")


def test_gpt_entries_the_layout_reader_does_not_read_fail_closed(settings, tmp_path):
    """Linux reads a GPT of 512 entries; the layout reader stops at 256, so a partition could go unprobed.

    os_type rejects such a disk; with os_type disabled, this plugin does.
    """
    disk = ni.many_gpt_entries(tmp_path / "gpt.raw")
    assert nested_codes(rejected_with(settings, disk, "partition.gpt_entries")) == []
    no_os_type = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("os_type",)))
    result = rejected_with(no_os_type, disk, "nested.incomplete")
    assert "512 entries" in detail(result, "nested.incomplete")
    assert nested_codes(audit(no_os_type, ni.many_gpt_entries(tmp_path / "ok.raw", 128))) == []


def test_mbr_entries_of_a_fat_boot_sector_are_probed_as_linux_reads_them(settings, tmp_path):
    """Linux's kernel reads a FAT boot sector's partition entries when their status bytes are 0 or 0x80."""
    disk = db.filesystem(tmp_path / "fat.raw", "vfat")  # mkfs.vfat: zeros where the entries would be
    ni.dd(ni.inner("qcow2_backing", tmp_path / "i.qcow2"), disk, 4096)
    assert nested_codes(audit(settings, disk)) == []  # nothing points there
    ni.set_mbr_entry(disk, 1, 0x83, 4096, 2048)
    result = rejected_with(settings, disk, "nested.unsafe")
    assert result.layers[0].facts["partition_table"] == "none"  # a filesystem to disk_format and os_type
    assert detail(result, "nested.unsafe").split(": ")[0].endswith(f"(byte {4096 * 512})")
    db.overwrite(disk, 446 + 16, b"\x01")  # entry 2's status byte: Linux now takes sector 0 for FAT only
    assert nested_codes(audit(settings, disk)) == []


@pytest.mark.parametrize(("byte", "name"), [(512, "sector 1"), (4096, "4 KiB LBA 1"), (63 * 512, "sector 63"),
                                           (1 << 20, "byte 1048576")])
def test_fixed_places_of_a_disk_without_partitions(settings, tmp_path, byte, name):
    disk = disk_with(tmp_path, "qcow2_backing", table="none", sector=byte // 512)
    result = rejected_with(settings, disk, "nested.unsafe")
    assert result.layers[0].facts["disk_format"] == "raw"
    assert detail(result, "nested.unsafe").startswith(f"{name} (byte {byte}): ")


def test_sector_1_is_probed_beside_an_mbr(settings, tmp_path):
    disk = ni.mbr_disk(tmp_path / "d.raw")
    header = ni.inner("qcow2_v3", tmp_path / "i.qcow2").read_bytes()[:512]
    db.overwrite(disk, 512, header)
    result = audit(settings, disk)
    assert result.verdict is Verdict.ACCEPT and nested_codes(result) == ["nested.header"]
    assert result.detected["nested_headers"] == ["sector 1 (byte 512): qcow2"]


def test_descriptor_text_is_found_as_qemu_probes_it(settings, tmp_path):
    """qemu takes comment lines then ``version=1`` for a VMDK descriptor, without the usual first line."""
    text = ni.inner("vmdk_descriptor", tmp_path / "d.vmdk").read_bytes().replace(b"# Disk DescriptorFile\n", b"")
    stripped = tmp_path / "stripped.vmdk"
    stripped.write_bytes(text)
    info = json.loads(db.run("qemu-img", "info", "--output=json", str(stripped)).stdout)
    assert info["format"] == "vmdk" and sniff(text[:512]) == "vmdk"
    disk = ni.dd(stripped, ni.mbr_disk(tmp_path / "d.raw"), ni.PART1)
    assert "descriptor file" in detail(rejected_with(settings, disk, "nested.unsafe"), "nested.unsafe")


@pytest.mark.parametrize("comments", [0, 6, 7, 12])
@pytest.mark.parametrize("marker", [True, False])
def test_descriptor_behind_comment_lines(settings, tmp_path, comments, marker):
    """qemu's probe sees 512 bytes: ``version=1`` pushed past them by comment lines is raw to it. Without the
    ``# Disk DescriptorFile`` line the plugin agrees with qemu; with it, the text is a descriptor whatever its
    length (VMware reads it as one, and so does the VMDK plugin's detection): the union is rejected."""
    first = b"# Disk DescriptorFile\n"
    text = ni.inner("vmdk_descriptor", tmp_path / "d.vmdk").read_bytes().removeprefix(first)
    padded = tmp_path / "padded.vmdk"
    padded.write_bytes(first * marker + (b"#" * 79 + b"\n") * comments + text + bytes(4096))
    qemu = json.loads(db.run("qemu-img", "info", "--output=json", str(padded)).stdout)["format"]
    assert qemu == ("vmdk" if comments < 7 else "raw")
    disk = ni.dd(padded, ni.mbr_disk(tmp_path / "d.raw"), ni.PART1)
    if qemu == "vmdk" or marker:
        assert "descriptor file" in detail(rejected_with(settings, disk, "nested.unsafe"), "nested.unsafe")
    else:
        assert nested_codes(audit(settings, disk)) == []


def test_text_that_qemu_does_not_probe_as_vmdk_is_not_flagged(tmp_path):
    text = b"# notes\nversion = 1\n"
    plain = tmp_path / "notes.txt"
    plain.write_bytes(text + bytes(512))
    info = json.loads(db.run("qemu-img", "info", "--output=json", str(plain)).stdout)
    assert info["format"] == "raw" and sniff(text) is None


# --- wrapped disks -------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_wrapped_raw_disk_with_a_backing_qcow2_in_a_partition(settings, workdir, tmp_path, wrapper):
    path = wrap(disk_with(tmp_path, "qcow2_backing"), wrapper)
    result = rejected_with(settings, path, "nested.unsafe")
    assert result.layers[0].facts["disk_format"] == wrapper
    assert detail(result, "nested.unsafe").startswith(f"partition 1 (byte {ni.PART1 * 512}): qcow2 backing file")
    assert list(workdir.iterdir()) == []


def test_wrapped_clean_nested_qcow2_is_only_a_warning(settings, workdir, tmp_path):
    result = audit(settings, wrap(disk_with(tmp_path, "qcow2_v3"), "qcow2"))
    assert result.verdict is Verdict.ACCEPT and nested_codes(result) == ["nested.header"], result.findings
    assert list(workdir.iterdir()) == []


def test_qcow2_whose_guest_disk_is_a_backing_qcow2(settings, tmp_path):
    inner = ni.inner("qcow2_backing", tmp_path / "inner.qcow2")
    outer = tmp_path / "outer.qcow2"
    db.convert(inner, outer, "qcow2")  # the inner file as the guest's raw bytes
    result = rejected_with(settings, outer, "nested.unsafe")
    assert detail(result, "nested.unsafe").startswith("guest offset 0 (byte 0): qcow2 backing file")


def test_compressed_raw_disk_is_probed_once_unpacked(settings, tmp_path):
    disk = disk_with(tmp_path, "qed_backing")
    packed = tmp_path / "disk.raw.gz"
    with open(packed, "wb") as out:
        subprocess.run(["gzip", "-c", str(disk)], stdout=out, check=True)
    result = rejected_with(settings.replace(container_formats=("bare", "compressed")), packed, "nested.unsafe",
                           container_format="compressed")
    assert result.layers[-1].facts["disk_format"] == "raw"


@pytest.mark.parametrize(("option", "value", "kind"), [
    ("binary", "/nonexistent/qemu-img", "failed: qemu-img program not found"),
    ("address_space", "8MiB", "resource_limit: "),
])
def test_qemu_img_that_cannot_read_fails_closed(settings, workdir, tmp_path, option, value, kind):
    path = wrap(ni.mbr_disk(tmp_path / "d.raw"), "vdi")  # read through qemu-img (a checked qcow2 is not)
    result = rejected_with(nested_options(settings, **{option: value}), path, "nested.read_failed")
    assert detail(result, "nested.read_failed").startswith(kind)
    assert list(workdir.iterdir()) == []


def test_format_plugin_disabled_means_qemu_does_not_read(settings, tmp_path):
    path = wrap(disk_with(tmp_path, "qcow2_backing"), "qcow2")
    off = settings.replace(plugins=PluginSettings(entry_points=False, disabled=("qcow2",)))
    assert nested_codes(audit(off, path)) == []


# --- limits ----------------------------------------------------------------------------------------


def nested_options(settings, **values):
    return settings.replace(plugin={"nested": values})


@pytest.mark.parametrize("wrapper", ["raw", "qcow2"])
def test_more_places_than_max_probes_fails_closed(settings, tmp_path, wrapper):
    disk = ni.logical_disk(tmp_path / "many.raw")  # 3 partitions, sector 1, LBA 1: 5 places (+ guest offset 0)
    path = disk if wrapper == "raw" else wrap(disk, wrapper)
    places = 5 if wrapper == "raw" else 6
    assert nested_codes(audit(nested_options(settings, max_probes=places), path)) == []
    result = rejected_with(nested_options(settings, max_probes=places - 1), path, "nested.incomplete")
    assert f"{places} places to probe, max_probes {places - 1}" == detail(result, "nested.incomplete")


@pytest.mark.parametrize(("wrapper", "budget"), [("raw", 1024), ("raw", 3000), ("qcow2", "256KiB")])
def test_read_budget_fails_closed(settings, tmp_path, wrapper, budget):
    disk = ni.logical_disk(tmp_path / "d.raw")
    path = disk if wrapper == "raw" else wrap(disk, wrapper)
    assert nested_codes(audit(settings, path)) == []
    rejected_with(nested_options(settings, max_read=budget), path, "nested.incomplete")


def test_codes_are_declared_with_their_severities():
    declared = {code.code: code.severity.value for code in plugin.importhooks_finding_codes()}
    assert declared == {"nested.header": "warning", "nested.unsafe": "error", "nested.incomplete": "error",
                        "nested.read_failed": "error"}
    assert set(declared) == set(NESTED)


# --- hostile inner headers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inner_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The first 320 KiB of each inner image (enough for every header and table the plugin reads)."""
    base = tmp_path_factory.mktemp("inner")
    made = {}
    for kind in sorted({**ni.SAFE, **ni.UNSAFE}):
        made[kind] = ni.inner(kind, base / f"{kind}.img").read_bytes()[: 320 << 10].ljust(320 << 10, b"\0")
    return made


@pytest.mark.parametrize("kind", sorted({**ni.SAFE, **ni.UNSAFE}))
def test_cut_and_mutated_inner_headers_never_crash(inner_images, kind):
    """Every span (a partition cut anywhere) and random bytes over the header: a verdict, never an exception."""
    data = inner_images[kind]
    rng = random.Random(kind)
    fmt = sniff(data[:512])
    assert fmt is not None
    for span in (0, 1, 64, 511, 512, 4096, 65536, 196608 + 100, len(data)):
        assert isinstance(examine(fmt, lambda at, size: data[at : at + size], span), tuple)
    for _round in range(200):
        mutant = bytearray(data)
        for _byte in range(rng.randint(1, 16)):
            mutant[rng.randrange(8, 2048)] = rng.randrange(256)
        refs = examine(fmt, lambda at, size, m=bytes(mutant): m[at : at + size], len(mutant))
        assert all(isinstance(ref, str) and ref for ref in refs)


def test_mutated_nested_headers_end_in_findings_through_the_pipeline(settings, workdir, inner_images, tmp_path):
    rng = random.Random(11)
    disk = ni.mbr_disk(tmp_path / "m.raw")
    for kind in sorted(ni.UNSAFE):
        mutant = bytearray(inner_images[kind][: 64 << 10])
        for _byte in range(8):
            mutant[rng.randrange(8, 1024)] = rng.randrange(256)
        db.overwrite(disk, ni.PART2 * 512, bytes(mutant).ljust(64 << 10, b"\0"))
        result = audit(settings, disk)  # asserts no plugin failure and no runaway read
        assert set(nested_codes(result)) <= {"nested.header", "nested.unsafe"}
        assert result.verdict is (Verdict.REJECT if "nested.unsafe" in codes(result) else Verdict.ACCEPT)
    assert list(workdir.iterdir()) == []
