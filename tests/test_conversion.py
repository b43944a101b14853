"""Conversion with the real qemu-img: qcow2, VMDK and raw in, the stored data checked against qemu-img itself.

Where qemu-img must misbehave (fail, hang, write too much), ``binary`` points at a
small shell script in ``tmp_path``; nothing of the plugin is mocked. Every test runs
the whole built-in pipeline, so the converted data goes through every inspector.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from importhooks_plugins.containers import conversion

from importhooks import Claims, ConfigError, ImportRequest, Pipeline, Verdict
from importhooks.plugins import DEFAULT_PLUGINS
from importhooks.settings import PluginSettings, StageTimeouts

from . import images, vmdk_images
from .helpers import codes

QEMU_IMG = shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed")
ALL_FORMATS = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")


def pipeline(settings, extra=(), **options) -> Pipeline:
    settings = settings.replace(plugins=PluginSettings(entry_points=False),
                                plugin={"conversion": options} if options else {})
    if "importhooks_plugins.containers.conversion" not in DEFAULT_PLUGINS:
        extra = [("conversion", conversion), *extra]
    return Pipeline.from_settings(settings, extra_plugins=extra)


class Stored:
    """A ``store`` callback: keeps a copy of the data that would be stored, and its allocation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.allocated = -1

    def __call__(self, data: Path) -> None:
        self.allocated = os.stat(data).st_blocks * 512
        shutil.copyfile(data, self.path)


def audit(settings, path: Path, *, store: Stored | None = None, claims: Claims | None = None, **options):
    return pipeline(settings, **options).run(ImportRequest(path=path, claims=claims or Claims()), store=store)


def script(path: Path, body: str) -> Path:
    """An executable shell script standing in for qemu-img; ``$out`` is its last argument."""
    path.write_text('#!/bin/sh\nfor out; do :; done\n' + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def recording_qemu_img(tmp_path: Path) -> tuple[Path, Path]:
    """A program that logs its arguments, one a line, then runs the real qemu-img."""
    log = tmp_path / "qemu-img.calls"
    return script(tmp_path / "qemu-img-recorder", f'printf "%s\\n" "$@" >> "{log}"\nexec "{QEMU_IMG}" "$@"'), log


def qemu_convert(source: Path, driver: str, target: Path, fmt: str) -> bytes:
    """What qemu-img itself makes of ``source``, converted independently of the plugin."""
    images.qemu_img("convert", "-f", driver, "-O", fmt, str(source), str(target))
    return target.read_bytes()


def noisy_raw(path: Path, size: int = 8 << 20) -> Path:
    """A raw disk: 1 MiB of noise, a hole, text at the end (so conversion has data, zeros and a tail)."""
    with open(path, "wb") as handle:
        handle.write(os.urandom(1 << 20))
        handle.truncate(size)
        handle.seek(size - (64 << 10))
        handle.write(b"importhooks" * 5000)
    return path


def gone(pid_file: Path, within: float = 5.0) -> bool:
    """Whether the process whose pid the fake qemu-img wrote is gone (or a zombie) within a few seconds."""
    status = Path(f"/proc/{pid_file.read_text().strip()}/status")
    deadline = time.monotonic() + within
    while True:
        if not status.exists() or "State:\tZ" in status.read_text():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# -- off by default --------------------------------------------------------------------


def test_conversion_is_off_by_default(settings, workdir, tmp_path):
    recorder, log = recording_qemu_img(tmp_path)
    qcow2 = images.qcow2_image(tmp_path / "ok.qcow2", "8M")
    built = pipeline(settings, binary=str(recorder))
    assert built.options["conversion"]["convert_to"] == ""
    result = built.run(ImportRequest(path=qcow2, claims=Claims()))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert len(result.layers) == 1 and "converted_to" not in result.layers[0].facts
    assert result.detected["disk_format"] == "qcow2"
    assert not log.exists()
    assert list(workdir.iterdir()) == []


# -- conversions -------------------------------------------------------------------------


def test_qcow2_to_raw_stores_what_qemu_img_makes(settings, workdir, tmp_path):
    qcow2 = tmp_path / "disk.qcow2"
    images.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(noisy_raw(tmp_path / "src.raw", 64 << 20)), str(qcow2))
    stored = Stored(tmp_path / "stored")
    result = audit(settings, qcow2, store=stored, claims=Claims(disk_format="qcow2"), convert_to="raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [layer.kind for layer in result.layers] == ["staged", "converted"]
    source, converted = (layer.facts for layer in result.layers)
    assert source["disk_format"] == "qcow2" and source["converted_to"] == "raw"
    assert converted["disk_format"] == "raw" and converted["virtual_size"] == 64 << 20
    assert "converted_to" not in converted  # the raw layer was not converted again
    expected = qemu_convert(qcow2, "qcow2", tmp_path / "expected.raw", "raw")
    assert stored.path.read_bytes() == expected
    assert stored.allocated < 8 << 20  # written sparse: 64 MiB virtual, about 1 MiB of data
    assert result.checksums is not None and result.checksums.size == len(expected) == 64 << 20
    assert result.checksums.md5 == hashlib.md5(expected).hexdigest()
    assert result.checksums.hash_value == hashlib.sha512(expected).hexdigest()
    assert list(workdir.iterdir()) == []


def test_stream_optimized_vmdk_to_raw(settings, workdir, tmp_path):
    vmdk = vmdk_images.converted(tmp_path / "stream.vmdk", "streamOptimized")
    stored = Stored(tmp_path / "stored")
    result = audit(settings, vmdk, store=stored, claims=Claims(disk_format="vmdk"), convert_to="raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [(layer.kind, layer.facts["disk_format"]) for layer in result.layers] == [
        ("staged", "vmdk"), ("converted", "raw")]
    assert result.layers[0].facts["converted_to"] == "raw"
    assert stored.path.read_bytes() == qemu_convert(vmdk, "vmdk", tmp_path / "expected.raw", "raw")
    assert list(workdir.iterdir()) == []


def test_raw_to_qcow2_is_inspected_as_qcow2_with_the_output_options(settings, workdir, tmp_path):
    raw = noisy_raw(tmp_path / "disk.raw")
    stored = Stored(tmp_path / "stored.qcow2")
    result = audit(settings, raw, store=stored, convert_to="qcow2", output_options=["compat=0.10"])
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert result.layers[0].facts["converted_to"] == "qcow2"
    assert result.detected["disk_format"] == "qcow2" and result.detected["virtual_size"] == 8 << 20
    assert result.detected["format_version"] == 2  # compat=0.10 reached qemu-img
    assert result.checksums is not None and result.checksums.size == stored.path.stat().st_size
    same = subprocess.run([QEMU_IMG, "compare", "-f", "raw", "-F", "qcow2", str(raw), str(stored.path)],
                          capture_output=True)
    assert same.returncode == 0, same.stdout
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("target", ["vmdk", "vhd", "vhdx", "vdi"])
def test_every_target_is_inspected_again_and_accepted(settings, workdir, tmp_path, target):
    raw = noisy_raw(tmp_path / "disk.raw")
    result = audit(settings.replace(disk_formats=ALL_FORMATS), raw, convert_to=target)
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [layer.facts["disk_format"] for layer in result.layers] == ["raw", target]
    assert result.detected["virtual_size"] >= 8 << 20  # a VHD's CHS geometry may round up
    assert list(workdir.iterdir()) == []


def test_iso_is_kept_with_a_note(settings, tmp_path):
    if shutil.which("xorriso") is None:
        pytest.skip("xorriso is not installed")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README").write_text("importhooks\n")
    iso = tmp_path / "disk.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), str(tree)], check=True, capture_output=True)
    result = audit(settings, iso, convert_to="raw")
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert codes(result) == ["conversion.skipped"] and "'iso'" in (result.findings[0].detail or "")
    assert len(result.layers) == 1


def test_unpacked_disk_is_converted_but_never_the_compressed_stream(settings, workdir, tmp_path):
    compression = pytest.importorskip("importhooks_plugins.containers.compression")
    recorder, log = recording_qemu_img(tmp_path)
    qcow2 = images.qcow2_image(tmp_path / "disk.qcow2", "8M")
    packed = tmp_path / "disk.qcow2.gz"
    packed.write_bytes(gzip.compress(qcow2.read_bytes()))
    allowed = settings.replace(container_formats=("bare", "compressed"))
    extra = [] if "importhooks_plugins.containers.compression" in DEFAULT_PLUGINS else [("compression", compression)]
    result = pipeline(allowed, extra, convert_to="raw", binary=str(recorder)).run(
        ImportRequest(path=packed, claims=Claims(container_format="compressed")))
    assert result.verdict is Verdict.ACCEPT, result.findings
    assert [layer.facts["disk_format"] for layer in result.layers[1:]] == ["qcow2", "raw"]
    assert "converted_to" not in result.layers[0].facts and result.layers[1].facts["converted_to"] == "raw"
    calls = log.read_text().split("convert\n")[1:]
    assert len(calls) == 1 and "-f\nqcow2\n-O\nraw\n--\n" in calls[0]  # once, on the unpacked qcow2
    assert list(workdir.iterdir()) == []


# -- what is never converted, or fails -------------------------------------------------


def test_hostile_image_is_rejected_before_qemu_img_convert_runs(settings, workdir, tmp_path, backing_qcow2):
    recorder, log = recording_qemu_img(tmp_path)
    result = audit(settings, backing_qcow2, convert_to="raw", binary=str(recorder))
    assert "qcow2.backing_file" in codes(result)
    assert not any(code.startswith("conversion.") for code in codes(result))
    assert len(result.layers) == 1 and "converted_to" not in result.layers[0].facts
    assert not log.exists()
    assert list(workdir.iterdir()) == []


def test_image_inside_the_image_is_a_mismatch(settings, workdir, tmp_path):
    inner = images.qcow2_image(tmp_path / "inner.qcow2", "1M")
    outer = tmp_path / "outer.qcow2"
    images.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(inner), str(outer))  # a guest disk holding a qcow2
    result = audit(settings, outer, convert_to="raw")
    assert result.verdict is Verdict.REJECT
    assert "conversion.mismatch" in codes(result)
    assert "'raw', inspected as 'qcow2'" in (result.findings[-1].detail or "")
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(("body", "code", "detail"), [
    ("echo \"qemu-img: Could not open '/secret/x': Invalid argument\" >&2; exit 1", "conversion.failed",
     "exited with 1"),
    ("exit 0", "conversion.failed", "made no output file"),
    ("mkdir \"$out\"", "conversion.failed", "other than a regular file"),
    ("printf 'qemu-img: error while writing: File too large\\n' >&2; exit 1", "conversion.resource_limit",
     "File too large"),
    ("dd if=/dev/zero of=\"$out\" bs=1 count=1 seek=400M", "conversion.resource_limit",
     "File too large"),  # a write past RLIMIT_FSIZE (virtual size + 1/16 + 256 MiB) fails with EFBIG
])
def test_failures_reject_with_qemu_img_words_for_operators_only(settings, workdir, raw_file, tmp_path, body, code,
                                                                  detail):
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(script(tmp_path / "fake", body)))
    assert codes(result) == [code]
    assert detail in (result.findings[0].detail or "")
    assert "/secret" not in result.findings[0].message and "qemu-img:" not in result.findings[0].message
    assert len(result.layers) == 1
    assert list(workdir.iterdir()) == []


def test_long_stderr_is_escaped_and_truncated(settings, raw_file, tmp_path):
    noisy = script(tmp_path / "fake", "head -c 3000 /dev/urandom >&2; exit 1")
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(noisy))
    detail = result.findings[0].detail or ""
    assert codes(result) == ["conversion.failed"]
    assert len(detail) < 600 and detail.endswith("...") and "\n" not in detail


def test_output_in_another_format_is_a_mismatch(settings, workdir, raw_file, tmp_path):
    liar = script(tmp_path / "fake", "printf 'not a qcow2' > \"$out\"")
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(liar))
    assert codes(result) == ["conversion.mismatch"]
    assert [layer.kind for layer in result.layers] == ["staged", "converted"]
    assert list(workdir.iterdir()) == []


def test_missing_binary_is_a_failure(settings, raw_file, tmp_path):
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(tmp_path / "no-such-qemu-img"))
    assert codes(result) == ["conversion.failed"] and "not found" in (result.findings[0].detail or "")


def test_target_not_in_disk_formats_is_a_failure_before_qemu_img_runs(settings, raw_file, tmp_path):
    recorder, log = recording_qemu_img(tmp_path)
    result = audit(settings.replace(disk_formats=("raw", "qcow2")), raw_file, convert_to="vmdk", binary=str(recorder))
    assert codes(result) == ["conversion.failed"] and "disk_formats" in (result.findings[0].detail or "")
    assert not log.exists()


# -- limits ------------------------------------------------------------------------------


def test_wall_time_limit_kills_qemu_img_and_what_it_started(settings, workdir, raw_file, tmp_path):
    pid_file = tmp_path / "child.pid"
    sleeper = script(tmp_path / "sleeping", f'sleep 60 &\necho $! > "{pid_file}"\nwait')
    started = time.monotonic()
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(sleeper), timeout="1s")
    assert codes(result) == ["conversion.timeout"]
    assert "killed after 1 s" in (result.findings[0].detail or "")
    assert time.monotonic() - started < 10
    assert gone(pid_file, within=0)
    assert list(workdir.iterdir()) == []


def test_sanitize_budget_caps_the_wall_time(settings, raw_file, tmp_path):
    pid_file = tmp_path / "child.pid"
    sleeper = script(tmp_path / "sleeping", f'sleep 60 &\necho $! > "{pid_file}"\nwait')
    tight = settings.replace(timeouts=StageTimeouts(sanitize=2.0))
    started = time.monotonic()
    result = audit(tight, raw_file, convert_to="qcow2", binary=str(sleeper))  # timeout option: 30 min
    assert result.verdict is Verdict.REJECT
    assert set(codes(result)) & {"conversion.timeout", "pipeline.timeout"}
    assert time.monotonic() - started < 10
    assert gone(pid_file)


def test_halt_stops_qemu_img(settings, workdir, raw_file, tmp_path):
    pid_file = tmp_path / "child.pid"
    sleeper = script(tmp_path / "sleeping", f'sleep 60 &\necho $! > "{pid_file}"\nwait')
    built = pipeline(settings, convert_to="qcow2", binary=str(sleeper))
    timer = threading.Timer(1.0, built.killswitch.halt)
    timer.start()
    try:
        result = built.run(ImportRequest(path=raw_file, claims=Claims()))
    finally:
        timer.cancel()
    assert "pipeline.halted" in codes(result)
    assert gone(pid_file)  # the halt reached the watcher, which killed qemu-img's process group
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("address_space", ["8MiB", "24MiB"])  # the loader, then a thread, cannot map
def test_address_space_limit(settings, workdir, raw_file, address_space):
    result = audit(settings, raw_file, convert_to="qcow2", address_space=address_space)
    assert codes(result) == ["conversion.resource_limit"]
    assert list(workdir.iterdir()) == []


def test_cpu_time_limit(settings, raw_file, tmp_path):
    spin = script(tmp_path / "spinning", "while :; do :; done")
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(spin), cpu_time=1, timeout=120)
    assert codes(result) == ["conversion.resource_limit"]
    assert "exited with -9" in (result.findings[0].detail or "")


def test_free_space_floor_before_qemu_img_runs(settings, raw_file, tmp_path):
    recorder, log = recording_qemu_img(tmp_path)
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(recorder), min_free_space="1EiB")
    assert codes(result) == ["conversion.resource_limit"]
    assert "min_free_space" in (result.findings[0].detail or "")
    assert not log.exists()


def test_free_space_floor_while_qemu_img_writes(settings, workdir, raw_file, tmp_path):
    """The fake writes 256 MiB, then sleeps: the watcher sees the free space fall under the floor."""
    pid_file = tmp_path / "fake.pid"
    writer = script(tmp_path / "writing", f'echo $$ > "{pid_file}"\nhead -c 256M /dev/zero > "$out"\nsleep 60')
    floor = shutil.disk_usage(workdir).free - (128 << 20)
    started = time.monotonic()
    result = audit(settings, raw_file, convert_to="qcow2", binary=str(writer), min_free_space=floor)
    assert codes(result) == ["conversion.resource_limit"]
    assert "free space" in (result.findings[0].detail or "")
    assert pid_file.exists()  # the floor held when qemu-img started: the watcher stopped it
    assert time.monotonic() - started < 30
    assert gone(pid_file)
    assert list(workdir.iterdir()) == []


# -- options -------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("convert_to", "vpc"), ("convert_to", "iso"), ("convert_to", "RAW"), ("convert_to", 1),
    ("output_options", "compat=1.1"), ("output_options", ["compat"]), ("output_options", ["backing_file=/x"]),
    ("output_options", ["compat=1.1,data_file=/x"]), ("output_options", ["encrypt.format=luks"]),
    ("address_space", 0), ("address_space", "lots"), ("cpu_time", "30s"), ("cpu_time", 0), ("timeout", 0),
    ("timeout", True), ("binary", ""), ("binary", "-f"), ("min_free_space", -1), ("nice", 10),
])
def test_bad_option_names_its_key(settings, key, value):
    with pytest.raises(ConfigError) as caught:
        pipeline(settings, **{key: value})
    assert caught.value.key == f"plugin.conversion.{key}"


def test_options_accept_sizes_and_durations(settings):
    built = pipeline(settings, convert_to="vhd", output_options=["subformat=fixed"], address_space="2GiB",
                     cpu_time=600, timeout="10m", min_free_space="10GiB", binary="/usr/bin/qemu-img")
    assert built.options["conversion"] == {
        "convert_to": "vhd", "output_options": ("subformat=fixed",), "address_space": 2 << 30, "cpu_time": 600,
        "timeout": 600.0, "min_free_space": 10 << 30, "binary": "/usr/bin/qemu-img"}
    assert pipeline(settings).options["conversion"] == {
        "convert_to": "", "output_options": (), "address_space": 1 << 30, "cpu_time": 1800, "timeout": 1800.0,
        "min_free_space": 1 << 30, "binary": "qemu-img"}
