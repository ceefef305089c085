"""The soak's driver: starts a 3-member etcd cluster, moto behind a fault proxy, N `lbmanager
run --ha` instances (each through its own proxy port and its own relays to etcd), runs the
seeded schedule of operations and faults round by round, samples AWS and etcd in each quiet
period, and writes everything as JSON lines to history.jsonl; then runs the checker over it.

    python3 -m soak --minutes N [--seed S] [--profile shared|exclusive-hc] [--bin PATH]
                    [--work DIR] [--keep]

(from scripts/; scripts/soak.sh is the interface). Exit 0: no violation; 1: violations (or the
run itself failed); 2: bad arguments.
"""
import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

from . import checker, model, net, report, schedule

LEASE_TTL = 4
RESYNC = 5
ROUTE53_TTL = 2
MEMBER_TIMEOUT = 20
CONVERGENCE_BOUND = 30.0
STATE_PREFIX = "/lbmanager-state/lbManager"
# Profiles: the same seed gives the same schedule in each; what differs is how lbmanager runs and
# how some faults are applied (see PROFILES' comments and README.md).
PROFILES = {
    # --ownership shared; etcd members 1 and 2 killed; Route53 INSYNC at once; answers delayed.
    "shared": {"ownership": "shared", "health_check": False, "etcd_kill": "1-2",
               "pending_hold": 0.0, "request_delays": False},
    # --ownership exclusive and --route53-health-check for www.example.com; any etcd member
    # killed (member 0 too); Route53 changes PENDING for PENDING_HOLD s; requests delayed too.
    "exclusive-hc": {"ownership": "exclusive", "health_check": True, "etcd_kill": "any",
                     "pending_hold": 3.0, "request_delays": True},
}
HC_SPEC = {"type": "HTTP", "port": 80, "path": "/health"}
HC_NAME = "www"  # the load balancer (of schedule.LBS) in the health-check scope
STRAY_AGE = 600.0  # README: a start deletes lbmanager's checks no record set uses past 10 minutes


def log(msg):
    sys.stderr.write("[soak %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def b64(s):
    return base64.b64encode(s.encode()).decode()


def unb64(s):
    return base64.b64decode(s).decode("utf-8", "replace") if s else ""


def prefix_end(prefix):
    b = bytearray(prefix.encode())
    b[-1] += 1
    return base64.b64encode(bytes(b)).decode()


class Recorder:
    """history.jsonl: one JSON object a line, written as it happens (a crash keeps what was)."""

    def __init__(self, path):
        self.path = path
        self.f = open(path, "w")
        self.lock = threading.Lock()

    def __call__(self, ev):
        if "t" not in ev:
            ev["t"] = time.time()
        line = json.dumps(ev, sort_keys=True, default=str)
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()

    def close(self):
        with self.lock:
            self.f.close()


# --- etcd -----------------------------------------------------------------------------------


class EtcdCluster:
    def __init__(self, work, n=3):
        self.work = work
        self.members = []
        for i in range(n):
            self.members.append({"name": "m%d" % i, "client": free_port(), "peer": free_port(),
                                 "dir": os.path.join(work, "etcd-m%d" % i), "proc": None,
                                 "log": os.path.join(work, "etcd-m%d.log" % i)})
        self.initial = ",".join("%s=http://127.0.0.1:%d" % (m["name"], m["peer"]) for m in self.members)
        self.token = "soak-%d" % os.getpid()

    def url(self, i):
        return "http://127.0.0.1:%d" % self.members[i]["client"]

    @property
    def endpoints(self):
        return ",".join(self.url(i) for i in range(len(self.members)))

    def start_member(self, i):
        m = self.members[i]
        args = [shutil.which("etcd") or "/usr/bin/etcd", "--name", m["name"], "--data-dir", m["dir"],
                "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
                "--listen-peer-urls", "http://127.0.0.1:%d" % m["peer"],
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % m["peer"],
                "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token]
        m["proc"] = subprocess.Popen(args, stdout=open(m["log"], "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def start(self):
        for i in range(len(self.members)):
            self.start_member(i)
        deadline = time.time() + 30
        while time.time() < deadline:
            if all(self.healthy(i) for i in range(len(self.members))):
                return
            time.sleep(0.3)
        raise RuntimeError("the etcd cluster did not become healthy; see %s/etcd-m*.log" % self.work)

    def healthy(self, i):
        try:
            out = self.gw("/v3/kv/range", {"key": b64("health"), "limit": 1}, member=i, timeout=1)
            return "header" in out
        except Exception:
            return False

    def kill_member(self, i):
        p = self.members[i]["proc"]
        if p and p.poll() is None:
            p.kill()
            p.wait()

    def alive(self, i):
        p = self.members[i]["proc"]
        return p is not None and p.poll() is None

    def gw(self, path, payload, member=None, timeout=5):
        """A request through etcd's JSON gateway: to `member`, or (None) to the first live member
        that answers (any one may be down)."""
        if member is not None:
            order = [member]
        else:
            order = [i for i in range(len(self.members)) if self.alive(i)]
            order += [i for i in range(len(self.members)) if i not in order]
        last = None
        for i in order:
            req = urllib.request.Request(self.url(i) + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return json.loads(resp.read())
            except OSError as e:  # refused, reset, timed out (urllib's errors are OSErrors)
                last = e
        raise last

    def range_prefix(self, prefix, member=None, keys_only=False):
        payload = {"key": b64(prefix), "range_end": prefix_end(prefix)}
        if keys_only:
            payload["keys_only"] = True
        out = self.gw("/v3/kv/range", payload, member)
        kvs = {}
        for kv in out.get("kvs", []):
            kvs[unb64(kv["key"])] = {"mod": int(kv.get("mod_revision", 0)),
                                     "create": int(kv.get("create_revision", 0)),
                                     "value": unb64(kv.get("value", "")),
                                     "lease": kv.get("lease")}
        return int(out["header"]["revision"]), kvs

    def put(self, key, value="", lease=None):
        payload = {"key": b64(key), "value": b64(value)}
        if lease:
            payload["lease"] = lease
        return self.gw("/v3/kv/put", payload)

    def delete(self, key):
        return self.gw("/v3/kv/deleterange", {"key": b64(key)})

    def stop(self):
        for i in range(len(self.members)):
            p = self.members[i]["proc"]
            if p and p.poll() is None:
                p.terminate()
        for i in range(len(self.members)):
            p = self.members[i]["proc"]
            if p:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


def fnv32(text):
    """health_check.rs's fnv32: an installation's mark."""
    h = 0xcbf29ce484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%08x" % (((h >> 32) ^ h) & 0xFFFFFFFF)


def etcdctl(endpoints, *args, timeout=15):
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(["etcdctl", "--endpoints", endpoints, "--command-timeout=5s"] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=env)


class Watcher:
    """`etcdctl watch --prefix /lbManager/ -w json`, twice, on two different live members: every
    member key and election key event, timed as it first arrives on either. Any member may be
    killed: the other stream goes on meanwhile, and the one whose member went resumes on another
    live member from the revision after the last it delivered (no event lost, none twice)."""

    def __init__(self, cluster, record):
        self.cluster = cluster
        self.record = record
        self.lock = threading.Lock()
        self.seen = {}  # revision -> keys delivered at it (pruned below both streams' revision)
        self.streams = [{"rev": 0, "member": None, "proc": None} for _ in range(2)]
        self.stopping = False
        self.ready = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                         name="watcher-%d" % i) for i in range(2)]
        for th in self.threads:
            th.start()

    @property
    def last_rev(self):
        return max(st["rev"] for st in self.streams)

    def _member_for(self, i):
        with self.lock:
            other = self.streams[1 - i]["member"]
        live = [m for m in range(len(self.cluster.members)) if self.cluster.alive(m)]
        free = [m for m in live if m != other]
        return (free or live or [0])[0 if i == 0 else -1]

    def _deliver(self, i, rec):
        with self.lock:
            st = self.streams[i]
            st["rev"] = max(st["rev"], rec["rev"])
            keys = self.seen.setdefault(rec["rev"], set())
            ident = (rec["key"], rec["type"])
            if ident in keys:
                return
            keys.add(ident)
            floor = min(s["rev"] for s in self.streams)
            for rev in [r for r in self.seen if r < floor]:
                del self.seen[rev]
        self.record(rec)

    def _run(self, i):
        st = self.streams[i]
        while not self.stopping:
            env = dict(os.environ, ETCDCTL_API="3")
            member = self._member_for(i)
            with self.lock:
                st["member"] = member
                start = max(st["rev"], min(s["rev"] for s in self.streams)) + 1
            st["proc"] = subprocess.Popen(
                ["etcdctl", "--endpoints", self.cluster.url(member), "watch", "--prefix",
                 model.PREFIX + "/", "--rev", str(start), "-w", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            self.ready.set()
            for line in st["proc"].stdout:
                t = time.time()
                try:
                    resp = json.loads(line)
                except ValueError:
                    continue
                for ev in resp.get("Events") or []:
                    kv = ev.get("kv", {})
                    key = unb64(kv.get("key", ""))
                    rec = {"kind": "etcd_event", "t": t, "type": "delete" if ev.get("type") == 1 else "put",
                           "key": key, "rev": int(kv.get("mod_revision", 0))}
                    if rec["type"] == "put":
                        rec["create_rev"] = int(kv.get("create_revision", 0))
                        rec["version"] = int(kv.get("version", 0))
                        if kv.get("lease"):
                            rec["lease"] = "%x" % int(kv["lease"])
                        if key.startswith(model.PREFIX + "/_election/"):
                            rec["value"] = unb64(kv.get("value", ""))
                    self._deliver(i, rec)
                if resp.get("CompactRevision"):
                    self.record({"kind": "harness_error", "where": "watcher",
                                 "error": "watch compacted at %s" % resp.get("CompactRevision")})
            st["proc"].wait()
            if not self.stopping:
                err = st["proc"].stderr.read().decode(errors="replace")[-300:]
                self.record({"kind": "watch_restart", "stream": i, "member": member,
                             "last_rev": st["rev"], "stderr": err})
                time.sleep(0.2)

    def member_down(self, member):
        """Member `member` is being killed: its stream moves to another live member."""
        for st in self.streams:
            p = st["proc"]
            if st["member"] == member and p is not None and p.poll() is None:
                p.terminate()

    def stop(self):
        self.stopping = True
        for st in self.streams:
            if st["proc"] and st["proc"].poll() is None:
                st["proc"].terminate()


# --- AWS (moto, read and changed directly, never through the proxy) -----------------------------


class Aws:
    def __init__(self, url):
        import boto3
        from botocore.config import Config
        self.url = url
        self.boto3 = boto3
        self.config = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=20)
        self.local = threading.local()
        self.zone = None
        self.tg_arn = None
        self.vpc = None
        self.health_checks = False  # snapshots read the checks and every record set
        self.other_lbs = {}  # unmanaged Classic ELBs (name -> lb), read in snapshots
        self.tagged = set()  # the checks whose tags snapshots read

    def c(self, service):
        clients = getattr(self.local, "clients", None)
        if clients is None:
            clients = self.local.clients = {}
        if service not in clients:
            clients[service] = self.boto3.session.Session().client(
                service, region_name="us-east-1", endpoint_url=self.url, aws_access_key_id="soak",
                aws_secret_access_key="soak", config=self.config)
        return clients[service]

    def create_elb(self, name):
        self.c("elb").create_load_balancer(
            LoadBalancerName=name, AvailabilityZones=["us-east-1a"],
            Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstanceProtocol": "HTTP",
                        "InstancePort": 80}])

    def fixtures(self, foreign, profile):
        self.create_elb("webA")
        self.create_elb("webB")
        vpcs = self.c("ec2").describe_vpcs()["Vpcs"]
        self.vpc = next((v["VpcId"] for v in vpcs if v.get("IsDefault")), vpcs[0]["VpcId"])
        self.tg_arn = self.c("elbv2").create_target_group(
            Name="web-tg", Protocol="HTTP", Port=80, VpcId=self.vpc,
            TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
        zone = self.c("route53").create_hosted_zone(
            Name="example.com.", CallerReference="soak-%s" % time.time())["HostedZone"]["Id"]
        self.zone = zone.split("/")[-1]
        # Other tools' members and record sets: lbmanager must leave them alone. Under
        # --ownership exclusive a managed load balancer holds nothing else: theirs are elsewhere.
        if profile["ownership"] == "shared":
            self.c("elb").register_instances_with_load_balancer(
                LoadBalancerName="webA", Instances=[{"InstanceId": foreign["webA"]}])
            self.c("elbv2").register_targets(TargetGroupArn=self.tg_arn,
                                             Targets=[{"Id": foreign["web-tg"], "Port": 80}])
            self.change_rrsets([("CREATE", "www.example.com.", "A", ROUTE53_TTL, [foreign["www"]])])
        else:
            self.create_elb("otherLB")
            self.c("elb").register_instances_with_load_balancer(
                LoadBalancerName="otherLB", Instances=[{"InstanceId": foreign["webA"]}])
        self.change_rrsets([
            ("CREATE", "legacy.example.com.", "A", 300, ["198.51.100.9"]),
            ("CREATE", "legacy.example.com.", "TXT", 300, ['"owned by another tool"']),
        ])

    def foreign_checks(self, zone, prefix):
        """Health checks of other installations and tools, made directly: lbmanager must never
        delete or change them. Their references look like lbmanager's (`lbm-MARK-ZONE-NONCE`,
        a nonce of a year ago: older than the 10-minute sweep of strays) with another
        installation's mark, and with the mark of an installation from before identities were
        recorded (a hash of the prefix alone); they check values of www.example.com, a name in
        this lbmanager's scope, values its hosts use. One of another tool. Another
        installation's multivalue answers of other.example.com name two of them."""
        old = int((time.time() - 365 * 86400) * 1000) * 1000
        other = "0badc0de"
        specs = [
            ("lbm-%s-%s-%x" % (other, zone, old), "www.example.com", "192.0.2.36",
             [("lbmanager-installation", other), ("Name", "lbmanager www.example.com 192.0.2.36")]),
            ("lbm-%s-%s-%x" % (fnv32(prefix), zone, old + 1), "www.example.com", "192.0.2.37",
             [("lbmanager-installation", fnv32(prefix)),
              ("Name", "lbmanager www.example.com 192.0.2.37")]),
            ("lbm-%s-%s-%x" % (other, zone, old + 2), "other.example.com", "203.0.113.7",
             [("lbmanager-installation", other), ("Name", "lbmanager other.example.com 203.0.113.7")]),
            ("another-tool-%d" % old, "other.example.com", "203.0.113.8", [("Name", "another tool")]),
        ]
        out = []
        r53 = self.c("route53")
        for ref, fqdn, ip, tags in specs:
            hc = r53.create_health_check(CallerReference=ref, HealthCheckConfig={
                "IPAddress": ip, "Port": 80, "Type": "HTTP", "ResourcePath": "/health",
                "FullyQualifiedDomainName": fqdn})["HealthCheck"]["Id"]
            r53.change_tags_for_resource(ResourceType="healthcheck", ResourceId=hc,
                                         AddTags=[{"Key": k, "Value": v} for k, v in tags])
            out.append(hc)
        batch = []
        for hc, ip in ((out[2], "203.0.113.7"), (out[3], "203.0.113.8")):
            batch.append({"Action": "CREATE", "ResourceRecordSet": {
                "Name": "other.example.com.", "Type": "A", "TTL": 60, "SetIdentifier": "other-" + ip,
                "MultiValueAnswer": True, "HealthCheckId": hc, "ResourceRecords": [{"Value": ip}]}})
        r53.change_resource_record_sets(HostedZoneId=self.zone, ChangeBatch={"Changes": batch})
        return self.checks(ids=set(out))

    def checks(self, ids=None):
        """The health checks moto has: {id: {ref, ip, fqdn, type, port, path}}, with their tags
        for those of `ids`."""
        out = {}
        for hc in self.c("route53").list_health_checks()["HealthChecks"]:
            cfg = hc.get("HealthCheckConfig", {})
            out[hc["Id"]] = {"ref": hc.get("CallerReference"),
                             "ip": model.norm_ip(cfg.get("IPAddress") or "") or cfg.get("IPAddress"),
                             "fqdn": model.norm_fqdn(cfg.get("FullyQualifiedDomainName") or ""),
                             "type": cfg.get("Type"), "port": cfg.get("Port"),
                             "path": cfg.get("ResourcePath")}
            if ids is not None and hc["Id"] in ids:
                tags = self.c("route53").list_tags_for_resource(
                    ResourceType="healthcheck", ResourceId=hc["Id"])["ResourceTagSet"].get("Tags", [])
                out[hc["Id"]]["tags"] = sorted([t["Key"], t["Value"]] for t in tags)
        return out

    def change_rrsets(self, changes):
        batch = []
        for action, name, rtype, ttl, values in changes:
            batch.append({"Action": action, "ResourceRecordSet": {
                "Name": name, "Type": rtype, "TTL": ttl,
                "ResourceRecords": [{"Value": v} for v in values]}})
        self.c("route53").change_resource_record_sets(HostedZoneId=self.zone,
                                                      ChangeBatch={"Changes": batch})

    def elb_members(self, name):
        d = self.c("elb").describe_load_balancers(LoadBalancerNames=[name])
        return [i["InstanceId"] for lb in d["LoadBalancerDescriptions"] for i in lb.get("Instances", [])]

    def tg_members(self):
        d = self.c("elbv2").describe_target_health(TargetGroupArn=self.tg_arn)
        members, states = [], {}
        for th in d["TargetHealthDescriptions"]:
            m = "%s:%s" % (th["Target"]["Id"], th["Target"].get("Port", 80))
            members.append(m)
            states[m] = th.get("TargetHealth", {}).get("State")
        return members, states

    def rrsets(self, sets=False):
        """{name: {type: {"ttl", "values"}}}: a multivalue name's values of one type together (its
        "ttl" a list when they differ); with `sets`, also {name: {"sets": [each record set]}}."""
        out = {}
        kwargs = {"HostedZoneId": self.zone}
        while True:
            resp = self.c("route53").list_resource_record_sets(**kwargs)
            for rr in resp["ResourceRecordSets"]:
                name = model.norm_fqdn(rr["Name"])
                values = [r["Value"] for r in rr.get("ResourceRecords", [])]
                if rr["Type"] in ("A", "AAAA"):
                    values = [model.norm_ip(v) or v for v in values]
                entry = out.setdefault(name, {})
                if rr.get("SetIdentifier") is None:
                    entry[rr["Type"]] = {"ttl": rr.get("TTL"), "values": sorted(values)}
                else:
                    have = entry.setdefault(rr["Type"], {"ttl": rr.get("TTL"), "values": []})
                    if have["ttl"] != rr.get("TTL"):
                        ttls = have["ttl"] if isinstance(have["ttl"], list) else [have["ttl"]]
                        have["ttl"] = sorted(set(ttls + [rr.get("TTL")]), key=str)
                    have["values"] = sorted(have["values"] + values)
                if sets:
                    entry.setdefault("sets", []).append({
                        "type": rr["Type"], "set_id": model.norm_ip(rr.get("SetIdentifier") or "")
                        or rr.get("SetIdentifier"), "ttl": rr.get("TTL"), "values": sorted(values),
                        "hc": rr.get("HealthCheckId"), "mva": rr.get("MultiValueAnswer")})
            if not resp.get("IsTruncated"):
                return out
            kwargs["StartRecordName"] = resp["NextRecordName"]
            kwargs["StartRecordType"] = resp["NextRecordType"]
            if resp.get("NextRecordIdentifier"):
                kwargs["StartRecordIdentifier"] = resp["NextRecordIdentifier"]

    def snapshot(self):
        out = {}
        for name in ("webA", "webB"):
            lb = "elb/us-east-1/%s" % name
            try:
                out[lb] = {"members": sorted(self.elb_members(name))}
            except Exception as e:  # a deleted ELB (lb_recreate) or moto trouble
                out[lb] = {"error": type(e).__name__ + ": " + str(e)[:200]}
        try:
            members, states = self.tg_members()
            out["elbv2/us-east-1/web-tg"] = {"members": sorted(members), "states": states}
        except Exception as e:
            out["elbv2/us-east-1/web-tg"] = {"error": str(e)[:200]}
        names = ("www.example.com", "api.example.com", "legacy.example.com", "other.example.com")
        try:
            rr = self.rrsets(sets=self.health_checks)
            for fqdn in ("www.example.com", "api.example.com"):
                entry = rr.get(fqdn, {})
                out["route53/%s/%s" % (self.zone, fqdn)] = {
                    k: v for k, v in entry.items() if k in ("A", "AAAA", "sets")}
            for fqdn in names[2:]:
                out["route53/%s/%s" % (self.zone, fqdn)] = {
                    k: v for k, v in rr.get(fqdn, {}).items() if k != "sets"}
        except Exception as e:
            for fqdn in names:
                out["route53/%s/%s" % (self.zone, fqdn)] = {"error": str(e)[:200]}
        for name, lb in self.other_lbs.items():
            try:
                out[lb] = {"members": sorted(self.elb_members(name))}
            except Exception as e:
                out[lb] = {"error": type(e).__name__ + ": " + str(e)[:200]}
        if self.health_checks:
            try:
                out["_checks"] = self.checks(ids=self.tagged)
            except Exception as e:
                out["_checks"] = {"_error": str(e)[:200]}
        return out

    def members_of(self, lb):
        """(set of members, raw) of one load balancer, read now."""
        if lb.startswith("elb/"):
            ms = self.elb_members(lb.split("/")[2])
            return set(ms), ms
        if lb.startswith("elbv2/"):
            ms, states = self.tg_members()
            return {m for m in ms if states.get(m) != "draining"}, ms
        fqdn = lb.split("/", 2)[2]
        params = {"HostedZoneId": self.zone, "StartRecordName": fqdn + "."}
        resp = self.c("route53").list_resource_record_sets(**params)
        values = set()
        for rr in resp["ResourceRecordSets"]:
            if model.norm_fqdn(rr["Name"]) == fqdn and rr["Type"] in ("A", "AAAA"):
                values |= {model.norm_ip(r["Value"]) or r["Value"] for r in rr.get("ResourceRecords", [])}
        return values, sorted(values)


# --- lbmanager instances ------------------------------------------------------------------------


class Instance:
    def __init__(self, slot, driver):
        self.slot = slot
        self.d = driver
        self.relays = [net.Relay(m["client"]) for m in driver.etcd.members]
        self.proxy = net.AwsProxy(slot, driver.moto_port, driver.faults, driver.record,
                                  driver.tg_arns, driver.tg_ports, driver.route53_sim)
        self.proc = None
        self.pid = None
        self.starts = 0
        self.hold = 0  # >0: do not restart (a kill fault holds it down until its end)
        self.stopped = False  # SIGSTOPped by a fault
        self.log_files = []
        self.killed_pids = set()
        self.final = False
        self.restart_at = None

    def start(self):
        self.starts += 1
        path = os.path.join(self.d.work, "logs", "slot%d-start%d.log" % (self.slot, self.starts))
        f = open(path, "ab")
        ha = ["--ha", "--ha-lease-ttl", "%ds" % LEASE_TTL]
        ownership = self.d.profile["ownership"]
        # --sabotage: the checker's own test against the real binary, misconfigured on purpose.
        if self.d.args.sabotage == "no-ha" and self.slot == self.d.args.instances - 1:
            ha = []  # a second active instance: its changes come from a non-leader
        if self.d.args.sabotage == "exclusive":
            ownership = "exclusive"  # removes the members and values other tools put there
        args = [self.d.bin, "run"] + ha + [
                "--resync-interval", "%ds" % RESYNC, "--ownership", ownership, "--log-format", "json",
                "--route53-ttl", str(ROUTE53_TTL), "--aws-endpoint-url", self.proxy.url,
                "--etcd-endpoints", ",".join(r.url for r in self.relays)]
        for rule in self.d.hc_rules:
            args += ["--route53-health-check", rule]
        self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=self.d.lb_env,
                                     start_new_session=True)
        f.close()
        self.pid = self.proc.pid
        self.stopped = False
        self.log_files.append((path, self.pid))
        self.d.record({"kind": "instance_start", "slot": self.slot, "pid": self.pid, "log": path})

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.pid, sig)
                return True
            except ProcessLookupError:
                return False
        return False


# --- the driver ---------------------------------------------------------------------------------


class Driver:
    def __init__(self, args):
        self.args = args
        self.seed = args.seed
        self.minutes = args.minutes
        self.bin = os.path.abspath(args.bin)
        self.work = args.work
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        self.record = Recorder(os.path.join(self.work, "history.jsonl"))
        self.profile_name = args.profile
        self.profile = PROFILES[args.profile]
        self.faults = net.FaultState(self.seed)
        self.route53_sim = net.Route53Sim(self.profile["pending_hold"]) \
            if self.profile["pending_hold"] else None
        self.hc_rules = []
        self.stop_event = threading.Event()
        self.instances = []
        self.procs_lock = threading.Lock()
        self.ops_running = 0
        self.ops_lock = threading.Lock()
        self.host_queues = {}
        self.presence = {}
        self.commands = set()  # host commands running (see run_command)
        self.fault_state = {}
        self.foreign = {}
        self.moto = None
        self.etcd = None
        self.watcher = None
        self.round = 0
        self.leases_until = 0.0  # when the last lease a host let go of has surely expired

    # -- setup --
    def setup(self):
        log("work dir %s" % self.work)
        self.t_meta = time.time()
        self.etcd = EtcdCluster(self.work)
        self.etcd.start()
        log("etcd cluster ready: %s" % self.etcd.endpoints)
        self.moto_port = free_port()
        moto = shutil.which("moto_server")
        cmd = [moto] if moto else [sys.executable, "-m", "moto.server"]
        self.moto = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(self.moto_port)],
                                     stdout=open(os.path.join(self.work, "moto.log"), "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, MOTO_RECORDER_FILEPATH=os.path.join(
                                         self.work, "moto_recording")))
        url = "http://127.0.0.1:%d" % self.moto_port
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
                break
            except Exception:
                if time.time() > deadline or self.moto.poll() is not None:
                    raise RuntimeError("moto did not start; see %s/moto.log" % self.work)
                time.sleep(0.3)
        log("moto ready at %s" % url)
        self.aws = Aws(url)
        foreign_members = {"webA": "i-0f0000000000000f1", "web-tg": "i-0f0000000000000f2",
                           "www": "198.51.100.7"}
        self.aws.fixtures(foreign_members, self.profile)
        zone = self.aws.zone
        self.lbs = {name: spec["lb"].replace(schedule.ZONE, zone) for name, spec in schedule.LBS.items()}
        self.dirs = {name: spec["dir"].replace(schedule.ZONE, zone) for name, spec in schedule.LBS.items()}
        self.tg_arns = {self.aws.tg_arn: self.lbs["web-tg"]}
        self.tg_ports = {self.lbs["web-tg"]: 80}
        foreign_lbs = {}
        foreign_checks = {}
        hc_scope = []
        if self.profile["ownership"] == "shared":
            self.foreign = {self.lbs["webA"]: [foreign_members["webA"]],
                            self.lbs["web-tg"]: [foreign_members["web-tg"] + ":80"],
                            self.lbs["www"]: [foreign_members["www"]]}
        else:
            self.foreign = {}
            self.aws.other_lbs = {"otherLB": "elb/us-east-1/otherLB"}
            foreign_lbs = {"elb/us-east-1/otherLB": [foreign_members["webA"]]}
        if self.profile["health_check"]:
            foreign_checks = self.aws.foreign_checks(zone, model.PREFIX)
            self.aws.tagged = set(foreign_checks)
            self.aws.health_checks = True
            hc_scope = [self.lbs[HC_NAME]]
            fqdn = self.lbs[HC_NAME].split("/", 2)[2]
            self.hc_rules = ["route53/%s/%s=%s:%d%s" % (zone, fqdn, HC_SPEC["type"], HC_SPEC["port"],
                                                        HC_SPEC["path"])]
        rr = self.aws.rrsets()
        self.foreign_fqdns = {"route53/%s/%s" % (zone, f): rr[f]
                              for f in ("legacy.example.com", "other.example.com") if f in rr}
        self.plan = schedule.plan(self.seed, self.minutes)
        self.params = {"prefix": model.PREFIX, "route53_ttl": ROUTE53_TTL,
                       "lease_ttl": LEASE_TTL, "resync": RESYNC,
                       "convergence_bound": CONVERGENCE_BOUND,
                       "lbs": sorted(self.lbs.values()), "tg_ports": self.tg_ports,
                       "foreign": self.foreign, "foreign_fqdns": self.foreign_fqdns,
                       "zone": zone, "tg_arn": self.aws.tg_arn, "profile": self.profile_name,
                       "ownership": self.profile["ownership"], "foreign_lbs": foreign_lbs,
                       "hc_scope": hc_scope, "hc_spec": HC_SPEC if hc_scope else None,
                       "hc_rules": self.hc_rules, "foreign_checks": foreign_checks,
                       "pending_hold": self.profile["pending_hold"], "stray_age": STRAY_AGE}
        self.watcher = Watcher(self.etcd, self.record)
        self.watcher.ready.wait(10)
        time.sleep(0.5)
        self.lb_env = {k: v for k, v in os.environ.items()
                       if not k.startswith(("AWS_", "LBMANAGER_", "ETCD"))}
        self.lb_env.update({"AWS_ACCESS_KEY_ID": "AKIASOAKLBMANAGER001", "AWS_SECRET_ACCESS_KEY": "soak",
                            "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                            "AWS_CONFIG_FILE": os.path.join(self.work, "aws-config"),
                            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.work, "aws-credentials"),
                            "LBMANAGER_LOG_LEVEL": "debug", "RUST_BACKTRACE": "1"})
        self.cli_env = {k: v for k, v in self.lb_env.items() if not k.startswith("LBMANAGER_")}
        for slot in range(self.args.instances):
            inst = Instance(slot, self)
            self.instances.append(inst)
            inst.start()
        self.hosts = {h["host"]: h for h in schedule.hosts()}
        for h in self.hosts.values():
            h["lb"] = self.lbs[h["lb_name"]]
        threading.Thread(target=self.supervise, daemon=True, name="supervisor").start()
        threading.Thread(target=self.sample_resources, daemon=True, name="resources").start()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.leader_slot() is not None and self.any_log("initial sync complete"):
                log("lbmanager x%d started; leader is slot %s" % (len(self.instances), self.leader_slot()))
                break
            time.sleep(0.3)
        else:
            raise RuntimeError("no lbmanager became leader and synced within 60 s; see %s/logs" % self.work)
        # The installation's identity (README "Health-checked answers"): the mark of its checks.
        _, kvs = self.etcd.range_prefix(STATE_PREFIX + "/installation")
        inst = (kvs.get(STATE_PREFIX + "/installation") or {}).get("value", "").strip()
        self.params["installation"] = inst
        self.params["check_prefix"] = "lbm-%s-%s-" % (inst, zone) if inst else None
        if self.profile["health_check"] and not inst:
            raise RuntimeError("no installation record at %s/installation" % STATE_PREFIX)
        self.record({"kind": "meta", "seed": self.seed, "minutes": self.minutes,
                     "schedule_digest": schedule.digest(self.plan), "bin": self.bin,
                     "instances": self.args.instances, "sabotage": self.args.sabotage,
                     "profile": self.profile_name, "params": self.params, "t": self.t_meta})
        self.record({"kind": "schedule", "plan": self.plan})

    def any_log(self, needle):
        for inst in self.instances:
            for path, _ in inst.log_files:
                try:
                    with open(path, errors="replace") as f:
                        if needle in f.read():
                            return True
                except OSError:
                    pass
        return False

    # -- background threads --
    def supervise(self):
        """Restarts instances that exited (as systemd's Restart=always would, 1 s later), except
        while a kill fault holds them down."""
        while not self.stop_event.is_set():
            for inst in self.instances:
                with self.procs_lock:
                    if inst.final or inst.proc is None:
                        continue
                    code = inst.proc.poll()
                    if code is not None and inst.restart_at is None:
                        reason = "killed" if inst.pid in inst.killed_pids else "exited"
                        self.record({"kind": "instance_exit", "slot": inst.slot, "pid": inst.pid,
                                     "code": code if code >= 0 else None,
                                     "signal": -code if code < 0 else None, "reason": reason})
                        inst.restart_at = time.time() + 1.0
                    if inst.restart_at is not None and inst.hold == 0 and time.time() >= inst.restart_at:
                        inst.restart_at = None
                        inst.start()
            time.sleep(0.2)

    def sample_resources(self):
        while not self.stop_event.is_set():
            for inst in self.instances:
                pid = inst.pid
                if not inst.alive() or inst.stopped:
                    continue
                try:
                    with open("/proc/%d/status" % pid) as f:
                        status = f.read()
                    rss = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:"))
                    fds = len(os.listdir("/proc/%d/fd" % pid))
                except (OSError, StopIteration, ValueError):
                    continue
                self.record({"kind": "resources", "slot": inst.slot, "pid": pid, "rss_kib": rss,
                             "fds": fds})
            self.stop_event.wait(2.0)

    # -- who leads --
    def leader_pid(self):
        try:
            _, kvs = self.etcd.range_prefix(model.PREFIX + "/_election/")
        except Exception:
            return None
        if not kvs:
            return None
        _, kv = min(kvs.items(), key=lambda kv: kv[1]["create"])
        parts = kv["value"].split()
        return int(parts[1]) if len(parts) >= 2 and parts[0] == "pid" else None

    def leader_slot(self):
        pid = self.leader_pid()
        for inst in self.instances:
            if inst.pid == pid and inst.alive():
                return inst.slot
        return None

    def standby_slots(self):
        leader = self.leader_slot()
        return [i.slot for i in self.instances if i.alive() and i.slot != leader]

    # -- operations --
    def member_cmd(self, action, key, *flags):
        return [self.bin, "member", action, key, "--etcd-endpoints", self.etcd.endpoints,
                "--timeout", "%ds" % MEMBER_TIMEOUT] + list(flags)

    def run_command(self, argv, timeout):
        """Runs a host's command to its end, as subprocess.run does; the teardown kills any still
        running (a stopped soak leaves nothing behind)."""
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.cli_env)
        with self.procs_lock:
            self.commands.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            with self.procs_lock:
                self.commands.discard(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def probe(self, op_id, host, t_ref):
        try:
            present_set, raw = self.aws.members_of(host["lb"])
            self.record({"kind": "aws_probe", "op_id": op_id, "lb": host["lb"], "member": host["member"],
                         "present": host["member"] in present_set, "members": raw,
                         "after_s": round(time.time() - t_ref, 4)})
        except Exception as e:
            self.record({"kind": "probe_error", "op_id": op_id, "error": str(e)[:300]})

    def run_op(self, act):
        host = self.hosts[act["host"]]
        key = act["key"].replace(schedule.ZONE, self.aws.zone)
        op = act["op"]
        op_id = act["op_id"]
        start = {"kind": "op_start", "op_id": op_id, "host": host["host"], "op": op, "key": key,
                 "lb": host["lb"], "member": host["member"], "round": self.round}
        eps = self.etcd.endpoints
        if op in ("add_wait", "add_wait_single", "remove_wait", "remove_drain"):
            flags = {"add_wait": ["--wait"], "add_wait_single": ["--wait"], "remove_wait": ["--wait"],
                     "remove_drain": ["--drain"]}[op]
            argv = self.member_cmd("add" if op.startswith("add") else "remove", key, *flags)
            start["argv"] = argv[1:]
            self.record(start)
            p = self.run_command(argv, MEMBER_TIMEOUT + 20)
            t_end = time.time()
            self.record({"kind": "op_end", "op_id": op_id, "exit": p.returncode, "t": t_end,
                         "stderr": p.stderr[-600:]})
            if p.returncode == 0:
                self.probe(op_id, host, t_end)
        elif op in ("put", "put_single", "del"):
            argv = ["put", key, ""] if op != "del" else ["del", key]
            start["argv"] = ["etcdctl"] + argv
            self.record(start)
            p = etcdctl(eps, *argv)
            self.record({"kind": "op_end", "op_id": op_id, "exit": p.returncode,
                         "stderr": (p.stderr + p.stdout)[-300:]})
        elif op == "lease_put":
            start["argv"] = ["etcdctl", "lease", "grant", str(act["ttl"]), "&&", "put", "--lease", key]
            self.record(start)
            g = etcdctl(eps, "lease", "grant", str(act["ttl"]))
            code = g.returncode
            out = g.stdout + g.stderr
            if code == 0:
                lease = g.stdout.split()[1]
                p = etcdctl(eps, "put", "--lease=%s" % lease, key, "")
                code = p.returncode
                self.leases_until = max(self.leases_until, time.time() + act["ttl"] + 1.0)
                out += p.stdout + p.stderr
            self.record({"kind": "op_end", "op_id": op_id, "exit": code, "stderr": out[-300:]})
        elif op == "presence":
            argv = self.member_cmd("add", key, "--wait", "--lease-ttl", "%ds" % schedule.PRESENCE_TTL)
            start["argv"] = argv[1:]
            self.record(start)
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    env=self.cli_env)
            self.presence[host["host"]] = (proc, op_id)
            threading.Thread(target=self.follow_presence, args=(proc, op_id, host), daemon=True).start()
        elif op in ("presence_term", "presence_kill"):
            self.record(start)
            entry = self.presence.pop(host["host"], None)
            if entry is None or entry[0].poll() is not None:
                self.record({"kind": "op_end", "op_id": op_id, "exit": None, "stderr": "no presence running"})
            else:
                proc, _ = entry
                proc.send_signal(signal.SIGTERM if op == "presence_term" else signal.SIGKILL)
                if op == "presence_kill":
                    self.leases_until = max(self.leases_until, time.time() + schedule.PRESENCE_TTL + 1.0)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                self.record({"kind": "op_end", "op_id": op_id, "exit": 0, "stderr": ""})

    def follow_presence(self, proc, op_id, host):
        tail = []
        for line in proc.stderr:
            tail.append(line)
            if "AWS has" in line:
                t = time.time()
                self.record({"kind": "op_ready", "op_id": op_id, "t": t})
                self.probe(op_id, host, t)
        code = proc.wait()
        self.record({"kind": "op_end", "op_id": op_id, "exit": code, "stderr": "".join(tail)[-600:]})

    def host_worker(self, name, q):
        while True:
            act = q.get()
            if act is None:
                return
            try:
                self.run_op(act)
            except Exception as e:
                self.record({"kind": "harness_error", "where": "op %s" % act.get("op_id"),
                             "error": "%s: %s" % (type(e).__name__, e), "trace": traceback.format_exc()[-800:]})
            finally:
                with self.ops_lock:
                    self.ops_running -= 1
                q.task_done()

    def submit_op(self, act):
        import queue
        q = self.host_queues.get(act["host"])
        if q is None:
            q = self.host_queues[act["host"]] = queue.Queue()
            threading.Thread(target=self.host_worker, args=(act["host"], q), daemon=True).start()
        with self.ops_lock:
            self.ops_running += 1
        q.put(act)

    # -- faults --
    def fault(self, act):
        kind = act["fault"]
        fid = act["fault_id"]
        rec = {"kind": "fault_start", "fault_id": fid, "fault": kind, "round": self.round,
               "params": {k: v for k, v in act.items() if k not in ("type", "at", "fault", "fault_id")}}
        state = {"kind": kind}
        self.fault_state[fid] = state
        r = act.get("r", 0.0)

        def pick(slots):
            return sorted(slots)[int(r * len(slots))] if slots else None

        if kind in ("kill_leader", "kill_standby", "stop_leader", "stop_standby", "etcd_cut_leader",
                    "etcd_cut_standby", "aws_cut_leader"):
            slot = self.leader_slot() if kind.endswith("leader") else pick(self.standby_slots())
            if slot is None:
                rec["skipped"] = "no %s" % ("leader" if kind.endswith("leader") else "standby")
                state["skipped"] = True
                self.record(rec)
                return
            inst = self.instances[slot]
            rec["slot"], rec["pid"] = slot, inst.pid
            state["slot"], state["pid"] = slot, inst.pid
            if kind.startswith("kill"):
                with self.procs_lock:
                    inst.hold += 1
                    inst.killed_pids.add(inst.pid)
                    inst.signal(signal.SIGKILL)
            elif kind.startswith("stop"):
                inst.stopped = True
                inst.signal(signal.SIGSTOP)
                if kind == "stop_leader":
                    # A frozen host: its etcd path is stalled too, and stays so a moment after
                    # it resumes (its lease revoke hangs while its overdue timers fire).
                    for relay in inst.relays:
                        relay.stall()
            elif kind.startswith("etcd_cut"):
                for relay in inst.relays:
                    relay.stall() if act["mode"] == "stall" else relay.cut()
            else:
                with self.faults.lock:
                    self.faults.cut.add(slot)
                inst.proxy.reset_all()
        elif kind == "etcd_member_kill":
            member = self.etcd_victim(act)
            self.etcd.kill_member(member)
            self.watcher.member_down(member)
            rec["member"] = state["member"] = member
        elif kind == "etcd_move_leader":
            out = etcdctl(self.etcd.endpoints, "endpoint", "status", "-w", "json")
            try:
                statuses = json.loads(out.stdout)
                leader = statuses[0]["Status"]["leader"]
                others = [s for s in statuses if s["Status"]["header"]["member_id"] != leader]
                target = sorted(others, key=lambda s: s["Endpoint"])[int(r * len(others))]
                leader_ep = next(s["Endpoint"] for s in statuses if s["Status"]["header"]["member_id"] == leader)
                mv = etcdctl(leader_ep, "move-leader", "%x" % target["Status"]["header"]["member_id"])
                rec["result"] = (mv.stdout + mv.stderr).strip()[-200:]
            except (ValueError, KeyError, IndexError, StopIteration) as e:
                rec["skipped"] = "endpoint status: %s %s" % (e, out.stderr[-200:])
        elif kind == "compact":
            rev, _ = self.etcd.range_prefix("/compact-probe")
            self.etcd.gw("/v3/kv/compaction", {"revision": rev, "physical": True}, timeout=15)
            rec["revision"] = rev
        elif kind == "defrag":
            m = act["member"]
            if self.etcd.alive(m):
                d = etcdctl(self.etcd.url(m), "defrag", timeout=30)
                rec["result"] = (d.stdout + d.stderr).strip()[-200:]
            else:
                rec["skipped"] = "member %d is down" % m
        elif kind == "aws_throttle":
            self.faults.throttle = act["p"]
        elif kind == "aws_slow":
            if self.profile["request_delays"] and r < 0.5:
                # The request held before it is forwarded, at most 0.9 s (see net.py).
                self.faults.slow_req = rec["request_delay"] = round(act["s"] * 0.3, 3)
            else:
                self.faults.slow = act["s"]
        elif kind == "aws_5xx":
            self.faults.err5xx = act["p"]
        elif kind == "aws_reset":
            self.faults.reset = act["p"]
        elif kind == "oob_deregister":
            lb = self.lbs[act["lb_name"]]
            have, _ = self.aws.members_of(lb)
            mine = sorted(have - set(self.foreign.get(lb, [])))
            if not mine:
                rec["skipped"] = "no member of lbmanager's in %s" % lb
            else:
                m = mine[int(r * len(mine))]
                t = time.time()
                if lb.startswith("elb/"):
                    self.aws.c("elb").deregister_instances_from_load_balancer(
                        LoadBalancerName=lb.split("/")[2], Instances=[{"InstanceId": m}])
                else:
                    tid, port = m.rsplit(":", 1)
                    self.aws.c("elbv2").deregister_targets(TargetGroupArn=self.aws.tg_arn,
                                                           Targets=[{"Id": tid, "Port": int(port)}])
                self.record({"kind": "oob", "action": "deregister", "lb": lb, "removed": [m], "t": t})
                rec["member"] = m
        elif kind == "oob_rrset_edit" and self.lbs[act["lb_name"]] in self.params["hc_scope"]:
            self.edit_multivalue(act, rec)
        elif kind == "oob_rrset_edit":
            lb = self.lbs[act["lb_name"]]
            fqdn = lb.split("/", 2)[2]
            rr = self.aws.rrsets().get(fqdn, {})
            foreign = set(self.foreign.get(lb, []))
            candidates = [(t, s) for t, s in sorted(rr.items()) if t in ("A", "AAAA")
                          and set(s["values"]) - foreign]
            if not candidates:
                rec["skipped"] = "no value of lbmanager's in %s" % lb
            else:
                rtype, s = candidates[int(r * len(candidates))]
                values = list(s["values"])
                ttl = s["ttl"]
                removed = []
                if act["mode"] == "remove" or set(values) & foreign:
                    mine = sorted(set(values) - foreign)
                    victim = mine[int(r * len(mine))]
                    values.remove(victim)
                    removed = [victim]
                else:
                    ttl = 300
                t = time.time()
                if values:
                    self.aws.change_rrsets([("UPSERT", fqdn + ".", rtype, ttl, values)])
                else:
                    self.aws.change_rrsets([("DELETE", fqdn + ".", rtype, s["ttl"], s["values"])])
                self.record({"kind": "oob", "action": "rrset", "lb": lb, "type": rtype, "ttl": ttl,
                             "values": values, "removed": removed, "t": t})
                rec.update({"type": rtype, "values": values, "ttl": ttl})
        elif kind == "oob_foreign_add":
            lb = self.lbs[act["lb_name"]]
            m = act["member"]
            t = time.time()
            if lb.startswith("elb/"):
                self.aws.c("elb").register_instances_with_load_balancer(
                    LoadBalancerName=lb.split("/")[2], Instances=[{"InstanceId": m}])
            else:
                self.aws.c("elbv2").register_targets(TargetGroupArn=self.aws.tg_arn,
                                                     Targets=[{"Id": m, "Port": 80}])
                m += ":80"
            if self.profile["ownership"] == "shared":
                self.foreign.setdefault(lb, []).append(m)
                self.record({"kind": "oob", "action": "foreign_add", "lb": lb, "added": [m], "t": t})
            else:
                # --ownership exclusive: etcd lists every member; lbmanager removes this one.
                self.record({"kind": "oob", "action": "stray_add", "lb": lb, "added": [m], "t": t})
        elif kind == "lb_recreate":
            lb = self.lbs["webB"]
            try:
                have = sorted(self.aws.members_of(lb)[0])
            except Exception:
                have = []
            t = time.time()
            self.aws.c("elb").delete_load_balancer(LoadBalancerName="webB")
            self.record({"kind": "oob", "action": "lb_delete", "lb": lb, "removed": have, "t": t})
        elif kind == "key_flood":
            d = self.dirs[act["lb_name"]]
            keys = ["%s/multiple/i-0e%015x" % (d, (act["base"] + i) % (16 ** 15)) for i in range(act["n"])]
            state["keys"] = keys
            for k in keys:
                self.etcd.put(k)
            rec["keys"] = len(keys)
        elif kind == "del_prefix":
            d = self.dirs[act["lb_name"]] + "/"
            p = etcdctl(self.etcd.endpoints, "del", "--prefix", d)
            rec["result"] = (p.stdout + p.stderr).strip()[-100:]
        else:
            rec["skipped"] = "unknown fault"
        self.record(rec)

    def etcd_victim(self, act):
        """The etcd member a kill takes down: the schedule's (1 or 2) in profile shared; any
        member, 0 too, drawn from the fault's number, where every member may go."""
        if self.profile["etcd_kill"] == "any":
            return min(2, int(act.get("r", 0.0) * 3))
        return act["member"]

    def edit_multivalue(self, act, rec):
        """A hand edit of a name with health-checked answers: one value's record set deleted, or
        its TTL changed (the set and its check otherwise as they were)."""
        lb = self.lbs[act["lb_name"]]
        fqdn = lb.split("/", 2)[2]
        r = act.get("r", 0.0)
        sets = [x for x in self.aws.rrsets(sets=True).get(fqdn, {}).get("sets", [])
                if x["type"] in ("A", "AAAA")]
        sets.sort(key=lambda x: (x["type"], str(x["set_id"])))
        if not sets:
            rec["skipped"] = "no value of lbmanager's in %s" % lb
            return
        x = sets[int(r * len(sets))]
        rrset = {"Name": fqdn + ".", "Type": x["type"], "TTL": x["ttl"],
                 "ResourceRecords": [{"Value": v} for v in x["values"]]}
        if x["set_id"] is not None:
            rrset["SetIdentifier"] = x["set_id"]
            rrset["MultiValueAnswer"] = bool(x["mva"])
        if x["hc"]:
            rrset["HealthCheckId"] = x["hc"]
        t = time.time()
        if act["mode"] == "remove":
            action, removed, put = "DELETE", list(x["values"]), []
        else:
            action, removed, put = "UPSERT", [], list(x["values"])
            rrset["TTL"] = 300
        self.aws.c("route53").change_resource_record_sets(
            HostedZoneId=self.aws.zone,
            ChangeBatch={"Changes": [{"Action": action, "ResourceRecordSet": rrset}]})
        self.record({"kind": "oob", "action": "rrset_set", "lb": lb, "type": x["type"],
                     "set_id": x["set_id"], "hc": x["hc"], "ttl": rrset["TTL"], "removed": removed,
                     "put": put, "t": t})
        rec.update({"type": x["type"], "set_id": x["set_id"], "mode": act["mode"]})

    def fault_end(self, act):
        fid = act["fault_id"]
        state = self.fault_state.get(fid, {})
        kind = act["fault"]
        rec = {"kind": "fault_end", "fault_id": fid, "fault": kind, "round": self.round}
        if state.get("skipped"):
            return
        slot = state.get("slot")
        inst = self.instances[slot] if slot is not None else None
        if kind.startswith("kill"):
            with self.procs_lock:
                inst.hold = max(0, inst.hold - 1)
                if not inst.alive() and inst.restart_at is None:
                    inst.restart_at = time.time()
        elif kind.startswith("stop"):
            try:
                os.kill(state["pid"], signal.SIGCONT)
            except ProcessLookupError:
                rec["note"] = "process gone"
            if inst.pid == state["pid"]:
                inst.stopped = False
            if kind == "stop_leader":
                time.sleep(1.0)
                for relay in inst.relays:
                    relay.heal()
        elif kind.startswith("etcd_cut"):
            for relay in inst.relays:
                relay.heal()
        elif kind == "aws_cut_leader":
            with self.faults.lock:
                self.faults.cut.discard(slot)
        elif kind == "etcd_member_kill":
            self.etcd.start_member(state["member"])
        elif kind == "aws_throttle":
            self.faults.throttle = 0.0
        elif kind == "aws_slow":
            self.faults.slow = self.faults.slow_req = 0.0
        elif kind == "aws_5xx":
            self.faults.err5xx = 0.0
        elif kind == "aws_reset":
            self.faults.reset = 0.0
        elif kind == "lb_recreate":
            self.aws.create_elb("webB")
            rec["recreated"] = "webB"
        elif kind == "key_flood":
            for k in state.get("keys", []):
                self.etcd.delete(k)
        self.record(rec)

    def heal_all(self):
        """Safety net at the end of a window: every fault is healed by its own end action."""
        self.faults.heal()
        for inst in self.instances:
            for relay in inst.relays:
                relay.heal()
            if inst.stopped and inst.alive():
                inst.signal(signal.SIGCONT)
                inst.stopped = False
            with self.procs_lock:
                inst.hold = 0
        for i in range(len(self.etcd.members)):
            if not self.etcd.alive(i):
                self.etcd.start_member(i)

    # -- quiet periods --
    def sample(self):
        _, kvs = self.etcd.range_prefix(model.PREFIX + "/")
        keys = {k: v["mod"] for k, v in kvs.items() if not k.startswith(model.PREFIX + "/_")}
        aws = self.aws.snapshot()
        return keys, aws

    def quiet(self, rnd):
        self.record({"kind": "quiet_start", "round": rnd})
        t0 = time.time()
        hist = checker.History([{"kind": "meta"}], self.params_for_compare())
        matched_at = None
        while True:
            t = time.time()
            try:
                keys, aws = self.sample()
            except Exception as e:
                self.record({"kind": "sample_error", "round": rnd, "error": str(e)[:300]})
                time.sleep(0.5)
                continue
            self.record({"kind": "sample", "round": rnd, "t": t, "keys": keys, "aws": aws})
            diffs = checker.compare(hist, t, keys, aws)
            if not diffs and matched_at is None:
                matched_at = t
                log("round %d: AWS matches etcd %.1f s into the quiet period" % (rnd, t - t0))
            if matched_at is not None and t - matched_at >= 2.0:
                break
            if t - t0 > CONVERGENCE_BOUND:
                log("round %d: NOT converged after %.0f s: %s" % (rnd, CONVERGENCE_BOUND, "; ".join(diffs)[:600]))
                break
            time.sleep(0.5)
        if matched_at is not None:
            self.status_sample(rnd)
        self.record({"kind": "quiet_end", "round": rnd})

    def params_for_compare(self):
        p = dict(checker.DEFAULTS)
        p.update(self.params)
        p["foreign"] = {k: list(v) for k, v in self.foreign.items()}
        return p

    def status_sample(self, rnd):
        deadline = time.time() + 12
        while True:
            p = subprocess.run([self.bin, "status", "--output", "json", "--etcd-endpoints",
                                self.etcd.endpoints], capture_output=True, text=True, env=self.cli_env,
                               timeout=30)
            if p.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.5)
        try:
            report_json = json.loads(p.stdout)
        except ValueError:
            report_json = None
        keys, aws = self.sample()
        _, owned = self.etcd.range_prefix(STATE_PREFIX + "/owned/", keys_only=True)
        _, managed = self.etcd.range_prefix(STATE_PREFIX + "/managed/", keys_only=True)
        self.record({"kind": "status", "round": rnd, "exit": p.returncode, "report": report_json,
                     "stderr": p.stderr[-300:], "keys": keys, "aws": aws, "owned": sorted(owned),
                     "managed": sorted(managed)})

    # -- the run --
    def run_rounds(self):
        for rnd in self.plan["rounds"]:
            self.round = rnd["round"]
            log("round %d: %.0f s active, %d actions" % (self.round, rnd["active"], len(rnd["actions"])))
            self.record({"kind": "round_start", "round": self.round, "active": rnd["active"]})
            t0 = time.time()
            for act in rnd["actions"]:
                delay = t0 + act["at"] - time.time()
                if delay > 0:
                    time.sleep(delay)
                try:
                    if act["type"] == "op":
                        self.submit_op(act)
                    elif act["type"] == "fault":
                        self.fault(act)
                    else:
                        self.fault_end(act)
                except Exception as e:
                    self.record({"kind": "harness_error", "where": "%s %s" % (act["type"], act.get("fault")),
                                 "error": "%s: %s" % (type(e).__name__, e),
                                 "trace": traceback.format_exc()[-800:]})
            delay = t0 + rnd["active"] - time.time()
            if delay > 0:
                time.sleep(delay)
            deadline = time.time() + MEMBER_TIMEOUT + 25
            while self.ops_running > 0 and time.time() < deadline:
                time.sleep(0.2)
            if self.ops_running > 0:
                self.record({"kind": "harness_error", "where": "round %d" % self.round,
                             "error": "%d operations still running at the quiet period" % self.ops_running})
            for name, (proc, op_id) in list(self.presence.items()):
                if proc.poll() is None:
                    proc.terminate()
            self.heal_all()
            self.record({"kind": "round_end", "round": self.round})
            # Leases of killed presence processes and etcdctl lease keys run out first: the quiet
            # period has no etcd change of the workload's.
            time.sleep(max(0.5, self.leases_until - time.time()))
            self.quiet(self.round)

    def final_stop(self):
        self.stop_event.set()
        for inst in self.instances:
            with self.procs_lock:
                inst.final = True
        time.sleep(0.3)
        for inst in self.instances:
            if inst.stopped:
                inst.signal(signal.SIGCONT)
            if inst.alive():
                inst.proc.send_signal(signal.SIGTERM)
        for inst in self.instances:
            if inst.proc is None:
                continue
            try:
                code = inst.proc.wait(15)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                code = inst.proc.wait()
                self.record({"kind": "instance_exit", "slot": inst.slot, "pid": inst.pid, "code": None,
                             "signal": 9, "reason": "final_stop", "note": "no exit within 15 s of SIGTERM"})
                continue
            if inst.proc.returncode is not None and code is not None:
                self.record({"kind": "instance_exit", "slot": inst.slot, "pid": inst.pid,
                             "code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                             "reason": "final_stop"})

    def check_logs(self):
        for inst in self.instances:
            for path, pid in inst.log_files:
                bad, panics, lines = [], [], 0
                try:
                    with open(path, "rb") as f:
                        content = f.read().decode("utf-8", "replace").split("\n")
                except OSError:
                    continue
                if content and content[-1] == "":
                    content.pop()
                killed = pid in inst.killed_pids
                for i, line in enumerate(content):
                    lines += 1
                    if "panicked" in line:
                        panics.append(line)
                    try:
                        obj = json.loads(line)
                        if not isinstance(obj, dict):
                            raise ValueError("not an object")
                    except ValueError:
                        if killed and i == len(content) - 1:
                            continue
                        bad.append(line)
                self.record({"kind": "log_check", "slot": inst.slot, "pid": pid, "file": path,
                             "lines": lines, "bad_json": bad[:20], "bad_json_count": len(bad),
                             "panics": panics[:20]})

    def teardown(self):
        self.stop_event.set()
        for inst in self.instances:
            with self.procs_lock:
                inst.final = True
            if inst.alive():
                inst.signal(signal.SIGCONT)
                inst.proc.kill()
            inst.proxy.close()
            for relay in inst.relays:
                relay.close()
        with self.procs_lock:
            running = list(self.commands)
        for proc in [p for p, _ in list(self.presence.values())] + running:
            if proc.poll() is None:
                proc.kill()
        if self.watcher:
            self.watcher.stop()
        if self.etcd:
            self.etcd.stop()
            for m in self.etcd.members:  # their logs stay; the data (64 MB WALs) goes
                shutil.rmtree(m["dir"], ignore_errors=True)
        if self.moto and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(5)
            except subprocess.TimeoutExpired:
                self.moto.kill()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="shared",
                    help="shared: --ownership shared (the default); exclusive-hc: --ownership "
                         "exclusive with a --route53-health-check scope, etcd member 0 killed too, "
                         "Route53 changes PENDING for a while, requests delayed (README.md)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir even when the run passes")
    ap.add_argument("--check-only", metavar="HISTORY", help="only run the checker over a history file")
    ap.add_argument("--sabotage", choices=["no-ha", "exclusive"],
                    help="test the checker against the real binary: run the last instance without "
                         "--ha (two actives), or all with --ownership exclusive; the run must FAIL")
    args = ap.parse_args(argv)
    if args.check_only:
        events = report.load(args.check_only)
        result = checker.check(events)
        text = report.summary(events, result, wall=None)
        print(text)
        return 1 if result["violations"] else 0
    if args.minutes is None or args.minutes <= 0:
        ap.error("--minutes N (N > 0) is required")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2 ** 31)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    args.bin = args.bin or os.path.join(root, "target", "debug", "lbmanager")
    if not os.access(args.bin, os.X_OK):
        log("no lbmanager binary at %s" % args.bin)
        return 2
    own_work = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="lbmanager-soak.")
    log("seed %d, %.1f minutes, profile %s, %d instances, binary %s" % (
        args.seed, args.minutes, args.profile, args.instances, args.bin))
    started = time.time()
    d = Driver(args)
    failed = None

    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        d.setup()
        d.run_rounds()
        d.final_stop()
        d.check_logs()
    except KeyboardInterrupt as e:
        failed = "interrupted (%s)" % e
    except Exception as e:
        failed = "%s: %s" % (type(e).__name__, e)
        d.record({"kind": "harness_error", "where": "driver", "error": failed,
                  "trace": traceback.format_exc()[-1500:]})
        log(traceback.format_exc())
    finally:
        d.teardown()
        d.record.close()
    wall = time.time() - started
    events = report.load(os.path.join(args.work, "history.jsonl"))
    result = checker.check(events)
    text = report.summary(events, result, wall=wall)
    with open(os.path.join(args.work, "summary.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(args.work, "violations.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(text)
    ok = not result["violations"] and failed is None
    if ok and own_work and not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
        log("passed; work dir removed (--keep keeps it)")
    else:
        log("history: %s/history.jsonl; summary: %s/summary.txt" % (args.work, args.work))
    if failed:
        log("the run failed: %s" % failed)
    return 0 if ok else 1
