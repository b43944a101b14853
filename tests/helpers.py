"""Shared pieces of the tests: audit a file, read its finding codes, patch and cut copies of templates,
read the documented plugin options.

Plain functions; each test module still builds its own templates (the images differ), and
hands them to :func:`copier` for its ``copy`` fixture.
"""

from __future__ import annotations

import shutil
import struct
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from importhooks import Claims, ImportRequest, ImportResult, Pipeline, Settings, Verdict

Copy = Callable[[str], Path]
DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Codes that must never end a run on hostile input: a crash or a runaway read.
CRASH_CODES = ("pipeline.plugin_failed", "data.read_budget")


def audit(settings: Settings, path: Path, **claims: str) -> ImportResult:
    """Run the pipeline over ``path``; hostile input must end in a finding, never in a crash or a runaway read."""
    result = Pipeline.from_settings(settings).run(ImportRequest(path=path, claims=Claims(**claims)))
    failed = [f for f in result.findings if f.code in CRASH_CODES]
    assert not failed, failed
    return result


def codes(result: ImportResult) -> list[str]:
    return [f.code for f in result.findings]


def rejected_with(settings: Settings, path: Path, code: str, **claims: str) -> ImportResult:
    """:func:`audit` ``path`` and assert a reject that names ``code``."""
    result = audit(settings, path, **claims)
    assert result.verdict is Verdict.REJECT
    assert code in codes(result), result.findings
    return result


def assert_messages_omit(result: ImportResult, *texts: str) -> None:
    """User messages name none of ``texts`` (host paths, image text)."""
    for finding in result.findings:
        assert not any(text in finding.message for text in texts), finding


def copier(templates: dict[str, Path], directory: Path, suffix: str) -> Copy:
    """A ``copy(name)`` that copies template ``name`` to ``directory/<name><suffix>`` for a test to patch."""
    def make(name: str) -> Path:
        target = directory / f"{name}{suffix}"
        shutil.copyfile(templates[name], target)
        return target

    return make


def patch(path: Path, offset: int, fmt: str, *values: int | bytes) -> None:
    """Overwrite fields of ``path`` in place (``fmt`` is a struct format and names the byte order)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(struct.pack(fmt, *values))


def unpack_at(path: Path, offset: int, fmt: str) -> int:
    """The one integer field ``fmt`` at ``offset`` of ``path``."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return int(struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0])


def truncate(path: Path, length: int) -> Path:
    """Cut ``path`` to ``length`` bytes in place."""
    with open(path, "r+b") as handle:
        handle.truncate(length)
    return path


def cut_copy(template: Path, length: int) -> Path:
    """The first ``length`` bytes of ``template``, as ``cut-<length><suffix>`` beside it."""
    path = template.with_name(f"cut-{length}{template.suffix}")
    with open(template, "rb") as source:
        path.write_bytes(source.read(length))
    return path


def documented_options(page: str, section: str = "") -> dict[str, Any]:
    """The ``[plugin.SECTION] with its defaults`` TOML block of ``docs/PAGE`` (the first if no section), parsed."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    marker = f"[plugin.{section}] with its defaults" if section else "with its defaults"
    start = next(i for i, line in enumerate(lines) if marker in line) + 2
    end = next(i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith("   "))
    return tomllib.loads(textwrap.dedent("\n".join(lines[start:end])))
