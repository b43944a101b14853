#!/usr/bin/env bash
# Run every check of importhooks: ruff, mypy, the docs build, the whole pytest suite.
#
# Uses $REPO/.venv (made by scripts/setup.sh). Every step runs even when an earlier
# one fails; the script exits non-zero if any step failed, and pytest collecting no
# test at all counts as a failure. Extra arguments go to pytest.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
cd "$REPO"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "test.sh: no virtual environment at $VENV; run scripts/setup.sh first" >&2
    exit 1
fi
export PATH="$VENV/bin:$PATH"

failed=()
step() {
    local name=$1
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    local rc=0
    "$@" || rc=$?
    if [[ $rc != 0 ]]; then
        failed+=("$name (exit $rc)")
    fi
}

step ruff   ruff check importhooks plugins tests benchmarks examples scripts fuzz
step mypy   mypy importhooks plugins examples/site_plugin/src examples/image_service/src fuzz
# --no-color: Sphinx colours its output whenever CI=true, even into a log file.
step docs   sphinx-build -W --keep-going --no-color -b html docs docs/_build/html
# Last, so its summary line closes the log. Exit 5 (no test collected) fails like any non-zero exit.
step pytest python -m pytest -q "$@"

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
# Nothing printed after success: pytest's summary line closes the log.
