#!/usr/bin/env bash
# The demo: build a benign and a hostile image into samples/, audit them, check the verdicts.
#
# samples/benign.qcow2 is an empty, self-contained qcow2; samples/hostile.qcow2 is
# a qcow2 whose backing file is /etc/passwd (the OSSA-2024-001 pattern). The audit
# must accept the first and reject the second, so it exits 1; this script exits 0
# only when exactly that happened, and non-zero otherwise.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
cd "$REPO"

[[ -x "$VENV/bin/importhooks" ]] || { echo "demo.sh: run scripts/setup.sh first" >&2; exit 1; }

echo "==> demo: building samples/ with qemu-img"
"$VENV/bin/python" scripts/make_samples.py --clean samples

echo "==> demo: importhooks audit samples/* --format text"
rc=0
"$VENV/bin/importhooks" audit samples/* --format text || rc=$?
if [[ $rc != 1 ]]; then
    echo "demo.sh: expected exit 1 (one image rejected), got $rc" >&2
    exit 1
fi

echo "==> demo: checking the verdicts (importhooks audit samples/* --format json)"
rc=0
report="$("$VENV/bin/importhooks" audit samples/* --format json)" || rc=$?
if [[ $rc != 1 ]]; then
    echo "demo.sh: expected exit 1 from the JSON audit, got $rc" >&2
    exit 1
fi
printf '%s' "$report" | "$VENV/bin/python" scripts/check_demo.py
