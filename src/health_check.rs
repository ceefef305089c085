//! `--route53-health-check SCOPE=PROTOCOL:PORT[/PATH]`: which FQDNs answer only with healthy
//! values, and how lbmanager knows its own Route53 health checks again.
//!
//! Route53 leaves an unhealthy value out of its answers only when the value is a record set of its
//! own with a health check: an FQDN in a rule's scope is published as one multivalue answer record
//! set per value (`SetIdentifier` = the value), each with a health check of that IP. Pure: the
//! rules, the check's identity, and the `CallerReference` that marks a check as lbmanager's.

use std::fmt;
use std::net::IpAddr;

/// How Route53 checks a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Https,
    Tcp,
}

impl Protocol {
    /// Route53's `Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Tcp => "TCP",
        }
    }
}

/// What a check asks of each value: the protocol, the port and (HTTP, HTTPS) the path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckSpec {
    pub protocol: Protocol,
    pub port: u16,
    /// HTTP and HTTPS only; `/` when the rule names none (Route53's own default).
    pub path: Option<String>,
}

impl fmt::Display for CheckSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol.as_str(), self.port)?;
        if let Some(path) = &self.path {
            f.write_str(path)?;
        }
        Ok(())
    }
}

/// One `--route53-health-check` rule: `route53/ZONE/FQDN`, where either part may be `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthRule {
    pub zone: String,
    pub fqdn: String,
    pub spec: CheckSpec,
}

/// Route53's longest `ResourcePath`.
const MAX_PATH: usize = 255;

/// Parses `route53/ZONE/FQDN=PROTOCOL:PORT[/PATH]`.
pub fn parse_rule(s: &str) -> Result<HealthRule, String> {
    let (scope, check) = s.split_once('=').ok_or(
        "expected SCOPE=PROTOCOL:PORT[/PATH], like route53/Z123/www.example.com=HTTP:80/health",
    )?;
    let parts: Vec<&str> = scope.split('/').collect();
    let ["route53", zone, fqdn] = parts[..] else {
        return Err(format!(
            "bad scope {scope:?}: expected route53/ZONE_ID/FQDN (`*` for a whole part)"
        ));
    };
    let zone = match zone {
        "*" => "*".to_string(),
        z => crate::key::hosted_zone(z).map_err(|e| format!("bad scope: {e}"))?,
    };
    let fqdn = match fqdn {
        "*" => "*".to_string(),
        f => crate::key::normalise_fqdn(f).map_err(|e| format!("bad scope: {e}"))?,
    };
    let (protocol, rest) = check
        .split_once(':')
        .ok_or_else(|| format!("bad check {check:?}: expected PROTOCOL:PORT[/PATH]"))?;
    let protocol = match protocol.to_ascii_uppercase().as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        "TCP" => Protocol::Tcp,
        p => return Err(format!("bad protocol {p:?}: HTTP, HTTPS or TCP")),
    };
    let (port, path) = match rest.find('/') {
        Some(at) => (&rest[..at], Some(&rest[at..])),
        None => (rest, None),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("bad port {port:?}: 1 to 65535"))?;
    let path = match (protocol, path) {
        (Protocol::Tcp, Some(_)) => return Err("a TCP check has no path".into()),
        (Protocol::Tcp, None) => None,
        (_, None) => Some("/".to_string()),
        (_, Some(p)) if p.len() > MAX_PATH || p.chars().any(|c| c.is_control() || c == ' ') => {
            return Err(format!(
                "bad path: at most {MAX_PATH} characters, no spaces or control characters"
            ))
        }
        (_, Some(p)) => Some(p.to_string()),
    };
    Ok(HealthRule {
        zone,
        fqdn,
        spec: CheckSpec {
            protocol,
            port,
            path,
        },
    })
}

/// The check of the first rule whose scope holds `fqdn` of `zone` (None: a simple record set).
pub fn rule_for<'a>(rules: &'a [HealthRule], zone: &str, fqdn: &str) -> Option<&'a CheckSpec> {
    let part = |pattern: &str, value: &str| pattern == "*" || pattern == value;
    rules
        .iter()
        .find(|r| part(&r.zone, zone) && part(&r.fqdn, fqdn))
        .map(|r| &r.spec)
}

/// A health check as Route53 lists it: one of lbmanager's (see [`Reference`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub id: String,
    pub reference: String,
    /// The value it checks, and the FQDN it was made for (sent as the `Host` header and SNI name).
    pub ip: IpAddr,
    pub fqdn: String,
    pub spec: CheckSpec,
}

impl HealthCheck {
    /// Whether it is the check `spec` asks for of `ip` under `fqdn`.
    pub fn is(&self, fqdn: &str, ip: &IpAddr, spec: &CheckSpec) -> bool {
        self.fqdn == fqdn && self.ip == *ip && self.spec == *spec
    }
}

/// The `CallerReference` of lbmanager's checks: `lbm-INSTALLATION-ZONE-NONCE`. The installation
/// (a hash of the etcd prefix) and the zone say whose check it is: a zone's actor takes care of
/// its own zone's checks only, and never of another lbmanager's (or another tool's). The nonce
/// makes each creation's reference new: Route53 refuses a reference once used by a check since
/// deleted (`HealthCheckAlreadyExists`), so one derived from the scope and the IP alone could
/// never make that value's check again. The same reference is kept for the retries of one
/// creation (an answer lost: Route53 returns the check it made), and a check made before a crash
/// is found again by listing (its zone in the reference, its FQDN, IP and spec in its settings)
/// before anything is created: no second check either way. At most 4 + 8 + 1 + 32 + 1 + 13 = 59
/// of Route53's 64 characters.
pub struct Reference;

impl Reference {
    /// `lbm-INSTALLATION-ZONE-`: the start of every reference of `zone`'s checks.
    pub fn zone_prefix(installation: &str, zone: &str) -> String {
        format!("lbm-{installation}-{zone}-")
    }

    /// When the check of `reference` was made (milliseconds since the epoch), read from its nonce.
    pub fn made_at(reference: &str) -> Option<u64> {
        let nonce = reference.rsplit('-').next()?;
        u64::from_str_radix(nonce, 16).ok().map(|n| n / 1000)
    }

    /// A new reference for one creation in `zone` (`nonce`: the time in milliseconds, times 1,000,
    /// plus a random thousandth).
    pub fn of(installation: &str, zone: &str, nonce: u64) -> String {
        format!("{}{nonce:x}", Reference::zone_prefix(installation, zone))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An installation's mark in its checks' references and tags: 8 hex digits of a hash (FNV-1a) of
/// the etcd cluster's id and the prefix, recorded in lbmanager's state at its first start (see
/// [`crate::layout::Layout::installation`]) and read from there after: two lbmanagers with the
/// same prefix on two etcd clusters of one account never take each other's checks for their
/// own, and an etcd restored into a new cluster keeps its installation's checks.
pub fn installation(cluster_id: u64, prefix: &str) -> String {
    fnv32(&format!("{cluster_id:x}{prefix}"))
}

/// The mark of an installation that made checks before installations were recorded: a hash of
/// the prefix alone. An installation that has records and no installation record is one of those,
/// and keeps its mark (and its checks).
pub fn installation_before_records(prefix: &str) -> String {
    fnv32(prefix)
}

fn fnv32(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{:08x}", (hash >> 32) as u32 ^ hash as u32)
}

/// The tags of a check lbmanager makes, for whoever reads the account (the reference says the
/// same, and is what lbmanager goes by): its installation, and the name and value it checks.
pub fn tags(reference: &str, fqdn: &str, ip: &IpAddr) -> Vec<(&'static str, String)> {
    let installation = reference.split('-').nth(1).unwrap_or_default();
    vec![
        ("lbmanager-installation", installation.to_string()),
        ("Name", format!("lbmanager {fqdn} {ip}")),
    ]
}

/// The health of a value whose check has not reported (or not been read) yet.
pub const UNKNOWN: &str = "unknown";

/// Route53's health checkers' reports of one check, summed up as Route53 decides: healthy when
/// more than 18% of the checkers that report say so.
pub fn summarise(reports: &[String]) -> String {
    let ok = reports.iter().filter(|r| r.starts_with("Success")).count();
    if reports.is_empty() {
        UNKNOWN.into()
    } else if ok * 100 > reports.len() * 18 {
        "healthy".into()
    } else {
        "unhealthy".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r = parse_rule("route53/Z123/WWW.Example.com.=http:8080/health?x=1").unwrap();
        assert_eq!(r.zone, "Z123");
        assert_eq!(r.fqdn, "www.example.com");
        assert_eq!(r.spec.to_string(), "HTTP:8080/health?x=1");
        let tcp = parse_rule("route53/*/*=TCP:443").unwrap();
        assert_eq!(tcp.spec.path, None);
        let https = parse_rule("route53/*/api.example.com=HTTPS:443").unwrap();
        assert_eq!(https.spec.path.as_deref(), Some("/"));
        let rules = [r.clone(), tcp.clone()];
        assert_eq!(
            rule_for(&rules, "Z123", "www.example.com"),
            Some(&r.spec),
            "the first rule that matches"
        );
        assert_eq!(rule_for(&rules, "Z9", "www.example.com"), Some(&tcp.spec));
        assert_eq!(rule_for(&rules[..1], "Z9", "www.example.com"), None);
        for bad in [
            "route53/Z1=HTTP:80",
            "elb/us-east-1/web=HTTP:80",
            "route53/Z1/www.example.com",
            "route53/Z1/www.example.com=UDP:53",
            "route53/Z1/www.example.com=HTTP:0",
            "route53/Z1/www.example.com=HTTP:x/",
            "route53/Z1/www.example.com=TCP:22/x",
            "route53/Z1/www.example.com=HTTP:80/a b",
            "route53/Z1/w*w.example.com=HTTP:80",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_are_lbmanagers_and_fit_route53s_64_characters() {
        let inst = installation(0x8e9e_05c5_2164_694d, "/lbManager");
        assert_eq!(inst.len(), 8);
        assert_eq!(
            inst,
            installation(0x8e9e_05c5_2164_694d, "/lbManager"),
            "stable"
        );
        assert_ne!(
            inst,
            installation(0x8e9e_05c5_2164_694e, "/lbManager"),
            "another cluster"
        );
        assert_ne!(
            inst,
            installation(0x8e9e_05c5_2164_694d, "/other"),
            "another prefix"
        );
        // Installations before records kept their mark: it is the prefix's alone.
        assert_eq!(installation_before_records("/lbManager").len(), 8);
        assert_ne!(installation_before_records("/lbManager"), inst);
        let tags = tags(
            &Reference::of(&inst, "Z1", 7),
            "www.example.com",
            &"192.0.2.1".parse().unwrap(),
        );
        assert_eq!(tags[0], ("lbmanager-installation", inst.clone()));
        let zone = "Z".repeat(32);
        let r = Reference::of(&inst, &zone, 4_102_444_800_000 * 1000 + 999);
        assert!(r.len() <= 64, "{r}");
        assert!(r.starts_with(&Reference::zone_prefix(&inst, &zone)));
        assert!(!Reference::of(&inst, "Z1", 1).starts_with(&Reference::zone_prefix(&inst, "Z")));
        let at = 1_796_601_600_000_u64;
        assert_eq!(
            Reference::made_at(&Reference::of(&inst, "Z1", at * 1000 + 7)),
            Some(at)
        );
    }

    #[test]
    fn a_value_is_healthy_when_more_than_18_percent_of_checkers_say_so() {
        let of = |ok: usize, bad: usize| {
            let mut v = vec!["Success: HTTP Status Code 200, OK".to_string(); ok];
            v.extend(vec!["Failure: Connection timed out.".to_string(); bad]);
            summarise(&v)
        };
        assert_eq!(of(16, 0), "healthy");
        assert_eq!(of(3, 13), "healthy");
        assert_eq!(of(2, 14), "unhealthy");
        assert_eq!(of(0, 0), "unknown");
    }
}
