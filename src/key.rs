//! The key grammar: what an etcd key under the prefix means.
//!
//! ```text
//! PREFIX/elb/REGION/LB_NAME/CLASS/INSTANCE_ID
//! PREFIX/route53/REGION/HOSTED_ZONE/FQDN/CLASS/IP
//! PREFIX/elbv2/REGION/TARGET_GROUP/CLASS/TARGET     TARGET: i-0abc[:PORT], IPV4[:PORT], IPV6, [IPV6]:PORT
//! ```
//!
//! Parsing is pure and total: every key either is a member ([`MemberKey`]), is not a member at all
//! (a reserved `_name` segment right under the prefix, for lbmanager's own bookkeeping), or is
//! malformed ([`KeyError`], which says which part is wrong). The daemon warns once about a
//! malformed key and ignores it; nothing else depends on it.
//!
//! Every part is validated and normalised here (FQDNs lower-cased without the trailing dot, IPs in
//! their canonical form), so that two spellings of one member are the same member everywhere else.

use std::fmt;
use std::net::IpAddr;

use compact_str::CompactString;

/// Which of a load balancer's two key directories a member key lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// The newest `single` key is the load balancer's only member.
    Single,
    /// All `multiple` keys are members (unless a newer `single` key overrides them).
    Multiple,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Single => "single",
            Class::Multiple => "multiple",
        })
    }
}

/// One load balancer that lbmanager keeps in step: a Classic ELB, or one FQDN's A/AAAA record sets.
///
/// A Route53 load balancer is named by zone and FQDN only: Route53 is a global service, so the
/// REGION part of its keys picks nothing and two regions naming one FQDN are the same records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LbId {
    Elb {
        region: String,
        name: String,
    },
    Route53 {
        zone: String,
        fqdn: String,
    },
    /// An ELBv2 (ALB/NLB) target group.
    TargetGroup {
        region: String,
        name: String,
    },
}

impl LbId {
    /// The hosted zone of a Route53 load balancer.
    pub fn zone(&self) -> Option<&str> {
        match self {
            LbId::Route53 { zone, .. } => Some(zone),
            LbId::Elb { .. } | LbId::TargetGroup { .. } => None,
        }
    }
}

impl fmt::Display for LbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbId::Elb { region, name } => write!(f, "elb/{region}/{name}"),
            LbId::Route53 { zone, fqdn } => write!(f, "route53/{zone}/{fqdn}"),
            LbId::TargetGroup { region, name } => write!(f, "elbv2/{region}/{name}"),
        }
    }
}

/// The `KIND/…` path of a load balancer, as [`LbId`]'s `Display` writes it (`elb/REGION/NAME`,
/// `elbv2/REGION/NAME`, `route53/ZONE/FQDN`) in lbmanager's keys; checked by the key grammar.
impl std::str::FromStr for LbId {
    type Err = ();

    fn from_str(path: &str) -> Result<Self, ()> {
        let parts: Vec<&str> = path.split('/').collect();
        let lb = match parts[..] {
            ["elb", region, name] => LbId::Elb {
                region: region_of(region).map_err(drop)?,
                name: elb_name(name).map_err(drop)?,
            },
            ["elbv2", region, name] => LbId::TargetGroup {
                region: region_of(region).map_err(drop)?,
                name: elb_name(name).map_err(drop)?,
            },
            ["route53", zone, fqdn] => LbId::Route53 {
                zone: hosted_zone(zone).map_err(drop)?,
                fqdn: normalise_fqdn(fqdn).map_err(drop)?,
            },
            _ => return Err(()),
        };
        Ok(lb)
    }
}

/// A member of a load balancer: an EC2 instance (ELB), an IP address (Route53) or a target of a
/// target group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// Inline (an id is 10 or 19 bytes): no allocation per member.
    Instance(CompactString),
    Ip(IpAddr),
    /// Boxed: the rarer kind, and the largest; unboxed it made every member of a million-key
    /// tree 16 bytes bigger.
    Target(Box<Target>),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Instance(id) => f.write_str(id),
            Member::Ip(ip) => write!(f, "{ip}"),
            Member::Target(t) => write!(f, "{t}"),
        }
    }
}

/// What a target is: an instance or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetId {
    Instance(String),
    Ip(IpAddr),
}

/// A target-group target; without a port, the target group's own port applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub id: TargetId,
    pub port: Option<u16>,
}

impl Target {
    /// An instance with no port: a Classic ELB member, or an instance target on its group's port.
    pub fn instance(id: impl Into<String>) -> Target {
        Target {
            id: TargetId::Instance(id.into()),
            port: None,
        }
    }

    /// The instance id or IP address, without the port (as AWS names a target in its errors).
    pub fn id_string(&self) -> String {
        match &self.id {
            TargetId::Instance(id) => id.clone(),
            TargetId::Ip(ip) => ip.to_string(),
        }
    }

    /// The same target with `port` when it has none of its own.
    pub fn or_port(&self, port: Option<u16>) -> Target {
        Target {
            id: self.id.clone(),
            port: self.port.or(port),
        }
    }
}

/// `i-0abc`, `i-0abc:8080`, `10.0.0.5:8080`, `2001:db8::1`, `[2001:db8::1]:8080`: the key
/// grammar's own spelling, which [`parse_target`] reads back.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.id, self.port) {
            (TargetId::Instance(id), None) => f.write_str(id),
            (TargetId::Instance(id), Some(p)) => write!(f, "{id}:{p}"),
            (TargetId::Ip(ip), None) => write!(f, "{ip}"),
            (TargetId::Ip(IpAddr::V4(ip)), Some(p)) => write!(f, "{ip}:{p}"),
            (TargetId::Ip(IpAddr::V6(ip)), Some(p)) => write!(f, "[{ip}]:{p}"),
        }
    }
}

/// Parses a target: an instance id or an IP address, each with an optional port (an IPv6
/// address takes a port only in brackets, since `2001:db8::1:80` is itself an address).
pub fn parse_target(s: &str) -> Result<Target, KeyError> {
    let bad = || KeyError::Target(s.to_string());
    let port_of = |p: &str| -> Result<u16, KeyError> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(KeyError::Port(p.to_string())),
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let port = match tail {
            "" => None,
            t => Some(port_of(t.strip_prefix(':').ok_or_else(bad)?)?),
        };
        return Ok(Target {
            id: TargetId::Ip(IpAddr::V6(ip)),
            port,
        });
    }
    if s.starts_with("i-") {
        let (id, port) = match s.split_once(':') {
            Some((id, p)) => (id, Some(port_of(p)?)),
            None => (s, None),
        };
        let id = instance_id(id).map_err(|_| bad())?;
        return Ok(Target {
            id: TargetId::Instance(id.into()),
            port,
        });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Target {
            id: TargetId::Ip(ip),
            port: None,
        });
    }
    let (addr, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    Ok(Target {
        id: TargetId::Ip(IpAddr::V4(ip)),
        port: Some(port_of(p)?),
    })
}

/// A parsed member key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberKey {
    pub lb: LbId,
    pub class: Class,
    pub member: Member,
}

/// The longest key lbmanager reads as a member key, in bytes. The longest valid one is a Route53
/// key of a 253-character FQDN and an IPv6 address, about 360 bytes past the prefix; a longer key
/// is refused before its parts are looked at (and shown only by its beginning), so that what a
/// warning and the memory of warned keys hold stays small.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key under the prefix is not a valid member key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is {0} bytes long, longer than lbmanager reads (1024)")]
    TooLong(usize),
    #[error("unknown kind {0:?} (expected elb, elbv2 or route53)")]
    UnknownKind(String),
    #[error("wrong number of parts for {kind}: expected {expected}")]
    Shape {
        kind: &'static str,
        expected: &'static str,
    },
    #[error("invalid region {0:?}")]
    Region(String),
    #[error("invalid ELB name {0:?} (1-32 letters, digits or hyphens, no hyphen at either end)")]
    ElbName(String),
    #[error("invalid class {0:?} (expected single or multiple)")]
    Class(String),
    #[error("invalid instance id {0:?} (expected i- and 8 or 17 hex digits)")]
    InstanceId(String),
    #[error("invalid hosted zone id {0:?} (expected 1-32 upper-case letters and digits)")]
    HostedZone(String),
    #[error("invalid FQDN {0:?}")]
    Fqdn(String),
    #[error("invalid IP address {0:?}")]
    Ip(String),
    #[error("invalid target {0:?} (expected i-… or an IP address, with an optional :PORT; IPv6 with a port in brackets)")]
    Target(String),
    #[error("invalid port {0:?} (expected 1-65535)")]
    Port(String),
    #[error("invalid target group name {0:?} (1-32 letters, digits or hyphens, no hyphen at either end)")]
    TargetGroup(String),
}

/// Parses `key`, which lies under `prefix` (given without a trailing slash).
///
/// Returns `Ok(None)` for keys that are not member keys by design: anything outside `prefix/`,
/// and anything whose first part under the prefix starts with `_` (reserved for lbmanager).
pub fn parse(prefix: &str, key: &str) -> Result<Option<MemberKey>, KeyError> {
    let Some(rest) = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Ok(None);
    };
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match parts[0] {
        reserved if reserved.starts_with('_') => Ok(None),
        "elb" => {
            let [_, region, name, class, instance] = parts[..] else {
                return Err(KeyError::Shape {
                    kind: "elb",
                    expected: "elb/REGION/LB_NAME/CLASS/INSTANCE_ID",
                });
            };
            Ok(Some(MemberKey {
                lb: LbId::Elb {
                    region: region_of(region)?,
                    name: elb_name(name)?,
                },
                class: class_of(class)?,
                member: Member::Instance(instance_id(instance)?),
            }))
        }
        "route53" => {
            let [_, region, zone, fqdn, class, ip] = parts[..] else {
                return Err(KeyError::Shape {
                    kind: "route53",
                    expected: "route53/REGION/HOSTED_ZONE/FQDN/CLASS/IP",
                });
            };
            region_of(region)?;
            Ok(Some(MemberKey {
                lb: LbId::Route53 {
                    zone: hosted_zone(zone)?,
                    fqdn: normalise_fqdn(fqdn)?,
                },
                class: class_of(class)?,
                member: Member::Ip(ip.parse().map_err(|_| KeyError::Ip(ip.to_string()))?),
            }))
        }
        "elbv2" => {
            let [_, region, name, class, target] = parts[..] else {
                return Err(KeyError::Shape {
                    kind: "elbv2",
                    expected: "elbv2/REGION/TARGET_GROUP/CLASS/TARGET",
                });
            };
            Ok(Some(MemberKey {
                lb: LbId::TargetGroup {
                    region: region_of(region)?,
                    name: elb_name(name).map_err(|_| KeyError::TargetGroup(name.to_string()))?,
                },
                class: class_of(class)?,
                member: Member::Target(Box::new(parse_target(target)?)),
            }))
        }
        other => Err(KeyError::UnknownKind(other.to_string())),
    }
}

/// The member a key of `lb` names (its last part), for a key [`parse`] accepted: the desired
/// state keeps keys, not members, and reads the member back when it needs it.
pub fn member_of(lb: &LbId, key: &str) -> Option<Member> {
    let last = key.rsplit('/').next()?;
    match lb {
        LbId::Elb { .. } => instance_id(last).ok().map(Member::Instance),
        LbId::Route53 { .. } => last.parse().ok().map(Member::Ip),
        LbId::TargetGroup { .. } => parse_target(last).ok().map(|t| Member::Target(Box::new(t))),
    }
}

/// `us-east-1`, `ap-southeast-2`, `us-gov-west-1`, `cn-north-1`: lower-case words joined by
/// hyphens, the first two letters long, the last a number.
pub(crate) fn region_of(s: &str) -> Result<String, KeyError> {
    let bad = || KeyError::Region(s.to_string());
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() < 3 || s.len() > 32 {
        return Err(bad());
    }
    let (last, words) = parts.split_last().ok_or_else(bad)?;
    let word_ok = |w: &&str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase());
    if words[0].len() != 2
        || !words.iter().all(word_ok)
        || last.is_empty()
        || !last.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// Classic ELB names: 1-32 alphanumerics and hyphens, not starting or ending with a hyphen.
pub(crate) fn elb_name(s: &str) -> Result<String, KeyError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then(|| s.to_string())
        .ok_or_else(|| KeyError::ElbName(s.to_string()))
}

fn class_of(s: &str) -> Result<Class, KeyError> {
    match s {
        "single" => Ok(Class::Single),
        "multiple" => Ok(Class::Multiple),
        _ => Err(KeyError::Class(s.to_string())),
    }
}

/// `i-` and 8 (old style) or 17 (current) lower-case hex digits.
fn instance_id(s: &str) -> Result<CompactString, KeyError> {
    let ok = s.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    ok.then(|| CompactString::from(s))
        .ok_or_else(|| KeyError::InstanceId(s.to_string()))
}

/// Route53 hosted zone ids are up to 32 upper-case letters and digits (`Z1RWWTK7Y8UDDQ`).
pub(crate) fn hosted_zone(s: &str) -> Result<String, KeyError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    ok.then(|| s.to_string())
        .ok_or_else(|| KeyError::HostedZone(s.to_string()))
}

/// Normalises a DNS name: lower case, no trailing dot. At least two labels of 1-63 letters,
/// digits, hyphens or underscores (no hyphen at either end); `*` allowed as the first label;
/// at most 253 characters.
pub fn normalise_fqdn(s: &str) -> Result<String, KeyError> {
    let bad = || KeyError::Fqdn(s.to_string());
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(bad());
    }
    for (i, label) in labels.iter().enumerate() {
        let wildcard = i == 0 && *label == "*";
        let ok = wildcard
            || (!label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-'));
        if !ok {
            return Err(bad());
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/lbManager";

    #[test]
    fn a_key_past_the_bound_is_refused_by_its_length() {
        let long = format!("{P}/elb/us-east-1/web/multiple/i-{}", "0".repeat(2000));
        assert_eq!(parse(P, &long), Err(KeyError::TooLong(long.len())));
        let fqdn = format!("{}.example.com", vec!["a".repeat(60); 3].join("."));
        let ok_key = format!("{P}/route53/us-east-1/Z123/{fqdn}/multiple/2001:db8::1");
        assert!(ok_key.len() < MAX_KEY_BYTES);
        assert!(parse(P, &ok_key).is_ok());
        assert_eq!(
            KeyError::TooLong(5000).to_string(),
            format!("the key is 5000 bytes long, longer than lbmanager reads ({MAX_KEY_BYTES})")
        );
    }

    fn ok(key: &str) -> MemberKey {
        parse(P, key).unwrap().unwrap()
    }

    fn err(key: &str) -> KeyError {
        parse(P, key).unwrap_err()
    }

    #[test]
    fn elb_member() {
        let k = ok("/lbManager/elb/us-east-1/webLB/multiple/i-0123456789abcdef0");
        assert_eq!(
            k.lb,
            LbId::Elb {
                region: "us-east-1".into(),
                name: "webLB".into()
            }
        );
        assert_eq!(k.class, Class::Multiple);
        assert_eq!(k.member, Member::Instance("i-0123456789abcdef0".into()));
        assert_eq!(
            ok("/lbManager/elb/ap-southeast-2/a/single/i-0000abcd").class,
            Class::Single
        );
        ok("/lbManager/elb/us-gov-west-1/web-lb-2/single/i-0000abcd");
    }

    #[test]
    fn route53_member_v4_and_v6_normalised() {
        let k = ok("/lbManager/route53/us-east-1/Z12345678/WWW.Example.COM./multiple/1.1.1.1");
        assert_eq!(
            k.lb,
            LbId::Route53 {
                zone: "Z12345678".into(),
                fqdn: "www.example.com".into()
            }
        );
        assert_eq!(k.member, Member::Ip("1.1.1.1".parse().unwrap()));
        let k6 = ok("/lbManager/route53/eu-west-1/Z12345678/www.example.com/single/2001:DB8:0::1");
        assert_eq!(k6.member.to_string(), "2001:db8::1");
        // The region does not name the records: both keys are the same load balancer.
        assert_eq!(k.lb, k6.lb);
    }

    #[test]
    fn not_members() {
        for key in [
            "/lbManager/_state/managed/elb/us-east-1/x",
            "/lbManager/_leader",
            "/lbManagerX/elb/us-east-1/webLB/multiple/i-0123456789abcdef0",
            "/other/elb/us-east-1/webLB/multiple/i-0123456789abcdef0",
            "/lbManager",
        ] {
            assert_eq!(parse(P, key), Ok(None), "{key}");
        }
    }

    #[test]
    fn bad_parts_name_the_part() {
        assert!(matches!(
            err("/lbManager/foo/us-east-1/a/multiple/i-00000000"),
            KeyError::UnknownKind(_)
        ));
        assert!(matches!(err("/lbManager/"), KeyError::UnknownKind(_)));
        assert!(matches!(
            err("/lbManager/elb/us-east-1/webLB/multiple"),
            KeyError::Shape { .. }
        ));
        assert!(matches!(
            err("/lbManager/elb/us-east-1/webLB/multiple/i-00000000/extra"),
            KeyError::Shape { .. }
        ));
        assert!(matches!(
            err("/lbManager/route53/us-east-1/Z1/www.example.com/multiple"),
            KeyError::Shape { .. }
        ));
        for region in [
            "useast1",
            "us-east",
            "USA-east-1",
            "u-east-1",
            "us--1",
            "us-east-x",
            "",
        ] {
            assert_eq!(
                err(&format!("/lbManager/elb/{region}/a/multiple/i-00000000")),
                KeyError::Region(region.into())
            );
        }
        for name in ["", "-a", "a-", "a_b", &"a".repeat(33)] {
            assert_eq!(
                err(&format!(
                    "/lbManager/elb/us-east-1/{name}/multiple/i-00000000"
                )),
                KeyError::ElbName(name.into())
            );
        }
        assert_eq!(
            err("/lbManager/elb/us-east-1/a/Multiple/i-00000000"),
            KeyError::Class("Multiple".into())
        );
        for id in [
            "i-0000000",
            "i-000000000",
            "i-0123456789abcdef",
            "i-0123456789ABCDEF0",
            "i-0000000g",
            "0000abcd",
            "",
        ] {
            assert_eq!(
                err(&format!("/lbManager/elb/us-east-1/a/single/{id}")),
                KeyError::InstanceId(id.into())
            );
        }
        for zone in ["", "z123", "Z12-3", &"Z".repeat(33)] {
            assert_eq!(
                err(&format!(
                    "/lbManager/route53/us-east-1/{zone}/a.example.com/single/1.1.1.1"
                )),
                KeyError::HostedZone(zone.into())
            );
        }
        for fqdn in [
            "localhost",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            ".",
            "a.*.com",
        ] {
            assert_eq!(
                err(&format!(
                    "/lbManager/route53/us-east-1/Z1/{fqdn}/single/1.1.1.1"
                )),
                KeyError::Fqdn(fqdn.into())
            );
        }
        for ip in ["1.1.1", "1.1.1.256", "::g", "example.com", ""] {
            assert_eq!(
                err(&format!(
                    "/lbManager/route53/us-east-1/Z1/a.example.com/single/{ip}"
                )),
                KeyError::Ip(ip.into())
            );
        }
    }

    #[test]
    fn fqdn_rules() {
        assert_eq!(normalise_fqdn("*.Example.com.").unwrap(), "*.example.com");
        assert_eq!(
            normalise_fqdn("_dmarc.example.com").unwrap(),
            "_dmarc.example.com"
        );
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(normalise_fqdn(&long_label).is_err());
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(long_name.len() > 253);
        assert!(normalise_fqdn(&long_name).is_err());
    }

    #[test]
    fn target_grammar() {
        let t = |s: &str| parse_target(s).unwrap();
        let inst = |id: &str, port| Target {
            id: TargetId::Instance(id.into()),
            port,
        };
        let ip = |a: &str, port| Target {
            id: TargetId::Ip(a.parse().unwrap()),
            port,
        };
        assert_eq!(t("i-0abcdef0123456789"), inst("i-0abcdef0123456789", None));
        assert_eq!(
            t("i-0abcdef0123456789:8080"),
            inst("i-0abcdef0123456789", Some(8080))
        );
        assert_eq!(t("10.0.0.5"), ip("10.0.0.5", None));
        assert_eq!(t("10.0.0.5:8080"), ip("10.0.0.5", Some(8080)));
        assert_eq!(t("2001:db8::1"), ip("2001:db8::1", None));
        assert_eq!(t("[2001:db8::1]:8080"), ip("2001:db8::1", Some(8080)));
        assert_eq!(t("[2001:DB8::1]"), ip("2001:db8::1", None));
        // Display is the key grammar's spelling and reads back the same.
        for s in [
            "i-0abcdef0123456789:8080",
            "10.0.0.5:80",
            "[2001:db8::1]:443",
            "2001:db8::1",
        ] {
            assert_eq!(t(s).to_string(), s);
            assert_eq!(parse_target(&t(s).to_string()), Ok(t(s)));
        }
        for bad in [
            "i-0abc:80",
            "i-0abcdef0123456789:",
            "10.0.0.5:",
            "host:80",
            "[2001:db8::1]80",
            "[10.0.0.1]:80",
            "",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        for port in ["0", "65536", "-1", "+80", "80a"] {
            assert_eq!(
                parse_target(&format!("10.0.0.5:{port}")),
                Err(KeyError::Port(port.into())),
                "{port}"
            );
        }
        assert_eq!(
            parse_target("i-0abcdef0123456789:99999"),
            Err(KeyError::Port("99999".into()))
        );
    }

    #[test]
    fn elbv2_member_keys() {
        let k = ok("/lbManager/elbv2/us-east-1/web-tg/multiple/i-0abcdef0123456789:8080");
        assert_eq!(
            k.lb,
            LbId::TargetGroup {
                region: "us-east-1".into(),
                name: "web-tg".into()
            }
        );
        assert_eq!(k.lb.to_string(), "elbv2/us-east-1/web-tg");
        assert_eq!(k.member.to_string(), "i-0abcdef0123456789:8080");
        assert!(matches!(
            err("/lbManager/elbv2/us-east-1/-tg/multiple/10.0.0.1"),
            KeyError::TargetGroup(_)
        ));
        assert!(matches!(
            err("/lbManager/elbv2/us-east-1/tg/multiple/10.0.0.1:0"),
            KeyError::Port(_)
        ));
        assert!(matches!(
            err("/lbManager/elbv2/us-east-1/tg/multiple"),
            KeyError::Shape { .. }
        ));
    }

    #[test]
    fn custom_prefix() {
        assert!(parse("/lb", "/lb/elb/us-east-1/a/single/i-00000000")
            .unwrap()
            .is_some());
        assert_eq!(
            parse("/lb", "/lbManager/elb/us-east-1/a/single/i-00000000"),
            Ok(None)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(100_000))]
        /// Any string at all: parse never panics.
        #[test]
        fn never_panics_on_any_string(s in "\\PC*") {
            let _ = parse(P, &s);
            let _ = parse(P, &format!("{P}/{s}"));
        }

        /// Keys that look almost right: parse never panics, and a valid answer re-parses the same.
        #[test]
        fn never_panics_on_near_keys(
            kind in "(elb|elbv2|route53|x|_s)",
            parts in proptest::collection::vec("[a-zA-Z0-9:.*_\\[\\]-]{0,20}", 0..7),
        ) {
            let key = format!("{P}/{kind}/{}", parts.join("/"));
            if let Ok(Some(k)) = parse(P, &key) {
                proptest::prop_assert!(!k.member.to_string().is_empty());
            }
        }
    }
}
