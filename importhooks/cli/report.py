"""Rendering audit results for people (``text``) and for programs (``json``).

Everything shown in text form passes through :func:`importhooks.text.escape`: finding details, facts
and even the paths come from untrusted data or users, and must not be able to move
the cursor, recolour the terminal or forge lines of output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..findings import Verdict
from ..request import Requester
from ..result import ImportResult
from ..text import escape
from ..units import format_size


def result_record(path: str, result: ImportResult) -> dict[str, Any]:
    """The JSON-ready record of one audited path: ``path`` and ``request_id`` then ``ImportResult.to_dict()``."""
    return {"path": path, "request_id": result.request_id, **result.to_dict()}


def render_json(path: str, result: ImportResult) -> str:
    """One audited path as one line of JSON (control characters are escaped by JSON itself)."""
    return json.dumps(result_record(path, result), default=str, separators=(", ", ": "))


def _format_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as in the JSON output, not Python's True
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith("size"):
        return f"{value} ({format_size(value)})" if value >= 1024 else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(escape(item) for item in value) + "]"
    return escape(value)


def _facts_line(facts: Mapping[str, Any]) -> str:
    """``key=value, ...``; a fact whose value is unknown (``None``, JSON's ``null``) is left out."""
    shown = {key: value for key, value in facts.items() if value is not None}
    if not shown:
        return "none"
    return ", ".join(f"{escape(key)}={_format_value(str(key), value)}" for key, value in shown.items())


def _finding_lines(result: ImportResult) -> list[str]:
    if not result.findings:
        return ["  findings: none"]
    lines = [f"  findings ({len(result.findings)}):"]
    for finding in result.findings:
        lines.append(f"    {finding.severity.value} {escape(finding.code)} "
                     f"[stage {escape(finding.stage)}, plugin {escape(finding.plugin)}]")
        lines.append(f"      {escape(finding.message)}")
        if finding.detail:
            lines.append(f"      detail: {escape(finding.detail)}")
    return lines


def render_text(path: str, result: ImportResult) -> str:
    """A block of lines for people: verdict, findings, facts, properties and checksums of one path."""
    lines = [f"{escape(path)}: {result.verdict.value.upper()}"]
    lines.extend(_finding_lines(result))
    lines.append(f"  detected: {_facts_line(result.detected)}")
    if len(result.layers) > 1:
        lines.append("  layers:")
        for number, layer in enumerate(result.layers, 1):
            size = f"{layer.size} bytes" + (f" ({format_size(layer.size)})" if layer.size >= 1024 else "")
            lines.append(f"    {number}. {escape(layer.kind)}, {size}: {_facts_line(layer.facts)}")
    if result.properties:
        lines.append(f"  properties: {_facts_line(result.properties)}")
    if result.checksums is None:
        lines.append("  checksums: none (not computed for a rejected image)")
    else:
        sums = result.checksums
        lines.append(f"  checksums: checksum (md5)={escape(sums.md5)}")
        lines.append(f"             os_hash_algo={escape(sums.hash_algo)}")
        lines.append(f"             os_hash_value={escape(sums.hash_value)}")
    lines.append(f"  elapsed: {result.elapsed_s:.3f} s")
    return "\n".join(lines)


def render_summary(verdicts: Iterable[Verdict], errors: int = 0) -> str:
    """The last line of text output: how many paths were accepted, rejected, or failed."""
    listed = list(verdicts)
    accepted = sum(1 for v in listed if v is Verdict.ACCEPT)
    total = len(listed) + errors
    summary = f"{total} path{'s' if total != 1 else ''}: {accepted} accepted, {len(listed) - accepted} rejected"
    return summary + (f", {errors} not audited" if errors else "")


def render_requester(requester: Requester) -> str:
    """The line of text output saying who the audit imports as (anonymous without ``--user`` and the like)."""
    if requester == Requester():
        return "requester: anonymous (no --user, --project or --role given)"
    parts = [f"{label} {escape(value)}" for label, value in (("user", requester.user),
                                                             ("project", requester.project)) if value is not None]
    if requester.roles:
        parts.append("roles " + ", ".join(escape(role) for role in requester.roles))
    return "requester: " + "; ".join(parts)


def one_line(message: str) -> str:
    """An error message as one line: its lines joined with '; ', every other control character escaped.

    Backslashes stay single: the message's own quoting (``repr`` of a bad value) is
    shown as written, not escaped a second time.
    """
    joined = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    return "\\".join(escape(piece) for piece in joined.split("\\"))
