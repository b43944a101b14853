"""Injected faults: each ends in a fail-closed ``reject`` with a specific code, and nothing is left behind.

The faults are real: a misbehaving ``qemu-img`` found first on ``PATH`` (the plugins'
default ``binary`` is the name ``qemu-img``, looked up in ``PATH``), a tmpfs too small
for what a compressed image unpacks to, a staged file changed by another thread while a
plugin holds the run, and ``EIO`` from the kernel for reads of a FUSE file. Runs go
through ``Pipeline.run`` and through the ``importhooks`` command in a subprocess; after
each, the work directory is empty and no process the run started is alive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from importhooks import Claims, ImportContext, ImportRequest, ImportResult, Pipeline, Settings, Verdict, hookimpl
from importhooks.settings import PluginSettings

from . import compression_images, images, zip_images
from .fault_tools import alive, descendants, failing_file, fake_program, open_fds, run_leftovers, small_tmpfs
from .helpers import codes

IMPORTHOOKS = Path(sys.executable).with_name("importhooks")
REAL_QEMU_IMG = shutil.which("qemu-img")


def audit_cli(tmp_path: Path, workdir: Path, image: Path, *, path_first: Path | None = None,
              extra: str = "") -> tuple[int, dict[str, Any], str]:
    """``importhooks audit IMAGE --format json`` in a subprocess; its status, its one record, its stderr."""
    config = tmp_path / "importhooks.toml"
    config.write_text(f"work_dir = '{workdir}'\n[plugins]\nentry_points = false\n{extra}\n")
    env = dict(os.environ)
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([str(IMPORTHOOKS), "audit", str(image), "--format", "json", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, record, done.stderr


def record_codes(record: dict[str, Any]) -> list[str]:
    return [finding["code"] for finding in record["findings"]]


#: Processes below pytest when the current test began: the session's servers, never a run's.
_EXISTING: set[int] = set()


@pytest.fixture(autouse=True)
def _processes_before_the_test() -> None:
    _EXISTING.clear()
    _EXISTING.update(descendants(os.getpid()))


def assert_clean(workdir: Path, fds_before: int | None = None) -> None:
    """Nothing left behind: no temporary file, no child process, no open file (in-process runs)."""
    assert list(workdir.iterdir()) == []
    assert run_leftovers(_EXISTING) == []
    if fds_before is not None:
        assert open_fds() == fds_before


# -- qemu-img that misbehaves ----------------------------------------------------------------

#: Fake qemu-img bodies: each records its pid in $PIDS, then misbehaves; the code and the detail expected.
QEMU_FAULTS = {
    "segfault": ('kill -SEGV $$', "qemu.failed", "exited with -11"),
    "abort": ('kill -ABRT $$', "qemu.failed", "exited with -6"),
    "garbage": ("head -c 3000 /dev/urandom", "qemu.failed", "not JSON"),
    "huge output": ("head -c 24000000 /dev/zero | tr '\\0' '{'", "qemu.failed", "more than"),
    "error exit": ("echo 'qemu-img: Could not open: Input/output error' >&2; exit 1", "qemu.failed",
                   "exited with 1: 'qemu-img: Could not open: Input/output error'"),
    "hang": ('sleep 300 &\necho $! >> "$PIDS"\nwait', "qemu.timeout", "killed after 1 s"),
}


def fake_qemu_img(tmp_path: Path, body: str) -> tuple[Path, Path]:
    """A directory holding a misbehaving ``qemu-img``, and the file its processes' pids go to."""
    pids = tmp_path / "qemu-img.pids"
    pids.touch()
    fake_program(tmp_path / "bin", "qemu-img", f'PIDS="{pids}"\necho $$ >> "$PIDS"\n{body}')
    return tmp_path / "bin", pids


def started(pids: Path) -> list[int]:
    return [int(line) for line in pids.read_text().split()]


@pytest.mark.parametrize("fault", QEMU_FAULTS)
def test_misbehaving_qemu_img_on_path_rejects_through_the_command(tmp_path, workdir, raw_file, fault):
    body, code, detail = QEMU_FAULTS[fault]
    bindir, pids = fake_qemu_img(tmp_path, body)
    status, record, stderr = audit_cli(tmp_path, workdir, raw_file, path_first=bindir,
                                       extra="[plugin.qemu_img]\ntimeout = '1s'")
    assert status == 1, stderr
    assert record["verdict"] == "reject"
    assert record_codes(record) == [code]
    assert detail in record["findings"][0]["detail"]
    assert "Traceback" not in stderr
    assert started(pids), "the fake qemu-img found through PATH ran"
    assert not any(alive(pid) for pid in started(pids))
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("fault", ["segfault", "hang", "huge output"])
def test_misbehaving_qemu_img_on_path_rejects_in_process(monkeypatch, settings, tmp_path, workdir, raw_file, fault):
    body, code, detail = QEMU_FAULTS[fault]
    bindir, pids = fake_qemu_img(tmp_path, body)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    pipeline = Pipeline.from_settings(settings.replace(plugin={"qemu_img": {"timeout": "1s"}}))
    fds = open_fds()
    result = pipeline.run(ImportRequest(path=raw_file, claims=Claims()))
    assert result.verdict is Verdict.REJECT
    assert codes(result) == [code]
    assert detail in (result.findings[0].detail or "")
    assert not any(alive(pid) for pid in started(pids))
    assert_clean(workdir, fds)


def test_process_limits_apply_to_the_qemu_img_found_through_path(monkeypatch, settings, tmp_path, workdir, raw_file):
    limits = tmp_path / "limits"
    assert REAL_QEMU_IMG is not None
    bindir = tmp_path / "bin"
    fake_program(bindir, "qemu-img", f'cat /proc/$$/limits > "{limits}"\nexec "{REAL_QEMU_IMG}" "$@"')
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    pipeline = Pipeline.from_settings(settings.replace(plugin={"qemu_img": {"address_space": "768MiB",
                                                                            "cpu_time": 7}}))
    result = pipeline.run(ImportRequest(path=raw_file, claims=Claims()))
    assert result.verdict is Verdict.ACCEPT, result.findings
    rows = {line[:26].strip(): line[26:].split() for line in limits.read_text().splitlines()[1:]}
    assert rows["Max address space"][:2] == [str(768 << 20)] * 2
    assert rows["Max cpu time"][:2] == ["7", "7"]
    assert_clean(workdir)


# -- a work directory that fills up ----------------------------------------------------------

def test_work_directory_that_fills_up_rejects_with_no_space(tmp_path, raw_file):
    disk = zip_images.disk_bytes(16 << 20)  # a fifth of it random: 3 MiB of data, holes for the rest
    image = compression_images.write(tmp_path / "disk.raw.gz", compression_images.compress("gzip", disk))
    with small_tmpfs(tmp_path / "full", "1M") as workdir:
        pipeline = Pipeline.from_settings(Settings(work_dir=workdir, plugins=PluginSettings(entry_points=False)))
        fds = open_fds()
        result = pipeline.run(ImportRequest(path=image, claims=Claims()))
        assert result.verdict is Verdict.REJECT
        assert codes(result) == ["pipeline.no_space"]
        assert result.findings[0].plugin == "compression"
        assert "ENOSPC" in (result.findings[0].detail or "")
        assert_clean(workdir, fds)
        free = os.statvfs(workdir)
        assert free.f_bfree == free.f_blocks  # every block given back
        # The same pipeline still accepts what fits.
        assert pipeline.run(ImportRequest(path=raw_file, claims=Claims())).verdict is Verdict.ACCEPT


def test_work_directory_that_fills_up_rejects_through_the_command(tmp_path):
    disk = zip_images.disk_bytes(16 << 20)
    image = compression_images.write(tmp_path / "disk.raw.xz", compression_images.compress("xz", disk))
    with small_tmpfs(tmp_path / "full", "1M") as workdir:
        status, record, stderr = audit_cli(tmp_path, workdir, image)
        assert status == 1, stderr
        assert record["verdict"] == "reject"
        assert record_codes(record) == ["pipeline.no_space"]
        assert "Traceback" not in stderr
        assert list(workdir.iterdir()) == []


# -- a staged file that changes during a run ---------------------------------------------------

class Holder:
    """Holds the run at the start of ``stage`` (first layer only) while another thread changes the data."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.reached = threading.Event()
        self.changed = threading.Event()

    def _hold(self, context: ImportContext, stage: str) -> None:
        if stage == self.stage and len(context.layers) == 1:
            self.reached.set()
            assert self.changed.wait(30), "the file was not changed"
            context.check()

    @hookimpl(tryfirst=True)
    def importhooks_inspect(self, context: ImportContext) -> None:
        self._hold(context, "inspect")

    @hookimpl(trylast=True)
    def importhooks_finalize(self, context: ImportContext) -> None:
        self._hold(context, "finalize")


def shrink(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def grow(path: Path) -> None:
    with open(path, "ab") as handle:
        handle.write(b"\1" * 4096)


def rewrite(path: Path) -> None:
    """Same size, other bytes, a later modification time (as any writer's)."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"\xeb\x3c\x90MSWIN4.1")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))


def rename_over(path: Path) -> None:
    other = path.with_name("other")
    shutil.copyfile(path, other)
    os.replace(other, path)


def remove(path: Path) -> None:
    path.unlink()


CHANGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "shrinks": (shrink, "data.changed"),
    "grows": (grow, "data.changed"),
    "is rewritten": (rewrite, "data.changed"),
    "is replaced": (rename_over, "data.replaced"),
    "is removed": (remove, "data.replaced"),
}


def run_while_changing(settings: Settings, image: Path, stage: str, change: Callable[[Path], None]) -> ImportResult:
    holder = Holder(stage)
    pipeline = Pipeline.from_settings(settings, extra_plugins=[("holder", holder)])

    def changer() -> None:
        if holder.reached.wait(30):
            change(image)
            holder.changed.set()

    thread = threading.Thread(target=changer)
    thread.start()
    try:
        return pipeline.run(ImportRequest(path=image, claims=Claims()))
    finally:
        holder.changed.set()
        thread.join()


@pytest.mark.parametrize("stage", ["inspect", "finalize"])
@pytest.mark.parametrize("how", CHANGES)
def test_staged_file_changed_during_the_run_is_rejected(settings, workdir, tmp_path, stage, how):
    change, code = CHANGES[how]
    image = images.qcow2_image(tmp_path / "disk.qcow2", "16M")
    fds = open_fds()
    result = run_while_changing(settings, image, stage, change)
    assert result.verdict is Verdict.REJECT
    assert codes(result) == [code], result.findings
    assert result.findings[0].plugin == "importhooks"
    assert str(tmp_path) not in result.user_message
    assert_clean(workdir, fds)


def test_staged_file_changed_during_a_read_is_rejected(settings, workdir, tmp_path):
    """The file shrinks between two chunks of one sequential pass."""
    image = images.raw_image(tmp_path / "disk.raw", 8 << 20, fill=b"\1")

    class Shrinker:
        @hookimpl(tryfirst=True)
        def importhooks_inspect(self, context: ImportContext) -> None:
            for number, _chunk in enumerate(context.data.stream(1 << 20)):
                if number == 2:
                    os.truncate(image, 3 << 20)

    pipeline = Pipeline.from_settings(settings, extra_plugins=[("shrinker", Shrinker())])
    result = pipeline.run(ImportRequest(path=image, claims=Claims()))
    assert result.verdict is Verdict.REJECT
    assert codes(result) == ["data.changed"]
    assert "shrank to 3145728 of 8388608 bytes" in (result.findings[0].detail or "")
    assert_clean(workdir)


# -- EIO from a read ---------------------------------------------------------------------------

@pytest.mark.parametrize("fail_from", [0, 70_000, (1 << 20) - 1])
def test_read_error_rejects_with_read_error(settings, workdir, tmp_path, fail_from):
    source = images.raw_image(tmp_path / "disk.raw", 1 << 20, fill=b"\7")
    with failing_file(tmp_path / "mnt", source, fail_from) as staged:
        fds = open_fds()
        result = Pipeline.from_settings(settings).run(ImportRequest(path=staged, claims=Claims()))
        assert result.verdict is Verdict.REJECT
        assert codes(result) == ["data.read_error"]
        assert "EIO (Input/output error)" in (result.findings[0].detail or "")
        assert str(tmp_path) not in (result.findings[0].detail or "")
        assert_clean(workdir, fds)


def test_read_error_of_a_qcow2_rejects_through_the_command(tmp_path, workdir):
    source = images.qcow2_image(tmp_path / "disk.qcow2", "16M")
    with failing_file(tmp_path / "mnt", source, 4096) as staged:
        status, record, stderr = audit_cli(tmp_path, workdir, staged)
    assert status == 1, stderr
    assert record["verdict"] == "reject"
    assert record_codes(record) == ["data.read_error"]
    assert "Traceback" not in stderr
    assert list(workdir.iterdir()) == []
