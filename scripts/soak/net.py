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
A baseline latency (0.1 s) is added to every answer the same way.

One correction of moto (5.2): its CREATE duplicate check refuses a CREATE identical to one in the
zone's change journal whenever *any* record set sorts after that name (it lists from the name on,
not the name), so re-creating a record set that was deleted fails forever with "already exists"
while nothing is there. The proxy does what Route53 does instead: a batch whose CREATE names a
record set that exists is refused (400 InvalidChangeBatch, not forwarded); otherwise its CREATEs
are forwarded as UPSERTs (the same length: Content-Length holds). The event says so (`moto_fix`).

Every request is recorded as one `aws_call` event: t (received), slot, service, action, mutating,
the load balancer and members (ELB/ELBv2) or changes (Route53, per name and type), the fault, the
forward and upstream-answer times, moto's status and the status returned (None: reset).
"""
import http.client
import random
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
        self.cut = set()  # slots cut from AWS

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
            self.throttle = self.err5xx = self.reset = self.slow = 0.0
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
        elif method == "GET" and len(parts) == 3 and parts[1] == "change":
            info["action"] = "GetChange"
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
        out.append({"lb": "route53/%s/%s" % (zone, model.norm_fqdn(name or "")), "action": action,
                    "type": rtype, "ttl": ttl, "values": sorted(values)})
    return out


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

    def __init__(self, slot, upstream_port, faults, record, tg_arns, tg_ports):
        self.slot = slot
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

    def _existing(self, path, changes):
        """The first (name, type) a batch's CREATE names that exists; None when none does."""
        for c in changes:
            if c["action"] != "CREATE":
                continue
            fqdn = c["lb"].split("/", 2)[2]
            if _list_rrset(self.upstream_port, path, fqdn, c["type"]):
                return fqdn, c["type"]
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
                if route53 and info["action"] == "ChangeResourceRecordSets" and any(
                        c["action"] == "CREATE" for c in info.get("changes", [])):
                    exists = self._existing(path, info["changes"])
                    if exists is None:
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
                            "<Message>Tried to create resource record set [name='%s.', type='%s'] but it "
                            "already exists</Message></Error><RequestId>soak-moto-fix</RequestId>"
                            "</ErrorResponse>" % exists).encode())
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


def _list_rrset(port, path, fqdn, rtype):
    """Whether moto has the record set (fqdn, rtype), read with a ListResourceRecordSets of its own."""
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    zone = parts[parts.index("hostedzone") + 1]
    base = "/2013-04-01/hostedzone/%s/rrset" % zone
    query = urllib.parse.urlencode({"name": fqdn + ".", "type": rtype, "maxitems": "1"})
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
    for rrset in root.iter():
        if _strip(rrset.tag) != "ResourceRecordSet":
            continue
        name = type_ = None
        for el in rrset:
            if _strip(el.tag) == "Name":
                name = model.norm_fqdn(el.text or "")
            elif _strip(el.tag) == "Type":
                type_ = el.text
        return name == fqdn and type_ == rtype
    return False


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
