//! Reconciling: read what AWS has, plan against what etcd wants, apply. Plain async functions
//! over the AWS traits, taking plain data: the actors decide *when* a load balancer or a zone is
//! synced, this module *how*; `lbmanager plan` uses the same reads and plans, so the two never
//! disagree about what "in step" means.

use std::collections::BTreeSet;
use std::fmt;

use std::net::IpAddr;

use crate::aws::{AwsError, ElbApi, ErrorKind, Route53Api};
use crate::key::Member;
use crate::plan::{plan_elb, plan_fqdn, ElbChanges, Policy, RecordChange, RecordSet, Registered};

pub mod elb;
pub mod schedule;
pub mod zone;

/// Why a sync runs: it goes into every log line that changes AWS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The first sync after lbmanager started.
    Startup,
    /// A key was written or deleted in etcd.
    EtcdEvent,
    /// The periodic resync, which corrects drift made by hand.
    Resync,
    /// The whole prefix was read again after the watch lost history (compaction).
    Relist,
    /// An actor was restarted after it failed.
    Restart,
    /// A member key that had an etcd lease was deleted: its lease expired (or was revoked).
    LeaseExpiry,
    /// AWS is still moving members (registering, health checks, draining): read again, for
    /// whoever waits on them.
    Settle,
}

impl Cause {
    /// The first sync of an actor's start or restart, or after a relist: nothing believed
    /// before is trusted, and lbmanager's leftovers (checks of another leader's) are looked for.
    pub fn is_start(self) -> bool {
        matches!(self, Cause::Startup | Cause::Relist | Cause::Restart)
    }

    /// A sync that asks AWS everything afresh: a start's, or the periodic resync (which also
    /// asks again what AWS refused before).
    pub fn is_full(self) -> bool {
        self.is_start() || self == Cause::Resync
    }

    /// A sync that doubts even what the zone remembers of a name: read it again.
    pub fn rereads(self) -> bool {
        matches!(self, Cause::Resync | Cause::Relist)
    }

    /// A sync that reads the health AWS reports: a full one, and one for whoever waits on it.
    pub fn reads_health(self) -> bool {
        self.is_full() || self == Cause::Settle
    }

    /// A change of the keys in etcd (a write, a delete, a lease that expired).
    pub fn is_etcd_change(self) -> bool {
        matches!(self, Cause::EtcdEvent | Cause::LeaseExpiry)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Startup => "start-up",
            Cause::EtcdEvent => "etcd event",
            Cause::Resync => "resync (drift)",
            Cause::Relist => "relist",
            Cause::Restart => "actor restart",
            Cause::LeaseExpiry => "lease expiry",
            Cause::Settle => "settling (health, draining)",
        })
    }
}

/// What a sync needs to know besides the members.
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    pub policy: Policy,
    /// Log the changes instead of making them.
    pub dry_run: bool,
    pub route53_ttl: i64,
}

/// A load balancer (or zone) that does not exist holds none of what should be absent: in step,
/// not an error (so a load balancer whose keys are gone, deleted from AWS meanwhile, is retired).
pub fn gone_is_in_step(err: &AwsError, wants_nothing: bool) -> bool {
    err.kind == ErrorKind::NotFound && wants_nothing
}

/// The IP members of a Route53 load balancer: the values of its A and AAAA record sets.
pub fn ips_of(members: &BTreeSet<Member>) -> BTreeSet<IpAddr> {
    members
        .iter()
        .filter_map(|m| match m {
            Member::Ip(ip) => Some(*ip),
            Member::Instance(_) | Member::Target(_) => None,
        })
        .collect()
}

/// What `plan` shows for an FQDN.
#[derive(Debug, Default)]
pub struct FqdnPlan {
    /// Its record sets.
    pub current: Vec<RecordSet>,
    pub changes: Vec<RecordChange>,
    /// `--route53-health-check`: the checks to make first (value, check)…
    pub create_checks: Vec<(IpAddr, crate::health_check::CheckSpec)>,
    /// …and lbmanager's checks of the name to delete after.
    pub delete_checks: Vec<crate::health_check::HealthCheck>,
}

/// Reads one FQDN's record sets (and, where they matter, the zone's checks whose references
/// start with `references`) and plans them as the zone's actor does: what `plan` shows.
/// `want.owned`: with `--ownership shared`, the values lbmanager added. The zone actor reads in
/// batches and from what it remembers, then plans through [`plan_fqdn_values`] too, with the same
/// rule for a zone that is gone.
pub async fn read_and_plan_fqdn(
    api: &dyn Route53Api,
    zone: &str,
    want: &zone::FqdnWant,
    ttl: i64,
    policy: Policy,
    references: &str,
) -> Result<FqdnPlan, AwsError> {
    let current = match api.record_sets(zone, &want.fqdn).await {
        Err(e) if gone_is_in_step(&e, want.ips.is_empty()) => Vec::new(),
        other => other?,
    };
    let mut plan = FqdnPlan::default();
    let listed = current.iter().any(|s| s.health_check.is_some()) || want.check.is_some();
    let known = if listed {
        let all = api.health_checks(references).await?;
        all.into_iter().filter(|c| c.fqdn == want.fqdn).collect()
    } else {
        Vec::new()
    };
    let checks = want.check.as_ref().map(|spec| {
        let values = crate::plan::multivalue_values(&want.ips, &current, policy);
        let mut checks = Checks::new();
        for ip in values {
            let id = known.iter().find(|c| c.is(&want.fqdn, &ip, spec));
            if id.is_none() {
                plan.create_checks.push((ip, spec.clone()));
            }
            checks.insert(ip, id.map(|c| c.id.clone()));
        }
        checks
    });
    let used: BTreeSet<&str> = checks
        .iter()
        .flat_map(|c| c.values().flatten())
        .map(String::as_str)
        .collect();
    plan.delete_checks = known
        .iter()
        .filter(|c| !used.contains(c.id.as_str()))
        .cloned()
        .collect();
    plan.changes = plan_fqdn_values(
        &want.fqdn,
        &want.ips,
        &current,
        ttl,
        policy,
        want.owned.as_ref(),
        checks.as_ref(),
    );
    plan.current = current;
    Ok(plan)
}

/// The changes `run` makes and `plan` shows for an FQDN: the values etcd wants (`ips`) against
/// its record sets (`current`), with `--ownership shared`'s values of others (those not in
/// `owned`) kept, and their TTL. Both commands plan through this one function, so that they never
/// disagree.
///
/// `checks`: the FQDN is in a `--route53-health-check` scope, and these are its values' checks:
/// it is published as multivalue answers ([`crate::plan::plan_multivalue`]). Out of every scope,
/// lbmanager's multivalue answers of it (left by a run with the flag) go in the same batch as the
/// simple record set that replaces them.
pub fn plan_fqdn_values(
    fqdn: &str,
    ips: &BTreeSet<IpAddr>,
    current: &[RecordSet],
    ttl: i64,
    policy: Policy,
    owned: Option<&BTreeSet<IpAddr>>,
    checks: Option<&Checks>,
) -> Vec<RecordChange> {
    if let Some(checks) = checks {
        let want = crate::plan::multivalue_values(ips, current, policy);
        return crate::plan::plan_multivalue(fqdn, &want, current, ttl, checks);
    }
    let (multi, simple): (Vec<RecordSet>, Vec<RecordSet>) =
        current.iter().cloned().partition(RecordSet::is_multivalue);
    let mut ips = ips.clone();
    if policy == Policy::UpsertOnly {
        ips.extend(
            multi
                .iter()
                .flat_map(|s| s.values.iter())
                .filter_map(|v| v.parse::<IpAddr>().ok()),
        );
    }
    let mut changes: Vec<RecordChange> = multi
        .into_iter()
        .map(|set| RecordChange {
            action: crate::plan::Action::Delete,
            removed: set
                .values
                .iter()
                .filter_map(|v| v.parse().ok())
                .filter(|ip| !ips.contains(ip))
                .collect(),
            added: vec![],
            set,
        })
        .collect();
    let switching = !changes.is_empty();
    let (ips, ttl) = match owned {
        Some(owned) => (
            crate::ownership::with_foreign(&ips, &simple, owned),
            crate::ownership::shared_ttl(&simple, owned, ttl),
        ),
        None => (ips, ttl),
    };
    let mut simple_changes = plan_fqdn(fqdn, &ips, &simple, ttl, policy);
    if switching {
        // The values were there (as multivalue answers): only those new are added.
        let had: BTreeSet<IpAddr> = changes
            .iter()
            .flat_map(|c| c.set.values.iter())
            .filter_map(|v| v.parse().ok())
            .collect();
        for c in &mut simple_changes {
            c.added.retain(|ip| !had.contains(ip));
        }
    }
    changes.extend(simple_changes);
    changes
}

/// The health check of each value of an FQDN in a `--route53-health-check` scope (None: it could
/// not be made).
pub type Checks = std::collections::BTreeMap<IpAddr, Option<String>>;

/// The changes `run` makes and `plan` shows for an ELB or target group: what etcd wants
/// (`desired`) against what AWS has, with `--ownership shared`'s members of others (those not in
/// `owned`) left alone and returned. Both commands plan through this one function, so that they
/// never disagree (`run` then sets aside the members AWS refused before, which `plan` lists).
pub fn plan_elb_members(
    desired: &BTreeSet<Member>,
    actual: &Registered,
    policy: Policy,
    owned: Option<&BTreeSet<String>>,
) -> (ElbChanges, Vec<crate::key::Target>) {
    let mut changes = plan_elb(desired, actual, policy);
    let foreign = owned
        .map(|o| crate::ownership::keep_foreign(&mut changes, o))
        .unwrap_or_default();
    // What stays in AWS counts against its limit too (others' members, and under upsert-only
    // the unwanted ones): newcomers past it wait.
    let stays = actual.members.len() - changes.deregister.len();
    let room = crate::plan::MAX_ELB_MEMBERS.saturating_sub(stays);
    if changes.register.len() > room {
        let over = changes.register.split_off(room);
        changes.over_limit.extend(over);
    }
    (changes, foreign)
}

/// Reads one ELB or target group and plans it (see [`plan_elb_members`]): what `plan` shows.
pub async fn read_and_plan_elb(
    api: &dyn ElbApi,
    region: &str,
    name: &str,
    desired: &BTreeSet<Member>,
    policy: Policy,
    owned: Option<&BTreeSet<String>>,
) -> Result<(Registered, ElbChanges, Vec<crate::key::Target>), AwsError> {
    let actual = read_elb(api, region, name, desired.is_empty()).await?;
    let (changes, foreign) = plan_elb_members(desired, &actual, policy, owned);
    Ok((actual, changes, foreign))
}

/// What an ELB or target group has registered. One that does not exist has nothing, which is in
/// step when nothing is wanted (`wants_nothing`); otherwise its absence is the error.
pub async fn read_elb(
    api: &dyn ElbApi,
    region: &str,
    name: &str,
    wants_nothing: bool,
) -> Result<Registered, AwsError> {
    match api.members(region, name).await {
        Err(e) if gone_is_in_step(&e, wants_nothing) => Ok(Registered::default()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Target;

    fn ids(range: std::ops::Range<u32>) -> BTreeSet<Member> {
        range
            .map(|n| Member::Instance(format!("i-{n:08x}").into()))
            .collect()
    }

    /// What stays in AWS without being wanted (another tool's members, under shared ownership)
    /// counts against the 1,000 too: the newcomers past it wait, listed as over the limit.
    #[test]
    fn members_that_stay_count_against_the_limit() {
        let actual = Registered {
            members: (0..1_000u32)
                .map(|n| Target::instance(format!("i-{n:08x}")))
                .collect(),
            ..Registered::default()
        };
        // lbmanager owns the first 990; 10 are another tool's. etcd now wants 995 of its own
        // and 10 new ones: 5 of lbmanager's go, so 5 newcomers fit.
        let owned: BTreeSet<String> = (0..990u32).map(|n| format!("i-{n:08x}")).collect();
        let mut want = ids(0..985);
        want.extend(ids(2_000..2_010));
        let (changes, foreign) = plan_elb_members(&want, &actual, Policy::Sync, Some(&owned));
        assert_eq!(foreign.len(), 10);
        assert_eq!(changes.deregister.len(), 5);
        assert_eq!(changes.register.len(), 5);
        assert_eq!(changes.over_limit.len(), 5);
        let after = actual.members.len() - changes.deregister.len() + changes.register.len();
        assert_eq!(after, crate::plan::MAX_ELB_MEMBERS);
    }

    fn multi(ip: &str, check: &str) -> RecordSet {
        RecordSet {
            name: "www.example.com".into(),
            rtype: if ip.contains(':') {
                crate::plan::RecordType::Aaaa
            } else {
                crate::plan::RecordType::A
            },
            ttl: 60,
            values: vec![ip.into()],
            set_id: Some(ip.into()),
            health_check: Some(check.into()),
        }
    }

    fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Into a scope: the simple record set's DELETE and a multivalue CREATE per value, each with
    /// its check, in one plan (one batch: no moment without an answer); out of every scope, the
    /// other way round. In step, nothing.
    #[test]
    fn simple_and_multivalue_switch_in_one_batch() {
        use crate::plan::{Action, RecordType};
        let ips = addrs(&["192.0.2.1", "192.0.2.2"]);
        let simple = RecordSet::simple(
            "www.example.com",
            RecordType::A,
            60,
            vec!["192.0.2.1".into(), "192.0.2.2".into()],
        );
        let checks: Checks = [
            ("192.0.2.1".parse().unwrap(), Some("hc-1".to_string())),
            ("192.0.2.2".parse().unwrap(), Some("hc-2".to_string())),
        ]
        .into();
        let fqdn = "www.example.com";
        let into = plan_fqdn_values(
            fqdn,
            &ips,
            std::slice::from_ref(&simple),
            60,
            Policy::Sync,
            None,
            Some(&checks),
        );
        let actions: Vec<Action> = into.iter().map(|c| c.action).collect();
        assert_eq!(actions, [Action::Delete, Action::Create, Action::Create]);
        assert_eq!(into[0].set, simple);
        assert!(into[0].removed.is_empty(), "the values stay: {into:?}");
        assert_eq!(into[1].set, multi("192.0.2.1", "hc-1"));
        assert_eq!(into[2].set, multi("192.0.2.2", "hc-2"));
        assert!(into.iter().all(|c| c.added.is_empty()));
        // Done: in step.
        let now = [multi("192.0.2.1", "hc-1"), multi("192.0.2.2", "hc-2")];
        let same = plan_fqdn_values(fqdn, &ips, &now, 60, Policy::Sync, None, Some(&checks));
        assert!(same.is_empty(), "{same:?}");
        // A value goes; one comes; a check changes.
        let next = addrs(&["192.0.2.2", "192.0.2.3"]);
        let checks: Checks = [
            ("192.0.2.2".parse().unwrap(), Some("hc-9".to_string())),
            ("192.0.2.3".parse().unwrap(), Some("hc-3".to_string())),
        ]
        .into();
        let moved = plan_fqdn_values(fqdn, &next, &now, 60, Policy::Sync, None, Some(&checks));
        let summary: Vec<(Action, &str, Option<&str>)> = moved
            .iter()
            .map(|c| {
                (
                    c.action,
                    c.set.values[0].as_str(),
                    c.set.health_check.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Action::Delete, "192.0.2.1", Some("hc-1")),
                (Action::Upsert, "192.0.2.2", Some("hc-9")),
                (Action::Create, "192.0.2.3", Some("hc-3")),
            ]
        );
        assert_eq!(
            moved[0].removed,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        // Out of every scope: the multivalue answers go and one simple set comes, in one plan.
        let out = plan_fqdn_values(fqdn, &ips, &now, 60, Policy::Sync, None, None);
        let actions: Vec<Action> = out.iter().map(|c| c.action).collect();
        assert_eq!(actions, [Action::Delete, Action::Delete, Action::Create]);
        assert_eq!(out[2].set, simple);
        assert!(out
            .iter()
            .all(|c| c.added.is_empty() && c.removed.is_empty()));
        // Upsert-only keeps every value it had, in either direction.
        let kept = plan_fqdn_values(fqdn, &addrs(&[]), &now, 60, Policy::UpsertOnly, None, None);
        assert_eq!(kept.last().unwrap().set, simple);
    }
}
