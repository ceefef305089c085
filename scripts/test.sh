#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: installs what is missing
# (etcd, protoc, moto), checks formatting and lints, then runs the unit tests and the integration
# tests. The integration tests start their own etcd and moto on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked
