//! Reconciling: read what AWS has, plan against what etcd wants, apply. Plain async functions
//! over the AWS traits, taking plain data: the actors decide *when* a load balancer or a zone is
//! synced, this module *how*; `lbmanager plan` uses the same reads and plans, so the two never
//! disagree about what "in step" means.

use std::collections::BTreeSet;
use std::fmt;

use crate::aws::{AwsError, ElbApi, ErrorKind};
use crate::key::Member;
use crate::plan::{plan_elb, ElbChanges, Policy, Registered};

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

/// Reads an ELB or target group and plans it: what `run` would change, and what `plan` shows.
pub async fn read_and_plan_elb(
    api: &dyn ElbApi,
    region: &str,
    name: &str,
    desired: &BTreeSet<Member>,
    policy: Policy,
) -> Result<(Registered, ElbChanges), AwsError> {
    match api.members(region, name).await {
        Ok(actual) => {
            let changes = plan_elb(desired, &actual, policy);
            Ok((actual, changes))
        }
        Err(e) if gone_is_in_step(&e, desired.is_empty()) => {
            Ok((Registered::default(), ElbChanges::default()))
        }
        Err(e) => Err(e),
    }
}
