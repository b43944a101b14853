"""Shared pieces of the VMDK tests: one pipeline run and its assertions, qemu-img as the reader to agree with,
and the pristine images the tests patch copies of."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Settings, Verdict

from . import vmdk_images as v
from .helpers import codes


def audit(settings: Settings, path: Path, **claims: str) -> ImportResult:
    return Pipeline.from_settings(settings).run(ImportRequest(path=path, claims=Claims(**claims)))


def rejected_with(settings: Settings, path: Path, code: str, **claims: str) -> ImportResult:
    """Audit ``path``; assert a reject naming ``code``, no plugin failure, no untrusted text in messages."""
    result = audit(settings, path, **claims)
    found = codes(result)
    assert result.verdict is Verdict.REJECT, found
    assert code in found, (code, [(f.code, f.detail) for f in result.findings])
    assert "pipeline.plugin_failed" not in found
    for finding in result.findings:
        assert "passwd" not in finding.message and "/" not in finding.message, finding
    return result


def accepted_with_warnings(settings: Settings, path: Path, *warnings: str) -> ImportResult:
    """Audit ``path`` claimed vmdk; assert it is accepted, with exactly ``warnings`` as findings."""
    result = audit(settings, path, disk_format="vmdk")
    assert result.verdict is Verdict.ACCEPT, [(f.code, f.detail) for f in result.findings]
    assert sorted(codes(result)) == sorted(warnings), result.findings
    assert all(f.severity.value == "warning" for f in result.findings)
    return result


def qemu_opens(path: Path) -> None:
    """qemu-img opens ``path`` as a VMDK and reads every sector of it (``convert`` to raw)."""
    out = path.with_suffix(".out")
    for command in (["info", "-f", "vmdk", str(path)], ["convert", "-f", "vmdk", "-O", "raw", str(path), str(out)]):
        run = subprocess.run(["qemu-img", *command], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    out.unlink()


def qemu_same_disk(first: Path, second: Path) -> None:
    """qemu-img reads the same disk from both VMDKs (``compare``)."""
    run = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "vmdk", str(first), str(second)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def detail(result: ImportResult, code: str) -> str:
    return " ".join(f.detail or "" for f in result.findings if f.code == code)


def pristine_images(base: Path) -> dict[str, Path]:
    """The images the VMDK tests patch copies of, made once per module by qemu-img."""
    return {
        "sparse": v.created(base / "sparse.vmdk", "monolithicSparse"),
        "stream": v.created(base / "stream.vmdk", "streamOptimized"),
        "sparse_data": v.converted(base / "sparse_data.vmdk", "monolithicSparse"),
        "stream_data": v.converted(base / "stream_data.vmdk", "streamOptimized"),
        "sparse_big": v.converted(base / "sparse_big.vmdk", "monolithicSparse", random=3 << 20),
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images made once per module; tests patch copies of them."""
    return pristine_images(tmp_path_factory.mktemp("vmdk"))


@pytest.fixture
def copy(pristine: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """A fresh copy of one pristine image, for a test to patch."""

    def make(name: str) -> Path:
        return Path(shutil.copy(pristine[name], tmp_path / f"{name}.vmdk"))

    return make
