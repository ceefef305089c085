#!/usr/bin/env bash
# End-to-end demo of lbmanager against a throw-away etcd and moto (fake AWS),
# all on 127.0.0.1, nothing left behind.
#
#   scripts/demo.sh                               # installs deps, cargo build --release, runs
#   LBMANAGER_BIN=target/release/lbmanager scripts/demo.sh   # use an existing binary, no build
#
# Steps: two ELB members -> three Route53 members (A + AAAA) -> remove one ELB
# member -> `single` switch -> rollback with a `multiple` key -> remove all
# Route53 members. After each step it waits (max STEP_TIMEOUT s, default 20)
# until AWS matches, then prints the etcd keys, the ELB's instances and the
# www.example.com A/AAAA record sets. Exits non-zero if a step does not converge.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"

STEP_TIMEOUT=${STEP_TIMEOUT:-20}
REGION=us-east-1
LB=webLB
FQDN=www.example.com
TTL=60
PREFIX=/lbManager

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# --- dependencies and binary ----------------------------------------------------
"$HERE/install-deps.sh"
if [ -n "${LBMANAGER_BIN:-}" ]; then
    BIN=$LBMANAGER_BIN
    say "using $BIN"
else
    say "cargo build --release"
    (cd "$ROOT" && cargo build --release)
    BIN=$ROOT/target/release/lbmanager
fi
[ -x "$BIN" ] || { echo "lbmanager binary not found at $BIN" >&2; exit 1; }

# --- etcd, moto -------------------------------------------------------------------
WORK=$(mktemp -d -t lbmanager-demo.XXXXXX)
say "work dir $WORK (removed on success, kept for its logs on failure)"
DEMO_OK=no
finish() {
    stop_all
    if [ "$DEMO_OK" = yes ] && [ -z "${KEEP_WORK:-}" ]; then
        rm -rf "$WORK"
    else
        echo "logs kept in $WORK (etcd.log, moto.log, lbmanager.log)" >&2
    fi
}
trap finish EXIT
start_etcd "$WORK"
start_moto "$WORK"

# Static fake credentials; keep the real ~/.aws and the metadata service out of it.
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE="$WORK/aws-config" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-credentials"
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
export ETCDCTL_API=3

ctl() { etcdctl --endpoints "$ETCD_URL" "$@"; }
aws_state() { python3 "$HERE/awsstate.py" "$@"; }

say "create Classic ELB $LB and hosted zone example.com. in moto"
aws_state create-elb "$LB" "$REGION" >/dev/null
ZONE=$(aws_state create-zone example.com.)
echo "ELB $LB ($REGION), hosted zone example.com. = $ZONE"

ELB_DIR=$PREFIX/elb/$REGION/$LB
R53_DIR=$PREFIX/route53/$REGION/$ZONE/$FQDN

# --- lbmanager ------------------------------------------------------------------------
LOG=$WORK/lbmanager.log
say "start lbmanager (log $LOG, shown below prefixed with '| lbmanager')"
"$BIN" run \
    --etcd-endpoints "$ETCD_URL" \
    --prefix "$PREFIX" \
    --aws-endpoint-url "$MOTO_URL" \
    --route53-ttl "$TTL" \
    >"$LOG" 2>&1 &
LB_PID=$!
register_pid "$LB_PID"
# Follow the log on the terminal; stop_all kills this tail first (newest first).
# (The process substitution must come before 2>/dev/null, or sed inherits it.)
tail -n +1 -F "$LOG" > >(sed -u 's/^/    | lbmanager: /' >&2) 2>/dev/null &
register_pid "$!"

if ! _lib_wait_alive 30 "$LB_PID" "$LOG" lbmanager grep -q 'initial sync complete' "$LOG"; then
    echo "lbmanager did not report 'initial sync complete'" >&2
    exit 1
fi

# --- expected state and convergence ----------------------------------------------------
# EXP_INSTANCES: sorted instance ids, one per line; EXP_RECORDS: awsstate.py records
# lines; EXP_ELB_KEYS (optional): exact etcd keys under ELB_DIR (to check that
# superseded `single` keys were deleted).
EXP_INSTANCES=""
EXP_RECORDS=""
EXP_ELB_KEYS=""
CHECK_ELB_KEYS=no

matches() {
    [ "$(aws_state elb-instances "$LB" "$REGION")" = "$EXP_INSTANCES" ] || return 1
    [ "$(aws_state records "$ZONE" "$FQDN")" = "$EXP_RECORDS" ] || return 1
    if [ "$CHECK_ELB_KEYS" = yes ]; then
        [ "$(ctl get --prefix "$ELB_DIR/" --keys-only | sed '/^$/d')" = "$EXP_ELB_KEYS" ] || return 1
    fi
}

show_state() {
    echo "-- etcd keys (get --prefix $PREFIX/ --keys-only):"
    ctl get --prefix "$PREFIX/" --keys-only | sed '/^$/d; s/^/   /'
    echo "-- ELB $LB registered instances:"
    aws_state elb-instances "$LB" "$REGION" | sed 's/^/   /'
    echo "-- $FQDN A/AAAA record sets (type ttl values):"
    aws_state records "$ZONE" "$FQDN" | sed 's/^/   /'
}

converge() {
    local what=$1 start end
    start=$(date +%s%N)
    if ! wait_until "$STEP_TIMEOUT" matches; then
        echo "!! step '$what' did not converge within ${STEP_TIMEOUT}s" >&2
        echo "   expected instances: $(echo "$EXP_INSTANCES" | paste -sd' ')" >&2
        echo "   expected records:   $(echo "$EXP_RECORDS" | paste -sd';')" >&2
        [ "$CHECK_ELB_KEYS" = yes ] && echo "   expected ELB keys:  $(echo "$EXP_ELB_KEYS" | paste -sd' ')" >&2
        show_state >&2
        exit 1
    fi
    end=$(date +%s%N)
    echo "-- converged in $(( (end - start) / 1000000 )) ms"
    show_state
}

I1=i-0123456789abcdef0
I2=i-0fedcba9876543210
I3=i-0aaaaaaaaaaaaaaaa

say "0. start-up: empty tree, empty load balancers"
converge "start-up"

say "1. two ELB members (multiple)"
ctl put "$ELB_DIR/multiple/$I1" ""
ctl put "$ELB_DIR/multiple/$I2" ""
EXP_INSTANCES=$(printf '%s\n' "$I1" "$I2" | sort)
converge "two ELB members"

say "2. Route53 members 192.0.2.10, 192.0.2.11, 2001:db8::10 for $FQDN"
ctl put "$R53_DIR/multiple/192.0.2.10" ""
ctl put "$R53_DIR/multiple/192.0.2.11" ""
ctl put "$R53_DIR/multiple/2001:db8::10" ""
EXP_RECORDS=$(printf '%s\n' "A $TTL 192.0.2.10,192.0.2.11" "AAAA $TTL 2001:db8::10")
converge "Route53 members"

say "3. remove ELB member $I2"
ctl del "$ELB_DIR/multiple/$I2"
EXP_INSTANCES=$I1
converge "remove ELB member"

say "4. single switch: $I3 becomes the only member; lbmanager deletes the superseded keys"
ctl put "$ELB_DIR/single/$I3" ""
EXP_INSTANCES=$I3
EXP_ELB_KEYS=$ELB_DIR/single/$I3
CHECK_ELB_KEYS=yes
converge "single switch"

say "5. rollback: put the old member's multiple key again"
ctl put "$ELB_DIR/multiple/$I1" ""
# Class change single -> multiple: the members are the multiple class's again.
EXP_INSTANCES=$I1
CHECK_ELB_KEYS=no
converge "rollback"

say "6. remove all Route53 members of $FQDN"
ctl del --prefix "$R53_DIR/"
EXP_RECORDS=""
converge "remove Route53 members"

# What a container host runs (etcd access only): the command returns once AWS has followed.
member() { "$BIN" member "$@" --etcd-endpoints "$ETCD_URL" --prefix "$PREFIX" --timeout 30s; }

say "7. as a container's unit does: lbmanager member add --wait (returns once the ELB has it)"
member add "$ELB_DIR/multiple/$I2" --wait
EXP_INSTANCES=$(printf '%s\n' "$I1" "$I2" | sort)
# No waiting here: the ELB has it already.
STEP_TIMEOUT=0 converge "member add --wait"

say "8. lbmanager status (what lbmanager published; exit 0: all in step)"
"$BIN" status --etcd-endpoints "$ETCD_URL" --prefix "$PREFIX"

say "9. lbmanager member remove --wait (returns once the ELB no longer routes to it)"
member remove "$ELB_DIR/multiple/$I2" --wait
EXP_INSTANCES=$I1
STEP_TIMEOUT=0 converge "member remove --wait"

say "demo finished: every step converged"
DEMO_OK=yes
