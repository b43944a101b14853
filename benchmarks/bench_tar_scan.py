"""Cost of the ova plugin's member scan: a 20,000-member OVA in the pipeline vs a bare libarchive listing.

Run on demand (pytest never collects it: its name does not match ``test_*.py`` and
``testpaths`` is ``tests``)::

    .venv/bin/python benchmarks/bench_tar_scan.py [--members N] [--runs N] [--json]

The archive is written once with tarfile: ``vm.ovf`` first (one raw disk), the 4 KiB
``disk.raw``, then ``--members`` minus 2 more: small regular files in one directory
per 1,000 (each directory has its own entry) and, every 100th member, a relative
symbolic link to a file beside it. Every member goes through every rule; every link
is resolved twice (on arrival and at the end). Measured in the same process,
interleaved run by run, medians of ``--runs`` (default 7) after one untimed warm-up:

* **ova scan**: the ``sanitize`` stage of a real ``Pipeline.run`` (``container_format``
  ova, ``[plugin.ova] max_members`` raised so the package is accepted), timed by a
  hook wrapper around ``importhooks_sanitize``: libarchive reading through the
  budgeted reader, the member rules, the OVF, the disk written out;
* **bare listing**: ``libarchive.file_reader`` on the same file (tar format, no
  filter, as the plugin), every entry's ``pathname`` read: what listing the archive
  costs with no rules at all. ``file_reader`` reads in blocks of ``st_blksize``
  (4 KiB), which makes it slower than it need be, so a second listing reads through
  ``stream_reader`` in 1 MiB blocks, as the plugin does; the target is checked
  against the faster of the two. Both make a Python entry object per member, which
  the plugin does not, so a third, informative **floor listing** reuses one entry
  and calls only ``read_next_header2`` and the pathname through ctypes: the least
  any Python scan of the archive can cost;
* **pipeline run** (informative): the whole run, which also streams the archive
  through the disk format detector and checksums the layers.

Target: ova scan / bare listing at most 2.0. Exit status 0 when met, 1 when not, 2
when the benchmark could not run (a run was not accepted, files left behind). The
medians move with the machine's load: run it on an idle machine before reading a
miss as a regression.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
import types
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import libarchive
from libarchive import ffi

from importhooks import Claims, ImportRequest, Pipeline, Settings, Verdict, hookimpl
from importhooks.settings import PluginSettings

TARGET_RATIO = 2.0
READ_SIZE = 1 << 20  # the plugin's read size (importhooks_plugins.containers.tar_reader.BLOCK_SIZE)
DISK = bytes(4096)
DESCRIPTOR = b"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="disk.raw" ovf:id="file1" ovf:size="4096"/></References>
  <DiskSection><Info>Disks</Info>
    <Disk ovf:capacity="4096" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="raw"/>
  </DiskSection>
</Envelope>
"""


def build_archive(path: Path, members: int) -> None:
    """The benchmark's OVA: descriptor, disk, then files, directories and links up to ``members``."""

    def add(archive: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname, info.mtime = kind, len(data), link, 1_700_000_000
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        add(archive, "vm.ovf", tarfile.REGTYPE, DESCRIPTOR)
        add(archive, "disk.raw", tarfile.REGTYPE, DISK)
        count = 2
        while count < members:
            index = count - 2
            folder = f"dir{index // 1000:03d}"
            if index % 1000 == 0:
                add(archive, f"{folder}/", tarfile.DIRTYPE)
            elif index % 100 == 0:
                add(archive, f"{folder}/link{index}", tarfile.SYMTYPE, link=f"file{index - 1}")
            else:
                add(archive, f"{folder}/file{index}", tarfile.REGTYPE, b"%d\n" % index)
            count += 1


def bare_listing(path: Path, *, large_reads: bool) -> Callable[[], int]:
    """List every entry's pathname with libarchive-c: ``file_reader``, or 1 MiB reads like the plugin's."""

    def entries(archive: Any) -> int:
        count = 0
        for entry in archive:
            entry.pathname  # noqa: B018 - the listing reads every name
            count += 1
        return count

    def run() -> int:
        if not large_reads:  # file_reader reads in blocks of st_blksize (4 KiB here)
            with libarchive.file_reader(str(path), format_name="tar", filter_name="none") as archive:
                return entries(archive)
        with open(path, "rb", buffering=0) as handle, libarchive.stream_reader(
                handle, format_name="tar", filter_name="none", block_size=READ_SIZE) as archive:
            return entries(archive)

    return run


def floor_listing(path: Path) -> Callable[[], int]:
    """The cheapest listing from Python: one entry reused, ``read_next_header2`` and the wide pathname only."""

    def run() -> int:
        count = 0
        with open(path, "rb", buffering=0) as handle, libarchive.stream_reader(
                handle, format_name="tar", filter_name="none", block_size=READ_SIZE) as archive:
            archive_p = archive._pointer
            entry = libarchive.ArchiveEntry(archive_p)
            read_next, pathname_w, eof = ffi.read_next_header2, ffi.entry_pathname_w, ffi.ARCHIVE_EOF
            while read_next(archive_p, entry._entry_p) != eof:
                pathname_w(entry._entry_p)
                count += 1
        return count

    return run


def timing_plugin(record: list[int]) -> types.ModuleType:
    """A plugin whose hook wrapper appends the sanitize stage's wall time (ns) to ``record``."""
    module = types.ModuleType("bench_sanitize_timer")

    def importhooks_sanitize(context: Any) -> Generator[None, Any, Any]:
        start = time.perf_counter_ns()
        try:
            return (yield)
        finally:
            record.append(time.perf_counter_ns() - start)

    module.importhooks_sanitize = hookimpl(wrapper=True)(importhooks_sanitize)  # type: ignore[attr-defined]
    return module


def pipeline_run(work_dir: Path, path: Path, members: int, record: list[int]) -> Callable[[], Any]:
    settings = Settings(work_dir=work_dir, plugins=PluginSettings(entry_points=False),
                        container_formats=("bare", "ova"), plugin={"ova": {"max_members": members}})
    pipeline = Pipeline.from_settings(settings, extra_plugins=[("bench_sanitize_timer", timing_plugin(record))])
    request = ImportRequest(path=path, claims=Claims(container_format="ova", disk_format="raw"))
    return lambda: pipeline.run(request)


def sanity_check(result: Any, listed: int, members: int) -> None:
    """The package is accepted as a raw disk, and scan and listing both saw every member; else exit 2."""
    problem = None
    if result.verdict is not Verdict.ACCEPT:
        problem = f"the OVA was rejected: {[f.code for f in result.findings]}"
    elif result.layers[0].facts.get("members") != members or listed != members:
        problem = f"scanned {result.layers[0].facts.get('members')}, listed {listed}, expected {members}"
    elif result.detected.get("disk_format") != "raw":
        problem = f"the extracted disk is {result.detected.get('disk_format')!r}, not raw"
    if problem is not None:
        print(f"bench_tar_scan.py: {problem}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--members", type=int, default=20_000, help="members in the archive (default 20000)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each variant (default 7, at least 3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    runs = max(3, args.runs)

    with tempfile.TemporaryDirectory(prefix="importhooks-bench-") as tmp:
        root = Path(tmp)
        work_dir = root / "work"
        work_dir.mkdir()
        path = root / "many.ova"
        build_archive(path, args.members)
        scans: list[int] = []
        variants = {
            "bare_listing": bare_listing(path, large_reads=False),
            "bare_listing_1mib": bare_listing(path, large_reads=True),
            "floor_listing": floor_listing(path),
            "pipeline_run": pipeline_run(work_dir, path, args.members, scans),
        }
        result = variants["pipeline_run"]()  # the warm-up runs are the sanity checks
        sanity_check(result, variants["bare_listing"](), args.members)
        sanity_check(result, variants["bare_listing_1mib"](), args.members)
        sanity_check(result, variants["floor_listing"](), args.members)
        samples: dict[str, list[int]] = {name: [] for name in variants}
        scans.clear()
        gc.collect()
        names = list(variants)
        for index in range(runs):  # interleaved; whoever goes first rotates
            for name in names[index % len(names):] + names[: index % len(names)]:
                start = time.perf_counter_ns()
                variants[name]()
                samples[name].append(time.perf_counter_ns() - start)
        leftovers = list(work_dir.iterdir())
        if leftovers:
            print(f"bench_tar_scan.py: runs left files behind: {leftovers[:3]}", file=sys.stderr)
            return 2
        size = path.stat().st_size

    ms = {name: statistics.median(times) / 1e6 for name, times in samples.items()}
    ms["ova_scan"] = statistics.median(scans) / 1e6
    baseline = min(ms["bare_listing"], ms["bare_listing_1mib"])  # the stricter of the two
    ratio = ms["ova_scan"] / baseline
    report = {
        "members": args.members,
        "archive_bytes": size,
        "runs": runs,
        "python": sys.version.split()[0],
        "libarchive": libarchive.ffi.version_number(),
        "median_ms": ms,
        "us_per_member": {name: 1000 * value / args.members for name, value in ms.items()},
        "ratio_to_bare_listing": ms["ova_scan"] / ms["bare_listing"],
        "ratio_to_bare_listing_1mib": ms["ova_scan"] / ms["bare_listing_1mib"],
        "ratio_to_floor_listing": ms["ova_scan"] / ms["floor_listing"],
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"ova member scan benchmark: {args.members} members, {size / 1e6:.1f} MB archive; "
              f"Python {report['python']}, libarchive {report['libarchive']}; medians of {runs} runs, interleaved")
        rows = [("bare listing, file_reader", "bare_listing"), ("bare listing, 1 MiB reads", "bare_listing_1mib"),
                ("floor listing (info)", "floor_listing"), ("ova scan (sanitize stage)", "ova_scan"),
                ("whole pipeline run (info)", "pipeline_run")]
        for label, key in rows:
            print(f"  {label:<28} {ms[key]:8.1f} ms  ({report['us_per_member'][key]:.2f} us/member)")
        print(f"  ova scan / file_reader listing: {report['ratio_to_bare_listing']:.2f}x; "
              f"/ 1 MiB-read listing: {report['ratio_to_bare_listing_1mib']:.2f}x; "
              f"/ floor listing: {report['ratio_to_floor_listing']:.2f}x")
        verdict = "met" if report["target_met"] else "NOT met"
        print(f"target: ova scan <= {TARGET_RATIO:.1f}x the faster bare listing: {verdict} ({ratio:.2f}x)")
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
