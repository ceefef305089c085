#!/usr/bin/env bash
# Idempotent installer for the tools the demo and the integration tests need,
# on a fresh Debian 12 (bookworm) machine:
#   etcd + etcdctl (Debian etcd-server / etcd-client, 3.4.x)
#   protoc         (protobuf-compiler; the etcd-client crate's build needs it)
#   moto[server]   (fake AWS ELB + Route53 used by demo.sh and the tests; brings boto3)
#   for the package test: promtool (Debian prometheus), man (man-db), cargo-deb (crates.io)
#   for the status page's browser test: chromium (Debian's, headless)
# Run as root, or as a user with sudo. Safe to run again: it only installs what is missing.
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "not root and sudo is not available"; exit 1
    fi
fi

# --- Debian packages ---------------------------------------------------------
missing=()
for tool in etcd etcdctl protoc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "missing: ${missing[*]} -> apt-get install etcd-server etcd-client protobuf-compiler"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y etcd-server etcd-client protobuf-compiler
    # The Debian package may start a system etcd on the default ports (2379/2380).
    # We leave it alone: the demo and the tests run their own etcd on free loopback ports.
else
    log "etcd, etcdctl, protoc already installed"
fi

# The package test's tools: promtool checks the alert rules, man renders the man pages.
# (prometheus is installed for its promtool; its own service is not started here.)
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v man >/dev/null 2>&1 || missing+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# The status page's browser test: Debian's own chromium, run headless (no browser download).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    log "missing: ${missing[*]} -> apt-get install --no-install-recommends"
    "${SUDO[@]}" apt-get update
    # Install, don't start: a policy-rc.d that says "no" keeps the prometheus package's own
    # server from starting where systemd runs (removed again unless it was there before).
    policy=/usr/sbin/policy-rc.d
    ours=no
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 0755 "$policy"
        ours=yes
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    if [ "$ours" = yes ]; then
        "${SUDO[@]}" rm -f "$policy"
        trap - EXIT
    fi
    # Nor at the next boot: only promtool is wanted.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v deb-systemd-helper >/dev/null; then
        "${SUDO[@]}" deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
    fi
else
    log "promtool, man, systemd-analyze already installed"
fi

# --- cargo-deb (builds the Debian package: scripts/package.sh) ----------------
if command -v cargo-deb >/dev/null 2>&1; then
    log "cargo-deb already installed"
else
    log "installing cargo-deb with cargo install"
    cargo install cargo-deb --locked --version '^3'
fi

# --- moto (fake AWS) ---------------------------------------------------------
if python3 -c 'import moto, flask, boto3' >/dev/null 2>&1 && command -v moto_server >/dev/null 2>&1; then
    log "moto[server] already installed ($(python3 -c 'import moto; print(moto.__version__)'))"
else
    log "installing moto[server]>=5.1,<6 with pip"
    pip_args=(--quiet)
    # Debian's system python refuses global pip installs (PEP 668) unless told otherwise.
    if python3 -c 'import sys, sysconfig, os; p = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"); sys.exit(0 if os.path.exists(p) else 1)' 2>/dev/null; then
        pip_args+=(--break-system-packages)
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "pip missing -> apt-get install python3-pip"
        "${SUDO[@]}" apt-get update
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-pip
    fi
    "${SUDO[@]}" python3 -m pip install "${pip_args[@]}" 'moto[server]>=5.1,<6'
    # Under pyenv a new console script only appears after a rehash of the shims.
    if ! command -v moto_server >/dev/null 2>&1 && command -v pyenv >/dev/null 2>&1; then
        pyenv rehash || true
    fi
fi

if command -v moto_server >/dev/null 2>&1; then
    log "moto_server: $(command -v moto_server)"
else
    log "moto_server is not on PATH; 'python3 -m moto.server' works as a fallback (scripts/lib.sh uses it)"
fi
python3 -c 'import moto, flask, boto3' || { log "python3 cannot import moto/flask/boto3"; exit 1; }
log "done"
