"""The soak's driver: starts a 3-member etcd cluster, moto behind a fault proxy, N `lbmanager
run --ha` instances (each through its own proxy port and its own relays to etcd), runs the
seeded schedule of operations and faults round by round, samples AWS and etcd in each quiet
period, and writes everything as JSON lines to history.jsonl; then runs the checker over it.

    python3 -m soak --minutes N [--seed S] [--bin PATH] [--work DIR] [--keep]

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

    def gw(self, path, payload, member=0, timeout=5):
        req = urllib.request.Request(self.url(member) + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def range_prefix(self, prefix, member=0, keys_only=False):
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


def etcdctl(endpoints, *args, timeout=15):
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(["etcdctl", "--endpoints", endpoints, "--command-timeout=5s"] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=env)


class Watcher:
    """`etcdctl watch --prefix /lbManager/ -w json` on member 0 (never killed): every member key
    and election key event, timed as it arrives."""

    def __init__(self, cluster, record):
        self.cluster = cluster
        self.record = record
        self.last_rev = 0
        self.proc = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="watcher")
        self.ready = threading.Event()
        self.thread.start()

    def _run(self):
        while not self.stopping:
            env = dict(os.environ, ETCDCTL_API="3")
            self.proc = subprocess.Popen(
                ["etcdctl", "--endpoints", self.cluster.url(0), "watch", "--prefix",
                 model.PREFIX + "/", "--rev", str(self.last_rev + 1), "-w", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            self.ready.set()
            for line in self.proc.stdout:
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
                    self.last_rev = max(self.last_rev, rec["rev"])
                    self.record(rec)
                if resp.get("CompactRevision"):
                    self.record({"kind": "harness_error", "where": "watcher",
                                 "error": "watch compacted at %s" % resp.get("CompactRevision")})
            self.proc.wait()
            if not self.stopping:
                err = self.proc.stderr.read().decode(errors="replace")[-300:]
                self.record({"kind": "watch_restart", "last_rev": self.last_rev, "stderr": err})
                time.sleep(0.2)

    def stop(self):
        self.stopping = True
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()


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

    def fixtures(self, foreign):
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
        # Other tools' members and record sets: lbmanager must leave them alone.
        self.c("elb").register_instances_with_load_balancer(
            LoadBalancerName="webA", Instances=[{"InstanceId": foreign["webA"]}])
        self.c("elbv2").register_targets(TargetGroupArn=self.tg_arn,
                                         Targets=[{"Id": foreign["web-tg"], "Port": 80}])
        self.change_rrsets([
            ("CREATE", "www.example.com.", "A", ROUTE53_TTL, [foreign["www"]]),
            ("CREATE", "legacy.example.com.", "A", 300, ["198.51.100.9"]),
            ("CREATE", "legacy.example.com.", "TXT", 300, ['"owned by another tool"']),
        ])

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

    def rrsets(self):
        out = {}
        kwargs = {"HostedZoneId": self.zone}
        while True:
            resp = self.c("route53").list_resource_record_sets(**kwargs)
            for rr in resp["ResourceRecordSets"]:
                name = model.norm_fqdn(rr["Name"])
                values = [r["Value"] for r in rr.get("ResourceRecords", [])]
                if rr["Type"] in ("A", "AAAA"):
                    values = [model.norm_ip(v) or v for v in values]
                out.setdefault(name, {})[rr["Type"]] = {"ttl": rr.get("TTL"), "values": sorted(values)}
            if not resp.get("IsTruncated"):
                return out
            kwargs["StartRecordName"] = resp["NextRecordName"]
            kwargs["StartRecordType"] = resp["NextRecordType"]

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
        try:
            rr = self.rrsets()
            for fqdn in ("www.example.com", "api.example.com"):
                entry = rr.get(fqdn, {})
                out["route53/%s/%s" % (self.zone, fqdn)] = {
                    k: v for k, v in entry.items() if k in ("A", "AAAA")}
            out["route53/%s/legacy.example.com" % self.zone] = rr.get("legacy.example.com", {})
        except Exception as e:
            for fqdn in ("www.example.com", "api.example.com", "legacy.example.com"):
                out["route53/%s/%s" % (self.zone, fqdn)] = {"error": str(e)[:200]}
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
                                  driver.tg_arns, driver.tg_ports)
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
        ownership = "shared"
        # --sabotage: the checker's own test against the real binary, misconfigured on purpose.
        if self.d.args.sabotage == "no-ha" and self.slot == self.d.args.instances - 1:
            ha = []  # a second active instance: its changes come from a non-leader
        if self.d.args.sabotage == "exclusive":
            ownership = "exclusive"  # removes the members and values other tools put there
        args = [self.d.bin, "run"] + ha + [
                "--resync-interval", "%ds" % RESYNC, "--ownership", ownership, "--log-format", "json",
                "--route53-ttl", str(ROUTE53_TTL), "--aws-endpoint-url", self.proxy.url,
                "--etcd-endpoints", ",".join(r.url for r in self.relays)]
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
        self.faults = net.FaultState(self.seed)
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
        self.aws.fixtures(foreign_members)
        zone = self.aws.zone
        self.lbs = {name: spec["lb"].replace(schedule.ZONE, zone) for name, spec in schedule.LBS.items()}
        self.dirs = {name: spec["dir"].replace(schedule.ZONE, zone) for name, spec in schedule.LBS.items()}
        self.tg_arns = {self.aws.tg_arn: self.lbs["web-tg"]}
        self.tg_ports = {self.lbs["web-tg"]: 80}
        self.foreign = {self.lbs["webA"]: [foreign_members["webA"]],
                        self.lbs["web-tg"]: [foreign_members["web-tg"] + ":80"],
                        self.lbs["www"]: [foreign_members["www"]]}
        legacy = "route53/%s/legacy.example.com" % zone
        self.foreign_fqdns = {legacy: self.aws.rrsets().get("legacy.example.com", {})}
        self.plan = schedule.plan(self.seed, self.minutes)
        self.record({"kind": "meta", "seed": self.seed, "minutes": self.minutes,
                     "schedule_digest": schedule.digest(self.plan), "bin": self.bin,
                     "instances": self.args.instances, "sabotage": self.args.sabotage,
                     "params": {"prefix": model.PREFIX, "route53_ttl": ROUTE53_TTL,
                                "lease_ttl": LEASE_TTL, "resync": RESYNC,
                                "convergence_bound": CONVERGENCE_BOUND,
                                "lbs": sorted(self.lbs.values()), "tg_ports": self.tg_ports,
                                "foreign": self.foreign, "foreign_fqdns": self.foreign_fqdns,
                                "zone": zone, "tg_arn": self.aws.tg_arn}})
        self.record({"kind": "schedule", "plan": self.plan})
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
                return
            time.sleep(0.3)
        raise RuntimeError("no lbmanager became leader and synced within 60 s; see %s/logs" % self.work)

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
            self.etcd.kill_member(act["member"])
            rec["member"] = state["member"] = act["member"]
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
            self.foreign.setdefault(lb, []).append(m)
            self.record({"kind": "oob", "action": "foreign_add", "lb": lb, "added": [m], "t": t})
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
            self.faults.slow = 0.0
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
        p.update({"prefix": model.PREFIX, "route53_ttl": ROUTE53_TTL, "lbs": sorted(self.lbs.values()),
                  "tg_ports": self.tg_ports, "foreign": {k: list(v) for k, v in self.foreign.items()},
                  "foreign_fqdns": self.foreign_fqdns})
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
    log("seed %d, %.1f minutes, %d instances, binary %s" % (args.seed, args.minutes, args.instances, args.bin))
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
