"""No memory growth: many in-process runs of mixed images leave RSS, Python objects and file descriptors flat.

A fast regression test of the soak row (``benchmarks/bench_soak.py``, 10,000 runs):
after a warm-up, a few hundred more runs of benign and hostile images may not grow the
process's anonymous RSS, the memory Python allocates and keeps (tracemalloc) or its open
file descriptors, nor leave a file in the work directory.
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
from pathlib import Path

import pytest

from importhooks import Claims, ImportRequest, Pipeline, Settings, Verdict
from importhooks.settings import PluginSettings

from .fault_tools import mixed_images, open_fds

WARMUP = 150
RUNS = 200
TRACED_RUNS = 50
#: Growth allowed after the warm-up (glibc's arenas settle within a few hundred runs): far below
#: what a leak of one 1 MiB buffer a run (200 MiB) would show; Python's own leaks show in tracemalloc.
MAX_RSS_GROWTH = 6 << 20
MAX_TRACED_GROWTH = 512 << 10


def anonymous_rss() -> int:
    """This process's resident anonymous memory (the heap, stacks): where a leak shows.

    File-backed pages (libraries, libmagic's database) are left out: they are shared,
    bounded by the files' sizes, and paged in as new inputs touch new parts of them.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


#: The mix's images that qemu-img reads more than once (check, guest reads): the soak row has them;
#: here they would only make the test slow.
SLOW = frozenset({"qcow2", "vmdk", "ova"})


@pytest.fixture(scope="module")
def soak_images(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    return [(name, path) for name, path in mixed_images(tmp_path_factory.mktemp("soak")) if name not in SLOW]


def test_runs_of_mixed_images_do_not_grow_memory_or_fds(soak_images, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    pipeline = Pipeline.from_settings(Settings(work_dir=work, plugins=PluginSettings(entry_points=False)))
    verdicts: dict[str, set[Verdict]] = {}

    def run(count: int) -> None:
        for number in range(count):
            name, path = soak_images[number % len(soak_images)]
            verdicts.setdefault(name, set()).add(pipeline.run(ImportRequest(path=path, claims=Claims())).verdict)

    # pytest keeps every log record of a test for its report: hostile images log warnings,
    # and what pytest keeps is not what is measured.
    logging.disable(logging.CRITICAL)
    try:
        run(WARMUP)
        gc.collect()
        rss, fds = anonymous_rss(), open_fds()
        run(RUNS)
        gc.collect()
        grown = anonymous_rss() - rss
        tracemalloc.start()  # after the RSS check: its own tables take RSS
        try:
            run(TRACED_RUNS)
            gc.collect()
            traced, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        logging.disable(logging.NOTSET)
    print(f"RSS grew {grown} bytes in {RUNS} runs; {traced} bytes traced and held after {TRACED_RUNS} more")
    assert grown < MAX_RSS_GROWTH, f"RSS grew by {grown} bytes from {rss} in {RUNS} runs"
    assert traced < MAX_TRACED_GROWTH, f"{traced} bytes allocated by Python and still held after {TRACED_RUNS} runs"
    assert open_fds() == fds
    assert list(work.iterdir()) == []
    assert all(len(seen) == 1 for seen in verdicts.values()), verdicts
    assert verdicts["gzip"] == {Verdict.ACCEPT} and verdicts["qcow2 backing file"] == {Verdict.REJECT}
