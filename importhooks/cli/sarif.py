"""SARIF 2.1.0 output of ``importhooks audit --format sarif``.

One run of one tool (``importhooks``); its rules are every finding code of the
pipeline's catalog, so a code-scanning UI can explain a code even when no image
reported it. Each finding becomes one result located at the audited path; each
path becomes one artifact whose ``properties.verdict`` carries the verdict (SARIF
has no notion of a verdict, and an accepted image has no results at all).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..findings import FindingCode, Severity
from ..result import ImportResult

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://docs.openstack.org/glance/latest/admin/interoperable-image-import.html"
#: The uriBaseId of relative paths; ``originalUriBaseIds`` maps it to the working directory.
SRCROOT = "%SRCROOT%"

LEVELS: Mapping[Severity, str] = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def artifact_location(path: str) -> dict[str, Any]:
    """The SARIF ``artifactLocation`` of ``path``.

    An absolute path becomes a ``file://`` URI; a relative one a percent-encoded
    relative reference against :data:`SRCROOT` (the working directory). Bytes that
    are not UTF-8 (surrogate-escaped by Python) are percent-encoded as they are.
    """
    if os.path.isabs(path):
        return {"uri": "file://" + quote(os.fsencode(os.path.normpath(path)))}
    return {"uri": quote(os.fsencode(Path(path).as_posix())), "uriBaseId": SRCROOT}


def _hash_name(algorithm: str) -> str:
    """SARIF hash names follow the IANA registry: ``sha-512``, ``sha-256``, ``md5``."""
    lowered = algorithm.lower()
    if lowered.startswith("sha") and lowered[3:].isdigit():
        return f"sha-{lowered[3:]}"
    return lowered


def _rule(code: FindingCode) -> dict[str, Any]:
    return {
        "id": code.code,
        "shortDescription": {"text": code.summary},
        "fullDescription": {"text": code.help or code.summary},
        "help": {"text": code.help or code.summary},
        "defaultConfiguration": {"level": LEVELS[code.severity]},
    }


def _artifact(path: str, result: ImportResult | None) -> dict[str, Any]:
    artifact: dict[str, Any] = {"location": artifact_location(path), "roles": ["analysisTarget"]}
    if result is None:
        artifact["properties"] = {"verdict": None}
        return artifact
    if result.layers:
        artifact["length"] = result.layers[0].size
    sums = result.checksums
    if sums is not None and len(result.layers) == 1:  # the stored data is the file itself
        artifact["hashes"] = {"md5": sums.md5, _hash_name(sums.hash_algo): sums.hash_value}
    artifact["properties"] = {"verdict": result.verdict.value, "detected": dict(result.detected),
                              "requestId": result.request_id}
    return artifact


def build_sarif(
    audited: Sequence[tuple[str, ImportResult | None]],
    catalog: Mapping[str, FindingCode],
    version: str,
    *,
    errors: Sequence[tuple[str, str]] = (),
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Build the SARIF log of one audit.

    :param audited: each path in argument order, with its result (``None`` if the
        path could not be audited).
    :param catalog: the pipeline's finding codes (``Pipeline.catalog``), the rules.
    :param version: the importhooks version for ``tool.driver.version``.
    :param errors: ``(path, message)`` of paths that could not be audited; they
        become tool execution notifications and mark the invocation unsuccessful.
    :param cwd: the directory relative paths are relative to (default: the current one).
    """
    base = (cwd or Path.cwd()).resolve()
    codes = dict(sorted(catalog.items()))
    rules = [_rule(code) for code in codes.values()]
    index = {code: number for number, code in enumerate(codes)}
    results: list[dict[str, Any]] = []
    for artifact_index, (path, result) in enumerate(audited):
        for finding in result.findings if result is not None else ():
            if finding.code not in index:  # reported with an undeclared code: give it a rule anyway
                index[finding.code] = len(rules)
                rules.append(_rule(FindingCode(finding.code, finding.message, "", finding.severity)))
            text = finding.message + (f" Detail: {finding.detail}" if finding.detail else "")
            location = {**artifact_location(path), "index": artifact_index}
            results.append({
                "ruleId": finding.code,
                "ruleIndex": index[finding.code],
                "level": LEVELS[finding.severity],
                "message": {"text": text},
                "locations": [{"physicalLocation": {"artifactLocation": location}}],
                "properties": {"stage": finding.stage, "plugin": finding.plugin,
                               "severity": finding.severity.value},
            })
    invocation: dict[str, Any] = {"executionSuccessful": not errors}
    if errors:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": message},
             "locations": [{"physicalLocation": {"artifactLocation": artifact_location(path)}}]}
            for path, message in errors
        ]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "importhooks", "version": version,
                            "informationUri": INFORMATION_URI, "rules": rules}},
        "originalUriBaseIds": {SRCROOT: {"uri": "file://" + quote(os.fsencode(base.as_posix().rstrip("/") + "/"))}},
        "invocations": [invocation],
        "artifacts": [_artifact(path, result) for path, result in audited],
        "results": results,
    }
    return {"$schema": SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
