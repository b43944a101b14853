"""The fuzz targets (fuzz/) do not rot: each runs under atheris for a few hundred executions.

One ``python -m fuzz.run --all -runs=N`` process imports the code under atheris' coverage
instrumentation once and forks one libFuzzer run per target, with the target's dictionary
(libFuzzer refuses a malformed one): every target must finish its N executions with no crash.
The harness's own checks are tested here too: a broken invariant must fail the run, and the
seed builders of the fast targets must make seeds their target accepts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import make_corpus
from fuzz.harness import FuzzFailure, PipelineHarness, expect
from fuzz.targets import FAMILIES, all_targets
from importhooks import Claims, Verdict

from . import disk_builders as b

REPO = Path(__file__).resolve().parent.parent
RUNS = 150


def test_every_target_is_registered_with_a_dictionary():
    targets = all_targets()
    assert len(targets) >= 17
    assert {t.family for t in targets.values()} == {f.split(".")[1] for f in FAMILIES}
    for target in targets.values():
        entries = [line for line in target.dict_path.read_text().splitlines() if line and not line.startswith("#")]
        assert entries and all(re.fullmatch(r'\w+="[^"]*"', line) for line in entries), target.dictionary


def test_every_target_runs_under_atheris(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "fuzz.run", "--all", f"-runs={RUNS}",
                           f"-artifact_prefix={tmp_path}/"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    log = done.stderr
    names = list(all_targets())
    exits = dict(re.findall(r"^fuzz\.run: (\w+) exit (-?\d+)$", log, re.MULTILINE))
    assert exits == {name: "0" for name in names}, log[-3000:]
    assert len(re.findall(rf"^Done {RUNS} runs in", log, re.MULTILINE)) == len(names)
    assert done.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no crash artifact, no temporary file left


def test_the_harness_fails_a_run_that_leaves_a_file(tmp_path):
    harness = PipelineHarness(("disk_format",), Claims(disk_format="qcow2"))
    image = b.qemu_image(tmp_path / "disk.qcow2", "qcow2_v3").read_bytes()
    assert harness(image).verdict is Verdict.ACCEPT
    (harness.work_dir / "stray").write_bytes(b"x")
    with pytest.raises(FuzzFailure, match="left"):
        harness(image)
    assert list(harness.work_dir.iterdir()) == []


def test_the_harness_fails_an_unexpected_exception():
    assert expect((ValueError,), int, "x") is None
    with pytest.raises(FuzzFailure, match="TypeError escaped"):
        expect((ValueError,), int, [])


@pytest.mark.parametrize("name", ["ovf", "settings", "import_request", "service_body", "compression"])
def test_seeds_are_made_and_accepted(name, tmp_path):
    assert make_corpus.main(["--out", str(tmp_path), name]) == 0
    seeds = sorted((tmp_path / name).iterdir())
    assert seeds
    one = all_targets()[name].factory()
    for seed in seeds:
        result = one(seed.read_bytes())
        if name in ("ovf", "compression"):
            assert result is not None and getattr(result, "verdict", Verdict.ACCEPT) is Verdict.ACCEPT, seed.name
