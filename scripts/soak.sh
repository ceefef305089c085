#!/usr/bin/env bash
# The chaos soak (issue 23): a 3-member etcd cluster, moto behind a fault proxy, three
# `lbmanager run --ha` instances and dozens of simulated hosts, with faults drawn from a seed;
# then a checker over the recorded history. All on 127.0.0.1, nothing left running.
#
#   scripts/soak.sh --minutes N [--seed S]      # exit 0: no violation; 1: violations
#
# Options (after --minutes/--seed): --profile shared|exclusive-hc (default shared; see
# scripts/soak/README.md), --instances K (default 3), --work DIR (default a new temp
# dir, kept when the run fails or with --keep), --bin PATH (default target/debug/lbmanager;
# LBMANAGER_BIN works too), --build (cargo build --locked --bin lbmanager first; done anyway when
# the binary is missing), --check-only HISTORY (re-run the checker over a recorded history),
# --sabotage no-ha|exclusive (the checker's own test: a misconfigured run that must FAIL).
# Output: WORK/history.jsonl (every operation, AWS call, fault, etcd event, sample), WORK/summary.txt
# (also printed), WORK/violations.json, WORK/logs/ (each lbmanager process's JSON log).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

build=no
args=()
bin=${LBMANAGER_BIN:-}
while [ $# -gt 0 ]; do
    case $1 in
        --build) build=yes ;;
        --bin) bin=$2; shift ;;
        --bin=*) bin=${1#--bin=} ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done

"$HERE/install-deps.sh"
if [ -z "$bin" ]; then
    bin=$ROOT/target/debug/lbmanager
    if [ "$build" = yes ] || [ ! -x "$bin" ]; then
        (cd "$ROOT" && cargo build --locked --bin lbmanager)
    fi
fi
[ -x "$bin" ] || { echo "soak: no lbmanager binary at $bin" >&2; exit 2; }

# The driver starts every process in its own session and stops them all on exit; this trap is
# the net under it.
driver_pid=
cleanup() {
    if [ -n "$driver_pid" ] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$driver_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$driver_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run from the caller's directory (relative --bin and --work paths mean what they say there).
export PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
set +e
python3 -m soak --bin "$bin" "${args[@]}" &
driver_pid=$!
wait "$driver_pid"
rc=$?
set -e
driver_pid=
exit "$rc"
