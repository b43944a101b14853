"""What a run returns to its embedder, and its JSON form (the audit's ``--format json``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .data import Checksums
from .findings import Finding, Verdict

if TYPE_CHECKING:
    from .context import ImportContext


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Layer:
    """One data layer's facts: the staged data, then each sanitized form of it."""

    kind: str
    size: int
    facts: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, **self.facts}


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The verdict and everything the run found out.

    ``detected`` is the facts of the data that would be stored (the last layer);
    ``layers`` has every layer's facts, the staged data first.
    """

    request_id: str
    verdict: Verdict
    findings: tuple[Finding, ...]
    layers: tuple[Layer, ...]
    properties: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    checksums: Checksums | None = None
    elapsed_s: float = 0.0

    @property
    def accepted(self) -> bool:
        """Whether the verdict is ``accept``."""
        return self.verdict is Verdict.ACCEPT

    @property
    def detected(self) -> Mapping[str, Any]:
        """The facts of the data that would be stored (the last layer)."""
        return self.layers[-1].facts if self.layers else {}

    @property
    def user_message(self) -> str | None:
        """One line for the image's ``message`` field: the first error's user-safe message."""
        for finding in self.findings:
            if finding.severity.value == "error":
                return finding.message
        return None

    @classmethod
    def from_context(cls, context: ImportContext, verdict: Verdict, findings: tuple[Finding, ...],
                     elapsed_s: float) -> ImportResult:
        layers = tuple(Layer(d.kind, d.size, _frozen(d.facts)) for d in context.layers)
        return cls(context.request_id, verdict, findings, layers, _frozen(context.properties),
                   context.checksums, elapsed_s)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: verdict, findings, detected, layers, properties, checksums, elapsed_s."""
        return {
            "verdict": self.verdict.value,
            "findings": [f.to_dict() for f in self.findings],
            "detected": dict(self.detected),
            "layers": [layer.to_dict() for layer in self.layers],
            "properties": dict(self.properties),
            "checksums": self.checksums.to_dict() if self.checksums else None,
            "elapsed_s": round(self.elapsed_s, 6),
        }
