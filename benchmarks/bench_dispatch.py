"""Dispatch overhead of the pipeline: 5 stages x 20 no-op plugins, built-ins off, empty input.

Run on demand (pytest never collects it: its name does not match ``test_*.py`` and
``testpaths`` is ``tests``)::

    .venv/bin/python benchmarks/bench_dispatch.py [--runs N] [--plugins N] [--json]

It times ``Pipeline.run`` over an empty staged file with every built-in plugin
disabled and ``--plugins`` (20) plugins registered through
``Pipeline.from_settings(settings, extra_plugins=...)``, each implementing the five
stage hooks with a function that does nothing (100 hook implementations). Measured
in the same process, interleaved, over the same number of runs:

* **pipeline, 0 plugins**: the same run with no plugin at all: the fixed cost of a
  run (worker thread, temporary directory, deadlines, result);
* **pluggy direct**: the same 100 functions, unguarded, registered in a bare pluggy
  ``PluginManager`` with importhooks' hookspecs and the five stage hooks called
  once each: what the dispatch costs without importhooks.

It prints the median microseconds per run of each, the ratios, and whether the
target, at most 1 ms per run for the 100-implementation pipeline, is met. Exit
status: 0 when it is, 1 when it is not.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

from importhooks import ImportRequest, Pipeline, Settings, Verdict, hookimpl, hookspecs
from importhooks.plugins import DEFAULT_PLUGINS
from importhooks.settings import STAGES, PluginSettings

TARGET_US = 1000.0
BUILTIN_NAMES = tuple(module.rsplit(".", 1)[1] for module in DEFAULT_PLUGINS)


def noop_plugin(index: int, calls: list[str] | None = None) -> types.ModuleType:
    """A plugin module with one ``@hookimpl`` per stage hook that does nothing.

    With ``calls``, each function records its call instead (for the sanity check,
    never while timing).
    """
    module = types.ModuleType(f"bench_noop_{index:02d}")
    for stage in STAGES:
        hook_name = f"importhooks_{stage}"
        impl = _noop() if calls is None else _counting(calls, f"{module.__name__}.{hook_name}")
        impl.__name__ = impl.__qualname__ = hook_name
        setattr(module, hook_name, hookimpl(impl))
    return module


def _noop() -> Callable[[Any], None]:
    def impl(context: Any) -> None:
        return None

    return impl


def _counting(calls: list[str], name: str) -> Callable[[Any], None]:
    def impl(context: Any) -> None:
        calls.append(name)

    return impl


def bench_settings(work_dir: Path) -> Settings:
    return Settings(work_dir=work_dir, plugins=PluginSettings(disabled=BUILTIN_NAMES, entry_points=False))


def build_pipeline(work_dir: Path, plugins: int, calls: list[str] | None = None) -> Pipeline:
    extra = [(f"noop{i:02d}", noop_plugin(i, calls)) for i in range(plugins)]
    return Pipeline.from_settings(bench_settings(work_dir), extra_plugins=extra)


def build_pluggy_direct(plugins: int) -> Callable[[], None]:
    """The baseline: the same no-op functions in a bare pluggy manager, each stage hook called once."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for i in range(plugins):
        pm.register(noop_plugin(i), name=f"noop{i:02d}")
    callers = [getattr(pm.hook, f"importhooks_{stage}") for stage in STAGES]

    def run() -> None:
        for caller in callers:
            caller(context=None)

    return run


def sanity_check(work_dir: Path, staged: Path, plugins: int) -> None:
    """One run with counting plugins: every no-op hook is called once, the verdict is accept."""
    calls: list[str] = []
    pipeline = build_pipeline(work_dir, plugins, calls)
    loaded = [name for name, info in pipeline.registry.infos.items() if info.enabled]
    if any(name in loaded for name in BUILTIN_NAMES):
        raise SystemExit(f"bench_dispatch.py: a built-in plugin is enabled: {loaded}")
    result = pipeline.run(ImportRequest(staged))
    if result.verdict is not Verdict.ACCEPT:
        raise SystemExit(f"bench_dispatch.py: the run was rejected: {[f.code for f in result.findings]}")
    expected = plugins * len(STAGES)
    if len(calls) != expected or len(set(calls)) != expected:
        raise SystemExit(f"bench_dispatch.py: {len(calls)} hook calls in one run, expected {expected}")


def measure(variants: dict[str, Callable[[], object]], runs: int, warmup: int, block: int = 50) -> dict[str, list[int]]:
    """Per-run times in ns of each variant, measured in interleaved blocks so drift hits all alike."""
    samples: dict[str, list[int]] = {name: [] for name in variants}
    for function in variants.values():
        for _ in range(warmup):
            function()
    gc.collect()
    clock = time.perf_counter_ns
    done = 0
    while done < runs:
        count = min(block, runs - done)
        for name, function in variants.items():
            times = samples[name]
            for _ in range(count):
                start = clock()
                function()
                times.append(clock() - start)
        done += count
    return samples


def summarize(times_ns: list[int]) -> dict[str, float]:
    us = sorted(t / 1000 for t in times_ns)
    return {
        "median_us": statistics.median(us),
        "p10_us": us[len(us) // 10],
        "p90_us": us[(len(us) * 9) // 10],
        "min_us": us[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3000, help="timed runs of each variant (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed runs of each variant first (default 200)")
    parser.add_argument("--plugins", type=int, default=20, help="no-op plugins, each with the 5 stage hooks")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="importhooks-bench-") as tmp:
        root = Path(tmp)
        work_dir = root / "work"
        work_dir.mkdir()
        staged = root / "empty.img"
        staged.touch()
        sanity_check(work_dir, staged, args.plugins)

        full = build_pipeline(work_dir, args.plugins)
        bare = build_pipeline(work_dir, 0)
        request = ImportRequest(staged)
        samples = measure(
            {
                "pipeline": lambda: full.run(request),
                "pipeline_0_plugins": lambda: bare.run(request),
                "pluggy_direct": build_pluggy_direct(args.plugins),
            },
            args.runs,
            args.warmup,
        )
        leftovers = list(work_dir.iterdir())
        if leftovers:
            raise SystemExit(f"bench_dispatch.py: runs left files behind: {leftovers[:3]}")

    stats = {name: summarize(times) for name, times in samples.items()}
    full_us = stats["pipeline"]["median_us"]
    bare_us = stats["pipeline_0_plugins"]["median_us"]
    direct_us = stats["pluggy_direct"]["median_us"]
    impls = args.plugins * len(STAGES)
    report = {
        "plugins": args.plugins,
        "hook_implementations": impls,
        "runs": args.runs,
        "python": sys.version.split()[0],
        "pluggy": pluggy.__version__,
        "stats": stats,
        "ratio_to_pluggy_direct": full_us / direct_us,
        "ratio_to_pipeline_0_plugins": full_us / bare_us,
        "dispatch_us": full_us - bare_us,
        "dispatch_ratio_to_pluggy_direct": (full_us - bare_us) / direct_us,
        "target_us": TARGET_US,
        "target_met": full_us <= TARGET_US,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"importhooks dispatch benchmark: {len(STAGES)} stages x {args.plugins} no-op plugins "
              f"({impls} hook implementations), built-ins disabled, empty input")
        print(f"Python {report['python']}, pluggy {report['pluggy']}; median of {args.runs} runs each "
              f"(after {args.warmup} warm-up runs), interleaved")
        rows = [("pipeline, 100 no-op impls" if impls == 100 else f"pipeline, {impls} no-op impls", "pipeline"),
                ("baseline: pipeline, 0 plugins", "pipeline_0_plugins"),
                (f"baseline: pluggy direct, {impls} impls", "pluggy_direct")]
        for label, key in rows:
            s = stats[key]
            print(f"  {label:<34} {s['median_us']:9.1f} us/run   (p10 {s['p10_us']:.1f}, p90 {s['p90_us']:.1f})")
        print(f"  ratio pipeline / pluggy direct:     {report['ratio_to_pluggy_direct']:6.1f}x")
        print(f"  ratio pipeline / pipeline 0 plugins:{report['ratio_to_pipeline_0_plugins']:6.2f}x")
        print(f"  dispatch of the {impls} impls in the pipeline: {report['dispatch_us']:.1f} us "
              f"({report['dispatch_ratio_to_pluggy_direct']:.1f}x pluggy direct)")
        verdict = "met" if report["target_met"] else "NOT met"
        print(f"target: <= {TARGET_US:.0f} us per run: {verdict} ({full_us:.1f} us)")
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
