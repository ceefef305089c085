"""The soak's schedule: every operation and fault of the run, laid out up front from one
`random.Random(seed)`, so that the same seed (and --minutes) replays the same schedule. Choices
that depend on the run's state (which instance leads, which member AWS has) are drawn here as
numbers in [0, 1) and applied to that state when the action runs.

A run is a series of rounds: an active window (operations and faults, every fault healed before
its end) followed by a quiet period (nothing but sampling) that the driver runs until AWS matches
etcd or the convergence bound passes.
"""
import hashlib
import json
import random

REGION = "us-east-1"
ZONE = "{ZONE}"  # the hosted zone's id, known once moto made it

LBS = {
    "webA": {"lb": "elb/%s/webA" % REGION, "dir": "/lbManager/elb/%s/webA" % REGION},
    "webB": {"lb": "elb/%s/webB" % REGION, "dir": "/lbManager/elb/%s/webB" % REGION},
    "web-tg": {"lb": "elbv2/%s/web-tg" % REGION, "dir": "/lbManager/elbv2/%s/web-tg" % REGION},
    "www": {"lb": "route53/%s/www.example.com" % ZONE,
            "dir": "/lbManager/route53/%s/%s/www.example.com" % (REGION, ZONE)},
    "api": {"lb": "route53/%s/api.example.com" % ZONE,
            "dir": "/lbManager/route53/%s/%s/api.example.com" % (REGION, ZONE)},
}

QUIET_ESTIMATE = 10.0

OP_ADD = [("add_wait", 40), ("put", 16), ("presence", 14), ("lease_put", 14),
          ("add_wait_single", 3), ("put_single", 3)]
OP_REMOVE = [("remove_wait", 35), ("remove_drain", 30), ("del", 35)]
OP_PRESENCE_END = [("presence_term", 60), ("presence_kill", 40)]

FAULTS = [
    ("kill_leader", 8), ("kill_standby", 4), ("stop_leader", 8), ("stop_standby", 3),
    ("etcd_cut_leader", 6), ("etcd_cut_standby", 3), ("aws_cut_leader", 4),
    ("etcd_member_kill", 5), ("etcd_move_leader", 3), ("compact", 4), ("defrag", 3),
    ("aws_throttle", 7), ("aws_slow", 6), ("aws_5xx", 6), ("aws_reset", 5),
    ("oob_deregister", 6), ("oob_rrset_edit", 5), ("oob_foreign_add", 2), ("lb_recreate", 2),
    ("key_flood", 4), ("del_prefix", 3),
]

PRESENCE_TTL = 3
LEASE_TTLS = (3, 4, 5)


def hosts():
    """The simulated hosts: each has one member of one load balancer."""
    out = []
    for i in range(36):
        if i < 10:
            name, member, target = "webA", "i-0a%015x" % i, None
        elif i < 18:
            name, member, target = "webB", "i-0b%015x" % i, None
        elif i < 26:
            name = "web-tg"
            member = "i-0c%015x" % i
            target = member + (":8080" if i >= 22 else "")
        elif i < 32:
            name = "www"
            member = "192.0.2.%d" % (10 + i) if i < 30 else "2001:db8::%x" % (0xa0 + i)
            target = None
        else:
            name = "api"
            member = "192.0.2.%d" % (10 + i) if i < 35 else "2001:db8::%x" % (0xa0 + i)
            target = None
        key_member = target or member
        if name == "web-tg":
            member = target if ":" in target else target + ":80"
        out.append({"host": "h%02d" % i, "lb_name": name, "lb": LBS[name]["lb"],
                    "member": member, "key_member": key_member})
    return out


def key_of(host, cls):
    return "%s/%s/%s" % (LBS[host["lb_name"]]["dir"], cls, host["key_member"])


def _pick(rng, table):
    total = sum(w for _, w in table)
    r = rng.uniform(0, total)
    for name, w in table:
        r -= w
        if r <= 0:
            return name
    return table[-1][0]


def plan(seed, minutes):
    rng = random.Random(seed)
    hs = hosts()
    total = minutes * 60.0
    rounds = []
    elapsed = 0.0
    # Per host: "out", "in", "presence" or ("leased", until) in round-relative time of its round.
    state = {h["host"]: "out" for h in hs}
    op_seq = 0
    fault_seq = 0
    foreign_seq = 0
    while not rounds or elapsed + 30 <= total:
        remaining = total - elapsed
        active = round(min(rng.uniform(22, 32), max(15.0, remaining - QUIET_ESTIMATE)), 2)
        actions = []
        # Leased keys from the previous round have expired by now.
        for h in state:
            if isinstance(state[h], tuple):
                state[h] = "out"
        # --- operations ------------------------------------------------------------------
        t = 0.5
        ops_end = active - 3.0
        while True:
            t += rng.expovariate(1.5)
            if t > ops_end:
                break
            h = rng.choice(hs)
            st = state[h["host"]]
            if isinstance(st, tuple):
                if t < st[1]:
                    continue
                st = state[h["host"]] = "out"
            if st == "out":
                op = _pick(rng, OP_ADD)
                if op == "lease_put":
                    ttl = rng.choice(LEASE_TTLS)
                    if t + ttl > active - 1:
                        op = "put"
            elif st == "in":
                op = _pick(rng, OP_REMOVE)
            else:
                op = _pick(rng, OP_PRESENCE_END)
            op_seq += 1
            act = {"at": round(t, 3), "type": "op", "op_id": op_seq, "host": h["host"], "op": op}
            cls = "single" if op.endswith("_single") else "multiple"
            act["key"] = key_of(h, cls)
            if op == "lease_put":
                act["ttl"] = ttl
                state[h["host"]] = ("leased", t + ttl + 1.5)
            elif op == "presence":
                state[h["host"]] = "presence"
            elif op == "presence_kill":
                state[h["host"]] = ("leased", t + PRESENCE_TTL + 1.5)
            elif op in ("presence_term",) or op in dict(OP_REMOVE):
                state[h["host"]] = "out"
            else:
                state[h["host"]] = "in"
            actions.append(act)
        # Presence processes end within the window.
        t_end = active - 2.5
        for h in hs:
            if state[h["host"]] == "presence":
                op_seq += 1
                t_end += 0.05
                actions.append({"at": round(t_end, 3), "type": "op", "op_id": op_seq,
                                "host": h["host"], "op": "presence_term",
                                "key": key_of(h, "multiple")})
                state[h["host"]] = "out"
        # --- faults ----------------------------------------------------------------------
        t = 1.0
        busy = {}
        while True:
            t += rng.uniform(1.5, 4.0)
            if t > active - 1.0:
                break
            kind = _pick(rng, FAULTS)
            f = {"fault": kind, "r": round(rng.random(), 4)}
            dur = 0.0
            if kind in ("kill_leader", "kill_standby"):
                dur = rng.uniform(0.5, 4.0)
            elif kind == "stop_leader":
                dur = rng.choice([1.0, 2.0, 3.5, 5.0, 7.0])
            elif kind == "stop_standby":
                dur = rng.choice([2.0, 6.0])
            elif kind in ("etcd_cut_leader", "etcd_cut_standby"):
                dur = rng.uniform(1.5, 8.0)
                f["mode"] = rng.choice(["stall", "cut"])
            elif kind == "aws_cut_leader":
                dur = rng.uniform(1.0, 6.0)
            elif kind == "etcd_member_kill":
                dur = rng.uniform(2.0, 8.0)
                f["member"] = rng.choice([1, 2])
            elif kind == "defrag":
                f["member"] = rng.choice([0, 1, 2])
            elif kind == "aws_throttle":
                dur = rng.uniform(2.0, 8.0)
                f["p"] = round(rng.uniform(0.5, 1.0), 2)
            elif kind == "aws_slow":
                dur = rng.uniform(2.0, 8.0)
                f["s"] = rng.choice([0.5, 1.5, 3.0])
            elif kind == "aws_5xx":
                dur = rng.uniform(2.0, 6.0)
                f["p"] = round(rng.uniform(0.3, 0.9), 2)
            elif kind == "aws_reset":
                dur = rng.uniform(2.0, 6.0)
                f["p"] = round(rng.uniform(0.2, 0.6), 2)
            elif kind == "oob_deregister":
                f["lb_name"] = rng.choice(["webA", "webB", "web-tg"])
            elif kind == "oob_rrset_edit":
                f["lb_name"] = rng.choice(["www", "api"])
                f["mode"] = rng.choice(["remove", "ttl"])
            elif kind == "oob_foreign_add":
                foreign_seq += 1
                f["lb_name"] = rng.choice(["webA", "web-tg"])
                f["member"] = "i-0f%015x" % (0x100 + foreign_seq)
            elif kind == "lb_recreate":
                dur = rng.uniform(1.0, 3.0)
                f["lb_name"] = "webB"
            elif kind == "key_flood":
                dur = rng.uniform(3.0, 10.0)
                f["lb_name"] = rng.choice(["webA", "webB", "web-tg"])
                f["n"] = rng.randint(50, 200)
                f["base"] = rng.randint(0, 2 ** 40)
            elif kind == "del_prefix":
                f["lb_name"] = rng.choice(list(LBS))
            end = t + dur
            if end > active - 0.5:
                continue
            # One etcd member down at a time (quorum stays); one proxy fault of a kind at a time.
            group = "etcd_member" if kind == "etcd_member_kill" else kind
            if busy.get(group, -1.0) > t:
                continue
            busy[group] = end + 0.5
            fault_seq += 1
            f.update({"at": round(t, 3), "type": "fault", "fault_id": fault_seq,
                      "duration": round(dur, 3)})
            actions.append(f)
            if dur > 0:
                actions.append({"at": round(end, 3), "type": "fault_end", "fault_id": fault_seq,
                                "fault": kind})
        actions.sort(key=lambda a: (a["at"], a["type"] != "fault_end"))
        rounds.append({"round": len(rounds) + 1, "active": active, "actions": actions})
        elapsed += active + QUIET_ESTIMATE
    return {"seed": seed, "minutes": minutes, "rounds": rounds}


def digest(schedule):
    return hashlib.sha256(json.dumps(schedule, sort_keys=True).encode()).hexdigest()[:16]
