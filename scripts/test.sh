#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: installs what is missing
# (etcd, protoc, moto), checks formatting and lints, then runs the unit tests and the integration
# tests. The integration tests start their own etcd and moto on free loopback ports and stop them.
# Then a short chaos soak (scripts/soak.sh, a fixed seed; a violation fails the run), and the
# soak's own test: a build whose leadership fence lets every change through must be caught.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked
(cd scripts && python3 -m unittest soak.test_checker)

# The soak on the binary just tested (seed 27: etcd member kills, paused leaders, AWS faults):
# any violation fails the run (RELIABILITY.md: the 60-minute run of seed 2026 found none).
rm -rf target/soak/seed27
scripts/soak.sh --minutes 2 --seed 27 --work "$PWD/target/soak/seed27"

# The second profile, the same schedule (seed 27): --ownership exclusive with a
# --route53-health-check scope, etcd member 0 killed too, Route53 changes PENDING for seconds,
# requests delayed (RELIABILITY.md, "The second profile").
rm -rf target/soak/seed27-exclusive-hc
scripts/soak.sh --profile exclusive-hc --minutes 2 --seed 27 --work "$PWD/target/soak/seed27-exclusive-hc"

# The checker must catch a known fault. The test-only feature rebuilds the lbmanager crate alone
# (its dependencies are built already); the plain binary is built again after it.
cargo build --locked --bin lbmanager --features soak-fault-unfenced
mkdir -p target/soak
cp target/debug/lbmanager target/soak/lbmanager-unfenced
cargo build --locked --bin lbmanager
rm -rf target/soak/unfenced
if scripts/soak.sh --minutes 2 --seed 11 --bin "$PWD/target/soak/lbmanager-unfenced" \
    --work "$PWD/target/soak/unfenced" > target/soak/unfenced.out 2>&1; then
    echo "test.sh: the soak did not catch a build without the leadership fence" >&2
    exit 1
fi
if ! grep -q '^\[leader\]' target/soak/unfenced.out; then
    echo "test.sh: the soak failed the unfenced build, but not for acting without the leadership:" >&2
    tail -40 target/soak/unfenced.out >&2
    exit 1
fi
echo "test.sh: the soak caught the unfenced build: $(grep -c '^\[leader\]' target/soak/unfenced.out) change(s) sent without the leadership"
