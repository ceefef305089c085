"""What etcd wants, as the soak's checker computes it on its own (README "Keys" and "single and
multiple"), and the normal forms members are compared in.

Load balancers are named as `lbmanager status` names them:
  elb/REGION/NAME             members: instance ids
  elbv2/REGION/TARGET_GROUP   members: "ID:PORT" (the group's port when the key has none)
  route53/ZONE/FQDN           members: IP addresses (IPv4 -> the A record set, IPv6 -> AAAA)
"""
import ipaddress

PREFIX = "/lbManager"


def norm_ip(text):
    """An IP address in Python's canonical form, or None."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def norm_fqdn(name):
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def norm_target(text, default_port):
    """An ELBv2 key's TARGET ("i-0abc", "i-0abc:8080", "10.0.0.5:80", "[2001:db8::1]:80") as
    "ID:PORT" (IPv6 ids in brackets)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else str(default_port)
        return "[%s]:%s" % (norm_ip(host) or host, port)
    if text.count(":") > 1:  # a bare IPv6 address takes no port
        return "[%s]:%s" % (norm_ip(text) or text, default_port)
    host, sep, port = text.partition(":")
    if host and not host.startswith("i-"):
        host = norm_ip(host) or host
    return "%s:%s" % (host, port if sep else default_port)


def parse_key(key, tg_ports=None, prefix=PREFIX):
    """A member key as (lb, class, member), or None for anything else (reserved `_` keys,
    lbmanager's own records, malformed keys)."""
    if not key.startswith(prefix + "/"):
        return None
    parts = key[len(prefix) + 1:].split("/")
    if not parts or parts[0].startswith("_"):
        return None
    kind = parts[0]
    if kind == "elb" and len(parts) == 5:
        _, region, name, cls, member = parts
        lb = "elb/%s/%s" % (region, name)
    elif kind == "elbv2" and len(parts) == 5:
        _, region, name, cls, target = parts
        lb = "elbv2/%s/%s" % (region, name)
        member = norm_target(target, (tg_ports or {}).get(lb, 80))
    elif kind == "route53" and len(parts) == 6:
        _, _region, zone, fqdn, cls, ip = parts
        lb = "route53/%s/%s" % (zone, norm_fqdn(fqdn))
        member = norm_ip(ip)
        if member is None:
            return None
    else:
        return None
    if cls not in ("single", "multiple"):
        return None
    return lb, cls, member


def resolve(entries):
    """The members of one load balancer from its keys: `entries` is an iterable of
    (class, member, mod_revision). S = the single key of the highest revision; no S -> every
    multiple key; multiple keys newer than S -> those; else S alone."""
    entries = list(entries)
    singles = [e for e in entries if e[0] == "single"]
    multiples = [e for e in entries if e[0] == "multiple"]
    if not singles:
        return frozenset(m for _, m, _ in multiples)
    s = max(singles, key=lambda e: e[2])
    newer = [m for _, m, rev in multiples if rev > s[2]]
    if newer:
        return frozenset(newer)
    return frozenset([s[1]])


def desired_from_keys(keys, tg_ports=None, prefix=PREFIX):
    """{key: mod_revision} -> {lb: frozenset(members)} (load balancers without keys left out)."""
    per_lb = {}
    for key, rev in keys.items():
        parsed = parse_key(key, tg_ports, prefix)
        if parsed is None:
            continue
        lb, cls, member = parsed
        per_lb.setdefault(lb, []).append((cls, member, rev))
    return {lb: resolve(entries) for lb, entries in per_lb.items()}


def ip_type(ip):
    return "AAAA" if ":" in ip else "A"


def expected_aws(lb, desired, foreign):
    """What AWS should hold for `lb` at quiescence with --ownership shared: lbmanager's members
    (desired) plus the others' (foreign). For Route53 a {type: set(values)} dict (types with no
    value left out), else a set."""
    if lb.startswith("route53/"):
        out = {}
        for ip in set(desired) | set(foreign):
            out.setdefault(ip_type(ip), set()).add(ip)
        return out
    return set(desired) | set(foreign)
