"""The soak's checker: a pure function of the recorded history (a list of event dicts, as written
to history.jsonl) that returns the violations of lbmanager's promises and the run's figures.

Every rule, with its bound and why (the bounds are in DEFAULTS, and the run's own values are in
its `meta` event):

leader      Every mutating AWS call (Register*, Deregister*, ChangeResourceRecordSets) was received
            by the proxy from an instance that was the leader at that moment. The leader is the
            owner (value "pid PID lease L") of the election key with the lowest create revision
            among those that exist (etcd's election recipe); it leads from when its key became that
            one until the key is deleted (its lease ended, or it resigned). The election keys are
            timed by the driver's watch of the prefix, which sees an event a few milliseconds after
            etcd applied it: a call is accepted within `leader_tolerance` (0.25 s) of its sender's
            observed leadership. A stale leader's calls fall far outside it: it may send only within
            TTL/2 of a confirmed keep-alive, so its last legal call is at least TTL/2 (2 s) before
            its lease can end, and a resumed paused leader is seconds late.
convergence After every quiet period (all faults healed, no client operation running), AWS equals
            what etcd wants (the single/multiple rule of README on the keys sampled at the same
            time, plus the foreign members other tools put there; Route53 TTL = --route53-ttl on
            record sets holding only lbmanager's values) within `convergence_bound` seconds of the
            quiet period's start, and stays so while the keys do not change. Bound: the lease TTL
            (failover) + the longest AWS backoff (20 s) + one resync interval, rounded up: 30 s.
add_wait    `member add --wait` (and a `--lease-ttl --wait` presence's "AWS has" line) that
            succeeded: AWS, read right after, has the member; or a removal of it (by lbmanager,
            through the proxy, or by hand) was sent since the operation started, which explains its
            absence (whether that removal was legal is the removal rules' business).
remove_wait `member remove --wait/--drain` that succeeded: AWS, read right after, no longer has the
            member (unless something sent an add of it since); `--drain` of a record set value
            exited at least the record's TTL after the change that removed it was sent. Not
            judged when a hand edit during the operation wrote the value back (the driver's edit
            reads the record set and writes it changed: it can restore a value lbmanager had
            just removed, and the removal that follows is not the one the command waited for).
removal     No call removes a member (a deregistration, or a record set written without it) that
            etcd wanted during the whole `stale_window` (15 s) before the call: no plan is older
            than that (a sync reads AWS and plans again on every retry; slow answers are capped at
            3 s and reads retried 3 times). Nor in the `watch_lag` (1 s) after it: the driver's
            watch sees a change after lbmanager may have acted on it (seen: 0.25 s late on a
            loaded machine), so a key the watch saw go less than a second after the call may
            have gone before it.
addition    No call adds a member (a registration, or a record set value) that etcd did not want
            at any moment of the `stale_window` before the call (or the `watch_lag` after it).
foreign     No call deregisters or registers a member lbmanager did not add (the foreign ones
            created by hand), writes a record set without the foreign values it had, or changes a
            record set of a name lbmanager does not manage.
status      At the end of every quiet period, `lbmanager status --output json` says all in step,
            its desired members are etcd's, its members in AWS are AWS's (foreign ones flagged
            foreign), the owned records (/lbmanager-state/PREFIX/owned/...) are exactly lbmanager's
            members in AWS (a member taken out by hand, or named in a Register that failed, within
            two resync intervals, + 2 s, before may still be recorded: it is forgotten at the next sync at least 5 s after lbmanager
            claimed it, a resync at the latest), and every load balancer with
            members has its managed record.
duplicate   No Classic ELB lists an instance twice (moto stores a re-registered instance twice:
            lbmanager registered what AWS had).
resources   RSS and open files of each lbmanager process that ran at least `resource_min_span`
            seconds: the median of its last quarter of samples is within `rss_growth` (x1.5 +
            16 MiB) and `fd_growth` (+32) of its first quarter's; and never above
            `rss_max_kib` / `fd_max`.
logs        No log line mentions 'panicked'; every line parses as a JSON object (a line torn by a
            kill -9 of that very process, its last one, is tolerated).
failover    No `lbmanager member` command given all three --etcd-endpoints failed because one of them
            did not answer ("tcp connect error"): the driver never takes down more than one etcd
            member, so a quorum always answered, and the flag promises that "lbmanager fails over
            between them".
stop        Every instance stopped with SIGTERM at the end exited 0.
harness     The driver recorded no error of its own (a broken harness must not pass).

Profile exclusive-hc (`--ownership exclusive`, `--route53-health-check` for the names of
`hc_scope`; README "Sharing load balancers" and "Health-checked answers"). A managed load balancer
holds nothing of another tool's there: a member added by hand (`stray_add`) is removed, and
convergence expects it gone; other tools' things live in an unmanaged ELB (`foreign_lbs`) and
names (`foreign_fqdns`), which `foreign` guards (no call may touch them, and every sample must
show them as they were); no owned record is written (`records` expects none). Convergence also
takes the health checks in: every record set of a name in the scope is a multivalue answer of one
value (SetIdentifier = the value) naming a check of this installation (CallerReference starting
`check_prefix`) of that value, name and spec, and this installation's checks of a name with keys
are exactly the ones named: one check per value, none left behind (bound: `convergence_bound`,
as above; deleting an unused check waits for the change that stopped naming it to be INSYNC,
`pending_hold`, and a sync after it, well within it). And:
hc_named    Every ChangeResourceRecordSets that lbmanager applied and that names a HealthCheckId
            names one that existed when the change was forwarded (made through the proxy and not
            deleted since), is this installation's, and checks that record set's value under that
            name; and no sample shows a record set of a scoped name naming a check that does not
            exist (a snapshot reads the record sets before the checks, and a check is deleted only
            `pending_hold` after the change that stopped naming it: no race). Bound: none; the
            README makes a check before the record set that names it.
hc_order    Every DeleteHealthCheck of this installation's checks was forwarded when no record set
            named the check (by the changes applied and the edits by hand before it) and at least
            `pending_hold` (- 0.05 s) after the last change of lbmanager's that stopped naming it:
            the proxy answers GetChange INSYNC only then, and README promises the check goes only
            after the record set is gone **and** that change is INSYNC.
hc_foreign  The checks of other installations and tools (`foreign_checks`: made in moto directly,
            with references like lbmanager's: another installation's mark, and the mark of an
            installation from before identities were recorded, for values and a name of the
            scope) are never deleted, updated or re-tagged by a call, and every sample and status
            shows each with its settings and tags as made. Bound: none (README: a check of another
            installation is never deleted).
hc_left     At the end of a quiet period, a check of this installation that no record set names,
            of a name with no keys (so no sync of its name will delete it), is a violation once a
            leader started at least `stray_age` (600 s, README: a start deletes those older than 10
            minutes) after the check was made (the time in its reference's nonce) and 15 s before
            the status (the start's first sync has read the name by then). Of a name with keys,
            such a check is the convergence rule's.
"""
import bisect
import statistics

from . import model

DEFAULTS = {
    "prefix": model.PREFIX,
    "leader_tolerance": 0.25,
    "convergence_bound": 30.0,
    "stale_window": 15.0,
    "watch_lag": 1.0,
    "route53_ttl": 2,
    "drain_tolerance": 0.05,
    "lbs": [],
    "tg_ports": {},
    "foreign": {},
    "foreign_fqdns": {},
    "resource_min_span": 60.0,
    "rss_growth": 1.5,
    "rss_slack_kib": 16 * 1024,
    "fd_growth": 32,
    "rss_max_kib": 512 * 1024,
    "fd_max": 1024,
    "ownership": "shared",
    "foreign_lbs": {},
    "hc_scope": [],
    "hc_spec": None,
    "check_prefix": None,
    "foreign_checks": {},
    "pending_hold": 0.0,
    "stray_age": 600.0,
    "hc_tolerance": 0.05,
}


def _v(kind, t, msg, **detail):
    return {"kind": kind, "t": t, "msg": msg, "detail": detail}


class Timeline:
    """Step function of time: values[i] holds from times[i] on."""

    def __init__(self, initial):
        self.times = [float("-inf")]
        self.values = [initial]

    def add(self, t, value):
        if value == self.values[-1]:
            return
        if t < self.times[-1]:
            t = self.times[-1]
        self.times.append(t)
        self.values.append(value)

    def index(self, t):
        return bisect.bisect_right(self.times, t) - 1

    def at(self, t):
        return self.values[self.index(t)]

    def span(self, t0, t1):
        """Every value that holds at some moment of [t0, t1]."""
        i0, i1 = self.index(t0), self.index(t1)
        return self.values[i0:i1 + 1]


class History:
    """Indexes over the events the rules need."""

    def __init__(self, events, params):
        self.events = sorted(events, key=lambda e: e.get("t", 0.0))
        self.params = params
        prefix = params["prefix"]
        tg_ports = params["tg_ports"]
        self.election_prefix = prefix + "/_election/"
        # Member keys -> desired members per load balancer over time; election keys -> leader.
        self.desired = {}
        self.leader = Timeline(None)
        keys = {}
        per_lb = {}
        election = {}
        etcd_events = [e for e in self.events if e["kind"] == "etcd_event"]
        etcd_events.sort(key=lambda e: (e["rev"], e.get("t", 0.0)))
        for ev in etcd_events:
            key, t = ev["key"], ev["t"]
            if key.startswith(self.election_prefix):
                if ev["type"] == "put":
                    old = election.get(key)
                    create = old[0] if old else ev.get("create_rev", ev["rev"])
                    election[key] = (create, ev.get("value", ""))
                else:
                    election.pop(key, None)
                if election:
                    _, value = min(election.values())
                    self.leader.add(t, _pid_of_value(value))
                else:
                    self.leader.add(t, None)
                continue
            parsed = model.parse_key(key, tg_ports, prefix)
            if parsed is None:
                continue
            lb = parsed[0]
            if ev["type"] == "put":
                keys[key] = ev["rev"]
                per_lb.setdefault(lb, {})[key] = (parsed[1], parsed[2], ev["rev"])
            else:
                keys.pop(key, None)
                per_lb.get(lb, {}).pop(key, None)
            tl = self.desired.setdefault(lb, Timeline(frozenset()))
            tl.add(t, model.resolve(per_lb.get(lb, {}).values()))
        # Which process ran in which slot.
        self.starts = {}
        for ev in self.events:
            if ev["kind"] == "instance_start":
                self.starts.setdefault(ev["slot"], []).append((ev["t"], ev["pid"]))
        # Leadership intervals per pid.
        self.lead_intervals = {}
        for i, pid in enumerate(self.leader.values):
            if pid is None:
                continue
            start = self.leader.times[i]
            end = self.leader.times[i + 1] if i + 1 < len(self.leader.times) else float("inf")
            self.lead_intervals.setdefault(pid, []).append((start, end))
        # Foreign members: the fixtures, those added by hand later, and the values a hand edit
        # of a record set wrote back after lbmanager had removed them (the driver reads the record
        # set, then writes it changed: lbmanager may remove a value in between, as a person's edit
        # can). Under --ownership shared such a value is another tool's from then on, until it
        # leaves the record set.
        fixed = {lb: frozenset(ms) for lb, ms in params["foreign"].items()}
        self.foreign = Timeline(dict(fixed))
        back = {}  # lb -> values written back by hand, still in the record set
        current = {}  # (lb, type) -> the record set's values after the last change
        mutations = [e for e in self.events if e["kind"] in ("aws_call", "oob")]
        mutations.sort(key=lambda e: e.get("t_fwd", e["t"]))
        shared = params.get("ownership", "shared") == "shared"
        for ev in mutations:
            changed = []
            if not shared:
                break  # --ownership exclusive: nothing in a managed load balancer is another's
            if ev["kind"] == "oob" and ev.get("action") == "foreign_add":
                fixed[ev["lb"]] = fixed.get(ev["lb"], frozenset()) | frozenset(ev["added"])
                changed.append(ev["lb"])
            elif ev["kind"] == "oob" and ev.get("action") == "rrset":
                key, values = (ev["lb"], ev["type"]), set(ev.get("values", []))
                before = current.get(key)
                if before is not None:
                    put_back = values - before - fixed.get(ev["lb"], frozenset())
                    gone = {v for v in back.get(ev["lb"], set())
                            if model.ip_type(v) == ev["type"] and v not in values}
                    if put_back or gone:
                        back[ev["lb"]] = (back.get(ev["lb"], set()) - gone) | put_back
                        changed.append(ev["lb"])
                current[key] = values
            elif ev["kind"] == "aws_call" and ev.get("mutating") and applied(ev):
                for lb, _added, _removed, rr in call_effects(ev):
                    if rr is None:
                        continue
                    current[(lb, rr["type"])] = set(rr["values"])
                    gone = {v for v in back.get(lb, set())
                            if model.ip_type(v) == rr["type"] and v not in rr["values"]}
                    if gone:
                        back[lb] -= gone
                        changed.append(lb)
            if changed:
                cur = dict(self.foreign.values[-1])
                for lb in changed:
                    cur[lb] = fixed.get(lb, frozenset()) | frozenset(back.get(lb, set()))
                self.foreign.add(ev.get("t_fwd", ev["t"]), cur)

    def pid_of(self, slot, t):
        starts = self.starts.get(slot, [])
        i = bisect.bisect_right([s for s, _ in starts], t) - 1
        return starts[i][1] if i >= 0 else None

    def desired_at(self, lb, t):
        tl = self.desired.get(lb)
        return tl.at(t) if tl else frozenset()

    def desired_throughout(self, lb, member, t0, t1):
        tl = self.desired.get(lb)
        return bool(tl) and all(member in s for s in tl.span(t0, t1))

    def desired_ever(self, lb, member, t0, t1):
        tl = self.desired.get(lb)
        return bool(tl) and any(member in s for s in tl.span(t0, t1))

    def foreign_at(self, lb, t):
        return self.foreign.at(t).get(lb, frozenset())

    def foreign_ever(self, lb):
        out = set()
        for value in self.foreign.values:
            out |= value.get(lb, frozenset())
        return out


def _pid_of_value(value):
    parts = (value or "").split()
    if len(parts) >= 2 and parts[0] == "pid":
        try:
            return int(parts[1])
        except ValueError:
            return None
    return None


# --- what a call adds and removes ------------------------------------------------------------


def call_effects(call):
    """[(lb, added set, removed set or None, route53 resulting values by type or None)] of a
    mutating call. For ELB/ELBv2 the members named; for a ChangeResourceRecordSets, per changed
    (name, type): the values the record set holds after it."""
    out = []
    if call.get("service") == "route53":
        groups = {}
        for ch in call.get("changes", []):
            groups.setdefault((ch["lb"], ch["type"]), []).append(ch)
        for (lb, _rtype), chs in groups.items():
            if any(c.get("set_id") is not None for c in chs):
                # Multivalue answers (one record set per value), or the switch to or from them
                # in one batch: the values written, and those deleted and not written again.
                put = set().union(*[set(c.get("values", [])) for c in chs if c["action"] != "DELETE"])
                gone = set().union(*[set(c.get("values", [])) for c in chs if c["action"] == "DELETE"])
                out.append((lb, put, gone - put, None))
                continue
            for ch in chs:
                values = set() if ch["action"] == "DELETE" else set(ch.get("values", []))
                out.append((lb, values, None, {"type": ch["type"], "values": values,
                                               "ttl": ch.get("ttl")}))
        return out
    lb = call.get("lb")
    action = call.get("action", "")
    members = set(call.get("members", []))
    if action.startswith("Register"):
        out.append((lb, members, set(), None))
    elif action.startswith("Deregister"):
        out.append((lb, set(), members, None))
    return out


def applied(ev):
    """Whether an aws_call reached AWS and AWS accepted it."""
    status = ev.get("upstream_status")
    return status is not None and 200 <= status < 300


def removal_time(mutations, lb, member, before):
    """When `member` last left `lb` before `before`: the forward time of the applied change (or
    the time of the change by hand) that removed it after the last one that had it; None if the
    last one had it. `mutations`: aws_call and oob events in time order."""
    present = None
    removed_at = None
    for ev in mutations:
        t = ev.get("t_fwd", ev["t"])
        if t > before:
            break
        effect = None  # True: has it after; False: has it not
        if ev["kind"] == "oob":
            if ev.get("lb") != lb:
                continue
            if member in set(ev.get("removed", [])):
                effect = False
            elif member in set(ev.get("put", [])):
                effect = True
            elif ev.get("action") == "rrset" and ev.get("type") == model.ip_type(member):
                effect = member in set(ev.get("values", []))
        elif ev.get("mutating") and applied(ev):
            for clb, added, removed, rr in call_effects(ev):
                if clb != lb:
                    continue
                if rr is not None:
                    if rr["type"] == model.ip_type(member):
                        effect = member in rr["values"]
                elif member in added:
                    effect = True
                elif removed and member in removed:
                    effect = False
        if effect is True:
            present, removed_at = True, None
        elif effect is False and present is not False:
            present, removed_at = False, t
    return removed_at


def oob_put_back(events, lb, member, t0, t1):
    """Whether a change by hand between t0 and t1 left `member` in `lb`'s record set: the
    driver's hand edit reads the record set and writes it back changed, so it can write back a
    value lbmanager removed in between (as a person's edit can)."""
    return any(e["kind"] == "oob" and e.get("lb") == lb and t0 <= e["t"] <= t1
               and ((e.get("action") == "rrset" and member in set(e.get("values", [])))
                    or member in set(e.get("put", [])))
               for e in events)


def failed_register(events, lb, member, t0, t1):
    """Whether a Register naming `member` of `lb` failed between t0 and t1 (lbmanager claimed it
    before the call, and keeps the claim until a read shows it is not in AWS)."""
    return any(e["kind"] == "aws_call" and e.get("lb") == lb and t0 <= e["t"] <= t1
               and e.get("action", "").startswith("Register") and member in e.get("members", [])
               and (e.get("fault") or e.get("status") != 200)
               for e in events)


def oob_removed(events, lb, member, t0, t1):
    return any(e["kind"] == "oob" and e.get("lb") == lb and t0 <= e["t"] <= t1
               and (member in set(e.get("removed", [])) or (
                   e.get("action") == "rrset" and e.get("type") == model.ip_type(member)
                   and member not in set(e.get("values", []))))
               for e in events)


# --- AWS snapshots --------------------------------------------------------------------------


def snapshot_members(lb, snap):
    """Members of `lb` in an AWS snapshot: a set (Route53: every A/AAAA value)."""
    entry = snap.get(lb) or {}
    if lb.startswith("route53/"):
        out = set()
        for rtype in ("A", "AAAA"):
            for v in (entry.get(rtype) or {}).get("values", []):
                out.add(model.norm_ip(v) or v)
        return out
    states = entry.get("states", {})
    return {m for m in entry.get("members", []) if states.get(m) != "draining"}


def compare(hist, t, keys, aws):
    """The differences between AWS (a snapshot) and what etcd wants (keys sampled with it)."""
    p = hist.params
    desired = model.desired_from_keys(keys, p["tg_ports"], p["prefix"])
    diffs = []
    for lb in p["lbs"]:
        want = desired.get(lb, frozenset())
        foreign = hist.foreign_at(lb, t)
        exp = model.expected_aws(lb, want, foreign)
        entry = aws.get(lb)
        if entry is None:
            diffs.append("%s: not read" % lb)
            continue
        if entry.get("error"):
            diffs.append("%s: %s" % (lb, entry["error"]))
            continue
        if lb.startswith("route53/"):
            act = {}
            for rtype in ("A", "AAAA"):
                rr = entry.get(rtype)
                if rr and rr.get("values"):
                    act[rtype] = {model.norm_ip(v) or v for v in rr["values"]}
                    own_only = not (act[rtype] & set(foreign))
                    if own_only and rr.get("ttl") != p["route53_ttl"]:
                        diffs.append("%s %s: TTL %s, want %s" % (lb, rtype, rr.get("ttl"), p["route53_ttl"]))
            if act != exp:
                diffs.append("%s: AWS %s, want %s" % (lb, _fmt(act), _fmt(exp)))
            if lb in p["hc_scope"]:
                diffs += compare_checks(hist, lb, want, entry, aws.get("_checks"))
        else:
            act = snapshot_members(lb, {lb: entry})
            if act != exp:
                diffs.append("%s: AWS has %s extra, %s missing" % (
                    lb, sorted(act - exp), sorted(exp - act)))
    for lb, want in p["foreign_fqdns"].items():
        if aws.get(lb) is not None and _canon_rrsets(aws.get(lb)) != _canon_rrsets(want):
            diffs.append("%s (foreign): %s, was %s" % (lb, aws.get(lb), want))
    for lb, want in p["foreign_lbs"].items():
        entry = aws.get(lb)
        if entry is not None and sorted(entry.get("members", [])) != sorted(want):
            diffs.append("%s (foreign): %s, was %s" % (lb, entry.get("members", entry), sorted(want)))
    return diffs


def ours(p, check):
    """Whether a check (as a snapshot lists it) is this installation's."""
    return bool(p["check_prefix"]) and (check.get("ref") or "").startswith(p["check_prefix"])


def check_fits(p, check, fqdn, ip):
    """Why `check` is not the check of value `ip` of `fqdn` (None: it is)."""
    spec = p["hc_spec"] or {}
    if not ours(p, check):
        return "not this installation's (reference %s)" % check.get("ref")
    if check.get("ip") != ip or check.get("fqdn") != fqdn:
        return "checks %s of %s" % (check.get("ip"), check.get("fqdn"))
    if (check.get("type"), check.get("port"), check.get("path") or None) != (
            spec.get("type"), spec.get("port"), spec.get("path")):
        return "checks %s:%s%s" % (check.get("type"), check.get("port"), check.get("path") or "")
    return None


def compare_checks(hist, lb, want, entry, checks):
    """The differences of a name in the health-check scope: each record set a multivalue answer
    of one value naming this installation's check of it; this installation's checks of a name
    with keys exactly those named (one per value, none left)."""
    p = hist.params
    fqdn = lb.split("/", 2)[2]
    if checks is None or "_error" in (checks or {}):
        return ["%s: health checks not read: %s" % (lb, (checks or {}).get("_error"))]
    diffs = []
    named = {}
    for st in entry.get("sets", []):
        if st["type"] not in ("A", "AAAA"):
            continue
        values = st.get("values", [])
        what = "%s %s %s" % (lb, st["type"], st.get("set_id"))
        if st.get("set_id") is None or not st.get("mva") or len(values) != 1 or \
                st.get("set_id") != values[0]:
            diffs.append("%s: not a multivalue answer of one value (%s)" % (what, values))
            continue
        if not st.get("hc"):
            diffs.append("%s: names no health check" % what)
            continue
        check = checks.get(st["hc"])
        if check is None:
            diffs.append("%s: names health check %s, which does not exist" % (what, st["hc"]))
            continue
        why = check_fits(p, check, fqdn, values[0])
        if why:
            diffs.append("%s: its health check %s %s" % (what, st["hc"], why))
        named[st["hc"]] = values[0]
    if want:
        mine = {hc: c for hc, c in checks.items() if ours(p, c) and c.get("fqdn") == fqdn}
        left = sorted("%s (%s)" % (hc, c.get("ip")) for hc, c in mine.items() if hc not in named)
        if left:
            diffs.append("%s: health checks of lbmanager's that no record set names: %s" % (
                lb, ", ".join(left)))
    return diffs


def _canon_rrsets(entry):
    return {k: (v.get("ttl"), tuple(sorted(v.get("values", [])))) for k, v in (entry or {}).items()
            if isinstance(v, dict)}


def _fmt(rr):
    return {k: sorted(v) for k, v in sorted(rr.items())}


def duplicates(aws):
    out = []
    for lb, entry in aws.items():
        if lb.startswith("elb/"):
            members = entry.get("members", [])
            dup = sorted({m for m in members if members.count(m) > 1})
            if dup:
                out.append((lb, dup))
    return out


# --- the rules ------------------------------------------------------------------------------


def check_leader(hist, out):
    """Returns, per call checked, (seconds since its sender's leadership began, seconds before it
    ended: inf while it lasted)."""
    tol = hist.params["leader_tolerance"]
    margins = []
    for ev in hist.events:
        if ev["kind"] != "aws_call" or not ev.get("mutating"):
            continue
        t = ev["t"]
        pid = hist.pid_of(ev["slot"], t)
        ok = False
        for start, end in hist.lead_intervals.get(pid, []):
            if start - tol <= t <= end + tol:
                ok = True
                margins.append((t - start, end - t))
                break
        if not ok:
            leader = hist.leader.at(t)
            out.append(_v("leader", t,
                          "%s from slot %s (pid %s) while the leader was pid %s" % (
                              _call_name(ev), ev["slot"], pid, leader),
                          call=_brief(ev), intervals=hist.lead_intervals.get(pid, [])))
    return margins


def _call_name(ev):
    return "%s %s" % (ev.get("action"), ev.get("lb") or ",".join(
        sorted({c["lb"] for c in ev.get("changes", [])})))


def _brief(ev):
    keep = ("t", "slot", "action", "lb", "members", "changes", "fault", "upstream_status", "status")
    return {k: ev[k] for k in keep if k in ev}


def check_calls(hist, out):
    """The removal, addition and foreign rules."""
    w, lag = hist.params["stale_window"], hist.params["watch_lag"]
    for ev in hist.events:
        if ev["kind"] != "aws_call" or not ev.get("mutating"):
            continue
        t = ev["t"]
        for ch in ev.get("changes", []):
            if ch["lb"] in hist.params["foreign_fqdns"] or ch["lb"] not in hist.params["lbs"]:
                out.append(_v("foreign", t, "%s changed %s %s, a record set lbmanager does not manage"
                              % (ch["action"], ch["lb"], ch["type"]), call=_brief(ev)))
        if ev.get("lb") and ev.get("service") in ("elb", "elbv2") and ev["lb"] not in hist.params["lbs"]:
            out.append(_v("foreign", t, "%s changed %s, a load balancer lbmanager does not manage"
                          % (ev.get("action"), ev["lb"]), call=_brief(ev)))
        for lb, added, removed, rr in call_effects(ev):
            if lb not in hist.params["lbs"]:
                continue
            foreign = hist.foreign_at(lb, t)
            if rr is not None:
                typed_foreign = {m for m in foreign if model.ip_type(m) == rr["type"]}
                lost = typed_foreign - rr["values"]
                if lost:
                    out.append(_v("foreign", t, "%s wrote %s %s without the foreign values %s"
                                  % (_call_name(ev), lb, rr["type"], sorted(lost)), call=_brief(ev)))
                wanted = {m for m in hist.desired_at(lb, t) if model.ip_type(m) == rr["type"]}
                removed = {m for m in wanted if m not in rr["values"]}
                added = rr["values"] - typed_foreign
            else:
                touched = (added | (removed or set())) & set(foreign)
                if touched:
                    out.append(_v("foreign", t, "%s named foreign members %s" % (
                        _call_name(ev), sorted(touched)), call=_brief(ev)))
                added = added - set(foreign)
                removed = (removed or set()) - set(foreign)
            for m in sorted(removed):
                if hist.desired_throughout(lb, m, t - w, t + lag):
                    out.append(_v("removal", t, "%s removed %s from %s, which etcd wanted for the "
                                  "whole %.0f s before" % (_call_name(ev), m, lb, w), call=_brief(ev)))
            for m in sorted(added):
                if not hist.desired_ever(lb, m, t - w, t + lag):
                    out.append(_v("addition", t, "%s added %s to %s, which etcd did not want at any "
                                  "moment of the %.0f s before" % (_call_name(ev), m, lb, w),
                                  call=_brief(ev)))


def check_health_calls(hist, out):
    """The hc_named, hc_order and hc_foreign rules over the calls (see the module's docstring)."""
    p = hist.params
    hold, tol = p["pending_hold"], p["hc_tolerance"]
    foreign = set(p["foreign_checks"])
    made = {}  # check id -> what CreateHealthCheck made (and when)
    deleted = {}  # check id -> when a DeleteHealthCheck of it was applied
    names = {}  # (lb, type, set id) -> the check its record set names (None: none)
    unnamed = {}  # check id -> when a change of lbmanager's last stopped naming it
    mutations = [e for e in hist.events if (e["kind"] == "aws_call" and e.get("mutating")) or (
        e["kind"] == "oob" and e.get("action") == "rrset_set")]
    mutations.sort(key=lambda e: e.get("t_fwd", e["t"]))
    for ev in mutations:
        t = ev.get("t_fwd", ev["t"])
        if ev["kind"] == "oob":
            key = (ev["lb"], ev["type"], ev.get("set_id"))
            if ev.get("removed"):
                names.pop(key, None)
            else:
                names[key] = ev.get("hc")
            continue
        action = ev.get("action")
        hc = (ev.get("hc") or {}).get("id")
        if hc in foreign and action in ("DeleteHealthCheck", "UpdateHealthCheck",
                                        "ChangeTagsForResource"):
            out.append(_v("hc_foreign", ev["t"], "%s of %s, a health check of another installation "
                          "or tool" % (action, hc), call=_brief(ev)))
        if not applied(ev):
            continue
        if action == "CreateHealthCheck" and hc and ev.get("moto_fix") is None:
            made[hc] = dict(ev["hc"], t=ev.get("t_done", t))
        elif action == "DeleteHealthCheck" and hc and hc not in foreign:
            deleted[hc] = t
            users = sorted("%s %s %s" % k for k, v in names.items() if v == hc)
            if users:
                out.append(_v("hc_order", ev["t"], "DeleteHealthCheck of %s while record sets "
                              "named it: %s" % (hc, ", ".join(users)), call=_brief(ev)))
            elif hc in unnamed and t < unnamed[hc] + hold - tol:
                out.append(_v("hc_order", ev["t"], "DeleteHealthCheck of %s forwarded %.3f s after "
                              "the change that stopped naming it, before it was INSYNC (%.1f s)" % (
                                  hc, t - unnamed[hc], hold), call=_brief(ev)))
        elif action == "ChangeResourceRecordSets":
            for ch in ev.get("changes", []):
                key = (ch["lb"], ch["type"], ch.get("set_id"))
                before = names.get(key)
                after = None if ch["action"] == "DELETE" else ch.get("hc")
                if after is not None:
                    fqdn = ch["lb"].split("/", 2)[2]
                    check = made.get(after)
                    why = None
                    if after in deleted and deleted[after] <= t:
                        why = "deleted %.3f s before" % (t - deleted[after])
                    elif check is None:
                        why = "not made through lbmanager's AWS endpoint (another's?)"
                    elif check["t"] > t + tol:
                        why = "made after it"
                    else:
                        why = check_fits(p, check, fqdn, (ch.get("values") or [None])[0])
                    if why:
                        out.append(_v("hc_named", ev["t"], "%s %s %s %s names health check %s: %s"
                                      % (ch["action"], ch["lb"], ch["type"], ch.get("values"),
                                         after, why), call=_brief(ev)))
                if before is not None and before != after:
                    unnamed[before] = t
                if after is None:
                    names.pop(key, None)
                else:
                    names[key] = after


def check_health_samples(hist, out):
    """hc_named, hc_foreign and hc_left over the samples and status reads."""
    p = hist.params
    reported = set()
    starts = sorted(s for ivs in hist.lead_intervals.values() for s, _ in ivs)
    for ev in hist.events:
        if ev["kind"] not in ("sample", "status"):
            continue
        aws = ev.get("aws") or {}
        checks = aws.get("_checks")
        if checks is None or "_error" in checks:
            continue
        for hc, want in p["foreign_checks"].items():
            have = checks.get(hc)
            if have != want and ("foreign", hc) not in reported:
                reported.add(("foreign", hc))
                out.append(_v("hc_foreign", ev["t"], "health check %s of another installation or "
                              "tool is %s, was %s" % (hc, have or "gone", want)))
        named = set()
        for lb in p["hc_scope"]:
            for st in (aws.get(lb) or {}).get("sets", []):
                if not st.get("hc"):
                    continue
                named.add(st["hc"])
                if st["hc"] not in checks and ("named", st["hc"]) not in reported:
                    reported.add(("named", st["hc"]))
                    out.append(_v("hc_named", ev["t"], "%s %s %s names health check %s, which "
                                  "does not exist" % (lb, st["type"], st.get("set_id"), st["hc"])))
        if ev["kind"] != "status":
            continue
        desired = model.desired_from_keys(ev.get("keys", {}), p["tg_ports"], p["prefix"])
        zone = p.get("zone")
        for hc, c in checks.items():
            if not ours(p, c) or hc in named:
                continue
            if desired.get("route53/%s/%s" % (zone, c.get("fqdn"))):
                continue  # a name with keys: the convergence rule's
            nonce = (c.get("ref") or "").rsplit("-", 1)[-1]
            try:
                made = int(nonce, 16) / 1e6
            except ValueError:
                continue
            late = [s for s in starts if made + p["stray_age"] <= s <= ev["t"] - 15.0]
            if late and ("left", hc) not in reported:
                reported.add(("left", hc))
                out.append(_v("hc_left", ev["t"], "health check %s of %s %s, made %.0f s before, "
                              "is named by no record set, and a leader started %.0f s after it "
                              "was 10 minutes old" % (hc, c.get("fqdn"), c.get("ip"),
                                                       ev["t"] - made, late[0] - made - p["stray_age"])))


def check_ops(hist, out):
    ttl_tol = hist.params["drain_tolerance"]
    starts, ready, probes, ends = {}, {}, {}, {}
    for ev in hist.events:
        table = {"op_start": starts, "op_ready": ready, "aws_probe": probes, "op_end": ends}.get(ev["kind"])
        if table is not None:
            table[ev["op_id"]] = ev
    mutations = [e for e in hist.events if e["kind"] in ("aws_call", "oob")]
    mutations.sort(key=lambda e: e.get("t_fwd", e["t"]))
    puts = {}
    for ev in hist.events:
        if ev["kind"] == "etcd_event" and ev["type"] == "put":
            puts.setdefault(ev["key"], []).append(ev["t"])
    checked = {"add_wait": 0, "remove_wait": 0, "drain_ttl": 0}
    for op_id, st in sorted(starts.items(), key=lambda kv: kv[1]["t"]):
        kind = st["op"]
        lb, member = st.get("lb"), st.get("member")
        end = ends.get(op_id)
        probe = probes.get(op_id)
        if end and end.get("exit") not in (0, None) and (st.get("argv") or [""])[0] == "member":
            if "tcp connect error" in end.get("stderr", ""):
                out.append(_v("failover", end["t"], "`lbmanager %s` failed: one of its three etcd endpoints "
                              "refused the connection, and it did not fail over to the others (%s)" % (
                                  " ".join(st.get("argv", [])[:3]), _last_line(end["stderr"])), op=st))
        if kind in ("add_wait", "add_wait_single", "presence"):
            done = ready.get(op_id) if kind == "presence" else end
            if done is None or (kind != "presence" and done.get("exit") != 0):
                continue
            if "AWS rejected" in (end or {}).get("stderr", ""):
                out.append(_v("add_wait", done["t"], "AWS (moto, which refuses nothing) was said to "
                              "have rejected %s" % member, op=st, end=end))
            if probe is None:
                continue
            checked["add_wait"] += 1
            if probe["present"]:
                continue
            written = [t for t in puts.get(st["key"], []) if t >= st["t"] - 1.0]
            if written and not hist.desired_throughout(lb, member, written[0], probe["t"]):
                continue  # superseded or deleted since: lbmanager may remove it
            if oob_removed(mutations, lb, member, st["t"], probe["t"]):
                continue  # removed by hand since
            out.append(_v("add_wait", done["t"], "%s %s exited 0 but AWS, read %.3f s later, does "
                          "not have %s, which etcd wanted all along" % (
                              kind, st["key"], probe["t"] - done["t"], member),
                          op=st, probe=probe, written=written[:1]))
        elif kind in ("remove_wait", "remove_drain"):
            if end is None or end.get("exit") != 0 or probe is None:
                continue
            checked["remove_wait"] += 1
            if oob_put_back(mutations, lb, member, st["t"], probe["t"]):
                continue  # put back by hand: not lbmanager's doing
            if member in hist.foreign_at(lb, st["t"]):
                continue  # another tool's (written back by hand earlier): lbmanager keeps it
            if probe["present"] and not hist.desired_ever(lb, member, end["t"], probe["t"]):
                out.append(_v("remove_wait", end["t"], "%s %s exited 0 but AWS, read %.3f s later, "
                              "still has %s" % (kind, st["key"], probe["t"] - end["t"], member),
                              op=st, probe=probe))
                continue
            if kind == "remove_drain" and lb.startswith("route53/"):
                removed_at = removal_time(mutations, lb, member, end["t"])
                if removed_at is None or removed_at < st["t"] - 1.0:
                    continue  # gone before this operation (nothing to drain)
                checked["drain_ttl"] += 1
                ttl = hist.params["route53_ttl"]
                for e in mutations:
                    if e.get("t_fwd", e["t"]) == removed_at:
                        ttl = _ttl_of(e, lb, member, ttl)
                        break
                if end["t"] < removed_at + ttl - ttl_tol:
                    out.append(_v("remove_wait", end["t"], "%s %s exited %.3f s after the change "
                                  "that removed %s was sent, before its TTL (%s s) had passed" % (
                                      kind, st["key"], end["t"] - removed_at, member, ttl), op=st))
    return checked


def _last_line(text):
    lines = [l for l in (text or "").strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else ""


def _ttl_of(ev, lb, member, default):
    for ch in ev.get("changes", []):
        if ch["lb"] == lb and ch["type"] == model.ip_type(member) and ch.get("ttl") is not None:
            return ch["ttl"]
    if ev.get("kind") == "oob" and ev.get("ttl") is not None:
        return ev["ttl"]
    return default


def check_quiet(hist, out):
    bound = hist.params["convergence_bound"]
    rounds = {}
    for ev in hist.events:
        if ev["kind"] in ("quiet_start", "sample", "status", "quiet_end"):
            rounds.setdefault(ev["round"], []).append(ev)
    convergence = []
    for rnd, evs in sorted(rounds.items()):
        start = next((e for e in evs if e["kind"] == "quiet_start"), None)
        if start is None:
            continue
        samples = [e for e in evs if e["kind"] == "sample"]
        matched = None
        last_diffs = None
        dup_seen = set()
        for s in samples:
            for lb, dup in duplicates(s["aws"]):
                if lb not in dup_seen:
                    dup_seen.add(lb)
                    out.append(_v("duplicate", s["t"], "%s lists %s more than once" % (lb, dup), round=rnd))
            diffs = compare(hist, s["t"], s["keys"], s["aws"])
            if matched is None:
                if not diffs:
                    matched = s
                    convergence.append(s["t"] - start["t"])
                else:
                    last_diffs = diffs
            elif diffs and s["keys"] == matched["keys"]:
                out.append(_v("convergence", s["t"], "round %s: AWS diverged again after converging "
                              "(keys unchanged): %s" % (rnd, "; ".join(diffs)), round=rnd))
                break
        if matched is None:
            out.append(_v("convergence", samples[-1]["t"] if samples else start["t"],
                          "round %s: AWS did not match etcd within %.0f s of the quiet period's "
                          "start: %s" % (rnd, bound, "; ".join(last_diffs or ["no sample"])),
                          round=rnd))
        elif matched["t"] - start["t"] > bound:
            out.append(_v("convergence", matched["t"], "round %s: converged after %.1f s, over the "
                          "%.0f s bound" % (rnd, matched["t"] - start["t"], bound), round=rnd))
        statuses = [e for e in evs if e["kind"] == "status"]
        if matched is not None and statuses:
            check_status(hist, statuses[-1], out, rnd)
    return convergence


def check_status(hist, ev, out, rnd):
    p = hist.params
    t = ev["t"]
    report = ev.get("report") or {}
    if ev.get("exit") != 0:
        bad = [r.get("load_balancer") for r in report.get("load_balancers", []) if not r.get("in_step")]
        out.append(_v("status", t, "round %s: `lbmanager status` exited %s at quiescence (not in "
                      "step: %s)" % (rnd, ev.get("exit"), bad), round=rnd, stderr=ev.get("stderr")))
    daemon = report.get("daemon")
    if not daemon or daemon.get("stale"):
        out.append(_v("status", t, "round %s: status reports no live lbmanager: %s" % (rnd, daemon),
                      round=rnd))
    desired = model.desired_from_keys(ev.get("keys", {}), p["tg_ports"], p["prefix"])
    aws = ev.get("aws", {})
    rows = {r.get("load_balancer"): r for r in report.get("load_balancers", [])}
    owned = {}
    for key in ev.get("owned", []):
        lb, member = _owned(key, p["prefix"])
        if lb:
            owned.setdefault(lb, set()).add(member)
    managed = {_managed(key, p["prefix"]) for key in ev.get("managed", [])}
    for lb in p["lbs"]:
        want = desired.get(lb, frozenset())
        in_aws = snapshot_members(lb, aws)
        foreign = set(hist.foreign_at(lb, t))
        mine = in_aws - foreign
        row = rows.get(lb)
        if row is None:
            if want or mine:
                out.append(_v("status", t, "round %s: status has no row for %s" % (rnd, lb), round=rnd))
        else:
            row_desired = {_norm_member(lb, m, p) for m in row.get("desired", [])}
            if row_desired != set(want):
                out.append(_v("status", t, "round %s: status says %s wants %s, etcd %s" % (
                    rnd, lb, sorted(row_desired), sorted(want)), round=rnd))
            states = row.get("in_aws") or []
            routed = {_norm_member(lb, m["member"], p) for m in states if m.get("state") != "draining"}
            if routed != in_aws:
                out.append(_v("status", t, "round %s: status says AWS has %s in %s, AWS has %s" % (
                    rnd, sorted(routed), lb, sorted(in_aws)), round=rnd))
            flagged = {_norm_member(lb, m["member"], p) for m in states if m.get("foreign")}
            if flagged != (foreign & in_aws):
                out.append(_v("status", t, "round %s: status flags %s as foreign in %s, they are %s" % (
                    rnd, sorted(flagged), lb, sorted(foreign & in_aws)), round=rnd))
        rec = {_norm_member(lb, m, p) for m in owned.get(lb, set())}
        # A member taken out of AWS by hand, or claimed for a Register that failed (its answer
        # may have been lost after AWS took it), is forgotten by a later read at least 5 s after
        # the claim (the first read after a change may not show a registration yet).
        window = 2 * p.get("resync", 5) + 2.0
        rec -= {m for m in rec - mine if oob_removed(hist.events, lb, m, t - window, t)
                or failed_register(hist.events, lb, m, t - window, t)}
        if p["ownership"] == "exclusive":
            mine = set()  # --ownership exclusive writes no owned record
        if rec != mine:
            out.append(_v("records", t, "round %s: owned records of %s are %s, lbmanager's members in "
                          "AWS %s" % (rnd, lb, sorted(rec), sorted(mine)), round=rnd))
        if want and lb not in managed:
            out.append(_v("records", t, "round %s: %s has members but no managed record" % (rnd, lb),
                          round=rnd))


def _owned(key, prefix):
    head = "/lbmanager-state%s/owned/" % prefix
    if not key.startswith(head):
        return None, None
    path, _, member = key[len(head):].rpartition("/")
    return path, member


def _managed(key, prefix):
    head = "/lbmanager-state%s/managed/" % prefix
    return key[len(head):] if key.startswith(head) else None


def _norm_member(lb, m, p):
    if lb.startswith("route53/"):
        return model.norm_ip(m) or m
    if lb.startswith("elbv2/"):
        return model.norm_target(m, p["tg_ports"].get(lb, 80))
    return m


def check_resources(hist, out):
    p = hist.params
    per_pid = {}
    for ev in hist.events:
        if ev["kind"] == "resources" and ev.get("rss_kib") is not None:
            per_pid.setdefault(ev["pid"], []).append(ev)
    checked = []
    for pid, samples in per_pid.items():
        peak_rss = max(s["rss_kib"] for s in samples)
        peak_fds = max(s.get("fds") or 0 for s in samples)
        if peak_rss > p["rss_max_kib"] or peak_fds > p["fd_max"]:
            out.append(_v("resources", samples[-1]["t"], "pid %s reached RSS %d KiB, %d open files" % (
                pid, peak_rss, peak_fds), pid=pid))
        span = samples[-1]["t"] - samples[0]["t"]
        if span < p["resource_min_span"] or len(samples) < 8:
            continue
        q = max(2, len(samples) // 4)
        first, last = samples[:q], samples[-q:]
        rss0 = statistics.median(s["rss_kib"] for s in first)
        rss1 = statistics.median(s["rss_kib"] for s in last)
        fd0 = statistics.median(s.get("fds") or 0 for s in first)
        fd1 = statistics.median(s.get("fds") or 0 for s in last)
        checked.append({"pid": pid, "slot": samples[0].get("slot"), "span_s": round(span),
                        "rss_kib": [rss0, rss1], "fds": [fd0, fd1]})
        if rss1 > rss0 * p["rss_growth"] + p["rss_slack_kib"]:
            out.append(_v("resources", samples[-1]["t"], "pid %s: RSS grew %d -> %d KiB over %.0f s" % (
                pid, rss0, rss1, span), pid=pid))
        if fd1 > fd0 + p["fd_growth"]:
            out.append(_v("resources", samples[-1]["t"], "pid %s: open files grew %d -> %d over %.0f s"
                          % (pid, fd0, fd1, span), pid=pid))
    return checked


def check_logs_and_stop(hist, out):
    for ev in hist.events:
        if ev["kind"] == "log_check":
            for line in ev.get("panics", []):
                out.append(_v("logs", ev["t"], "slot %s pid %s logged a panic: %s" % (
                    ev.get("slot"), ev.get("pid"), line[:300]), file=ev.get("file")))
            for line in ev.get("bad_json", []):
                out.append(_v("logs", ev["t"], "slot %s pid %s wrote a line that is not JSON: %r" % (
                    ev.get("slot"), ev.get("pid"), line[:300]), file=ev.get("file")))
        elif ev["kind"] == "instance_exit" and ev.get("reason") == "final_stop":
            if ev.get("code") != 0:
                out.append(_v("stop", ev["t"], "slot %s pid %s exited %s after SIGTERM at the end" % (
                    ev.get("slot"), ev.get("pid"), ev.get("code") if ev.get("code") is not None
                    else "signal %s" % ev.get("signal")), pid=ev.get("pid")))
        elif ev["kind"] == "harness_error":
            out.append(_v("harness", ev["t"], "the driver failed: %s" % ev.get("error"),
                          where=ev.get("where")))


def op_latency(hist):
    """How long the successful `member` operations that wait took, by kind."""
    starts = {e["op_id"]: e for e in hist.events if e["kind"] == "op_start"}
    out = {}
    for e in hist.events:
        if e["kind"] != "op_end" or e.get("exit") != 0:
            continue
        st = starts.get(e["op_id"])
        if st and st["op"] in ("add_wait", "add_wait_single", "remove_wait", "remove_drain"):
            out.setdefault(st["op"], []).append(e["t"] - st["t"])
    return {k: {"n": len(v), "p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": max(v)}
            for k, v in sorted(out.items())}


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def check(events, overrides=None):
    """The violations of the history and its figures: {"violations": [...], "stats": {...}}."""
    meta = next((e for e in events if e.get("kind") == "meta"), {})
    params = dict(DEFAULTS)
    params.update(meta.get("params", {}))
    params.update(overrides or {})
    hist = History(events, params)
    violations = []
    margins = check_leader(hist, violations)
    check_calls(hist, violations)
    if params["hc_scope"] or params["foreign_checks"]:
        check_health_calls(hist, violations)
        check_health_samples(hist, violations)
    checked_ops = check_ops(hist, violations)
    convergence = check_quiet(hist, violations)
    resources = check_resources(hist, violations)
    check_logs_and_stop(hist, violations)
    violations.sort(key=lambda v: v["t"])
    for v in violations:
        v["seed"] = meta.get("seed")
    stats = {
        "convergence_s": {
            "n": len(convergence),
            "p50": percentile(convergence, 0.5),
            "p99": percentile(convergence, 0.99),
            "max": max(convergence) if convergence else None,
        },
        "mutating_calls_checked": len(margins),
        # How close a change came to its sender's loss of leadership (an ended leadership only),
        # and how soon after a takeover a new leader changed something.
        "leader_end_margin_min_s": min([e for _, e in margins if e != float("inf")], default=None),
        "leader_start_margin_min_s": min([s for s, _ in margins if s != float("inf")], default=None),
        "op_latency_s": op_latency(hist),
        "ops_checked": checked_ops,
        "resources_checked": resources,
        "leaders": sorted({p for p in hist.leader.values if p is not None}),
        "leader_changes": len(hist.leader.values) - 1,
    }
    return {"violations": violations, "stats": stats}
