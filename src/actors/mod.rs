//! The actor system over the pure modules: each actor receives typed messages and calls plain
//! functions (the rules of one load balancer's syncs are `sync::schedule`'s, the fleet's are
//! [`crate::fleet`]'s, which the Supervisor carries out). Mailbox order serialises the work of one load balancer
//! (a [`load_balancer::LoadBalancer`], generic over its kind) and of one hosted zone (a
//! [`hosted_zone::HostedZone`]);
//! different load balancers sync concurrently on the same runtime.

use std::time::Duration;

use std::sync::Arc;

use crate::filter::Filters;
use crate::layout::Layout;
use crate::metrics::Metrics;
use crate::plan::Policy;

pub mod etcd_watcher;
pub mod hosted_zone;
pub mod load_balancer;
mod notes;
pub mod state_writer;
pub mod supervisor;

pub use crate::sync::schedule::backoff;
use crate::sync::schedule::Delays;
pub use crate::sync::Cause;
use crate::sync::SyncOptions;

/// Settings the actors share.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The watched key prefix and where lbmanager's own keys live under it: built once.
    pub layout: Layout,
    /// The TTL of the record sets lbmanager writes.
    pub route53_ttl: i64,
    /// How often each load balancer is read back (drift), and how long an error retrying can't
    /// fix waits.
    pub resync_interval: Duration,
    /// First retry delay after a retryable failure; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// What lbmanager may do to AWS (`sync`, or `upsert-only`).
    pub policy: Policy,
    /// Whether etcd lists every member (`exclusive`) or only lbmanager's (`shared`).
    pub ownership: crate::ownership::Ownership,
    /// Which load balancers lbmanager may touch at all.
    pub filters: Filters,
    /// Log the changes instead of making them.
    pub dry_run: bool,
    /// Shared by every actor; updating it is a few atomic operations.
    pub metrics: Arc<Metrics>,
    /// A Route53 change still `PENDING` this long is warned about and counted (see
    /// [`hosted_zone::SLOW_CHANGE`]).
    pub route53_slow_change: Duration,
    /// `--route53-health-check`: the FQDNs published as multivalue answers with health checks.
    pub health_checks: Vec<crate::health_check::HealthRule>,
    /// The installation's mark in its health checks (see [`crate::etcd::installation`]).
    pub installation: String,
}

impl Settings {
    /// The watched key prefix (`/lbManager`), without its trailing slash.
    pub fn prefix(&self) -> &str {
        self.layout.prefix()
    }

    /// How long a load balancer's failures wait.
    pub fn delays(&self) -> Delays {
        Delays {
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            resync: self.resync_interval,
        }
    }

    /// What a sync needs of the settings.
    pub fn sync_options(&self) -> SyncOptions {
        SyncOptions {
            policy: self.policy,
            dry_run: self.dry_run,
            route53_ttl: self.route53_ttl,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            layout: Layout::new("/lbManager"),
            route53_ttl: 60,
            resync_interval: Duration::from_secs(300),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(20),
            policy: Policy::Sync,
            ownership: Default::default(),
            filters: Filters::default(),
            dry_run: false,
            metrics: Arc::default(),
            route53_slow_change: hosted_zone::SLOW_CHANGE,
            health_checks: Vec::new(),
            installation: crate::health_check::installation(0, "/lbManager"),
        }
    }
}

#[cfg(test)]
mod actor_tests;
