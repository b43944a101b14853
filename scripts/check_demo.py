#!/usr/bin/env python3
"""Check the demo's audit: read ``importhooks audit --format json`` output on stdin.

Passes (exit 0) only if every ``benign*`` sample was accepted, every ``hostile*``
sample was rejected with the ``qcow2.backing_file`` finding, and both kinds were
audited. Prints one line per sample; exit 1 with the reason otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import PurePath
from typing import Any

EXPECTED_HOSTILE_CODE = "qcow2.backing_file"


def parse(text: str) -> list[dict[str, Any]]:
    """The audit's records: one JSON object per line, or one JSON array (or ``{"results": [...]}``)."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(whole, dict):
        whole = whole.get("results", [whole])
    if not isinstance(whole, list) or not all(isinstance(r, dict) and "verdict" in r for r in whole):
        raise ValueError("expected records with a 'verdict' each")
    return whole


def check(records: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    seen = {"benign": 0, "hostile": 0}
    for record in records:
        name = PurePath(str(record.get("path", "?"))).name
        verdict = record["verdict"]
        codes = sorted({str(f["code"]) for f in record.get("findings", ()) if isinstance(f, dict) and "code" in f})
        print(f"  {name}: {verdict} {' '.join(codes)}".rstrip())
        if name.startswith("benign"):
            seen["benign"] += 1
            if verdict != "accept":
                problems.append(f"{name}: expected accept, got {verdict} {codes}")
        elif name.startswith("hostile"):
            seen["hostile"] += 1
            if verdict != "reject":
                problems.append(f"{name}: expected reject, got {verdict}")
            elif EXPECTED_HOSTILE_CODE not in codes:
                problems.append(f"{name}: rejected, but without {EXPECTED_HOSTILE_CODE} (got {codes})")
        else:
            problems.append(f"{name}: not a demo sample (benign* or hostile*)")
    problems += [f"no {kind} sample in the report" for kind, count in seen.items() if not count]
    return problems


def main() -> int:
    try:
        records = parse(sys.stdin.read())
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        print(f"check_demo.py: the audit's JSON output is not as expected: {exc}", file=sys.stderr)
        return 1
    problems = check(records)
    for problem in problems:
        print(f"check_demo.py: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("demo OK: the benign image is accepted, the hostile one rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
