# shellcheck shell=bash
# Helpers shared by the demo scripts: start a throw-away etcd and moto (fake AWS)
# on free loopback ports and stop them again on exit.
#
#   source "$(dirname "$0")/lib.sh"
#   start_etcd "$dir"    # exports ETCD_URL, ETCD_PID
#   start_moto "$dir"    # exports MOTO_URL, MOTO_PID
#   wait_until 20 some command args...
#   register_pid PID     # anything else stop_all should kill on exit
#
# Sourcing this file installs `trap stop_all EXIT` (and makes INT/TERM exit, so
# the EXIT trap runs). Everything listens on 127.0.0.1 only.

LIB_PIDS=()

lib_log() { printf '[lib] %s\n' "$*" >&2; }

# Print a free TCP port on 127.0.0.1 (the kernel picks it; it is released before
# we return, so there is a tiny race with other programs, fine for tests).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

register_pid() {
    LIB_PIDS+=("$1")
}

# wait_until DEADLINE_SECS CMD... : run CMD every 0.2 s until it succeeds (return 0)
# or DEADLINE_SECS have passed (return 1). CMD's output is discarded.
wait_until() {
    local deadline_secs=$1; shift
    local end=$(( $(date +%s%N) + deadline_secs * 1000000000 ))
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [ "$(date +%s%N)" -ge "$end" ]; then
            return 1
        fi
        sleep 0.2
    done
}

# _lib_wait_alive DEADLINE PID LOGFILE WHAT CMD... : like wait_until, but gives up
# early (and shows the log) if PID dies.
_lib_wait_alive() {
    local deadline_secs=$1 pid=$2 logfile=$3 what=$4; shift 4
    local end=$(( $(date +%s%N) + deadline_secs * 1000000000 ))
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            lib_log "$what exited during start-up; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        if [ "$(date +%s%N)" -ge "$end" ]; then
            lib_log "$what not ready after ${deadline_secs}s; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# start_etcd DIR : single-node etcd with data in DIR/etcd, log in DIR/etcd.log.
start_etcd() {
    local dir=$1
    mkdir -p "$dir"
    local etcd_bin=/usr/bin/etcd
    [ -x "$etcd_bin" ] || etcd_bin=$(command -v etcd)
    local client_port peer_port
    client_port=$(free_port)
    peer_port=$(free_port)
    while [ "$peer_port" = "$client_port" ]; do peer_port=$(free_port); done
    local client_url="http://127.0.0.1:${client_port}"
    local peer_url="http://127.0.0.1:${peer_port}"
    "$etcd_bin" \
        --name demo \
        --data-dir "$dir/etcd" \
        --listen-client-urls "$client_url" \
        --advertise-client-urls "$client_url" \
        --listen-peer-urls "$peer_url" \
        --initial-advertise-peer-urls "$peer_url" \
        --initial-cluster "demo=${peer_url}" \
        --initial-cluster-state new \
        --initial-cluster-token "lbmanager-demo-$$" \
        >"$dir/etcd.log" 2>&1 &
    ETCD_PID=$!
    register_pid "$ETCD_PID"
    export ETCD_URL="$client_url" ETCD_PID
    if ! _lib_wait_alive 20 "$ETCD_PID" "$dir/etcd.log" etcd \
            env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" --command-timeout=2s endpoint health; then
        return 1
    fi
    lib_log "etcd ready at $ETCD_URL (pid $ETCD_PID, log $dir/etcd.log)"
}

_lib_http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -sf -o /dev/null --max-time 2 "$1/moto-api/"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' "$1/moto-api/"
    fi
}

# start_moto DIR : moto server (fake ELB/Route53/...), log in DIR/moto.log.
start_moto() {
    local dir=$1
    mkdir -p "$dir"
    local port
    port=$(free_port)
    local cmd
    if command -v moto_server >/dev/null 2>&1; then
        cmd=(moto_server)
    else
        cmd=(python3 -m moto.server)
    fi
    # Keep moto's request recorder (if someone turns it on) out of the cwd.
    MOTO_RECORDER_FILEPATH="${MOTO_RECORDER_FILEPATH:-$dir/moto_recording}" \
        "${cmd[@]}" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    MOTO_PID=$!
    register_pid "$MOTO_PID"
    export MOTO_URL="http://127.0.0.1:${port}" MOTO_PID
    if ! _lib_wait_alive 30 "$MOTO_PID" "$dir/moto.log" moto _lib_http_ok "$MOTO_URL"; then
        return 1
    fi
    lib_log "moto ready at $MOTO_URL (pid $MOTO_PID, log $dir/moto.log)"
}

# stop_all : SIGTERM everything we started (newest first), then SIGKILL stragglers.
stop_all() {
    local i pid
    [ "${#LIB_PIDS[@]}" -gt 0 ] || return 0
    for (( i=${#LIB_PIDS[@]}-1; i>=0; i-- )); do
        pid=${LIB_PIDS[$i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    local end=$(( $(date +%s) + 10 ))
    for (( i=${#LIB_PIDS[@]}-1; i>=0; i-- )); do
        pid=${LIB_PIDS[$i]}
        while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    LIB_PIDS=()
}

trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
