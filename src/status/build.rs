//! The daemon's side of a status: the members it publishes after a sync (what AWS reported, with
//! the sync's changes and the health last read), and whether any of them is still settling.

use std::collections::{BTreeMap, BTreeSet};

use super::{Health, LbStatus, MemberState, DRAINING};
use crate::key::{LbId, Target};
use crate::plan::{RecordSet, Registered};

/// An ELB's or target group's members after a sync: what AWS reported (`actual`), with the
/// changes the sync made. A target deregistered from a target group drains (AWS's deregistration
/// delay, until a read says otherwise); a member whose health was not read this time keeps what
/// was published (`previous`); one just registered has no state yet.
pub fn elb_members(
    lb: &LbId,
    actual: &Registered,
    registered: &[Target],
    deregistered: &[Target],
    previous: Option<&LbStatus>,
    owned: Option<&BTreeSet<String>>,
) -> Vec<MemberState> {
    let before: std::collections::HashMap<&str, &str> = previous
        .map(|p| {
            p.members
                .iter()
                .filter_map(|m| Some((m.member.as_str(), m.state.as_deref()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out: BTreeMap<Target, Option<String>> = actual
        .members
        .iter()
        .chain(&actual.draining)
        .map(|t| {
            let state = match actual.health.get(t) {
                Some(h) => Some(h.state.clone()),
                None => before.get(t.to_string().as_str()).map(|s| s.to_string()),
            };
            (t.clone(), state)
        })
        .collect();
    for t in deregistered {
        match lb {
            LbId::TargetGroup { .. } => {
                out.insert(t.clone(), Some(DRAINING.into()));
            }
            _ => {
                out.remove(t);
            }
        }
    }
    for t in registered {
        out.insert(t.or_port(actual.default_port), None);
    }
    out.into_iter()
        .map(|(t, state)| {
            let member = t.to_string();
            MemberState {
                // A target draining was lbmanager's until it deregistered it (or someone
                // else's on its way out): neither is left alone.
                foreign: owned.is_some_and(|o| !o.contains(&member))
                    && Health::of(state.as_deref()) != Health::Draining,
                member: member.into(),
                state: state.map(Into::into),
            }
        })
        .collect()
}

/// A Route53 name's members: the values of its record sets, as the key grammar spells IPs.
pub fn zone_members(
    sets: &[RecordSet],
    owned: Option<&BTreeSet<String>>,
    health: &std::collections::BTreeMap<std::net::IpAddr, String>,
    previous: Option<&LbStatus>,
) -> Vec<MemberState> {
    // Route53's spelling of a value, as lbmanager spells the member.
    let spelled = |v: &String| {
        v.parse::<std::net::IpAddr>()
            .map_or(v.clone(), |ip| ip.to_string())
    };
    let ips: BTreeSet<String> = sets
        .iter()
        .flat_map(|s| s.values.iter())
        .map(spelled)
        .collect();
    // `--route53-health-check`: Route53's word, as read now or (between resyncs) last.
    let state = |member: &str| {
        let checked = sets
            .iter()
            .any(|s| s.health_check.is_some() && s.values.iter().any(|v| spelled(v) == member));
        if !checked {
            return None;
        }
        member
            .parse()
            .ok()
            .and_then(|ip| health.get(&ip).cloned())
            .or_else(|| {
                let before = previous?.members.iter().find(|m| m.member == member)?;
                before.state.as_deref().map(String::from)
            })
            // Checked, its health not read yet.
            .or_else(|| Some(crate::health_check::UNKNOWN.to_string()))
    };
    ips.into_iter()
        .map(|member| MemberState {
            foreign: owned.is_some_and(|o| !o.contains(&member)),
            state: state(&member).map(Into::into),
            member: member.into(),
        })
        .collect()
}

/// How long resolvers may still hold a value of a name, after a sync that left `sets` (whose
/// longest TTL before it was `ttl_before`): also once the last value is gone, and for an actor
/// just started, which has no status of its own to remember it by (as a new leader's does not),
/// what `previous` said.
pub fn zone_ttl(
    sets: &[RecordSet],
    ttl_before: Option<i64>,
    previous: Option<&LbStatus>,
) -> Option<i64> {
    sets.iter()
        .map(|s| s.ttl)
        .chain(ttl_before)
        .max()
        .or(previous.and_then(|p| p.ttl))
}

/// Whether a member of `status` is not (yet) healthy: a registration not read back, health
/// checks under way or failing while the application starts (`initial`, `unhealthy`,
/// `OutOfService`, …), a target draining. Worth reading again while someone waits. A Route53
/// value has a health only with `--route53-health-check` (a value without a check: never).
pub fn settling(lb: &LbId, status: &LbStatus) -> bool {
    let route53 = matches!(lb, LbId::Route53 { .. });
    status.last_sync.ok
        && status
            .members
            .iter()
            .any(|m| m.health() != Health::Healthy && !(route53 && m.state.is_none()))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use crate::plan::{RecordSet, Registered};

    /// `--route53-health-check`: a value's health is Route53's word as read (at start-up and
    /// resyncs), or as last published between them; values without a check have none. The table
    /// shows it.
    #[test]
    fn route53_values_carry_their_health_checks_word() {
        let set = |ip: &str, check: Option<&str>| RecordSet {
            name: "www.example.com".into(),
            rtype: crate::plan::RecordType::A,
            ttl: 60,
            values: vec![ip.into()],
            set_id: Some(ip.into()),
            health_check: check.map(str::to_string),
        };
        let sets = [
            set("192.0.2.1", Some("hc-1")),
            set("192.0.2.2", Some("hc-2")),
            set("192.0.2.3", None),
            set("192.0.2.4", Some("hc-4")),
        ];
        let read: BTreeMap<std::net::IpAddr, String> =
            [("192.0.2.1".parse().unwrap(), "healthy".to_string())].into();
        let mut before = status(1, &[("192.0.2.2", Some("unhealthy"))]);
        let words = |members: &[MemberState]| -> Vec<Option<String>> {
            members
                .iter()
                .map(|m| m.state.as_deref().map(String::from))
                .collect()
        };
        let members = zone_members(&sets, None, &read, Some(&before));
        assert_eq!(
            words(&members),
            [
                Some("healthy".into()),
                Some("unhealthy".into()),
                None,
                Some("unknown".into())
            ]
        );
        // `member add --wait --healthy`: a value without a check is done once in DNS; one with a
        // check once Route53 reports it healthy. Worth reading again meanwhile.
        let lb0 = "route53/Z1/www.example.com".parse::<LbId>().unwrap();
        let mut s = before.clone();
        s.members = members.clone();
        s.revision = 10;
        let healthy = Goal::Present { healthy: true };
        let ip = |v: &str| Member::Ip(v.parse().unwrap());
        assert_eq!(
            judge(&lb0, &ip("192.0.2.1"), healthy, 10, Some(&s), false),
            Verdict::Done
        );
        assert_eq!(
            judge(&lb0, &ip("192.0.2.3"), healthy, 10, Some(&s), false),
            Verdict::Done
        );
        for waits in ["192.0.2.2", "192.0.2.4"] {
            let v = judge(&lb0, &ip(waits), healthy, 10, Some(&s), false);
            assert!(matches!(v, Verdict::Wait(_)), "{waits}: {v:?}");
        }
        assert!(settling(&lb0, &s));
        s.members.retain(|m| {
            m.state.as_deref() != Some("unhealthy") && m.state.as_deref() != Some("unknown")
        });
        assert!(
            !settling(&lb0, &s),
            "no check, or healthy: nothing to wait for"
        );
        let lb = "route53/Z1/www.example.com".parse::<LbId>().unwrap();
        before.load_balancer = lb.to_string();
        before.members = members;
        let rows = table::rows(&BTreeMap::new(), &[(lb, before)].into(), 100);
        let report = table::StatusReport {
            daemon: None,
            load_balancers: rows,
        };
        let table = table::render_table(&report);
        assert!(
            table.contains("health: 192.0.2.1 healthy, 192.0.2.2 unhealthy"),
            "{table}"
        );
    }

    #[test]
    fn members_after_a_sync_keep_health_mark_draining_and_settle() {
        let t = |s: &str| parse_target(s).unwrap();
        let actual = Registered {
            members: [t("i-00000001:80"), t("i-00000002:80")].into(),
            default_port: Some(80),
            health: [(
                t("i-00000001:80"),
                crate::plan::Health {
                    state: "healthy".into(),
                },
            )]
            .into(),
            ..Registered::default()
        };
        let previous = status(9, &[("i-00000002:80", Some("unhealthy"))]);
        let members = elb_members(
            &tg(),
            &actual,
            &[t("i-00000003")],
            &[t("i-00000002:80")],
            Some(&previous),
            None,
        );
        let got: Vec<(&str, Option<&str>)> = members
            .iter()
            .map(|m| (m.member.as_str(), m.state.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("i-00000001:80", Some("healthy")),
                ("i-00000002:80", Some("draining")),
                ("i-00000003:80", None),
            ]
        );
        let mut s = status(10, &[]);
        s.members = members;
        assert!(settling(&tg(), &s));
        s.members.retain(|m| m.state.as_deref() == Some("healthy"));
        assert!(!settling(&tg(), &s));
        let elb = "elb/us-east-1/web".parse::<LbId>().unwrap();
        assert!(
            elb_members(&elb, &actual, &[], &[t("i-00000002:80")], None, None)
                .iter()
                .all(|m| m.member != "i-00000002:80")
        );
    }
}
