"""Stock Glance 33 against Glance 33 with importhooks: the same samples, side by side, and a 1 GiB import.

Run on demand (pytest never collects it), after ``scripts/setup.sh`` made ``.venv-glance``::

    .venv/bin/python benchmarks/bench_glance.py [--dir DIR] [--runs N] [--size-mib N] [--no-timing]
                                                [--format md|rst] [--json]

Two real glance-api 33 servers (the test harness: uWSGI, SQLite, filesystem stores, no
Keystone) run side by side, one with ``image_import_plugins = [image_decompression]``
(stock), one with ``[importhooks]`` (default importhooks settings). Each sample of
:data:`SAMPLES` is imported into both with the real ``glance`` CLI (glance-direct); the
script prints, as a markdown table (the one in ``docs/glance.rst``), how each import
ended: the image status, the task message, and whether a copy was left in the store or
in staging.

Then a qcow2 of ``--size-mib`` (default 1024) MiB of data is imported ``--runs`` times
(default 3) into each, alternating, and the median wall time from the CLI call to the
end of the task is reported for both. **Target: importhooks / stock <= 1.3.**

Exit status 0 when the target is met (or ``--no-timing``), 1 otherwise, 2 when the
benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import compression_images as ci  # noqa: E402 - the repository root is on the path only now
from tests import guest_images, images, ova_images  # noqa: E402
from tests.glance_harness import GlanceServer  # noqa: E402

MIB = 1 << 20
TARGET = 1.3
MESSAGE_WIDTH = 110


def _ova(d: Path, disk: bytes, fmt: str, name: str) -> Path:
    return ova_images.package(disk, fmt).write(d / name)


def _backing(d: Path) -> Path:
    return images.qcow2_with_backing_file(d / "backing.qcow2")


#: label -> (builder, disk_format, container_format, properties)
SAMPLES: dict[str, tuple[Callable[[Path], Path], str, str, dict[str, str]]] = {
    "benign qcow2": (lambda d: images.qcow2_image(d / "benign.qcow2"), "qcow2", "bare", {"os_type": "linux"}),
    "benign OVA (streamOptimized vmdk)": (
        lambda d: _ova(d, ova_images.stream_vmdk(d / "disk.vmdk"), "vmdk", "vm.ova"), "vmdk", "ova", {}),
    "qcow2 with a backing file": (_backing, "qcow2", "bare", {}),
    "the same, claimed raw": (_backing, "raw", "bare", {}),
    "the same in gzip, claimed compressed": (
        lambda d: ci.compress_file("gzip", _backing(d), d / "backing.qcow2.gz"), "qcow2", "compressed", {}),
    "OVA whose disk has a backing file": (
        lambda d: _ova(d, _backing(d).read_bytes(), "qcow2", "backing.ova"), "qcow2", "ova", {}),
    "qcow2 labelled ova": (_backing, "qcow2", "ova", {}),
    "NTFS disk claimed os_type linux": (
        lambda d: guest_images.filesystem_file(d / "ntfs.raw", "ntfs"), "raw", "bare", {"os_type": "linux"}),
    "gzip bomb (1 GiB of 0x01 bytes), claimed compressed": (
        lambda d: ci.write(d / "bomb.gz", ci.gzip_zeros(1024 * MIB, fill=1)), "raw", "compressed", {}),
}


def outcome(server: GlanceServer, image_id: str, stored_before: list[str]) -> dict[str, Any]:
    """How one import ended, as the user and the operator see it."""
    image = server.wait(image_id, timeout=600)
    task = server.last_task(image_id)
    stored = [name for name in server.stored_files() if name not in stored_before]
    left_in_store = image["status"] != "active" and bool(stored)
    return {"status": image["status"], "task": task["status"], "message": task["message"] or "",
            "left_in_store": left_in_store, "left_in_staging": any(image_id in n for n in server.staged_files()),
            "disk_format": image["disk_format"], "container_format": image["container_format"]}


def cell(result: dict[str, Any]) -> str:
    status = result["status"]
    text = f"**{status}**" if status == "active" else status
    if status == "active":
        text += f" ({result['disk_format']}/{result['container_format']})"
    else:
        message = result["message"]
        if len(message) > MESSAGE_WIDTH:
            message = message[: MESSAGE_WIDTH - 1] + "…"
        text += f": “{message}”"
    leftovers = [name for name, key in (("store copy", "left_in_store"), ("staged file", "left_in_staging"))
                 if result[key]]
    if leftovers:
        text += f"; {' and '.join(leftovers)} left behind"
    return text.replace("|", "/")


def side_by_side(servers: dict[str, GlanceServer], samples: Path) -> list[dict[str, Any]]:
    rows = []
    for label, (build, disk_format, container_format, properties) in SAMPLES.items():
        work = samples / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        work.mkdir()
        path = build(work)
        row: dict[str, Any] = {"sample": label, "claimed": f"{disk_format}/{container_format}",
                               "size": path.stat().st_size}
        for name, server in servers.items():
            before = server.stored_files()
            image_id = server.create_via_import(label, disk_format, container_format, path=path, properties=properties)
            row[name] = outcome(server, image_id, before)
        rows.append(row)
        shutil.rmtree(work)
    return rows


HEADER = ("sample", "claimed", "stock Glance 33 (image_decompression)", "Glance 33 + importhooks")


def table(rows: list[dict[str, Any]], fmt: str = "md") -> str:
    """The side-by-side table, in markdown (the issue) or as an RST list-table (docs/glance.rst)."""
    cells = [(r["sample"], r["claimed"], cell(r["stock"]), cell(r["importhooks"])) for r in rows]
    if fmt == "rst":
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 12 33 33", ""]
        for line in [HEADER, *cells]:
            lines += [f"   * - {line[0]}", *(f"     - {text}" for text in line[1:])]
        return "\n".join(lines)
    lines = ["| " + " | ".join(HEADER) + " |", "| --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines)


def big_qcow2(directory: Path, size_mib: int) -> Path:
    """A qcow2 holding ``size_mib`` MiB of incompressible data (every cluster allocated)."""
    raw = directory / "big.raw"
    with open(raw, "wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(MIB))
    path = directory / "big.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return path


def timed_import(server: GlanceServer, path: Path) -> float:
    started = time.monotonic()
    image_id = server.create_via_import("big", "qcow2", "bare", path=path, properties={"os_type": "linux"})
    image = server.wait(image_id, timeout=1800)
    elapsed = time.monotonic() - started
    if image["status"] != "active":
        raise RuntimeError(f"the big image did not become active: {server.last_task(image_id)}")
    server.glance("image-delete", image_id)
    return elapsed


def timing(servers: dict[str, GlanceServer], directory: Path, size_mib: int, runs: int) -> dict[str, Any]:
    path = big_qcow2(directory, size_mib)
    times: dict[str, list[float]] = {name: [] for name in servers}
    for run in range(runs):
        order = list(servers) if run % 2 == 0 else list(reversed(servers))  # drift hits both alike
        for name in order:
            times[name].append(timed_import(servers[name], path))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"size_mib": size_mib, "runs": runs, "times_s": times, "median_s": medians,
            "ratio": medians["importhooks"] / medians["stock"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a new temporary one, removed)")
    parser.add_argument("--runs", type=int, default=3, help="timed imports into each Glance (default 3)")
    parser.add_argument("--size-mib", type=int, default=1024, help="data in the timed qcow2, MiB (default 1024)")
    parser.add_argument("--no-timing", action="store_true", help="only the side-by-side table")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--format", choices=("md", "rst"), default="md", help="the table's markup (default md)")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-glance-"))
    servers: dict[str, GlanceServer] = {}
    try:
        servers["stock"] = GlanceServer(root / "stock", plugins=["image_decompression"]).start()
        servers["importhooks"] = GlanceServer(root / "importhooks", plugins=["importhooks"]).start()
        samples = root / "samples"
        samples.mkdir()
        rows = side_by_side(servers, samples)
        print(table(rows, args.format))
        result: dict[str, Any] = {"rows": rows}
        ok = True
        if not args.no_timing:
            result["timing"] = timed = timing(servers, samples, args.size_mib, max(1, args.runs))
            print()
            print(f"{args.size_mib} MiB qcow2, glance-direct, median of {timed['runs']}: stock "
                  f"{timed['median_s']['stock']:.1f} s, importhooks {timed['median_s']['importhooks']:.1f} s, "
                  f"ratio {timed['ratio']:.2f} (target <= {TARGET})")
            ok = timed["ratio"] <= TARGET
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        return 0 if ok else 1
    except (OSError, RuntimeError, subprocess.SubprocessError, AssertionError) as exc:
        print(f"bench_glance: could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        for server in servers.values():
            server.stop()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
