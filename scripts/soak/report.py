"""Loading a history and writing the soak's summary."""
import collections
import json
import re


def load(path):
    events = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a torn last line of an interrupted run
    return events


NOISY = {"resources", "sample", "schedule", "meta", "status", "aws_probe"}


def describe(ev, t0):
    kind = ev.get("kind")
    rel = "%+8.2fs" % (ev.get("t", t0) - t0)
    if kind == "aws_call":
        what = "%s %s" % (ev.get("action"), ev.get("lb") or ",".join(
            "%s %s %s" % (c.get("action"), c.get("lb"), c.get("values")) for c in ev.get("changes", [])))
        if ev.get("members"):
            what += " %s" % ev["members"]
        return "%s aws_call slot %s %s fault=%s upstream=%s status=%s" % (
            rel, ev.get("slot"), what, ev.get("fault"), ev.get("upstream_status"), ev.get("status"))
    if kind == "etcd_event":
        extra = " %s" % ev.get("value") if ev.get("value") else ""
        return "%s etcd %s %s rev %s%s" % (rel, ev.get("type"), ev.get("key"), ev.get("rev"), extra)
    skip = {"kind", "t", "trace", "plan"}
    body = {k: v for k, v in ev.items() if k not in skip}
    text = json.dumps(body, sort_keys=True, default=str)
    return "%s %s %s" % (rel, kind, text[:300])


def around(events, t, t0, before=3.0, after=1.0, limit=25):
    near = [e for e in events if e.get("kind") not in NOISY and t - before <= e.get("t", 0) <= t + after]
    if len(near) > limit:
        # Keep the ones closest to the violation.
        near.sort(key=lambda e: abs(e.get("t", 0) - t))
        near = sorted(near[:limit], key=lambda e: e.get("t", 0))
    return [describe(e, t0) for e in near]


def fmt_s(v):
    return "-" if v is None else "%.2f s" % v


def summary(events, result, wall=None):
    meta = next((e for e in events if e.get("kind") == "meta"), {})
    t0 = meta.get("t", events[0]["t"] if events else 0.0)
    seed = meta.get("seed")
    out = []
    w = out.append
    w("lbmanager soak: seed %s, --minutes %s, profile %s, %s instances, schedule %s" % (
        seed, meta.get("minutes"), meta.get("profile", "shared"), meta.get("instances"),
        meta.get("schedule_digest")))
    w("binary: %s" % meta.get("bin"))
    if wall is not None:
        w("wall time: %.0f s" % wall)
    rounds = [e for e in events if e.get("kind") == "round_start"]
    w("rounds: %d (active %s s)" % (len(rounds), ", ".join("%.0f" % e["active"] for e in rounds)))

    starts = {e["op_id"]: e for e in events if e.get("kind") == "op_start"}
    ends = {e["op_id"]: e for e in events if e.get("kind") == "op_end"}
    ops = collections.Counter()
    for op_id, st in starts.items():
        code = ends.get(op_id, {}).get("exit", "none")
        ops[(st["op"], code)] += 1
    by_op = collections.defaultdict(dict)
    for (op, code), n in ops.items():
        by_op[op][code] = n
    w("operations: %d" % len(starts))
    for op in sorted(by_op):
        codes = ", ".join("exit %s: %d" % (c, n) for c, n in sorted(by_op[op].items(), key=str))
        w("  %-16s %4d  (%s)" % (op, sum(by_op[op].values()), codes))

    failed = collections.Counter()
    for op_id, st in starts.items():
        end = ends.get(op_id)
        # A presence ends with exit 0 (SIGTERM after AWS had it), 1 (SIGTERM while it waited, at
        # the end of a window) or -9 (presence_kill): only other endings are failures.
        if end and end.get("exit") not in (0, None) and st["op"] != "presence" or (
                end and st["op"] == "presence" and end.get("exit") not in (0, -9, None) and
                "SIGTERM received while waiting" not in (end.get("stderr") or "")):
            lines = [l for l in (end.get("stderr") or "").strip().splitlines() if l.strip()]
            reason = lines[-1] if lines else "exit %s" % end.get("exit")
            reason = re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "#", reason)[:160]
            failed[(st["op"], reason)] += 1
    if failed:
        w("failed operations, by reason (faults explain most; see the report for those that are bugs):")
        for (op, reason), n in sorted(failed.items(), key=lambda kv: -kv[1]):
            w("  %3d %-15s %s" % (n, op, reason))

    faults = collections.Counter()
    skipped = collections.Counter()
    for e in events:
        if e.get("kind") == "fault_start":
            (skipped if e.get("skipped") else faults)[e["fault"]] += 1
    w("faults: %d injected, %d skipped (no target at that moment)" % (sum(faults.values()), sum(skipped.values())))
    for kind in sorted(set(faults) | set(skipped)):
        w("  %-18s %3d%s" % (kind, faults[kind], "  (+%d skipped)" % skipped[kind] if skipped[kind] else ""))

    calls = [e for e in events if e.get("kind") == "aws_call"]
    actions = collections.Counter(e.get("action") for e in calls)
    injected = collections.Counter(e.get("fault") for e in calls if e.get("fault"))
    w("AWS calls through the proxies: %d (%d mutating); injected: %s" % (
        len(calls), sum(1 for e in calls if e.get("mutating")),
        ", ".join("%s %d" % kv for kv in sorted(injected.items())) or "none"))
    w("  " + ", ".join("%s %d" % kv for kv in sorted(actions.items(), key=lambda kv: -kv[1])))
    if meta.get("params", {}).get("hc_scope") or meta.get("params", {}).get("pending_hold"):
        status = collections.Counter(e.get("change_status") for e in calls
                                     if e.get("action") == "GetChange" and e.get("change_status"))
        w("  health checks: %d made, %d deleted (applied); GetChange answered %s; %d requests "
          "held before forwarding (max %s s); etcd members killed: %s" % (
              sum(1 for e in calls if e.get("action") == "CreateHealthCheck"
                  and (e.get("upstream_status") or 0) // 100 == 2),
              sum(1 for e in calls if e.get("action") == "DeleteHealthCheck"
                  and (e.get("upstream_status") or 0) // 100 == 2),
              ", ".join("%s %d" % kv for kv in sorted(status.items())) or "never",
              sum(1 for e in calls if e.get("request_delay")),
              max([e["request_delay"] for e in calls if e.get("request_delay")], default=0),
              dict(sorted(collections.Counter(
                  e.get("member") for e in events if e.get("kind") == "fault_start"
                  and e.get("fault") == "etcd_member_kill" and not e.get("skipped")).items()))))
    exits = collections.Counter()
    for e in events:
        if e.get("kind") == "instance_exit":
            exits["%s %s" % (e.get("reason"), e.get("code") if e.get("code") is not None else "sig%s" % e.get("signal"))] += 1
    w("lbmanager processes: %d started; exits: %s" % (
        sum(1 for e in events if e.get("kind") == "instance_start"),
        ", ".join("%s: %d" % kv for kv in sorted(exits.items())) or "none"))

    st = result["stats"]
    conv = st["convergence_s"]
    w("convergence after quiet periods (n=%d): p50 %s, p99 %s, max %s (bound %s s)" % (
        conv["n"], fmt_s(conv["p50"]), fmt_s(conv["p99"]), fmt_s(conv["max"]),
        meta.get("params", {}).get("convergence_bound")))
    w("leadership: %d changes, %d leaders (pids %s); %d mutating calls checked against it; closest to a "
      "lost leadership: %s before; soonest after a leadership began: %s" % (
          st["leader_changes"], len(st["leaders"]), st["leaders"], st["mutating_calls_checked"],
          fmt_s(st["leader_end_margin_min_s"]), fmt_s(st["leader_start_margin_min_s"])))
    for op, lat in st["op_latency_s"].items():
        w("  %-15s exit 0 in p50 %s, p99 %s, max %s (n=%d)" % (
            op, fmt_s(lat["p50"]), fmt_s(lat["p99"]), fmt_s(lat["max"]), lat["n"]))
    w("operations checked right after exit: %s" % ", ".join("%s %d" % kv for kv in sorted(st["ops_checked"].items())))
    res = st["resources_checked"]
    if res:
        w("resources (processes that ran >= 60 s): " + "; ".join(
            "pid %s slot %s %ss: RSS %d->%d KiB, fds %d->%d" % (
                r["pid"], r["slot"], r["span_s"], r["rss_kib"][0], r["rss_kib"][1], r["fds"][0], r["fds"][1])
            for r in res))
    else:
        w("resources: no lbmanager process ran 60 s (growth not judged; caps still checked)")
    logs = [e for e in events if e.get("kind") == "log_check"]
    w("logs: %d files, %d lines, %d not JSON, %d panics" % (
        len(logs), sum(e.get("lines", 0) for e in logs), sum(e.get("bad_json_count", 0) for e in logs),
        sum(len(e.get("panics", [])) for e in logs)))
    v = result["violations"]
    kinds = collections.Counter(x["kind"] for x in v)
    w("violations: %d%s" % (len(v), " (%s)" % ", ".join("%s %d" % kv for kv in sorted(kinds.items())) if v else ""))
    for x in v[:30]:
        w("")
        w("[%s] at %+.2fs, seed %s: %s" % (x["kind"], x["t"] - t0, x.get("seed"), x["msg"]))
        for line in around(events, x["t"], t0):
            w("    " + line)
    if len(v) > 30:
        w("... %d more in violations.json" % (len(v) - 30))
    w("")
    w("RESULT: %s" % ("PASS" if not v else "FAIL"))
    return "\n".join(out) + "\n"
