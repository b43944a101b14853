"""The qemu-img cross-check, with the real qemu-img: agreement, disagreement, failures and limits.

Where a test needs qemu-img to misbehave, ``binary`` points at a small shell script
(a real program) in ``tmp_path``; nothing of the plugin is mocked.
"""

from __future__ import annotations

import gzip
import json
import shutil
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
from importhooks_plugins.formats import qemu_img

from importhooks import Claims, ConfigError, FindingCode, ImportContext, ImportRequest, Pipeline, Verdict, hookimpl
from importhooks.plugins import DEFAULT_PLUGINS
from importhooks.settings import PluginSettings

from . import images
from .helpers import codes

QEMU_IMG = shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")

#: The plugins these tests run with: the foundation and this one. Other format plugins
#: are disabled so that what is tested here is qemu-img's view, not theirs.
KEEP = {"claims", "size_limits", "content_type", "disk_format", "checksums", "notify_log", "qemu_img"}


def pipeline(settings, extra=(), keep=KEEP, **options) -> Pipeline:
    names = [module.rsplit(".", 1)[1] for module in DEFAULT_PLUGINS] + ["qemu_img"]
    disabled = tuple(dict.fromkeys(n for n in names if n not in keep))
    plugins = PluginSettings(entry_points=False, disabled=disabled)
    settings = settings.replace(plugins=plugins, plugin={"qemu_img": options} if options else {})
    if "importhooks_plugins.formats.qemu_img" not in DEFAULT_PLUGINS:
        extra = [("qemu_img", qemu_img), *extra]
    return Pipeline.from_settings(settings, extra_plugins=extra)


def audit(settings, path: Path, extra=(), keep=KEEP, **options):
    return pipeline(settings, extra, keep, **options).run(ImportRequest(path=path, claims=Claims()))


def script(path: Path, body: str) -> Path:
    """An executable shell script standing in for qemu-img."""
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def recording_qemu_img(tmp_path: Path) -> tuple[Path, Path]:
    """A program that logs its arguments, one a line, then runs the real qemu-img."""
    log = tmp_path / "qemu-img.calls"
    return script(tmp_path / "qemu-img-recorder", f'printf "%s\\n" "$@" >> "{log}"\nexec "{QEMU_IMG}" "$@"'), log


def info(path: Path, driver: str) -> dict:
    out = subprocess.run([QEMU_IMG, "info", "--output=json", "-U", "-f", driver, str(path)],
                         check=True, capture_output=True).stdout
    return json.loads(out)


def _footer_checksum(sector: bytearray) -> bytes:
    sector[64:68] = bytes(4)
    return struct.pack(">I", ~sum(sector) & 0xFFFFFFFF)


def vhd_with_chs_geometry(path: Path, subformat: str, size: int = 1 << 20) -> Path:
    """A VHD whose footer says 'Virtual PC made me' and whose CHS geometry is larger than its size.

    The inspector (and Glance) read the footer's current size; qemu's vpc driver
    trusts the CHS geometry of Virtual PC images: 100*16*63 sectors, 51609600 bytes.
    """
    images.qemu_img("create", "-f", "vpc", "-o", f"subformat={subformat},force_size=on", str(path), str(size))
    data = bytearray(path.read_bytes())
    copies = (0, len(data) - 512) if subformat == "dynamic" else (len(data) - 512,)
    for offset in copies:
        footer = bytearray(data[offset : offset + 512])
        footer[28:32] = b"vpc "  # creator application
        footer[56:60] = struct.pack(">HBB", 100, 16, 63)  # cylinders, heads, sectors per track
        footer[64:68] = _footer_checksum(footer)
        data[offset : offset + 512] = footer
    path.write_bytes(bytes(data))
    return path


# -- qemu-img agrees -----------------------------------------------------------------


def test_benign_images_are_accepted_after_qemu_img_ran_on_a_pipeline_chosen_path(settings, workdir, tmp_path):
    recorder, log = recording_qemu_img(tmp_path)
    odd_raw = images.raw_image(tmp_path / "odd.raw", 1_000_001)  # qemu rounds a raw file up to 512 bytes
    qcow2 = images.qcow2_image(tmp_path / "-f raw json:{}", "1G")  # a staged name qemu must never see
    for path, driver in ((odd_raw, "raw"), (qcow2, "qcow2")):
        result = audit(settings, path, binary=str(recorder))
        assert result.verdict is Verdict.ACCEPT, result.findings
        args = log.read_text().splitlines()
        log.unlink()
        commands = ["info", "check"] if driver == "qcow2" else ["info"]  # qemu-img check cannot check raw
        assert len(args) == 7 * len(commands)
        for command, call in zip(commands, (args[i : i + 7] for i in range(0, len(args), 7)), strict=True):
            assert call[:6] == [command, "--output=json", "--force-share", "-f", driver, "--"]
            given = call[6]
            assert Path(given).parent.parent == workdir and Path(given).name.startswith("layer-")
            assert str(path) not in given
    assert list(workdir.iterdir()) == []


def test_default_binary_accepts_every_benign_format_qemu_img_makes(settings, workdir, tmp_path):
    made = {
        "vmdk": ("vmdk", "subformat=streamOptimized"),
        "vhd": ("vpc", "subformat=dynamic"),
        "vhdx": ("vhdx", "subformat=fixed"),
        "vdi": ("vdi", "static=off"),
    }
    allowed = settings.replace(disk_formats=("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi"))
    for disk_format, (driver, opts) in made.items():
        path = tmp_path / f"ok.{disk_format}"
        images.qemu_img("create", "-f", driver, "-o", opts, str(path), "12345679")  # not a round size
        result = audit(allowed, path)
        assert result.verdict is Verdict.ACCEPT, (disk_format, result.findings)
        assert result.detected["virtual_size"] == info(path, driver)["virtual-size"]
    assert list(workdir.iterdir()) == []


# -- qemu-img disagrees or fails -------------------------------------------------------


def test_vhd_whose_geometry_qemu_trusts_is_a_mismatch(settings, tmp_path):
    vhd = vhd_with_chs_geometry(tmp_path / "chs.vhd", "fixed")
    alone = audit(settings, vhd, keep=KEEP - {"qemu_img"})
    assert alone.verdict is Verdict.ACCEPT and alone.detected["virtual_size"] == 1 << 20  # the inspector's view
    result = audit(settings, vhd)
    assert codes(result) == ["qemu.mismatch"]
    assert result.findings[0].detail == "virtual size: qemu 51609600, inspector 1048576"
    assert "virtual disk size" in result.findings[0].message


def test_image_qemu_img_cannot_open_is_rejected_with_its_message_for_operators(settings, tmp_path):
    vhd = vhd_with_chs_geometry(tmp_path / "chs-dynamic.vhd", "dynamic")
    result = audit(settings, vhd)
    assert codes(result) == ["qemu.failed"]
    assert "Page table too small" in (result.findings[0].detail or "")
    assert "Page table" not in result.findings[0].message and "/" not in result.findings[0].message


def test_rejected_image_is_never_handed_to_qemu_img(settings, workdir, tmp_path, backing_qcow2):
    recorder, log = recording_qemu_img(tmp_path)
    flat = tmp_path / "flat.vmdk"
    images.qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(flat), "1M")
    for path, code in ((backing_qcow2, "qcow2.backing_file"), (flat, "vmdk.descriptor")):
        result = audit(settings.replace(disk_formats=("raw", "qcow2", "vmdk")), path, binary=str(recorder))
        assert code in codes(result)
        assert not any(c.startswith("qemu.") for c in codes(result))
    assert not log.exists()
    assert list(workdir.iterdir()) == []


def test_compare_flags_what_the_inspector_would_have_missed(tmp_path, backing_qcow2):
    """Real qemu-img JSON of images the inspector rejects first: the second line of defence."""
    benign = info(images.qcow2_image(tmp_path / "ok.qcow2", "1M"), "qcow2")
    assert qemu_img.compare(benign, driver="qcow2", virtual_size=1 << 20, path="x") == []
    assert [m for m, _ in qemu_img.compare({**benign, "format": "raw"}, driver="qcow2", virtual_size=1 << 20,
                                           path="x")] == ["qemu-img reads the image as a different disk format."]
    found = qemu_img.compare(info(backing_qcow2, "qcow2"), driver="qcow2", virtual_size=64 << 20, path="x")
    assert found == [("qemu-img finds a backing file that the format inspector missed.",
                      "backing-filename: '/etc/passwd'")]
    with_data_file = tmp_path / "df.qcow2"
    images.qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'df.raw'}", str(with_data_file), "1M")
    found = qemu_img.compare(info(with_data_file, "qcow2"), driver="qcow2", virtual_size=1 << 20, path="x")
    assert found == [("qemu-img finds an external data file that the format inspector missed.",
                      f"data-file: {str(tmp_path / 'df.raw')!r}")]
    flat = tmp_path / "flat.vmdk"
    images.qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(flat), "1M")
    found = qemu_img.compare(info(flat, "vmdk"), driver="vmdk", virtual_size=1 << 20, path=str(flat))
    assert [m for m, _ in found] == ["qemu-img finds a VMDK extent outside the image."]
    assert "flat-flat.vmdk" in found[0][1]


def test_missing_binary_is_a_failure(settings, workdir, raw_file, tmp_path):
    result = audit(settings, raw_file, binary=str(tmp_path / "no-such-qemu-img"))
    assert codes(result) == ["qemu.failed"]
    assert "not found" in (result.findings[0].detail or "")
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(("body", "expected"), [
    ("echo 'qemu-img: this is not JSON'", "not JSON"),
    ("echo '[1, 2]'", "not a JSON object"),
    ("printf '%s' \"$(printf '[%.0s' $(seq 100000))\"", "not JSON"),
    ("head -c 5000000 /dev/zero | tr '\\0' ' '", "more than"),
    ("echo 'qemu-img: Could not open: Invalid argument' >&2; exit 1", "exited with 1"),
])
def test_output_that_is_not_a_report_is_a_failure(settings, raw_file, tmp_path, body, expected):
    result = audit(settings, raw_file, binary=str(script(tmp_path / "fake-qemu-img", body)))
    assert codes(result) == ["qemu.failed"]
    assert expected in (result.findings[0].detail or "")


@pytest.mark.parametrize("address_space", ["8MiB", "24MiB"])  # the loader, then a thread stack, fail
def test_address_space_limit(settings, raw_file, address_space):
    result = audit(settings, raw_file, address_space=address_space)
    assert codes(result) == ["qemu.resource_limit"]


def test_cpu_time_limit(settings, raw_file, tmp_path):
    spin = script(tmp_path / "spinning-qemu-img", "while :; do :; done")
    result = audit(settings, raw_file, binary=str(spin), cpu_time=1, timeout=120)
    assert codes(result) == ["qemu.resource_limit"]  # not qemu.timeout: the CPU limit killed it
    assert "exited with -9" in (result.findings[0].detail or "")


def test_wall_time_limit_kills_qemu_img_and_what_it_started(settings, workdir, raw_file, tmp_path):
    pid_file = tmp_path / "child.pid"
    sleeper = script(tmp_path / "sleeping-qemu-img", f'sleep 60 &\necho $! > "{pid_file}"\nwait')
    started = time.monotonic()
    result = audit(settings, raw_file, binary=str(sleeper), timeout="1s")
    assert codes(result) == ["qemu.timeout"]
    assert time.monotonic() - started < 10
    status = Path(f"/proc/{pid_file.read_text().strip()}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # killed (a zombie awaits init)
    assert list(workdir.iterdir()) == []


# -- when qemu-img is not asked --------------------------------------------------------


class _Ploop:
    """Claims every layer is a format qemu_img has no driver for."""

    @hookimpl
    def importhooks_inspect(self, context: ImportContext) -> None:
        context.facts["disk_format"] = "ploop"


def test_format_without_a_qemu_driver_is_skipped_with_a_note(settings, raw_file, tmp_path):
    recorder, log = recording_qemu_img(tmp_path)
    result = audit(settings, raw_file, extra=[("ploop", _Ploop())], binary=str(recorder))
    assert result.verdict is Verdict.ACCEPT
    assert codes(result) == ["qemu.skipped"] and "ploop" in (result.findings[0].detail or "")
    assert not log.exists()


def test_compressed_layer_is_not_handed_to_qemu_img(settings, tmp_path):
    recorder, log = recording_qemu_img(tmp_path)
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(bytes(4096)))
    result = audit(settings, packed, binary=str(recorder))
    assert result.verdict is Verdict.REJECT  # nothing unpacks it here
    assert not log.exists()


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("cpu_time", "30s"), ("cpu_time", 0), ("address_space", "lots"), ("address_space", 0),
    ("timeout", -1), ("timeout", True), ("binary", 5), ("binary", ""), ("binary", "-f"), ("nice", 10),
])
def test_bad_option_names_its_key(settings, key, value):
    with pytest.raises(ConfigError) as caught:
        pipeline(settings, **{key: value})
    assert caught.value.key == f"plugin.qemu_img.{key}"


def test_options_accept_sizes_and_durations(settings):
    built = pipeline(settings, address_space="512MiB", timeout="2m", cpu_time=10, binary="qemu-img")
    assert built.options["qemu_img"] == {"address_space": 512 << 20, "timeout": 120.0, "cpu_time": 10,
                                         "binary": "qemu-img", "check": True}
    defaults = pipeline(settings).options["qemu_img"]
    assert defaults == {"address_space": 1 << 30, "timeout": 60.0, "cpu_time": 30, "binary": "qemu-img",
                        "check": True}


def test_codes_are_declared(settings):
    declared = {c.code for c in pipeline(settings).catalog.values() if isinstance(c, FindingCode)}
    assert {"qemu.mismatch", "qemu.failed", "qemu.resource_limit", "qemu.timeout", "qemu.skipped",
            "qemu.check_corrupt", "qemu.check_leaks"} <= declared

