"""The soak's network pieces: an HTTP/1.1 fault proxy in front of moto (one listening port per
lbmanager instance, so that each call is tagged with its sender) and a TCP relay in front of each
etcd member (one per instance and member, so that one instance can be stalled or cut from etcd).

Faults of the proxy (FaultState, shared by every port; `cut` per port):
  throttle  answer as AWS does when it throttles, without forwarding: HTTP 400 Throttling
            (ELB/ELBv2 query XML; Route53 REST XML)
  5xx       answer 500 InternalFailure or 503 ServiceUnavailable without forwarding
  reset     reset the connection, before forwarding (nothing applied) or after forwarding (applied,
            answer lost)
  slow      answer late: the extra delay is added *after* moto has answered (a change reaches AWS
            when it is sent; its answer is what is slow). A delay before forwarding a change would
            exercise the window the README documents as open (a request reaching AWS more than a
            quarter of the lease TTL after it left), which no fence can close.
  cut       (per port) reset every connection: the instance is cut from AWS but not from etcd.
  slow_req  (profile exclusive-hc) hold the *request* before forwarding it, at most 0.9 s: a
            change reaches AWS that much after it left lbmanager. Bounded below a quarter of the
            lease TTL (1 s): past it is the window README "High availability" documents as open.
A baseline latency (0.1 s) is added to every answer the same way.

Route53 as Route53 answers (profile exclusive-hc, `Route53Sim`, shared by every port): each
applied ChangeResourceRecordSets gets a change id of its own and `PENDING`, and GetChange says
`PENDING` until `hold` seconds after the change was made, then `INSYNC` (moto answers `INSYNC` at
once; tests/testkit/src/route53.rs does the same as here). CreateHealthCheck keeps its
CallerReference as Route53 does (moto ignores it): a reference seen before is answered with the
check it made, one of a check since deleted is refused (409 HealthCheckAlreadyExists).

Corrections of moto (5.2): its CREATE duplicate check refuses a CREATE identical to one in the
zone's change journal whenever *any* record set sorts after that name (it lists from the name on,
not the name), so re-creating a record set that was deleted fails forever with "already exists"
while nothing is there. The proxy does what Route53 does instead: a batch whose CREATE names a
record set that exists is refused (400 InvalidChangeBatch, not forwarded); otherwise its CREATEs
are forwarded as UPSERTs (the same length: Content-Length holds). The event says so (`moto_fix`).
Record sets are told apart by (name, type, SetIdentifier), and, as Route53 does, a batch that
would leave one simple record set beside multivalue answers of the same name and type is refused
(moto would keep both).

Every request is recorded as one `aws_call` event: t (received), slot, service, action, mutating,
the load balancer and members (ELB/ELBv2) or changes (Route53, per name, type and SetIdentifier,
with the HealthCheckId named), the health check made or deleted (`hc`), the fault, the forward and
upstream-answer times, moto's status and the status returned (None: reset).
"""
import http.client
import random
import re
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from . import model

MUTATING_QUERY = {
    "RegisterInstancesWithLoadBalancer",
    "DeregisterInstancesFromLoadBalancer",
    "RegisterTargets",
    "DeregisterTargets",
}

QUERY_THROTTLE = (b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
                  b"<Message>Rate exceeded</Message></Error><RequestId>soak-throttle</RequestId>"
                  b"</ErrorResponse>")
R53_THROTTLE = (b'<?xml version="1.0"?>\n<ErrorResponse xmlns="https://route53.amazonaws.com/doc/'
                b'2013-04-01/"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate '
                b'exceeded</Message></Error><RequestId>soak-throttle</RequestId></ErrorResponse>')


def error_body(route53, code, message):
    ns = ' xmlns="https://route53.amazonaws.com/doc/2013-04-01/"' if route53 else ""
    return ('<ErrorResponse%s><Error><Type>Receiver</Type><Code>%s</Code><Message>%s</Message>'
            '</Error><RequestId>soak-fault</RequestId></ErrorResponse>' % (ns, code, message)).encode()


class FaultState:
    """What the proxy does to requests now; changed by the driver's fault schedule."""

    def __init__(self, seed, baseline=0.1):
        self.lock = threading.Lock()
        self.rng = random.Random(seed ^ 0x5EED)  # only for per-request draws
        self.baseline = baseline
        self.throttle = 0.0
        self.err5xx = 0.0
        self.reset = 0.0
        self.slow = 0.0  # extra seconds (uniform 0.5x..1x of it) on every answer
        self.slow_req = 0.0  # extra seconds (uniform 0.5x..1x of it) before forwarding a request
        self.cut = set()  # slots cut from AWS

    def request_delay(self):
        """How long to hold the next request before forwarding it (0: not at all)."""
        with self.lock:
            if not self.slow_req:
                return 0.0
            return self.slow_req * (0.5 + 0.5 * self.rng.random())

    def draw(self, slot):
        """The fault for one request: (kind or None, extra delay)."""
        with self.lock:
            if slot in self.cut:
                return "cut", 0.0
            r = self.rng.random()
            delay = self.baseline
            if self.slow:
                delay += self.slow * (0.5 + 0.5 * self.rng.random())
            if r < self.throttle:
                return "throttle", delay
            r -= self.throttle
            if r < self.err5xx:
                return ("500" if self.rng.random() < 0.5 else "503"), delay
            r -= self.err5xx
            if r < self.reset:
                return ("reset_before" if self.rng.random() < 0.5 else "reset_after"), delay
            return None, delay

    def heal(self):
        with self.lock:
            self.throttle = self.err5xx = self.reset = self.slow = self.slow_req = 0.0
            self.cut.clear()


def parse_call(method, path, body, tg_arns, tg_ports):
    """What a request is: a dict of service, action, mutating, lb, members or changes."""
    info = {"service": None, "action": None, "mutating": False}
    if path.startswith("/2013-04-01/"):
        info["service"] = "route53"
        parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
        zone = None
        if "hostedzone" in parts:
            i = parts.index("hostedzone")
            zone = parts[i + 1] if i + 1 < len(parts) else None
        if parts and parts[-1] == "rrset":
            if method == "POST":
                info["action"] = "ChangeResourceRecordSets"
                info["mutating"] = True
                info["changes"] = parse_changes(body, zone)
            else:
                info["action"] = "ListResourceRecordSets"
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
                name = (query.get("name") or [""])[0]
                info["lb"] = "route53/%s/%s" % (zone, model.norm_fqdn(name)) if name else "route53/%s" % zone
        elif len(parts) >= 2 and parts[1] == "healthcheck":
            hc = parts[2] if len(parts) > 2 else None
            if method == "POST" and hc is None:
                info["action"] = "CreateHealthCheck"
                info["mutating"] = True
                info["hc"] = parse_check(body)
            elif method == "GET" and hc is None:
                info["action"] = "ListHealthChecks"
            elif method == "DELETE":
                info["action"] = "DeleteHealthCheck"
                info["mutating"] = True
                info["hc"] = {"id": hc}
            elif method == "POST":
                info["action"] = "UpdateHealthCheck"
                info["mutating"] = True
                info["hc"] = {"id": hc}
            elif len(parts) > 3 and parts[3] == "status":
                info["action"] = "GetHealthCheckStatus"
                info["hc"] = {"id": hc}
            else:
                info["action"] = "GetHealthCheck"
                info["hc"] = {"id": hc}
        elif len(parts) >= 3 and parts[1] == "tags" and parts[2] == "healthcheck":
            hc = parts[3] if len(parts) > 3 else None
            info["action"] = "ChangeTagsForResource" if method == "POST" else "ListTagsForResource"
            info["mutating"] = method == "POST" and hc is not None
            info["hc"] = {"id": hc}
        elif method == "GET" and len(parts) == 3 and parts[1] == "change":
            info["action"] = "GetChange"
            info["change_id"] = parts[2]
        elif method == "GET" and len(parts) == 3 and parts[1] == "hostedzone":
            info["action"] = "GetHostedZone"
        else:
            info["action"] = "%s %s" % (method, "/".join(parts[1:]) or "/")
        return info
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    if not form and "?" in path:
        form = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    action = (form.get("Action") or [None])[0]
    version = (form.get("Version") or [""])[0]
    info["action"] = action
    info["service"] = "elbv2" if version == "2015-12-01" else "elb"
    info["mutating"] = action in MUTATING_QUERY
    if info["service"] == "elb":
        names = [v[0] for k, v in form.items() if k.startswith("LoadBalancerNames.member.")]
        name = (form.get("LoadBalancerName") or [None])[0] or (names[0] if len(names) == 1 else None)
        if name:
            info["lb"] = "elb/us-east-1/%s" % name
        info["members"] = sorted(v[0] for k, v in form.items() if k.endswith(".InstanceId"))
    else:
        arn = (form.get("TargetGroupArn") or [None])[0]
        lb = tg_arns.get(arn) if arn else None
        info["lb"] = lb or arn
        port_default = tg_ports.get(lb, 80)
        ids = {}
        for k, v in form.items():
            if k.startswith("Targets.member."):
                n, _, field = k[len("Targets.member."):].partition(".")
                ids.setdefault(n, {})[field] = v[0]
        info["members"] = sorted(
            model.norm_target("%s:%s" % (t.get("Id"), t.get("Port", port_default))
                              if ":" not in (t.get("Id") or "") else
                              "[%s]:%s" % (t.get("Id"), t.get("Port", port_default)), port_default)
            for t in ids.values())
    return info


def _strip(tag):
    return tag.rsplit("}", 1)[-1]


def parse_changes(body, zone):
    out = []
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return [{"lb": "route53/%s/?" % zone, "action": "?", "type": "?", "values": []}]
    for change in root.iter():
        if _strip(change.tag) != "Change":
            continue
        action, name, rtype, ttl, values = None, None, None, None, []
        set_id = hc = mva = None
        for el in change.iter():
            tag = _strip(el.tag)
            if tag == "Action":
                action = el.text
            elif tag == "Name":
                name = el.text
            elif tag == "Type":
                rtype = el.text
            elif tag == "TTL":
                ttl = int(el.text)
            elif tag == "Value":
                values.append(model.norm_ip(el.text) or el.text)
            elif tag == "SetIdentifier":
                set_id = el.text
            elif tag == "HealthCheckId":
                hc = el.text
            elif tag == "MultiValueAnswer":
                mva = (el.text or "").strip().lower() == "true"
        ch = {"lb": "route53/%s/%s" % (zone, model.norm_fqdn(name or "")), "action": action,
              "type": rtype, "ttl": ttl, "values": sorted(values)}
        if set_id is not None:
            ch["set_id"] = model.norm_ip(set_id) or set_id
        if hc is not None:
            ch["hc"] = hc
        if mva is not None:
            ch["mva"] = mva
        out.append(ch)
    return out


def _text(root, name):
    for el in root.iter():
        if _strip(el.tag) == name:
            return el.text
    return None


def parse_check(body):
    """A CreateHealthCheck request: its reference and what it checks."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return {}
    ip = _text(root, "IPAddress")
    port = _text(root, "Port")
    return {"ref": _text(root, "CallerReference"), "ip": model.norm_ip(ip or "") or ip,
            "port": int(port) if port and port.isdigit() else port, "type": _text(root, "Type"),
            "path": _text(root, "ResourcePath"),
            "fqdn": model.norm_fqdn(_text(root, "FullyQualifiedDomainName") or "")}


class Route53Sim:
    """What Route53 does and moto does not, for every proxy port (see the module's docstring):
    change ids that stay PENDING for `hold` seconds, and CallerReferences kept."""

    def __init__(self, hold):
        self.hold = hold
        self.lock = threading.Lock()
        self.changes = {}  # change id -> when it was made
        self.made = {}  # CallerReference -> (check id, moto's answer)
        self.deleted = set()  # references of checks deleted since
        self.seq = 0

    def pending(self, rbody, t):
        """moto's answer to an applied change, with an id of its own and PENDING."""
        with self.lock:
            self.seq += 1
            cid = "CSOAK%08d" % self.seq
            self.changes[cid] = t
        text = rbody.decode("utf-8", "replace")
        text = re.sub(r"<Id>[^<]*</Id>", "<Id>/change/%s</Id>" % cid, text, count=1)
        text = re.sub(r"<Status>[^<]*</Status>", "<Status>PENDING</Status>", text, count=1)
        return text.encode(), cid

    def status(self, cid, now):
        """(HTTP status, body, PENDING/INSYNC or None) of GetChange."""
        with self.lock:
            made = self.changes.get(cid)
        if made is None:
            return 404, error_body(True, "NoSuchChange", "no such change: %s" % cid), None
        state = "INSYNC" if now - made >= self.hold else "PENDING"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<GetChangeResponse xmlns="https://'
                'route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo><Id>/change/%s</Id><Status>%s'
                '</Status><SubmittedAt>2026-01-01T00:00:00.000Z</SubmittedAt></ChangeInfo>'
                '</GetChangeResponse>' % (cid, state))
        return 200, body.encode(), state

    def known_reference(self, ref):
        """(status, body) to answer a CreateHealthCheck of a reference seen before, or None."""
        with self.lock:
            if ref in self.deleted:
                return 409, error_body(True, "HealthCheckAlreadyExists", "A health check with the "
                                       "same caller reference existed and was deleted")
            if ref in self.made:
                return 201, self.made[ref][1]
        return None

    def created(self, ref, rbody):
        m = re.search(rb"<Id>([^<]*)</Id>", rbody)
        if ref is None or m is None:
            return None
        hc = m.group(1).decode()
        with self.lock:
            self.made[ref] = (hc, rbody)
        return hc

    def check_deleted(self, hc):
        with self.lock:
            for ref, (made, _) in list(self.made.items()):
                if made == hc:
                    del self.made[ref]
                    self.deleted.add(ref)


def _rst(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
       "upgrade", "content-length"}


class AwsProxy:
    """One listening port in front of moto for lbmanager instance `slot`."""

    def __init__(self, slot, upstream_port, faults, record, tg_arns, tg_ports, sim=None):
        self.slot = slot
        self.sim = sim  # a Route53Sim, or None: moto's change status and references as they are
        self.upstream_port = upstream_port
        self.faults = faults
        self.record = record
        self.tg_arns = tg_arns
        self.tg_ports = tg_ports
        self.conns = set()
        self.conns_lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, name="proxy-%d" % slot,
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        with self.conns_lock:
            for s in list(self.conns):
                _rst(s)

    def reset_all(self):
        with self.conns_lock:
            for s in list(self.conns):
                _rst(s)

    def _refusal(self, path, changes):
        """Why Route53 would refuse a batch with a CREATE that moto would take (None: it would
        not): a CREATE of a record set (name, type, SetIdentifier) that exists, or a simple
        record set beside multivalue answers of the same name and type."""
        names = {}
        for c in changes:
            fqdn = c["lb"].split("/", 2)[2]
            if fqdn not in names:
                names[fqdn] = set(_list_sets(self.upstream_port, path, fqdn))
        for c in changes:
            fqdn = c["lb"].split("/", 2)[2]
            sets = names[fqdn]
            key = (c["type"], c.get("set_id"))
            if c["action"] == "DELETE":
                sets.discard(key)
                continue
            if c["action"] == "CREATE" and key in sets:
                return "Tried to create resource record set [name='%s.', type='%s'] but it " \
                       "already exists" % (fqdn, c["type"])
            if any(t == c["type"] and (s is None) != (key[1] is None) for t, s in sets):
                return "RRSet of type %s with DNS name %s. is not permitted because a " \
                       "conflicting RRSet of type %s with the same DNS name already exists" % (
                           c["type"], fqdn, c["type"])
            sets.add(key)
        return None

    def _serve(self, sock):
        with self.conns_lock:
            self.conns.add(sock)
        rfile = sock.makefile("rb")
        upstream = None
        try:
            while True:
                req = _read_request(rfile)
                if req is None:
                    return
                method, path, headers, body = req
                t = time.time()
                fault, delay = self.faults.draw(self.slot)
                info = parse_call(method, path, body, self.tg_arns, self.tg_ports)
                ev = {"kind": "aws_call", "t": t, "slot": self.slot, "method": method}
                ev.update(info)
                ev["fault"] = fault
                route53 = info["service"] == "route53"
                hold = self.faults.request_delay() if fault not in ("cut",) else 0.0
                if hold:
                    ev["request_delay"] = round(hold, 3)
                    time.sleep(hold)
                if fault in ("cut", "reset_before"):
                    ev["status"] = None
                    self.record(ev)
                    _rst(sock)
                    return
                if fault == "throttle":
                    time.sleep(delay)
                    ev["status"] = 400
                    ev["t_resp"] = time.time()
                    self.record(ev)
                    _send(sock, 400, "Bad Request", R53_THROTTLE if route53 else QUERY_THROTTLE)
                    continue
                if fault in ("500", "503"):
                    time.sleep(delay)
                    code, reason = (500, "InternalFailure") if fault == "500" else (503, "ServiceUnavailable")
                    ev["status"] = code
                    ev["t_resp"] = time.time()
                    self.record(ev)
                    _send(sock, code, "Error", error_body(route53, reason, "soak fault"))
                    continue
                multi = any(c.get("set_id") is not None for c in info.get("changes", []))
                if route53 and info["action"] == "ChangeResourceRecordSets" and any(
                        c["action"] == "CREATE" or (multi and c["action"] == "UPSERT")
                        for c in info.get("changes", [])):
                    why = self._refusal(path, info["changes"])
                    if why is None:
                        if b"<Action>CREATE</Action>" in body:
                            ev["moto_fix"] = "create_as_upsert"
                            body = body.replace(b"<Action>CREATE</Action>", b"<Action>UPSERT</Action>")
                    else:
                        ev["moto_fix"] = "create_refused"
                        time.sleep(delay)
                        ev["status"] = 400
                        ev["t_resp"] = time.time()
                        self.record(ev)
                        _send(sock, 400, "Bad Request", (
                            '<?xml version="1.0"?>\n<ErrorResponse xmlns="https://route53.amazonaws.com/'
                            'doc/2013-04-01/"><Error><Type>Sender</Type><Code>InvalidChangeBatch</Code>'
                            "<Message>%s</Message></Error><RequestId>soak-moto-fix</RequestId>"
                            "</ErrorResponse>" % why).encode())
                        continue
                if self.sim is not None and info["action"] == "GetChange":
                    # Answered here, as Route53 would (moto says INSYNC at once).
                    code, rbody, state = self.sim.status(info.get("change_id"), time.time())
                    ev["change_status"] = state
                    ev["upstream_status"] = None
                    if fault == "reset_after":
                        ev["status"] = None
                        self.record(ev)
                        _rst(sock)
                        return
                    time.sleep(delay)
                    ev["status"] = code
                    ev["t_resp"] = time.time()
                    self.record(ev)
                    _send(sock, code, "OK" if code == 200 else "Not Found", rbody)
                    continue
                if self.sim is not None and info["action"] == "CreateHealthCheck":
                    seen = self.sim.known_reference(info.get("hc", {}).get("ref"))
                    if seen is not None:
                        code, rbody = seen
                        ev["moto_fix"] = "reference_seen" if code < 300 else "reference_spent"
                        ev["upstream_status"] = None
                        ev["t_fwd"] = time.time()
                        if fault == "reset_after":
                            ev["status"] = None
                            self.record(ev)
                            _rst(sock)
                            return
                        time.sleep(delay)
                        ev["status"] = code
                        ev["t_resp"] = time.time()
                        self.record(ev)
                        _send(sock, code, "Created" if code < 300 else "Conflict", rbody)
                        continue
                ev["t_fwd"] = time.time()
                try:
                    if upstream is None:
                        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
                    fwd_headers = {k: v for k, v in headers if k.lower() not in HOP}
                    upstream.request(method, path, body=body, headers=fwd_headers)
                    resp = upstream.getresponse()
                    rbody = resp.read()
                    rheaders = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP]
                    ev["upstream_status"] = resp.status
                except (OSError, http.client.HTTPException) as e:
                    ev["upstream_error"] = str(e)
                    ev["upstream_status"] = None
                    upstream = None
                    ev["status"] = None
                    self.record(ev)
                    _rst(sock)
                    return
                ev["t_done"] = time.time()
                if self.sim is not None and 200 <= resp.status < 300:
                    if info["action"] == "ChangeResourceRecordSets":
                        rbody, ev["change_id"] = self.sim.pending(rbody, ev["t_fwd"])
                    elif info["action"] == "CreateHealthCheck":
                        ev["hc"]["id"] = self.sim.created(ev["hc"].get("ref"), rbody)
                    elif info["action"] == "DeleteHealthCheck":
                        self.sim.check_deleted(ev["hc"]["id"])
                elif info["action"] == "CreateHealthCheck" and 200 <= resp.status < 300:
                    m = re.search(rb"<Id>([^<]*)</Id>", rbody)
                    ev["hc"]["id"] = m.group(1).decode() if m else None
                if fault == "reset_after":
                    ev["status"] = None
                    self.record(ev)
                    _rst(sock)
                    return
                time.sleep(delay)
                ev["status"] = resp.status
                ev["t_resp"] = time.time()
                self.record(ev)
                _send(sock, resp.status, resp.reason, rbody, rheaders)
        except OSError:
            return
        finally:
            with self.conns_lock:
                self.conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass


def _list_sets(port, path, fqdn):
    """The record sets of `fqdn` moto has, as (type, SetIdentifier or None), read with a
    ListResourceRecordSets of its own."""
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    zone = parts[parts.index("hostedzone") + 1]
    base = "/2013-04-01/hostedzone/%s/rrset" % zone
    query = urllib.parse.urlencode({"name": fqdn + ".", "maxitems": "300"})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        # moto routes a request to a service by the credential scope of its Authorization header.
        conn.request("GET", base + "?" + query, headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=soak/20200101/us-east-1/route53/"
                             "aws4_request, SignedHeaders=host, Signature=0"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    root = ET.fromstring(body)
    out = []
    for rrset in root.iter():
        if _strip(rrset.tag) != "ResourceRecordSet":
            continue
        name = type_ = set_id = None
        for el in rrset:
            if _strip(el.tag) == "Name":
                name = model.norm_fqdn(el.text or "")
            elif _strip(el.tag) == "Type":
                type_ = el.text
            elif _strip(el.tag) == "SetIdentifier":
                set_id = model.norm_ip(el.text or "") or el.text
        if name != fqdn:
            break
        out.append((type_, set_id))
    return out


def _read_request(rfile):
    line = rfile.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = rfile.readline(65537)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return None
    method, path = parts[0], parts[1]
    headers = []
    while True:
        h = rfile.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    lower = {k.lower(): v for k, v in headers}
    body = b""
    if lower.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(rfile.read(size))
            rfile.readline()
        body = b"".join(chunks)
    elif "content-length" in lower:
        body = rfile.read(int(lower["content-length"]))
    return method, path, headers, body


def _send(sock, status, reason, body, headers=None):
    out = ["HTTP/1.1 %d %s" % (status, reason)]
    names = set()
    for k, v in headers or []:
        out.append("%s: %s" % (k, v))
        names.add(k.lower())
    if "content-type" not in names:
        out.append("Content-Type: text/xml")
    out.append("Content-Length: %d" % len(body))
    sock.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)


class Relay:
    """A TCP relay to one etcd member. `stall()` black-holes it (connections stay open, no byte
    moves, new ones are accepted and held), `cut()` resets every connection and refuses new ones,
    `heal()` restores it."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.mode = "ok"
        self.lock = threading.Lock()
        self.moving = threading.Event()
        self.moving.set()
        self.socks = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="relay-%d" % self.port).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "cut":
                _rst(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client):
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            up.settimeout(None)
        except OSError:
            _rst(client)
            return
        with self.lock:
            self.socks.update((client, up))
        for a, b in ((client, up), (up, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.moving.wait()
                if self.mode == "cut":
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.socks.discard(src)
                self.socks.discard(dst)
            _rst(src)
            _rst(dst)

    def stall(self):
        self.mode = "stall"
        self.moving.clear()

    def cut(self):
        self.mode = "cut"
        with self.lock:
            socks = list(self.socks)
            self.socks.clear()
        for s in socks:
            _rst(s)
        self.moving.set()

    def heal(self):
        self.mode = "ok"
        self.moving.set()

    def close(self):
        self.closed = True
        self.heal()
        try:
            self.listener.close()
        except OSError:
            pass
        self.cut()
