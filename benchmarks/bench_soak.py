"""Soak row: the process's RSS after 10,000 in-process runs of mixed images stays within 10 % of
its RSS after the first 1,000.

One ``Pipeline`` (default settings, site entry points off) runs benign and hostile images
of every family in turn, as a long-lived image service would: raw, qcow2 (benign and with
a backing file), VMDK (streamOptimized, and a descriptor naming a flat extent), gzip, xz,
8 MiB of zeros gzipped, zip (benign, and with a '..' member), OVA (benign, with an escaping symlink,
with a '..' member) and noise after an xz magic. The images are made by the test suite's builders
(``tests/fault_tools.py``: :func:`mixed_images`) into a temporary directory, with the
real qemu-img and tools.

It checks on the way that each image gets the same verdict every time, that no run
leaves a file in the work directory and that the number of open file descriptors does
not grow, then prints RSS after the baseline runs, after all runs, and their ratio.
RSS moves by a few MiB from one run to the next (what a run had in flight), so each
figure is the median of the RSS read after each of the ``--window`` runs (100) that
end at its mark, the same way at both marks;
it exits 1 if the ratio is over ``1 + tolerance`` (or a check failed), 0 otherwise::

    .venv/bin/python benchmarks/bench_soak.py                 # 10,000 runs: about 20 to 30 minutes
    .venv/bin/python benchmarks/bench_soak.py --runs 2000 --baseline 500 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' image builders

from importhooks import Claims, ImportRequest, Pipeline, Settings  # noqa: E402
from importhooks.settings import PluginSettings  # noqa: E402
from tests.fault_tools import mixed_images, open_fds  # noqa: E402

#: Hostile images rejected before qemu-img or an unpacker runs (a few ms each), and how many
#: more times a cycle through the mix runs each: about 130 ms a run on average, not 300.
QUICK = frozenset({"qcow2 backing file", "vmdk flat descriptor", "ova symlink", "ova dotdot", "qcow2 truncated",
                   "garbage"})
QUICK_REPEATS = 3


def rss_bytes() -> int:
    """The resident set size of this process now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in all (default 10000)")
    parser.add_argument("--baseline", type=int, default=1_000, help="runs before the baseline RSS (default 1000)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed growth over the baseline (0.10)")
    parser.add_argument("--window", type=int, default=100,
                        help="RSS is the median of the samples after each of the last N runs before a mark (100)")
    parser.add_argument("--every", type=int, default=1000, help="print RSS every N runs (default 1000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 0 < args.window <= args.baseline <= args.runs - args.window:
        parser.error("need 0 < --window <= --baseline <= --runs - --window")
    logging.disable(logging.CRITICAL)  # hostile images log a line each; not what is measured
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as temp:
        work = Path(temp, "work")
        work.mkdir()
        made = mixed_images(Path(temp, "images"))
        # Most mutants of a soak are rejected early: the quick hostile images come round more often.
        images = made + [image for image in made if image[0] in QUICK] * QUICK_REPEATS
        pipeline = Pipeline.from_settings(Settings(work_dir=work, plugins=PluginSettings(entry_points=False)))
        verdicts: dict[str, str] = {}
        problems: list[str] = []
        started = time.monotonic()
        fds = 0
        window_base: list[int] = []
        window_final: list[int] = []
        for number in range(1, args.runs + 1):
            name, path = images[number % len(images)]
            verdict = pipeline.run(ImportRequest(path=path, claims=Claims())).verdict.value
            if verdicts.setdefault(name, verdict) != verdict:
                problems.append(f"run {number}: {name} got {verdict}, earlier {verdicts[name]}")
            if args.baseline - args.window < number <= args.baseline:
                window_base.append(rss_bytes())
            elif number > args.runs - args.window:
                window_final.append(rss_bytes())
            if number == args.baseline:
                fds = open_fds()
            if number % args.every == 0 and not args.json:
                print(f"  after {number} runs: RSS {rss_bytes() / 2**20:.1f} MiB, {open_fds()} fds, "
                      f"{time.monotonic() - started:.0f} s", flush=True)
        baseline, final = statistics.median(window_base), statistics.median(window_final)
        if open_fds() > fds:
            problems.append(f"open file descriptors grew from {fds} to {open_fds()}")
        if left := os.listdir(work):
            problems.append(f"{len(left)} entries left in the work directory")
    ratio = final / baseline
    report = {
        "runs": args.runs, "baseline_runs": args.baseline, "images": len(made), "cycle": len(images),
        "rss_baseline_mib": round(baseline / 2**20, 1), "rss_final_mib": round(final / 2**20, 1),
        "window": args.window, "baseline_window_mib": [round(min(window_base) / 2**20, 1),
                                                       round(max(window_base) / 2**20, 1)],
        "final_window_mib": [round(min(window_final) / 2**20, 1), round(max(window_final) / 2**20, 1)],
        "ratio": round(ratio, 3), "target": 1 + args.tolerance, "seconds": round(time.monotonic() - started),
        "verdicts": verdicts, "problems": problems,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{len(made)} images (a cycle of {len(images)} runs), {args.runs} runs in {report['seconds']} s")
        print(f"RSS after {args.baseline} runs: {report['rss_baseline_mib']} MiB (median of runs "
              f"{args.baseline - args.window + 1} to {args.baseline}: {report['baseline_window_mib']})")
        print(f"RSS after {args.runs} runs: {report['rss_final_mib']} MiB (median of the last {args.window} runs: "
              f"{report['final_window_mib']})")
        print(f"ratio {ratio:.3f} (target at most {1 + args.tolerance:.2f})")
        for problem in problems:
            print("problem:", problem)
    return 0 if ratio <= 1 + args.tolerance and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
