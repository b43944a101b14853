"""What a fresh ``importhooks audit`` pays before and while it reads one image (issue 12, start-up).

``benchmarks/bench_audit.py`` (b) times it; these tests hold what can be counted: modules a
fresh process does not import, and how many limited qemu-img processes the audit of the
benchmark's image starts (each is a ``python -m oslo_concurrency.prlimit`` of its own).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from importhooks import Verdict

from . import qcow2_images as q
from .helpers import audit

MIB, GIB = 1 << 20, 1 << 30

_PROBE = """
import json, sys
sys.argv = ["importhooks", "audit", "--format", "json", sys.argv[1]]
from importhooks.cli.main import main
try:
    main()
finally:
    print(json.dumps({name: name in sys.modules for name in ("tomllib", "httpx", "importhooks.server")}),
          file=sys.stderr)
"""


def test_an_audit_imports_neither_tomllib_without_a_settings_file_nor_the_server_kit(tmp_path: Path) -> None:
    """The server kit's import methods bring httpx (about 140 ms with what it imports): ``audit`` needs neither;
    only ``info`` and ``schema`` load the kit's discovery."""
    path = q.create(tmp_path / "e.qcow2", "1G")
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "accept"
    assert json.loads(done.stderr.splitlines()[-1]) == {"tomllib": False, "httpx": False,
                                                        "importhooks.server": False}


def test_the_benchmark_qcow2_costs_two_qemu_img_runs(settings, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """bench_audit (b)'s image: qemu-img info and qemu-img check; no guest read goes through qemu-img (the first
    block's standard clusters are read from the file once check passed; the 1 MiB probe and the rest are
    unallocated)."""
    path = q.written(tmp_path / "b.qcow2", "100G", (0, MIB), (50 * GIB, MIB), (99 * GIB, 64 << 10))
    caplog.set_level(logging.DEBUG, logger="oslo_concurrency.processutils")
    result = audit(settings, path)
    assert result.verdict is Verdict.ACCEPT and result.detected["virtual_size"] == 100 * GIB
    runs = [r.getMessage() for r in caplog.records
            if r.name == "oslo_concurrency.processutils" and r.getMessage().startswith("Running cmd")]
    assert all(" -m oslo_concurrency.prlimit --as=" in run for run in runs)  # every one under its limits
    commands = [run.split(" -- ", 1)[1].split()[1] for run in runs]
    assert commands == ["info", "check"], runs
