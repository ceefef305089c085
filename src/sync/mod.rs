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

/// Reads one FQDN's record sets and plans them: what `plan` shows (`owned`: with `--ownership
/// shared`, the values lbmanager added). The zone actor reads in batches and from what it
/// remembers, then plans through [`plan_fqdn_values`] too, with the same rule for a zone that is
/// gone.
pub async fn read_and_plan_fqdn(
    api: &dyn Route53Api,
    zone: &str,
    fqdn: &str,
    ips: &BTreeSet<IpAddr>,
    ttl: i64,
    policy: Policy,
    owned: Option<&BTreeSet<IpAddr>>,
) -> Result<(Vec<RecordSet>, Vec<RecordChange>), AwsError> {
    let current = match api.record_sets(zone, fqdn).await {
        Err(e) if gone_is_in_step(&e, ips.is_empty()) => Vec::new(),
        other => other?,
    };
    let changes = plan_fqdn_values(fqdn, ips, &current, ttl, policy, owned);
    Ok((current, changes))
}

/// The changes `run` makes and `plan` shows for an FQDN: the values etcd wants (`ips`) against
/// its record sets (`current`), with `--ownership shared`'s values of others (those not in
/// `owned`) kept, and their TTL. Both commands plan through this one function, so that they never
/// disagree.
pub fn plan_fqdn_values(
    fqdn: &str,
    ips: &BTreeSet<IpAddr>,
    current: &[RecordSet],
    ttl: i64,
    policy: Policy,
    owned: Option<&BTreeSet<IpAddr>>,
) -> Vec<RecordChange> {
    let (ips, ttl) = match owned {
        Some(owned) => (
            crate::ownership::with_foreign(ips, current, owned),
            crate::ownership::shared_ttl(current, owned, ttl),
        ),
        None => (ips.clone(), ttl),
    };
    plan_fqdn(fqdn, &ips, current, ttl, policy)
}

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
            .map(|n| Member::Instance(format!("i-{n:08x}")))
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
}
