"""Unit tests of the soak's checker over hand-made histories: a healthy one passes, and one
violation of each kind is caught. Run from scripts/: python3 -m unittest soak.test_checker
"""
import unittest

from . import checker, model, schedule

ZONE = "Z123"
ELB = "elb/us-east-1/webA"
TG = "elbv2/us-east-1/web-tg"
WWW = "route53/%s/www.example.com" % ZONE
LEGACY = "route53/%s/legacy.example.com" % ZONE
I1, I2, I3 = "i-0a000000000000001", "i-0a000000000000002", "i-0a000000000000003"
FOREIGN = "i-0f0000000000000f1"
K1 = "/lbManager/elb/us-east-1/webA/multiple/" + I1
K2 = "/lbManager/elb/us-east-1/webA/multiple/" + I2
K3S = "/lbManager/elb/us-east-1/webA/single/" + I3
KW = "/lbManager/route53/us-east-1/%s/www.example.com/multiple/192.0.2.10" % ZONE
ELECTION = "/lbManager/_election/"


def meta():
    return {"kind": "meta", "t": 0.0, "seed": 7, "minutes": 1, "params": {
        "lbs": [ELB, TG, WWW], "tg_ports": {TG: 80},
        "foreign": {ELB: [FOREIGN], WWW: ["198.51.100.7"]},
        "foreign_fqdns": {LEGACY: {"A": {"ttl": 300, "values": ["198.51.100.9"]}}},
        "route53_ttl": 2}}


def etcd(t, typ, key, rev, value=None, create=None):
    ev = {"kind": "etcd_event", "t": t, "type": typ, "key": key, "rev": rev}
    if typ == "put":
        ev["create_rev"] = create or rev
        ev["version"] = 1
        if value is not None:
            ev["value"] = value
    return ev


def call(t, slot, action, lb=None, members=(), changes=None, upstream=200, fault=None):
    ev = {"kind": "aws_call", "t": t, "t_fwd": t + 0.001, "t_done": t + 0.01, "slot": slot,
          "service": "route53" if changes is not None else ("elbv2" if "Target" in action else "elb"),
          "action": action, "mutating": action.startswith(("Register", "Deregister", "Change")),
          "fault": fault, "upstream_status": upstream, "status": upstream}
    if changes is not None:
        ev["changes"] = changes
    else:
        ev["lb"] = lb
        ev["members"] = sorted(members)
    return ev


def aws(elb=(I1, I2), www=("192.0.2.10",), ttl=2):
    return {
        ELB: {"members": sorted(list(elb) + [FOREIGN])},
        TG: {"members": [], "states": {}},
        WWW: {"A": {"ttl": ttl, "values": sorted(list(www) + ["198.51.100.7"])}},
        LEGACY: {"A": {"ttl": 300, "values": ["198.51.100.9"]}},
    }


def status_report(elb=(I1, I2), desired=(I1, I2)):
    return {"daemon": {"version": "0.1.0", "reported_secs_ago": 1, "resync_interval_secs": 5,
                       "stale": False},
            "load_balancers": [
                {"load_balancer": ELB, "desired": sorted(desired), "in_step": True,
                 "in_aws": [{"member": m} for m in sorted(elb)] + [{"member": FOREIGN, "foreign": True}]},
                {"load_balancer": WWW, "desired": ["192.0.2.10"], "in_step": True,
                 "in_aws": [{"member": "192.0.2.10"}, {"member": "198.51.100.7", "foreign": True}]},
            ]}


def healthy():
    """Two instances; slot 0 (pid 100) leads until it is killed at t=20, slot 1 (pid 200) from
    t=24; two ELB members and one Route53 value, added with `member add --wait`; a quiet period
    that converges; status and records in step."""
    keys = {K1: 10, K2: 11, KW: 12}
    ev = [
        meta(),
        {"kind": "instance_start", "t": 0.5, "slot": 0, "pid": 100},
        {"kind": "instance_start", "t": 0.5, "slot": 1, "pid": 200},
        etcd(1.0, "put", ELECTION + "a", 2, "pid 100 lease a"),
        etcd(1.1, "put", ELECTION + "b", 3, "pid 200 lease b"),
        {"kind": "op_start", "t": 2.0, "op_id": 1, "op": "add_wait", "key": K1, "lb": ELB, "member": I1},
        etcd(2.1, "put", K1, 10),
        call(2.3, 0, "RegisterInstancesWithLoadBalancer", ELB, [I1]),
        {"kind": "op_end", "t": 2.6, "op_id": 1, "exit": 0, "stderr": ""},
        {"kind": "aws_probe", "t": 2.62, "op_id": 1, "lb": ELB, "member": I1, "present": True},
        etcd(3.0, "put", K2, 11),
        call(3.2, 0, "RegisterInstancesWithLoadBalancer", ELB, [I2]),
        etcd(4.0, "put", KW, 12),
        call(4.2, 0, "ChangeResourceRecordSets", changes=[
            {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
             "values": ["192.0.2.10", "198.51.100.7"]}]),
        # A key that comes and goes: its member is added, then removed after its delete.
        etcd(5.0, "put", K3S.replace("single", "multiple"), 13),
        call(5.2, 0, "RegisterInstancesWithLoadBalancer", ELB, [I3]),
        etcd(6.0, "delete", K3S.replace("single", "multiple"), 14),
        call(6.2, 0, "DeregisterInstancesFromLoadBalancer", ELB, [I3]),
        # The leader is killed; its key goes with its lease 4 s later; slot 1 leads.
        {"kind": "instance_exit", "t": 20.0, "slot": 0, "pid": 100, "code": None, "signal": 9},
        etcd(24.0, "delete", ELECTION + "a", 15),
        call(24.3, 1, "RegisterInstancesWithLoadBalancer", ELB, [I2]),
        {"kind": "quiet_start", "t": 30.0, "round": 1},
        {"kind": "sample", "t": 30.1, "round": 1, "keys": keys, "aws": aws()},
        {"kind": "sample", "t": 31.1, "round": 1, "keys": keys, "aws": aws()},
        {"kind": "status", "t": 32.0, "round": 1, "exit": 0, "report": status_report(), "keys": keys,
         "aws": aws(), "owned": ["/lbmanager-state/lbManager/owned/%s/%s" % (ELB, I1),
                                 "/lbmanager-state/lbManager/owned/%s/%s" % (ELB, I2),
                                 "/lbmanager-state/lbManager/owned/%s/192.0.2.10" % WWW],
         "managed": ["/lbmanager-state/lbManager/managed/%s" % ELB,
                     "/lbmanager-state/lbManager/managed/%s" % WWW]},
        {"kind": "quiet_end", "t": 32.5, "round": 1},
        {"kind": "log_check", "t": 40.0, "slot": 1, "pid": 200, "lines": 10, "bad_json": [], "panics": []},
        {"kind": "instance_exit", "t": 40.0, "slot": 1, "pid": 200, "code": 0, "reason": "final_stop"},
    ]
    return ev


def kinds(events):
    return [v["kind"] for v in checker.check(events)["violations"]]


class Healthy(unittest.TestCase):
    def test_a_healthy_history_passes(self):
        result = checker.check(healthy())
        self.assertEqual(result["violations"], [])
        self.assertEqual(result["stats"]["convergence_s"]["n"], 1)
        self.assertAlmostEqual(result["stats"]["convergence_s"]["max"], 0.1, places=3)
        self.assertEqual(result["stats"]["mutating_calls_checked"], 6)
        self.assertEqual(result["stats"]["leaders"], [100, 200])


class EachViolation(unittest.TestCase):
    def test_a_change_from_a_standby(self):
        ev = healthy() + [call(10.0, 1, "RegisterInstancesWithLoadBalancer", ELB, [I1])]
        self.assertIn("leader", kinds(ev))

    def test_a_change_from_a_leader_after_its_key_went(self):
        # pid 100 was SIGSTOPped, resumed after its key was deleted, and sent a change.
        ev = [e for e in healthy() if not (e["kind"] == "instance_exit" and e.get("pid") == 100)]
        ev.append(call(24.6, 0, "RegisterInstancesWithLoadBalancer", ELB, [I1]))
        self.assertEqual(kinds(ev), ["leader"])

    def test_a_new_leader_within_the_tolerance_passes(self):
        ev = healthy() + [call(23.9, 1, "DeregisterInstancesFromLoadBalancer", ELB, [I3])]
        self.assertNotIn("leader", kinds(ev))

    def test_no_convergence(self):
        ev = [e for e in healthy() if e["kind"] not in ("sample", "status")]
        ev.append({"kind": "sample", "t": 30.5, "round": 1, "keys": {K1: 10, K2: 11, KW: 12},
                   "aws": aws(elb=(I1,))})
        self.assertEqual(kinds(ev), ["convergence"])

    def test_divergence_after_converging(self):
        ev = healthy() + [{"kind": "sample", "t": 31.5, "round": 1, "keys": {K1: 10, K2: 11, KW: 12},
                           "aws": aws(elb=(I1,))}]
        self.assertIn("convergence", kinds(ev))

    def test_a_wrong_ttl_is_not_convergence(self):
        ev = [e for e in healthy() if e["kind"] not in ("sample", "status")]
        ev.append({"kind": "sample", "t": 30.5, "round": 1, "keys": {K1: 10, K2: 11, KW: 12},
                   "aws": dict(aws(), **{WWW: {"A": {"ttl": 300, "values": ["192.0.2.10"]}}})})
        self.assertIn("convergence", kinds(ev))

    def test_add_wait_exited_0_without_the_member(self):
        ev = healthy()
        for e in ev:
            if e["kind"] == "aws_probe":
                e["present"] = False
        self.assertEqual(kinds(ev), ["add_wait"])

    def test_add_wait_absent_because_superseded_passes(self):
        ev = healthy()
        for e in ev:
            if e["kind"] == "aws_probe":
                e["present"] = False
        ev.append(etcd(2.61, "put", K3S, 10.5))  # a single key: I1 is no longer wanted
        self.assertNotIn("add_wait", kinds(ev))

    def test_remove_wait_exited_0_with_the_member_still_there(self):
        ev = healthy() + [
            {"kind": "op_start", "t": 7.0, "op_id": 2, "op": "remove_wait", "key": K2, "lb": ELB,
             "member": I2},
            etcd(7.1, "delete", K2, 21),
            {"kind": "op_end", "t": 7.5, "op_id": 2, "exit": 0, "stderr": ""},
            {"kind": "aws_probe", "t": 7.51, "op_id": 2, "lb": ELB, "member": I2, "present": True},
        ]
        self.assertIn("remove_wait", kinds(ev))

    def test_drain_exited_before_the_ttl(self):
        ev = healthy() + [
            {"kind": "op_start", "t": 8.0, "op_id": 3, "op": "remove_drain", "key": KW, "lb": WWW,
             "member": "192.0.2.10"},
            etcd(8.1, "delete", KW, 20),
            call(8.3, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2, "values": ["198.51.100.7"]}]),
            {"kind": "op_end", "t": 9.0, "op_id": 3, "exit": 0, "stderr": ""},
            {"kind": "aws_probe", "t": 9.01, "op_id": 3, "lb": WWW, "member": "192.0.2.10",
             "present": False},
        ]
        self.assertIn("remove_wait", kinds(ev))
        # Exiting a TTL after the removal is right.
        ev[-2]["t"] = 10.4
        ev[-1]["t"] = 10.41
        self.assertNotIn("remove_wait", kinds(ev))

    def test_a_value_put_back_by_hand_during_a_drain_is_not_judged(self):
        # The drain's removal at 7.0; a hand edit (read before it) writes the value back at
        # 7.5; lbmanager removes it again at 8.9; the command exits at 9.05, a TTL after its own.
        kd = "/lbManager/route53/us-east-1/%s/www.example.com/multiple/192.0.2.11" % ZONE
        ev = healthy() + [
            etcd(6.5, "put", kd, 20),
            call(6.6, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
                 "values": ["192.0.2.10", "192.0.2.11", "198.51.100.7"]}]),
            {"kind": "op_start", "t": 6.9, "op_id": 9, "op": "remove_drain", "key": kd, "lb": WWW,
             "member": "192.0.2.11"},
            etcd(6.95, "delete", kd, 21),
            call(7.0, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
                 "values": ["192.0.2.10", "198.51.100.7"]}]),
            {"kind": "oob", "t": 7.5, "action": "rrset", "lb": WWW, "type": "A", "ttl": 300,
             "values": ["192.0.2.10", "192.0.2.11", "198.51.100.7"], "removed": []},
            call(8.9, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
                 "values": ["192.0.2.10", "198.51.100.7"]}]),
            {"kind": "op_end", "t": 9.05, "op_id": 9, "exit": 0, "stderr": ""},
            {"kind": "aws_probe", "t": 9.06, "op_id": 9, "lb": WWW, "member": "192.0.2.11",
             "present": False},
        ]
        self.assertNotIn("remove_wait", kinds(ev))
        # Without the hand edit, an exit before the TTL of the removal at 7.0 is caught.
        ev = [e for e in ev if e["kind"] != "oob" and e.get("t") != 8.9]
        ev[-2]["t"], ev[-1]["t"] = 8.5, 8.51
        self.assertIn("remove_wait", kinds(ev))

    def test_a_value_written_back_by_hand_is_another_tools_until_it_leaves(self):
        """The 20-minute soak of 2026-12-07: a hand edit read the record set, lbmanager removed
        two values, the edit wrote them back. Under --ownership shared they are another tool's
        from then on: lbmanager keeps them in its writes, and AWS keeps them in quiet periods."""
        kd = "/lbManager/route53/us-east-1/%s/www.example.com/multiple/192.0.2.11" % ZONE
        ev = healthy()
        quiet = [e for e in ev if e["kind"] in ("quiet_start", "sample", "status", "quiet_end")]
        ev = [e for e in ev if e not in quiet]
        with_back = aws(www=("192.0.2.10", "192.0.2.11"))
        for e in quiet:
            if "aws" in e:
                e["aws"] = with_back
            if e["kind"] == "status":
                e["report"]["load_balancers"][1]["in_aws"].append(
                    {"member": "192.0.2.11", "foreign": True})
        ev[-2:-2] = [
            etcd(6.5, "put", kd, 20),
            call(6.6, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
                 "values": ["192.0.2.10", "192.0.2.11", "198.51.100.7"]}]),
            etcd(6.95, "delete", kd, 21),
            call(7.0, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
                 "values": ["192.0.2.10", "198.51.100.7"]}]),
            {"kind": "oob", "t": 7.5, "action": "rrset", "lb": WWW, "type": "A", "ttl": 2,
             "values": ["192.0.2.10", "192.0.2.11", "198.51.100.7"], "removed": []},
            # lbmanager's next write keeps it (another tool's now).
            call(12.0, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2,
                 "values": ["192.0.2.10", "192.0.2.11", "198.51.100.7"]}]),
        ] + quiet
        # A host's `member remove --wait` of it is not lbmanager's to judge.
        ev += [
            {"kind": "op_start", "t": 13.0, "op_id": 9, "op": "remove_wait", "key": kd,
             "lb": WWW, "member": "192.0.2.11"},
            {"kind": "op_end", "t": 13.1, "op_id": 9, "exit": 0, "stderr": ""},
            {"kind": "aws_probe", "t": 13.11, "op_id": 9, "lb": WWW, "member": "192.0.2.11",
             "present": True},
        ]
        ev.sort(key=lambda e: e["t"])
        self.assertEqual(kinds(ev), [])
        # Without the hand edit, the value is lbmanager's, kept without a key.
        ev = [e for e in ev if e["kind"] != "oob"]
        self.assertIn("convergence", kinds(ev))

    def test_a_member_deregistered_while_its_key_stood(self):
        ev = healthy() + [call(19.0, 0, "DeregisterInstancesFromLoadBalancer", ELB, [I1])]
        self.assertIn("removal", kinds(ev))

    def test_a_removal_the_driver_saw_etcd_ask_for_just_after(self):
        # lbmanager acted on the delete before the driver's watch reported it: not a violation.
        ev = healthy() + [call(19.0, 0, "DeregisterInstancesFromLoadBalancer", ELB, [I1]),
                          etcd(19.3, "delete", K1, 16)]
        self.assertNotIn("removal", kinds(ev))
        # A delete seen seconds after the call did not cause it.
        ev[-1]["t"] = 21.0
        self.assertIn("removal", kinds(ev))

    def test_an_addition_the_driver_saw_etcd_ask_for_just_after(self):
        member = "i-0a0000000000000ff"
        ev = healthy() + [call(19.0, 0, "RegisterInstancesWithLoadBalancer", ELB, [member]),
                          etcd(19.3, "put", "/lbManager/elb/us-east-1/webA/multiple/" + member, 16)]
        self.assertNotIn("addition", kinds(ev))
        ev[-1]["t"] = 21.0
        self.assertIn("addition", kinds(ev))

    def test_a_record_set_written_without_a_wanted_value(self):
        ev = healthy() + [call(19.0, 0, "ChangeResourceRecordSets", changes=[
            {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2, "values": ["198.51.100.7"]}])]
        self.assertIn("removal", kinds(ev))

    def test_a_member_registered_that_no_key_names(self):
        ev = healthy() + [call(19.0, 0, "RegisterInstancesWithLoadBalancer", ELB,
                               ["i-0a0000000000000ff"])]
        self.assertIn("addition", kinds(ev))

    def test_a_foreign_member_deregistered(self):
        ev = healthy() + [call(19.0, 0, "DeregisterInstancesFromLoadBalancer", ELB, [FOREIGN])]
        self.assertIn("foreign", kinds(ev))

    def test_a_foreign_value_dropped_and_a_foreign_name_changed(self):
        ev = healthy() + [
            call(19.0, 0, "ChangeResourceRecordSets", changes=[
                {"lb": WWW, "action": "UPSERT", "type": "A", "ttl": 2, "values": ["192.0.2.10"]}]),
            call(19.5, 0, "ChangeResourceRecordSets", changes=[
                {"lb": LEGACY, "action": "DELETE", "type": "A", "ttl": 300, "values": ["198.51.100.9"]}]),
        ]
        self.assertEqual(kinds(ev).count("foreign"), 2)

    def test_status_not_in_step_and_records_wrong(self):
        ev = healthy()
        for e in ev:
            if e["kind"] == "status":
                e["exit"] = 2
                e["report"] = status_report(elb=(I1,))
                e["owned"] = e["owned"][:1]
        got = kinds(ev)
        self.assertIn("status", got)
        self.assertIn("records", got)

    def test_a_member_taken_out_by_hand_may_keep_its_record_until_the_next_resync(self):
        """The 60-minute soak's records violations: an owned member deregistered by hand 3 s
        before the check is forgotten at a later sync (at most two resyncs of 5 s), not at once;
        17 s before, it is a violation."""
        for oob_at, want in ((29.0, []), (15.0, ["records"])):
            ev = healthy()
            ev.append({"kind": "oob", "t": oob_at, "lb": ELB, "action": "deregister",
                       "removed": [I3]})
            for e in ev:
                if e["kind"] == "status":
                    e["owned"].append("/lbmanager-state/lbManager/owned/%s/%s" % (ELB, I3))
            self.assertEqual(kinds(ev), want, oob_at)

    def test_a_member_claimed_for_a_register_that_failed_may_keep_its_record_a_while(self):
        """The seed-27 soak's records violation: a Register throttled 7 s before the check left
        the claim of a member never in AWS; a later read forgets it."""
        for at, want in ((25.0, []), (10.0, ["records"])):
            ev = healthy()
            k3 = K3S.replace("single", "multiple")
            ev += [etcd(at - 0.2, "put", k3, 100), etcd(at + 0.5, "delete", k3, 101),
                   call(at, 0 if at < 24 else 1, "RegisterInstancesWithLoadBalancer", ELB, [I3],
                        upstream=400,
                        fault="throttle")]
            for e in ev:
                if e["kind"] == "status":
                    e["owned"].append("/lbmanager-state/lbManager/owned/%s/%s" % (ELB, I3))
            self.assertEqual(kinds(ev), want, at)

    def test_a_duplicate_registration(self):
        ev = healthy()
        for e in ev:
            if e["kind"] == "sample":
                e["aws"][ELB]["members"].append(I1)
        self.assertIn("duplicate", kinds(ev))

    def test_rss_growth(self):
        ev = healthy() + [{"kind": "resources", "t": 100.0 + i * 5, "slot": 1, "pid": 200,
                           "rss_kib": 20000 + i * 4000, "fds": 30} for i in range(20)]
        self.assertEqual(kinds(ev), ["resources"])

    def test_flat_rss_passes(self):
        ev = healthy() + [{"kind": "resources", "t": 100.0 + i * 5, "slot": 1, "pid": 200,
                           "rss_kib": 20000 + (i % 3) * 500, "fds": 30 + i % 2} for i in range(20)]
        self.assertEqual(kinds(ev), [])

    def test_a_panic_and_a_line_that_is_not_json(self):
        ev = healthy() + [{"kind": "log_check", "t": 41.0, "slot": 0, "pid": 100, "lines": 3,
                           "bad_json": ["thread 'main' panicked at src/x.rs:1:1"],
                           "panics": ["thread 'main' panicked at src/x.rs:1:1"]}]
        self.assertEqual(kinds(ev), ["logs", "logs"])

    def test_a_member_command_that_does_not_fail_over(self):
        ev = healthy() + [
            {"kind": "op_start", "t": 9.0, "op_id": 9, "op": "add_wait", "key": K2, "lb": ELB,
             "member": I2, "argv": ["member", "add", K2, "--wait"]},
            {"kind": "op_end", "t": 9.1, "op_id": 9, "exit": 1, "stderr": "lbmanager: etcd: grpc "
             "request error: code: 'The service is currently unavailable', message: \"tcp connect "
             "error\""},
        ]
        self.assertEqual(kinds(ev), ["failover"])

    def test_an_unclean_stop(self):
        ev = healthy() + [{"kind": "instance_exit", "t": 41.0, "slot": 0, "pid": 300, "code": 1,
                           "reason": "final_stop"}]
        self.assertEqual(kinds(ev), ["stop"])

    def test_a_harness_error_fails_the_run(self):
        ev = healthy() + [{"kind": "harness_error", "t": 41.0, "where": "op 3", "error": "boom"}]
        self.assertEqual(kinds(ev), ["harness"])

    def test_violations_carry_the_seed(self):
        ev = healthy() + [call(10.0, 1, "RegisterInstancesWithLoadBalancer", ELB, [I1])]
        self.assertEqual(checker.check(ev)["violations"][0]["seed"], 7)


# --- profile exclusive-hc ---------------------------------------------------------------------

INST = "1234abcd"
PREFIX_HC = "lbm-%s-%s-" % (INST, ZONE)
OTHER_LB = "elb/us-east-1/otherLB"
OTHER = "route53/%s/other.example.com" % ZONE
V1, V2 = "192.0.2.36", "192.0.2.37"
KV1 = "/lbManager/route53/us-east-1/%s/www.example.com/multiple/%s" % (ZONE, V1)
KV2 = "/lbManager/route53/us-east-1/%s/www.example.com/multiple/%s" % (ZONE, V2)
NOW_NONCE = "%x" % (1000 * 1000 * 1000)  # the reference's nonce of a check made at t=1000
FOREIGN_HC = {"fhc1": {"ref": "lbm-0badc0de-%s-1" % ZONE, "ip": V1, "fqdn": "www.example.com",
                       "type": "HTTP", "port": 80, "path": "/health",
                       "tags": [["Name", "lbmanager www.example.com 192.0.2.36"],
                                ["lbmanager-installation", "0badc0de"]]}}
SPEC = {"type": "HTTP", "port": 80, "path": "/health"}


def hc_meta():
    return {"kind": "meta", "t": 0.0, "seed": 8, "minutes": 1, "params": {
        "lbs": [ELB, WWW], "tg_ports": {}, "foreign": {}, "ownership": "exclusive",
        "foreign_fqdns": {LEGACY: {"A": {"ttl": 300, "values": ["198.51.100.9"]}}},
        "foreign_lbs": {OTHER_LB: [FOREIGN]}, "hc_scope": [WWW], "hc_spec": SPEC, "zone": ZONE,
        "check_prefix": PREFIX_HC, "foreign_checks": FOREIGN_HC, "pending_hold": 3.0,
        "stray_age": 600.0, "route53_ttl": 2}}


def mine(ip, n):
    return {"ref": PREFIX_HC + "%x" % (n * 1000 * 1000), "ip": ip, "fqdn": "www.example.com",
            "type": "HTTP", "port": 80, "path": "/health"}


def create_check(t, hc, ip, n, slot=0):
    ev = call(t, slot, "CreateHealthCheck")
    ev.update({"service": "route53", "mutating": True, "hc": dict(mine(ip, n), id=hc)})
    ev.pop("lb")
    ev.pop("members")
    return ev


def delete_check(t, hc, slot=0):
    ev = call(t, slot, "DeleteHealthCheck")
    ev.update({"service": "route53", "mutating": True, "hc": {"id": hc}})
    ev.pop("lb")
    ev.pop("members")
    return ev


def mv(action, ip, hc, ttl=2):
    return {"lb": WWW, "action": action, "type": "A", "ttl": ttl, "values": [ip], "set_id": ip,
            "hc": hc, "mva": True}


def hc_aws(values=((V1, "h1"),), checks=None, elb=(I1,)):
    sets = [{"type": "A", "set_id": ip, "ttl": 2, "values": [ip], "hc": hc, "mva": True}
            for ip, hc in values]
    www = {"sets": sets}
    if values:
        www["A"] = {"ttl": 2, "values": sorted(ip for ip, _ in values)}
    if checks is None:
        checks = {hc: mine(ip, 1) for ip, hc in values}
    all_checks = dict(FOREIGN_HC)
    all_checks.update(checks)
    return {ELB: {"members": sorted(elb)}, WWW: www,
            LEGACY: {"A": {"ttl": 300, "values": ["198.51.100.9"]}},
            OTHER_LB: {"members": [FOREIGN]}, "_checks": all_checks}


def hc_healthy():
    """Profile exclusive-hc: slot 0 leads; an ELB member; a value of www.example.com with its
    check made before the record set; a second value added, then removed: its record set deleted,
    its check deleted once that change is INSYNC (3 s); a member added by hand to webA removed;
    a quiet period that converges with one check per value, the foreign check untouched."""
    keys = {K1: 10, KV1: 12}
    report = {"daemon": {"stale": False}, "load_balancers": [
        {"load_balancer": ELB, "desired": [I1], "in_step": True, "in_aws": [{"member": I1}]},
        {"load_balancer": WWW, "desired": [V1], "in_step": True, "in_aws": [{"member": V1}]}]}
    return [
        hc_meta(),
        {"kind": "instance_start", "t": 0.5, "slot": 0, "pid": 100},
        etcd(1.0, "put", ELECTION + "a", 2, "pid 100 lease a"),
        etcd(2.0, "put", K1, 10),
        call(2.2, 0, "RegisterInstancesWithLoadBalancer", ELB, [I1]),
        etcd(3.0, "put", KV1, 12),
        create_check(3.1, "h1", V1, 1),
        call(3.3, 0, "ChangeResourceRecordSets", changes=[mv("CREATE", V1, "h1")]),
        etcd(4.0, "put", KV2, 13),
        create_check(4.1, "h2", V2, 2),
        call(4.3, 0, "ChangeResourceRecordSets", changes=[mv("CREATE", V2, "h2")]),
        etcd(5.0, "delete", KV2, 14),
        call(5.2, 0, "ChangeResourceRecordSets", changes=[mv("DELETE", V2, "h2")]),
        delete_check(8.5, "h2"),
        {"kind": "oob", "t": 9.0, "action": "stray_add", "lb": ELB, "added": [I3]},
        call(9.5, 0, "DeregisterInstancesFromLoadBalancer", ELB, [I3]),
        {"kind": "quiet_start", "t": 30.0, "round": 1},
        {"kind": "sample", "t": 30.1, "round": 1, "keys": keys, "aws": hc_aws()},
        {"kind": "sample", "t": 31.1, "round": 1, "keys": keys, "aws": hc_aws()},
        {"kind": "status", "t": 32.0, "round": 1, "exit": 0, "report": report, "keys": keys,
         "aws": hc_aws(), "owned": [],
         "managed": ["/lbmanager-state/lbManager/managed/%s" % ELB,
                     "/lbmanager-state/lbManager/managed/%s" % WWW]},
        {"kind": "quiet_end", "t": 32.5, "round": 1},
        {"kind": "instance_exit", "t": 40.0, "slot": 0, "pid": 100, "code": 0, "reason": "final_stop"},
    ]


def with_aws(events, aws_):
    for e in events:
        if e["kind"] in ("sample", "status"):
            e["aws"] = aws_
    return events


class ExclusiveHealthChecked(unittest.TestCase):
    def test_a_healthy_history_passes(self):
        self.assertEqual(kinds(hc_healthy()), [])

    def test_a_record_set_naming_a_check_that_does_not_exist(self):
        ev = hc_healthy() + [call(20.0, 0, "ChangeResourceRecordSets", changes=[
            mv("UPSERT", V1, "h9")])]
        self.assertEqual(kinds(ev), ["hc_named"])
        # A sample showing a record set naming a check that is gone.
        ev = with_aws(hc_healthy(), hc_aws(checks={}))
        self.assertIn("hc_named", kinds(ev))

    def test_a_record_set_naming_a_deleted_check_or_anothers(self):
        ev = hc_healthy() + [call(20.0, 0, "ChangeResourceRecordSets", changes=[
            mv("UPSERT", V2, "h2")])]  # h2 was deleted at 8.5
        self.assertIn("hc_named", kinds(ev))
        ev = hc_healthy() + [call(20.0, 0, "ChangeResourceRecordSets", changes=[
            mv("UPSERT", V1, "fhc1")])]  # another installation's check of that very value
        self.assertIn("hc_named", kinds(ev))

    def test_a_check_deleted_before_its_change_was_insync(self):
        ev = [e for e in hc_healthy() if not (e.get("action") == "DeleteHealthCheck")]
        ev.append(delete_check(6.0, "h2"))  # 0.8 s after the DELETE: PENDING still
        self.assertEqual(kinds(ev), ["hc_order"])

    def test_a_check_deleted_while_a_record_set_names_it(self):
        ev = hc_healthy() + [delete_check(20.0, "h1")]
        self.assertIn("hc_order", kinds(ev))

    def test_two_checks_for_one_value_do_not_converge(self):
        checks = {"h1": mine(V1, 1), "h3": mine(V1, 3)}
        ev = with_aws(hc_healthy(), hc_aws(checks=checks))
        self.assertIn("convergence", kinds(ev))

    def test_a_value_without_its_check_does_not_converge(self):
        aws_ = hc_aws()
        aws_[WWW]["sets"][0]["hc"] = None
        self.assertIn("convergence", kinds(with_aws(hc_healthy(), aws_)))

    def test_a_check_of_another_installation_deleted_or_changed(self):
        ev = hc_healthy() + [delete_check(20.0, "fhc1")]
        self.assertIn("hc_foreign", kinds(ev))
        aws_ = hc_aws()
        aws_["_checks"]["fhc1"] = dict(FOREIGN_HC["fhc1"], tags=[])
        self.assertIn("hc_foreign", kinds(with_aws(hc_healthy(), aws_)))

    def test_a_check_left_behind_past_the_sweep(self):
        """A check of lbmanager's for a name with no keys left, named by nothing: fine until a
        leader starts at least 10 minutes after it was made; a violation after that."""
        left = {"h1": mine(V1, 1), "h7": dict(mine(V2, 1), ref=PREFIX_HC + NOW_NONCE,
                                              fqdn="gone.example.com")}
        for start, want in ((1500.0, []), (1700.0, ["hc_left"])):
            ev = with_aws(hc_healthy(), hc_aws(checks=left))
            for e in ev:
                if e["kind"] in ("quiet_start", "sample", "status", "quiet_end"):
                    e["t"] += 1700.0
                elif e["kind"] == "instance_exit":
                    e["t"] += 1700.0
            ev += [{"kind": "instance_start", "t": start - 5, "slot": 1, "pid": 200},
                   etcd(start - 4, "put", ELECTION + "b", 30, "pid 200 lease b"),
                   etcd(start, "delete", ELECTION + "a", 31)]
            self.assertEqual([k for k in kinds(ev) if k.startswith("hc")], want, start)

    def test_a_member_added_by_hand_is_removed_and_not_foreign(self):
        ev = hc_healthy()
        self.assertNotIn("foreign", kinds(ev))
        # Left in AWS, it does not converge (--ownership exclusive removes it).
        ev = with_aws(hc_healthy(), hc_aws(elb=(I1, I3)))
        self.assertIn("convergence", kinds(ev))

    def test_a_foreign_load_balancer_touched(self):
        ev = hc_healthy() + [call(20.0, 0, "DeregisterInstancesFromLoadBalancer", OTHER_LB, [FOREIGN])]
        self.assertIn("foreign", kinds(ev))

    def test_owned_records_under_exclusive(self):
        ev = hc_healthy()
        for e in ev:
            if e["kind"] == "status":
                e["owned"] = ["/lbmanager-state/lbManager/owned/%s/%s" % (ELB, I1)]
        self.assertEqual(kinds(ev), ["records"])

    def test_health_check_calls_from_a_standby(self):
        ev = hc_healthy() + [{"kind": "instance_start", "t": 0.6, "slot": 1, "pid": 200},
                             create_check(20.0, "h5", V2, 5, slot=1)]
        self.assertIn("leader", kinds(ev))


class Model(unittest.TestCase):
    def test_single_and_multiple(self):
        r = model.resolve
        self.assertEqual(r([("multiple", "a", 1), ("multiple", "b", 2)]), {"a", "b"})
        self.assertEqual(r([("multiple", "a", 1), ("single", "s", 2)]), {"s"})
        self.assertEqual(r([("multiple", "a", 1), ("single", "s", 2), ("multiple", "b", 3)]), {"b"})
        self.assertEqual(r([("single", "s", 2), ("single", "t", 3)]), {"t"})

    def test_keys(self):
        p = model.parse_key
        self.assertEqual(p("/lbManager/elb/us-east-1/webA/multiple/" + I1), (ELB, "multiple", I1))
        self.assertEqual(p("/lbManager/elbv2/us-east-1/web-tg/single/%s:8080" % I1),
                         (TG, "single", I1 + ":8080"))
        self.assertEqual(p("/lbManager/elbv2/us-east-1/web-tg/multiple/" + I1), (TG, "multiple", I1 + ":80"))
        self.assertEqual(p("/lbManager/route53/us-east-1/Z1/WWW.Example.com./multiple/2001:DB8::A"),
                         ("route53/Z1/www.example.com", "multiple", "2001:db8::a"))
        self.assertIsNone(p("/lbManager/_election/abc"))
        self.assertIsNone(p("/lbManager/elb/us-east-1/webA/sometimes/" + I1))


class Schedule(unittest.TestCase):
    def test_the_same_seed_gives_the_same_schedule(self):
        a, b = schedule.plan(5, 2), schedule.plan(5, 2)
        self.assertEqual(schedule.digest(a), schedule.digest(b))
        self.assertNotEqual(schedule.digest(a), schedule.digest(schedule.plan(6, 2)))

    def test_every_fault_ends_within_its_window(self):
        for seed in range(20):
            for rnd in schedule.plan(seed, 5)["rounds"]:
                for a in rnd["actions"]:
                    self.assertLessEqual(a["at"], rnd["active"])
                    if a["type"] == "fault":
                        self.assertLessEqual(a["at"] + a["duration"], rnd["active"] - 0.5 + 1e-6)


if __name__ == "__main__":
    unittest.main()
