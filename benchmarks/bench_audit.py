"""Cost of ``importhooks audit`` against the programs an operator would otherwise run.

Run on demand (pytest never collects it)::

    .venv/bin/python benchmarks/bench_audit.py [--dir DIR] [--runs N] [--only a|b] [--json] [--importtime]
                                                [--keep-env] [--before DIR]

Two benchmarks, each timing fresh processes (what a conversion worker or an
operator's shell pays), interleaved run by run so that drift and other load hit
every variant alike, and reporting the median of ``--runs`` (default 5, at least 3),
with the CPU time of each (its children included) and the load average, since other
work on the machine stretches wall times:

**(a) a 2 GiB raw image, full audit / sha512sum.** ``importhooks audit --format json
FILE`` runs every built-in plugin and computes md5 and sha512 (Glance's
``checksum`` and ``os_hash_value``) in its one pass; the baseline is coreutils'
``sha512sum FILE`` of the same file. The file is written in full (not sparse) with
a pattern: a 1 MiB block of seeded pseudo-random bytes, each copy stamped with its
index, so neither the filesystem (holes, zero pages) nor anything else can take a
shortcut that real image data would not allow. Its first and last sectors are
zeros, so it is a plain raw disk. The page cache is warmed by one full read (which
also computes the reference md5) before any timing: both sides then read from
memory and the ratio measures CPU work, not the disk. The audit's checksums are
checked against that md5 and ``sha512sum``'s output. **Target: ratio <= 1.10.** For
context only, ``openssl dgst -sha512`` is timed too: coreutils' SHA-512 is its own
code, slower than OpenSSL's, which Python's hashlib uses.

**(b) a 100 GiB sparse qcow2, full audit / oslo.utils alone.** ``qemu-img create -f
qcow2`` with a few clusters written by ``qemu-io`` (at the start, the middle and
near the end, so there are L2 tables to check), audited in a fresh process; the
baseline is a fresh Python that imports oslo.utils and runs
``detect_file_format(path)`` and ``.safety_check()``: the check Glance itself
makes. **Target: ratio <= 1.5 (goal 1.0).** The same audit of a 1 GiB qcow2 (same
writes, scaled) must take the same time within 20 %: nothing may cost in proportion
to the virtual size. To show where the time goes it also times, in the same
interleaving: ``python -c pass``, importing ``importhooks.cli.main`` and building the
default pipeline (every built-in plugin registered; their heavy dependencies load
on first use), importing oslo.utils' format inspector alone, ``qemu-img info``
alone, and ``qemu-img info`` through ``python -m oslo_concurrency.prlimit`` (how
the qemu_img and os_type plugins run qemu-img).

Bytecode: every child runs with ``PYTHONPYCACHEPREFIX`` set to a directory in the
benchmark's temporary directory and without ``PYTHONDONTWRITEBYTECODE``, so the
untimed warm-up run caches the bytecode of every module it imports, as an
installed package has it (``pip install`` compiles it; an editable install under
``PYTHONDONTWRITEBYTECODE=1`` would recompile importhooks' 10,000 lines in every
process, about 50 ms). ``--keep-env`` runs the children in the environment as it
is instead.

``--before DIR`` adds, to (b)'s interleaving, the same audit with ``DIR`` first on
``PYTHONPATH``: ``DIR`` holds the ``importhooks`` and ``importhooks_plugins`` packages of
an older tree (``git archive OLD importhooks plugins``, ``plugins`` renamed), so old and
new code are timed run by run under the same load.

Files go to a new directory made with ``tempfile.mkdtemp(dir=--dir)`` and removed at
the end; (a) needs 2 GiB free there (checked first). Exit status 0 when every
target is met, 1 otherwise, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
IMPORTHOOKS = VENV_BIN / "importhooks"
PYTHON = VENV_BIN / "python"

GIB = 1 << 30
MIB = 1 << 20
RAW_SIZE = 2 * GIB
TARGET_A = 1.10
TARGET_B = 1.5
GOAL_B = 1.0
TARGET_FLAT = 0.20  # 100 GiB vs 1 GiB audit time, relative difference

ORACLE = (
    "import sys\n"
    "from oslo_utils.imageutils import format_inspector as fi\n"
    "inspector = fi.detect_file_format(sys.argv[1])\n"
    "inspector.safety_check()\n"
    "print(inspector, inspector.virtual_size)\n"
)
IMPORT_ALL = (
    "import importhooks.cli.main\n"
    "from importhooks import Pipeline, load_settings\n"
    "Pipeline.from_settings(load_settings())\n"
)
IMPORT_ORACLE = "from oslo_utils.imageutils import format_inspector\n"
#: The environment of every timed child; see the module doc (bytecode). Set by main().
CHILD_ENV: dict[str, str] | None = None


def child_env(root: Path) -> dict[str, str]:
    """This environment, with bytecode cached under ``root`` (as an installed package has it)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return env


class BenchError(Exception):
    """The benchmark cannot run here (no space, a tool missing, a sanity check failed)."""


@dataclass
class Variant:
    """One command timed in fresh processes."""

    label: str
    argv: list[str]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    last_stdout: bytes = b""
    pythonpath: str | None = None  # put first on the child's PYTHONPATH (--before)

    def run(self, check: bool = True) -> None:
        env = CHILD_ENV
        if self.pythonpath is not None:
            env = {**(CHILD_ENV if CHILD_ENV is not None else os.environ), "PYTHONPATH": self.pythonpath}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(self.argv, capture_output=True, check=False, env=env)
        self.wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        self.last_stdout = done.stdout
        if check and done.returncode != 0:
            raise BenchError(f"{' '.join(self.argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    def summary(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.wall), "max_s": max(self.wall),
                "cpu_median_s": statistics.median(self.cpu), "runs": len(self.wall), "argv": self.argv}


def interleave(variants: Sequence[Variant], runs: int) -> None:
    """Run every variant once per round, ``runs`` rounds, rotating who goes first."""
    for round_ in range(runs):
        shift = round_ % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            variant.run()


def need_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (Debian: coreutils, qemu-utils)")


def write_pattern(path: Path, size: int, seed: int = 2024) -> str:
    """Write ``size`` bytes of the stamped pattern (every block written: not sparse); return its md5.

    The md5 is of what was written, so it is the reference for the audit's checksum.
    """
    block = bytearray(random.Random(seed).randbytes(MIB))
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "wb") as handle:
        for index in range(size // MIB):
            block[512:520] = index.to_bytes(8, "little")  # every block differs; sector 0 stays ...
            chunk = bytearray(block)
            if index == 0:
                chunk[:512] = bytes(512)  # ... zeros: a raw disk with no magic and no boot signature
            if index == size // MIB - 1:
                chunk[-512:] = bytes(512)  # and no VHD footer
            handle.write(chunk)
            md5.update(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return md5.hexdigest()


def warm(path: Path) -> None:
    """Read the whole file once so every timed run reads it from the page cache."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(8 * MIB):
            pass


def audit_json(stdout: bytes) -> dict[str, Any]:
    lines = [line for line in stdout.decode().splitlines() if line.strip()]
    if len(lines) != 1:
        raise BenchError(f"audit printed {len(lines)} JSON lines, expected 1")
    document: dict[str, Any] = json.loads(lines[0])
    return document


def bench_raw(root: Path, runs: int) -> dict[str, Any]:
    """(a): audit of a 2 GiB raw image / sha512sum of it."""
    need_tools("sha512sum")
    free = shutil.disk_usage(root).free
    if free < RAW_SIZE + GIB:
        raise BenchError(f"(a) needs {(RAW_SIZE + GIB) / GIB:.0f} GiB free in {root}, {free / GIB:.1f} GiB free")
    path = root / "pattern.raw"
    started = time.perf_counter()
    md5 = write_pattern(path, RAW_SIZE)
    written_s = time.perf_counter() - started
    if os.stat(path).st_blocks * 512 < RAW_SIZE:
        raise BenchError(f"{path} is sparse: {os.stat(path).st_blocks * 512} bytes allocated")
    warm(path)

    audit = Variant("importhooks audit --format json", [str(IMPORTHOOKS), "audit", "--format", "json", str(path)])
    sha = Variant("sha512sum", ["sha512sum", str(path)])
    # Sanity, untimed: the audit accepts the raw disk and its checksums are the right ones.
    audit.run()
    sha.run()
    document = audit_json(audit.last_stdout)
    sha512 = sha.last_stdout.split()[0].decode()
    checksums = document.get("checksums") or {}
    if document["verdict"] != "accept" or document["detected"].get("disk_format") != "raw":
        raise BenchError(f"(a) audit did not accept a raw disk: {document['findings']}")
    if checksums.get("checksum") != md5 or checksums.get("os_hash_value") != sha512:
        raise BenchError(f"(a) checksums differ: audit {checksums}, md5 {md5}, sha512sum {sha512}")
    audit.wall.clear()
    audit.cpu.clear()
    sha.wall.clear()
    sha.cpu.clear()

    variants = [audit, sha]
    openssl = None
    if shutil.which("openssl"):  # for context only: OpenSSL's SHA-512, which Python's hashlib uses too
        openssl = Variant("openssl dgst -sha512", ["openssl", "dgst", "-sha512", str(path)])
        variants.append(openssl)
    interleave(variants, runs)
    ratio = audit.median / sha.median
    report = {"size_bytes": RAW_SIZE, "write_s": written_s, "audit": audit.summary(), "sha512sum": sha.summary(),
              "ratio": ratio, "target": TARGET_A, "met": ratio <= TARGET_A,
              "findings": [f["code"] for f in document["findings"]]}
    if openssl is not None:
        report["openssl"] = openssl.summary()
        report["ratio_to_openssl"] = audit.median / openssl.median
    return report


def make_qcow2(path: Path, virtual: int) -> Path:
    """A sparse qcow2 with three writes (qemu-io): 1 MiB at 0, 1 MiB at the middle, 64 KiB near the end."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual)], check=True)
    near_end = virtual - max(virtual // 100, 4 * MIB)
    writes = [(0, MIB), (virtual // 2, MIB), (near_end, 64 << 10)]
    command = ["qemu-io", "-f", "qcow2"]
    for offset, length in writes:
        command += ["-c", f"write -P 0x5a {offset} {length}"]
    subprocess.run([*command, str(path)], check=True, capture_output=True)
    return path


def bench_qcow2(root: Path, runs: int, before: Path | None = None) -> dict[str, Any]:
    """(b): audit of a 100 GiB sparse qcow2 / oslo.utils detect_file_format + safety_check, fresh processes."""
    need_tools("qemu-img", "qemu-io")
    big = make_qcow2(root / "big-100g.qcow2", 100 * GIB)
    small = make_qcow2(root / "small-1g.qcow2", GIB)
    for path in (big, small):
        warm(path)

    audit_big = Variant("importhooks audit, 100 GiB qcow2", [str(IMPORTHOOKS), "audit", "--format", "json", str(big)])
    audit_small = Variant("importhooks audit, 1 GiB qcow2",
                          [str(IMPORTHOOKS), "audit", "--format", "json", str(small)])
    oslo = Variant("baseline: python + oslo detect + safety_check", [str(PYTHON), "-c", ORACLE, str(big)])
    startup = Variant("python -c pass", [str(PYTHON), "-c", "pass"])
    imports = Variant("python: import importhooks.cli.main, build the pipeline", [str(PYTHON), "-c", IMPORT_ALL])
    oslo_import = Variant("python: import oslo format_inspector alone", [str(PYTHON), "-c", IMPORT_ORACLE])
    qemu = Variant("qemu-img info -f qcow2 (alone)",
                   ["qemu-img", "info", "--output=json", "--force-share", "-f", "qcow2", "--", str(big)])
    prlimit = Variant("qemu-img info via python -m oslo_concurrency.prlimit",
                      [str(PYTHON), "-m", "oslo_concurrency.prlimit", f"--as={GIB}", "--cpu=30", "--",
                       "qemu-img", "info", "--output=json", "--force-share", "-f", "qcow2", "--", str(big)])
    variants = [audit_big, audit_small, oslo, startup, imports, oslo_import, qemu, prlimit]
    older = None
    if before is not None:
        older = Variant(f"importhooks audit, 100 GiB qcow2, --before {before.name}",
                        [str(IMPORTHOOKS), "audit", "--format", "json", str(big)], pythonpath=str(before))
        variants.insert(1, older)
    for variant in variants:  # untimed warm-up: page cache for the interpreter and libraries
        variant.run()
    document = audit_json(audit_big.last_stdout)
    if document["verdict"] != "accept" or document["detected"].get("virtual_size") != 100 * GIB:
        raise BenchError(f"(b) audit did not accept the 100 GiB qcow2: {document['findings']} "
                         f"{document['detected']}")
    if b"qcow2" not in oslo.last_stdout:
        raise BenchError(f"(b) oslo.utils did not see a qcow2: {oslo.last_stdout!r}")
    for variant in variants:
        variant.wall.clear()
        variant.cpu.clear()

    interleave(variants, runs)
    ratio = audit_big.median / oslo.median
    cpu_ratio = statistics.median(audit_big.cpu) / statistics.median(oslo.cpu)
    flat = abs(audit_big.median - audit_small.median) / audit_small.median
    compared = {} if older is None else {
        "before_ratio": older.median / oslo.median,
        "before_cpu_ratio": statistics.median(older.cpu) / statistics.median(oslo.cpu)}
    return {**compared, "file_bytes": big.stat().st_size, "variants": {v.label: v.summary() for v in variants},
            "ratio": ratio, "target": TARGET_B, "met": ratio <= TARGET_B, "goal": GOAL_B, "cpu_ratio": cpu_ratio,
            "flat_difference": flat, "flat_target": TARGET_FLAT, "flat_met": flat <= TARGET_FLAT,
            "audit_elapsed_s": document.get("elapsed_s")}


def import_times(path: Path, top: int = 15) -> list[tuple[int, int, str]]:
    """``python -X importtime`` of the audit: the ``top`` imports by cumulative microseconds."""
    code = f"import sys; sys.argv = ['importhooks', 'audit', '--format', 'json', {str(path)!r}]; " \
           "from importhooks.cli.main import main; main()"
    done = subprocess.run([str(PYTHON), "-X", "importtime", "-c", code], capture_output=True, check=False,
                          env=CHILD_ENV)
    rows: list[tuple[int, int, str]] = []
    for line in done.stderr.decode().splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        rows.append((int(self_us), int(cumulative_us), name[1:].rstrip()))  # nesting: two spaces a level
    top_level = [row for row in rows if not row[2].startswith(" ")]
    return sorted(top_level, key=lambda row: -row[1])[:top]


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(title)
    for label, s in rows:
        print(f"  {label:<56} {s['median_s']:8.3f} s  (min {s['min_s']:.3f}, max {s['max_s']:.3f}, "
              f"cpu {s['cpu_median_s']:.3f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where to make the temporary directory for the images (default: the system's)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each variant, at least 3 (default 5)")
    parser.add_argument("--only", choices=("a", "b"), help="run only benchmark (a) or (b)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep-env", action="store_true",
                        help="run the children in this environment as it is (default: bytecode cached, see above)")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="(b): also time the audit with DIR first on PYTHONPATH, interleaved: DIR holds the "
                             "importhooks and importhooks_plugins packages of an older tree (git archive)")
    parser.add_argument("--importtime", action="store_true",
                        help="also print the slowest imports of the audit (python -X importtime), for (b)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    if not IMPORTHOOKS.exists():
        print(f"bench_audit.py: {IMPORTHOOKS} not found; run scripts/setup.sh", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="importhooks-bench-audit-", dir=args.dir))
    global CHILD_ENV
    CHILD_ENV = None if args.keep_env else child_env(root)
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "runs": args.runs,
                              "bytecode": "as is" if args.keep_env else "cached", "loadavg": os.getloadavg()}
    try:
        if args.only in (None, "a"):
            report["a"] = bench_raw(root, args.runs)
            (root / "pattern.raw").unlink()
        if args.only in (None, "b"):
            report["b"] = bench_qcow2(root, args.runs, args.before.resolve() if args.before else None)
            if args.importtime:
                report["b"]["importtime"] = import_times(root / "big-100g.qcow2")
    except BenchError as exc:
        print(f"bench_audit.py: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(root, ignore_errors=True)

    met = all(report[key]["met"] for key in ("a", "b") if key in report)
    met = met and report.get("b", {}).get("flat_met", True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if met else 1
    print(f"importhooks audit benchmark: Python {report['python']}, {report['cpus']} CPUs, "
          f"median of {args.runs} fresh-process runs, variants interleaved, bytecode {report['bytecode']}, "
          f"load average {report['loadavg'][0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    if "a" in report:
        a = report["a"]
        print_table(f"(a) 2 GiB raw image (stamped random pattern, not sparse, page cache warm; "
                    f"findings: {a['findings'] or 'none'})",
                    [("importhooks audit --format json (md5 + sha512, all checks)", a["audit"]),
                     ("baseline: sha512sum", a["sha512sum"]),
                     *([("for context: openssl dgst -sha512", a["openssl"])] if "openssl" in a else [])])
        verdict = "met" if a["met"] else "MISSED"
        print(f"  ratio audit / sha512sum: {a['ratio']:.3f}   target <= {TARGET_A:.2f}: {verdict}")
        if "ratio_to_openssl" in a:
            print(f"  (for context, audit / openssl dgst -sha512: {a['ratio_to_openssl']:.3f})")
    if "b" in report:
        b = report["b"]
        print_table(f"(b) sparse qcow2, 100 GiB virtual ({b['file_bytes'] / MIB:.1f} MiB file)",
                    list(b["variants"].items()))
        audit_big = b["variants"]["importhooks audit, 100 GiB qcow2"]["median_s"]
        audit_small = b["variants"]["importhooks audit, 1 GiB qcow2"]["median_s"]
        verdict = "met" if b["met"] else "MISSED"
        print(f"  ratio audit / oslo.utils alone: {b['ratio']:.2f}   target <= {TARGET_B:.1f}: {verdict}"
              f"   (goal <= {GOAL_B:.1f})")
        print(f"  (CPU time, the audit's qemu-img processes included: {b['cpu_ratio']:.2f}; steadier than the "
              "wall time when other work shares the CPUs)")
        if "before_ratio" in b:
            print(f"  (--before: ratio {b['before_ratio']:.2f}, CPU {b['before_cpu_ratio']:.2f})")
        flat = "met" if b["flat_met"] else "MISSED"
        print(f"  audit 100 GiB vs 1 GiB: {audit_big:.3f} s vs {audit_small:.3f} s, "
              f"{100 * b['flat_difference']:.1f} % apart   target <= {100 * TARGET_FLAT:.0f} %: {flat}")
        print(f"  (the audit's own elapsed_s, pipeline run only: {b['audit_elapsed_s']} s)")
        if "importtime" in b:
            print("  slowest top-level imports of the audit (python -X importtime, cumulative):")
            for self_us, cumulative_us, name in b["importtime"]:
                print(f"    {cumulative_us / 1000:8.1f} ms  {name}  (self {self_us / 1000:.1f} ms)")
    print("all targets met" if met else "some targets MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
