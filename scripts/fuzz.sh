#!/usr/bin/env bash
# Fuzz importhooks' parsers with atheris (libFuzzer): scripts/fuzz.sh [--time SECONDS] [--target NAME] ...
#
#   --time SECONDS   how long each target runs (-max_total_time; default 60)
#   --target NAME    one target (repeatable; default: every target, one after the other)
#   --rss MB         libFuzzer's -rss_limit_mb (default 2048)
#   --list           name the targets and exit
#   -- ARGS          further libFuzzer options, e.g. -- -runs=100000 -jobs=1
#
# One target runs at a time, under nice -n 19 (the machine is shared). Seeds come from
# fuzz/make_corpus.py (made when a target's corpus is missing) and grow in fuzz/corpus/NAME;
# crashes land in fuzz/out/artifacts/NAME/ and this run's are minimized there
# (-minimize_crash=1, into crash-*.min; move them away once fixed); each run appends "date target seconds executions crashes" to
# fuzz/out/runs.tsv. fuzz/corpus and fuzz/out are git-ignored. Exits 1 if any target crashed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
cd "$REPO"

TIME=60
RSS=2048
TARGETS=()
EXTRA=()
while (($#)); do
    case "$1" in
        --time) TIME=$2; shift 2 ;;
        --target) TARGETS+=("$2"); shift 2 ;;
        --rss) RSS=$2; shift 2 ;;
        --list) exec "$PY" -m fuzz.run --list 2>/dev/null ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -x "$PY" ]] || { echo "fuzz.sh: no $PY; run scripts/setup.sh first" >&2; exit 1; }
if ((${#TARGETS[@]} == 0)); then
    mapfile -t TARGETS < <("$PY" -m fuzz.run --list 2>/dev/null | awk '{print $1}')
fi

OUT="$REPO/fuzz/out"
mkdir -p "$OUT/logs"
crashed=0
for target in "${TARGETS[@]}"; do
    corpus="$REPO/fuzz/corpus/$target"
    if [[ -z "$(ls -A "$corpus" 2>/dev/null)" ]]; then
        nice -n 19 "$PY" -m fuzz.make_corpus "$target"
    fi
    artifacts="$OUT/artifacts/$target"
    work="$OUT/tmp/$target-$$"
    log="$OUT/logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
    mkdir -p "$artifacts" "$work"
    touch "$work/started"  # artifacts newer than this are this run's
    echo "==> $target: ${TIME}s, log $log"
    rc=0
    TMPDIR="$work" nice -n 19 "$PY" -m fuzz.run "$target" -max_total_time="$TIME" -rss_limit_mb="$RSS" \
        -timeout=120 -artifact_prefix="$artifacts/" -print_final_stats=1 "${EXTRA[@]}" "$corpus" \
        >"$log" 2>&1 || rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -1)
    found=0
    for crash in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-*; do
        [[ -e "$crash" && "$crash" != *.min && "$crash" -nt "$work/started" ]] || continue
        found=$((found + 1))
        echo "    $target: $(basename "$crash"): minimizing into $crash.min"
        TMPDIR="$OUT/tmp" nice -n 19 "$PY" -m fuzz.run "$target" -minimize_crash=1 -runs=20000 \
            -exact_artifact_path="$crash.min" "$crash" >>"$log.min" 2>&1 || true
    done
    rm -rf "$work"
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$target" "$TIME" "${execs:-0}" "$found" >>"$OUT/runs.tsv"
    echo "    $target: exit $rc, ${execs:-?} executions, $found new crash(es)"
    if ((rc != 0 || found > 0)); then
        crashed=1
        grep -m5 -E "Error|Failure|Traceback|==ERROR" "$log" | sed 's/^/    /' || true
    fi
done
exit $crashed
