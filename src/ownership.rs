//! `--ownership`: whether etcd lists every member of a load balancer (`exclusive`, the original's
//! semantics) or only those lbmanager added (`shared`: an Auto Scaling group, a hand-registered
//! canary or another tool feeds the same load balancer). Pure: which changes a shared load
//! balancer may see, and what to record. The records themselves ([`crate::layout::Layout::owned`]) are
//! written by the syncs, before the call that adds a member, so that no restart, `kill -9` or
//! failover forgets what lbmanager added.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::key::Target;
use crate::plan::{ElbChanges, RecordSet};

/// Who owns a load balancer's members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ownership {
    /// etcd lists every member: anything else in AWS is removed.
    #[default]
    Exclusive,
    /// lbmanager removes only members it added itself.
    Shared,
}

/// A shared load balancer's changes: deregisters only members lbmanager added (`owned`, as AWS
/// names them). Returns the extras left alone (members lbmanager did not add).
pub fn keep_foreign(changes: &mut ElbChanges, owned: &BTreeSet<String>) -> Vec<Target> {
    let (ours, foreign): (Vec<Target>, Vec<Target>) = std::mem::take(&mut changes.deregister)
        .into_iter()
        .partition(|t| owned.contains(&t.to_string()));
    changes.deregister = ours;
    foreign
}

/// A shared record set's values: lbmanager's (`ips`) and the others' (values it finds that it did
/// not add), so that only its own are ever removed.
pub fn with_foreign(
    ips: &BTreeSet<IpAddr>,
    current: &[RecordSet],
    owned: &BTreeSet<IpAddr>,
) -> BTreeSet<IpAddr> {
    let mut all = ips.clone();
    all.extend(
        current
            .iter()
            .flat_map(|s| s.values.iter())
            .filter_map(|v| v.parse::<IpAddr>().ok())
            .filter(|ip| !owned.contains(ip)),
    );
    all
}

/// A shared record set's TTL: as it is while it holds the others' values (theirs to choose),
/// lbmanager's (`ttl`) otherwise.
pub fn shared_ttl(current: &[RecordSet], owned: &BTreeSet<IpAddr>, ttl: i64) -> i64 {
    current
        .iter()
        .find(|s| {
            s.values
                .iter()
                .filter_map(|v| v.parse::<IpAddr>().ok())
                .any(|ip| !owned.contains(&ip))
        })
        .map_or(ttl, |s| s.ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_target;
    use crate::plan::RecordType;

    #[test]
    fn a_shared_load_balancer_deregisters_only_its_own() {
        let t = |s: &str| parse_target(s).unwrap();
        let mut changes = ElbChanges {
            register: vec![t("i-00000003")],
            deregister: vec![t("i-00000001"), t("i-00000009")],
            ..ElbChanges::default()
        };
        let owned = BTreeSet::from(["i-00000001".to_string()]);
        let foreign = keep_foreign(&mut changes, &owned);
        assert_eq!(changes.deregister, vec![t("i-00000001")]);
        assert_eq!(foreign, vec![t("i-00000009")]);
        assert_eq!(changes.register, vec![t("i-00000003")]);
    }

    #[test]
    fn a_shared_record_set_keeps_the_values_of_others() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let current = vec![RecordSet {
            name: "www.example.com".into(),
            rtype: RecordType::A,
            ttl: 60,
            values: vec!["192.0.2.1".into(), "192.0.2.99".into()],
            set_id: None,
            health_check: None,
        }];
        let owned = BTreeSet::from([ip("192.0.2.1")]);
        // Our value went: only the other's stays.
        assert_eq!(
            with_foreign(&BTreeSet::new(), &current, &owned),
            BTreeSet::from([ip("192.0.2.99")])
        );
        // A new value of ours joins it.
        assert_eq!(
            with_foreign(&BTreeSet::from([ip("192.0.2.2")]), &current, &owned),
            BTreeSet::from([ip("192.0.2.2"), ip("192.0.2.99")])
        );
    }
}
