"""Findings: what a plugin (or the framework) found, and the verdict they add up to.

A plugin declares the codes it may report as :class:`FindingCode` constants and
returns them from ``importhooks_finding_codes``; it reports with
``context.report(CODE, detail=...)``. The pipeline stamps each :class:`Finding` with the
stage and the plugin that reported it, so a plugin cannot speak for another.
"""

from __future__ import annotations

import enum
import re
import threading
from dataclasses import dataclass
from typing import Any

_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


class Severity(enum.Enum):
    """How bad a finding is. Any ``ERROR`` makes the verdict ``reject``."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Verdict(enum.Enum):
    """The outcome of an import run."""

    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class FindingCode:
    """A stable, documented finding code.

    ``code`` is dotted and lower case (``qcow2.backing_file``); ``summary`` is the
    user-safe message used when the reporter gives none; ``help`` says what it means
    and what to do about it (the docs' codes table and SARIF rules show it).
    """

    code: str
    summary: str
    help: str
    severity: Severity = Severity.ERROR

    def __post_init__(self) -> None:
        if not _CODE_RE.match(self.code):
            raise ValueError(f"finding code {self.code!r} is not dotted lower case like 'qcow2.backing_file'")


@dataclass(frozen=True, slots=True)
class Finding:
    """One immutable finding of one run.

    ``message`` is safe to show the image's owner (no host paths, no tracebacks);
    ``detail`` is for operators only and may name internals.
    """

    code: str
    severity: Severity
    stage: str
    plugin: str
    message: str
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "stage": self.stage,
            "plugin": self.plugin,
            "message": self.message,
            "detail": self.detail,
        }


def verdict_of(findings: tuple[Finding, ...] | list[Finding]) -> Verdict:
    """``reject`` if any finding is an error, else ``accept``."""
    if any(f.severity is Severity.ERROR for f in findings):
        return Verdict.REJECT
    return Verdict.ACCEPT


class FindingSink:
    """Append-only, thread-safe store of one run's findings.

    Plugins never hold it: they report through the context, and nothing can remove
    a finding once recorded, whichever hook wrapper runs around the reporter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._findings: list[Finding] = []

    def add(self, finding: Finding) -> None:
        with self._lock:
            self._findings.append(finding)

    def snapshot(self) -> tuple[Finding, ...]:
        with self._lock:
            return tuple(self._findings)

    def has_errors(self) -> bool:
        with self._lock:
            return any(f.severity is Severity.ERROR for f in self._findings)
