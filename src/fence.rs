//! The leader's fence (`--ha`): no change goes to AWS unless, at the moment it is sent, this
//! instance's leadership is known to be valid with a margin.
//!
//! The leadership is an etcd lease that lives at least its TTL past the last keep-alive etcd
//! confirmed (counted from when that keep-alive was *sent*). A standby can be elected only once it
//! has expired. So a change sent within half the TTL of the last confirmed keep-alive lands while
//! no other instance can lead, provided it takes less than the other half: every mutating call
//! is checked by [`Fence::check`] immediately before it is sent (an interceptor of the SDK, the
//! last step before the request leaves, see [`FenceCheck`]), and bounded by
//! [`Fence::call_timeout`].
//!
//! The clock is `CLOCK_BOOTTIME`, which keeps running while the process is stopped (SIGSTOP, a
//! frozen VM, a live migration) and while the machine sleeps: a leader that resumes after a pause
//! finds its confirmation old, not fresh. Once a check fails the fence stays shut (it *trips*):
//! nothing more is sent, even if a late keep-alive is answered, and the process stops (see
//! [`crate::ha`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Time since boot, counting time stopped and asleep (`CLOCK_BOOTTIME`).
pub fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_BOOTTIME exists on every Linux
    // lbmanager runs on (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Why a change was not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "not sent: this instance's leadership was last confirmed {since:?} ago, more than the \
     {valid_for:?} within which it may change AWS; it stops before another instance can lead"
)]
pub struct Fenced {
    pub since: Duration,
    pub valid_for: Duration,
}

struct Lease {
    /// When the last confirmed keep-alive was sent ([`boottime`], in nanoseconds).
    confirmed_ns: AtomicU64,
    /// How long after a confirmation changes may be sent (half the TTL).
    valid_for: Duration,
    /// The longest a change may take (a quarter of the TTL): it ends well before the lease can.
    call_timeout: Duration,
    tripped: AtomicBool,
    /// The leadership is being given up on a clean stop: its key's deletion and the lease's end
    /// are this process's own doing, not a reason to exit 1.
    released: AtomicBool,
}

/// The fence every mutating AWS call passes (cheap to clone: one per process, shared). Without
/// `--ha` it is always open.
#[derive(Clone, Default)]
pub struct Fence(Option<Arc<Lease>>);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Fence(open)"),
            Some(l) => write!(
                f,
                "Fence(valid_for {:?}, tripped {})",
                l.valid_for,
                l.tripped.load(Ordering::SeqCst)
            ),
        }
    }
}

impl Fence {
    /// Always open: a single instance (no `--ha`), or a command that changes nothing.
    pub fn open() -> Self {
        Fence(None)
    }

    /// The fence of a leadership lease of `ttl` whose grant was sent at `granted` (a
    /// [`boottime`]); changes take at most a quarter of `ttl`, and no more than `call_limit`
    /// (`--aws-timeout`).
    pub fn lease(ttl: Duration, call_limit: Duration, granted: Duration) -> Self {
        Fence(Some(Arc::new(Lease {
            confirmed_ns: AtomicU64::new(granted.as_nanos() as u64),
            valid_for: ttl / 2,
            call_timeout: (ttl / 4).min(call_limit),
            tripped: AtomicBool::new(false),
            released: AtomicBool::new(false),
        })))
    }

    /// etcd confirmed the keep-alive sent at `sent` (a [`boottime`]): the lease lives at least
    /// its TTL past it.
    pub fn confirm(&self, sent: Duration) {
        if let Some(l) = &self.0 {
            l.confirmed_ns
                .fetch_max(sent.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    /// How long since the last confirmation (zero without a lease).
    pub fn since_confirmed(&self) -> Duration {
        match &self.0 {
            None => Duration::ZERO,
            Some(l) => boottime()
                .saturating_sub(Duration::from_nanos(l.confirmed_ns.load(Ordering::SeqCst))),
        }
    }

    /// Whether a change may be sent now; when not, the fence trips and stays shut.
    pub fn check(&self) -> Result<(), Fenced> {
        let Some(l) = &self.0 else {
            return Ok(());
        };
        if cfg!(feature = "soak-fault-unfenced") {
            return Ok(());
        }
        let since = self.since_confirmed();
        if l.tripped.load(Ordering::SeqCst) || since >= l.valid_for {
            l.tripped.store(true, Ordering::SeqCst);
            return Err(Fenced {
                since,
                valid_for: l.valid_for,
            });
        }
        Ok(())
    }

    /// Shuts the fence for good (the process is stopping for want of its leadership).
    pub fn trip(&self) {
        if let Some(l) = &self.0 {
            l.tripped.store(true, Ordering::SeqCst);
        }
    }

    /// Shuts the fence for good because the leadership is being given up on a clean stop (see
    /// [`Fence::is_released`]).
    pub fn release(&self) {
        if let Some(l) = &self.0 {
            l.released.store(true, Ordering::SeqCst);
            l.tripped.store(true, Ordering::SeqCst);
        }
    }

    /// The leadership is being given up on a clean stop: the watchdogs stand down.
    pub fn is_released(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|l| l.released.load(Ordering::SeqCst))
    }

    pub fn is_tripped(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|l| l.tripped.load(Ordering::SeqCst))
    }

    /// The longest a change may take under this fence (a quarter of the lease's TTL); none
    /// without a lease (the `--aws-timeout` applies).
    pub fn call_timeout(&self) -> Option<Duration> {
        self.0.as_ref().map(|l| l.call_timeout)
    }

    /// The SDK timeouts of a change under this fence (see [`Fence::call_timeout`]).
    pub fn timeouts(&self) -> Option<aws_config::timeout::TimeoutConfig> {
        self.call_timeout().map(|t| {
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(t)
                .operation_attempt_timeout(t)
                .operation_timeout(t)
                .build()
        })
    }
}

/// Whether an AWS operation only reads (`Describe…`, `List…`, `Get…`): every other operation
/// changes something and passes the fence.
pub fn only_reads(operation: &str) -> bool {
    ["Describe", "List", "Get"]
        .iter()
        .any(|verb| operation.starts_with(verb))
}

/// The SDK interceptor that checks the fence as the last step before a request is sent (after
/// signing, credentials and any wait inside the SDK). It is part of every SDK client lbmanager
/// builds, so every operation that is not a read passes it, those added later included: none can
/// leave unless the leadership is valid at that moment.
#[derive(Debug, Clone)]
pub struct FenceCheck(pub Fence);

impl aws_sdk_route53::config::Intercept for FenceCheck {
    fn name(&self) -> &'static str {
        "lbmanager leadership fence"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_route53::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_route53::config::RuntimeComponents,
        cfg: &mut aws_sdk_route53::config::ConfigBag,
    ) -> Result<(), aws_sdk_route53::error::BoxError> {
        use aws_smithy_runtime_api::client::orchestrator::Metadata;
        // An operation the SDK did not name is taken for a change.
        if cfg.load::<Metadata>().is_some_and(|m| only_reads(m.name())) {
            return Ok(());
        }
        self.0.check().map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_a_lease() {
        let f = Fence::open();
        assert!(f.check().is_ok());
        f.trip();
        assert!(f.check().is_ok() && !f.is_tripped());
        assert_eq!(f.call_timeout(), None);
    }

    #[test]
    fn a_lease_lets_changes_through_for_half_its_ttl_then_trips_for_good() {
        let f = Fence::lease(
            Duration::from_millis(400),
            Duration::from_secs(30),
            boottime(),
        );
        assert_eq!(f.call_timeout(), Some(Duration::from_millis(100)));
        assert!(f.check().is_ok());
        std::thread::sleep(Duration::from_millis(120));
        // A confirmation of a keep-alive sent now keeps it open.
        f.confirm(boottime());
        assert!(f.check().is_ok());
        std::thread::sleep(Duration::from_millis(210));
        let err = f.check().unwrap_err();
        assert!(err.since >= Duration::from_millis(200), "{err}");
        assert!(f.is_tripped());
        // A late confirmation does not open it again.
        f.confirm(boottime());
        assert!(f.check().is_err());
    }

    #[test]
    fn an_older_confirmation_never_moves_it_back() {
        let f = Fence::lease(Duration::from_secs(10), Duration::from_secs(1), boottime());
        let now = boottime();
        f.confirm(now);
        f.confirm(now.saturating_sub(Duration::from_secs(9)));
        assert!(f.since_confirmed() < Duration::from_secs(1));
        // --aws-timeout bounds a change too.
        assert_eq!(f.call_timeout(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn every_operation_but_reads_is_a_change() {
        for read in [
            "DescribeLoadBalancers",
            "DescribeTargetHealth",
            "ListResourceRecordSets",
            "GetChange",
            "GetHostedZone",
        ] {
            assert!(only_reads(read), "{read}");
        }
        for change in [
            "RegisterInstancesWithLoadBalancer",
            "DeregisterTargets",
            "ChangeResourceRecordSets",
            "CreateHealthCheck",
            "DeleteHealthCheck",
            "ChangeTagsForResource",
        ] {
            assert!(!only_reads(change), "{change}");
        }
    }

    #[test]
    fn boottime_runs_on() {
        let a = boottime();
        std::thread::sleep(Duration::from_millis(5));
        assert!(boottime() >= a + Duration::from_millis(5));
    }
}
