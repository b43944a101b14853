"""os_type verification costs the same whatever the disk's virtual size.

Run on demand (pytest never collects it)::

    .venv/bin/python benchmarks/bench_os_type.py [--dir DIR] [--runs N] [--json]

Two qcow2 disks with the same layout, differing only in size: a GPT (``sgdisk``) with one
Linux partition from 1 MiB to the end, holding an ext4 filesystem made in place by
``mkfs.ext4 -E offset=1048576 -d TREE`` and populated from a small directory tree (so the
filesystem has real inodes, directories and data), converted from a sparse raw file with
``qemu-img convert -O qcow2``. One is **100 GiB**, the baseline **1 GiB**.

Each run is one pipeline run (every built-in plugin, claim ``os_type=linux``) in this
process; a timing wrapper around ``importhooks_set_protected_properties`` (registered
through ``extra_plugins``, as a site plugin would be) measures the verification stage:
reading the partition table and filesystem signatures through ``qemu-img convert`` of raw
slices under ``ProcessLimits``. Runs alternate between the two disks so drift and other
load hit both alike; the median of ``--runs`` (default 7, at least 3) is reported, with the
guest bytes the plugin read. **Target: 100 GiB / 1 GiB within 0.8 to 1.2.**

Exit status 0 when the target is met, 1 otherwise, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from importhooks import Claims, ImportContext, ImportRequest, Pipeline, Settings, Verdict, hookimpl
from importhooks.settings import PluginSettings

MIB = 1 << 20
SIZES = {"100GiB": 100 << 30, "1GiB": 1 << 30}
TARGET = (0.8, 1.2)


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


def populate(tree: Path) -> None:
    """A small root filesystem's worth of directories and files."""
    for top in ("etc", "usr/bin", "usr/lib", "var/log", "home/user"):
        directory = tree / top
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(20):
            (directory / f"file{index}").write_bytes(f"{top}/{index}\n".encode() * (64 * index + 1))
    (tree / "etc" / "os-release").write_text('NAME="Benchmark Linux"\nID=bench\n')


def make_disk(directory: Path, name: str, size: int, tree: Path) -> Path:
    raw = directory / f"{name}.raw"
    with open(raw, "wb") as handle:
        handle.truncate(size)
    run("sgdisk", "-n", "1:2048:0", "-t", "1:8300", str(raw))
    blocks = (size - MIB - 34 * 512) // 4096
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", f"offset={MIB},lazy_itable_init=1,lazy_journal_init=1",
        "-d", str(tree), str(raw), str(blocks))
    qcow2 = directory / f"{name}.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    raw.unlink()
    return qcow2


class StageTimer:
    """Times the set_protected_properties stage (every implementation, os_type's read included)."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    @hookimpl(wrapper=True)
    def importhooks_set_protected_properties(self, context: ImportContext) -> Generator[None, Any, Any]:
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            self.seconds = time.perf_counter() - started


def verify(disk: Path, workdir: Path) -> tuple[float, dict[str, Any]]:
    timer = StageTimer()
    settings = Settings(work_dir=workdir, plugins=PluginSettings(entry_points=False))
    pipeline = Pipeline.from_settings(settings, extra_plugins=[("bench_timer", timer)])
    result = pipeline.run(ImportRequest(path=disk, claims=Claims(disk_format="qcow2", os_type="linux")))
    if result.verdict is not Verdict.ACCEPT or result.properties.get("importhooks_filesystems") != "ext4":
        raise RuntimeError(f"unexpected result: {result.verdict} {result.findings} {dict(result.properties)}")
    assert timer.seconds is not None
    return timer.seconds, dict(result.detected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to make the disks (default: system temp)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    for tool in ("sgdisk", "mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run scripts/setup.sh", file=sys.stderr)
            return 2
    directory = Path(tempfile.mkdtemp(prefix="bench-os-type-", dir=args.dir))
    try:
        tree = directory / "tree"
        populate(tree)
        disks = {name: make_disk(directory, name, size, tree) for name, size in SIZES.items()}
        workdir = directory / "work"
        workdir.mkdir()
        times: dict[str, list[float]] = {name: [] for name in disks}
        for disk in disks.values():  # one warm-up each: imports, page cache
            verify(disk, workdir)
        for _run in range(args.runs):
            for name, disk in disks.items():
                times[name].append(verify(disk, workdir)[0])
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["100GiB"] / medians["1GiB"]
        met = TARGET[0] <= ratio <= TARGET[1]
        report = {
            "medians_ms": {name: round(1000 * value, 1) for name, value in medians.items()},
            "runs_ms": {name: [round(1000 * v, 1) for v in values] for name, values in times.items()},
            "qcow2_bytes": {name: disk.stat().st_size for name, disk in disks.items()},
            "ratio": round(ratio, 3), "target": list(TARGET), "met": met,
        }
        if args.json:
            print(json.dumps(report))
        else:
            for name in disks:
                print(f"{name:>7} qcow2 ({report['qcow2_bytes'][name]:,} bytes): verification median "
                      f"{report['medians_ms'][name]} ms  runs {report['runs_ms'][name]}")
            print(f"ratio 100GiB / 1GiB = {ratio:.3f}  (target {TARGET[0]}-{TARGET[1]}): {'met' if met else 'MISSED'}")
        return 0 if met else 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
