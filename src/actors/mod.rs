//! The actor system. Thin actors over the pure modules: each holds a little state, receives typed
//! messages and calls plain functions. Mailbox order serialises the work of one load balancer
//! (a [`load_balancer::LoadBalancer`]) and of one hosted zone (a [`hosted_zone::HostedZone`]);
//! different load balancers sync concurrently on the same runtime.

use std::time::Duration;

use std::sync::Arc;

use crate::filter::Filters;
use crate::metrics::Metrics;
use crate::plan::Policy;

pub mod etcd_watcher;
pub mod hosted_zone;
pub mod load_balancer;
pub mod state_writer;
pub mod supervisor;

pub use crate::sync::Cause;
use crate::sync::SyncOptions;

/// Settings the actors share.
#[derive(Clone, Debug)]
pub struct Settings {
    pub prefix: String,
    pub route53_ttl: i64,
    pub resync_interval: Duration,
    /// First retry delay after a retryable failure; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub policy: Policy,
    pub filters: Filters,
    /// Log the changes instead of making them.
    pub dry_run: bool,
    pub metrics: Arc<Metrics>,
}

impl Settings {
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
            prefix: "/lbManager".into(),
            route53_ttl: 60,
            resync_interval: Duration::from_secs(300),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(20),
            policy: Policy::Sync,
            filters: Filters::default(),
            dry_run: false,
            metrics: Arc::default(),
        }
    }
}

/// Exponential backoff with full jitter: a random delay up to `base × 2^attempt`, capped at `max`,
/// and never below `base / 2` (so a failing call never turns into a tight loop).
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(max);
    let floor = (base / 2).min(ceiling);
    let span = ceiling.saturating_sub(floor).as_millis() as u64;
    floor + Duration::from_millis(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff(attempt, base, max);
            assert!(d >= base / 2, "{d:?}");
            assert!(d <= max, "{d:?}");
            assert!(d <= base * 2u32.pow(attempt.min(10)), "{attempt} {d:?}");
        }
        // With full jitter the delays spread out: late attempts reach beyond the early ceiling.
        assert!((0..200).any(|_| backoff(10, base, max) > Duration::from_secs(1)));
    }
}

#[cfg(test)]
mod actor_tests;
