//! When a load balancer syncs: the rules of its actor, as a small state machine with no actor
//! system in it (as kube-runtime's runner keeps "one run per object, a newer request waits" apart
//! from the reconcile function).
//!
//! - At most one sync in flight; what is asked for meanwhile is merged into one pending sync.
//! - A failure retrying can fix (throttling, 5xx) is retried after a backoff that news does not cut
//!   short: a throttled AWS must not get more calls because etcd is busy.
//! - A failure retrying can't fix waits for the resync interval, or for news; but when the plan
//!   that failed is already stale (a newer desire waits, or it was built from remembered state),
//!   a fresh read and plan go out at once.
//! - A resync tick starts a sync only when none is running or scheduled.
//! - Draining (shutdown) starts nothing new.

use std::time::Duration;

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

/// How long failures wait.
#[derive(Clone, Copy, Debug)]
pub struct Delays {
    /// First retry after a retryable failure; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// The wait after a failure retrying can't fix.
    pub resync: Duration,
}

/// How a sync ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Throttling, 5xx, a network error: retrying can help.
    Retryable,
    /// Retrying can't help. `stale`: the failed plan was built from remembered state.
    Final {
        stale: bool,
    },
}

/// What the actor does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// Start a sync now (cancelling any scheduled retry).
    Sync,
    /// Schedule a retry (a [`Schedule::retry_due`] after the delay).
    RetryIn(Duration),
}

/// A scheduled retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// After a retryable failure: news waits for it.
    Backoff,
    /// After a failure retrying can't fix: news goes ahead.
    Later,
}

#[derive(Debug, Default)]
pub struct Schedule {
    in_flight: bool,
    /// Asked for while a sync was in flight: sync again when it ends.
    pending: bool,
    /// Failures in a row.
    failures: u32,
    waiting: Option<Waiting>,
    draining: bool,
}

impl Schedule {
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// No sync in flight, none asked for and none waiting to be retried.
    pub fn idle(&self) -> bool {
        !self.in_flight && !self.pending && self.waiting.is_none() && !self.draining
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// A sync is wanted. `Sync`: start it now; otherwise one is in flight (it will be followed by
    /// another) or the load balancer is draining.
    pub fn request(&mut self) -> Next {
        if self.draining {
            return Next::Nothing;
        }
        if self.in_flight {
            self.pending = true;
            return Next::Nothing;
        }
        self.in_flight = true;
        self.pending = false;
        self.waiting = None;
        Next::Sync
    }

    /// A new desire arrived.
    pub fn desire(&mut self) -> Next {
        if self.waiting == Some(Waiting::Backoff) {
            // Waiting out a backoff: the retry will take the new desire.
            return Next::Nothing;
        }
        self.request()
    }

    /// The resync interval has passed.
    pub fn resync_due(&mut self) -> Next {
        if self.in_flight || self.waiting.is_some() {
            return Next::Nothing;
        }
        self.request()
    }

    /// A scheduled retry is due.
    pub fn retry_due(&mut self) -> Next {
        self.waiting = None;
        self.request()
    }

    /// The sync in flight ended.
    pub fn finished(&mut self, outcome: Outcome, delays: &Delays) -> Next {
        self.in_flight = false;
        if self.draining {
            return Next::Nothing;
        }
        match outcome {
            Outcome::Ok => {
                self.failures = 0;
                if self.pending {
                    return self.request();
                }
                Next::Nothing
            }
            Outcome::Final { stale } if stale || self.pending => {
                self.failures += 1;
                self.request()
            }
            Outcome::Retryable | Outcome::Final { .. } => {
                self.failures += 1;
                // A desire that arrived meanwhile waits too.
                self.pending = false;
                let (waiting, delay) = if outcome == Outcome::Retryable {
                    let delay = backoff(self.failures - 1, delays.retry_base, delays.retry_max);
                    (Waiting::Backoff, delay)
                } else {
                    (Waiting::Later, delays.resync)
                };
                self.waiting = Some(waiting);
                Next::RetryIn(delay)
            }
        }
    }

    /// The sync in flight already took the newest desire (it reads the desire again after waiting
    /// for quota): the sync asked for meanwhile is not needed.
    pub fn covered(&mut self) {
        self.pending = false;
    }

    /// The sync in flight was lost (its zone actor died): forget it.
    pub fn abandon(&mut self) {
        self.in_flight = false;
    }

    /// Shutting down: nothing new starts. Returns whether a sync is still in flight.
    pub fn drain(&mut self) -> bool {
        self.draining = true;
        self.waiting = None;
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: Delays = Delays {
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(5),
        resync: Duration::from_secs(300),
    };

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

    #[test]
    fn one_in_flight_and_one_pending() {
        let mut s = Schedule::default();
        assert_eq!(s.desire(), Next::Sync);
        assert_eq!(s.desire(), Next::Nothing);
        assert_eq!(s.desire(), Next::Nothing);
        assert_eq!(s.finished(Outcome::Ok, &DELAYS), Next::Sync);
        assert_eq!(s.finished(Outcome::Ok, &DELAYS), Next::Nothing);
        assert!(!s.in_flight());
    }

    #[test]
    fn a_backoff_is_not_cut_short_by_news() {
        let mut s = Schedule::default();
        s.desire();
        let Next::RetryIn(d) = s.finished(Outcome::Retryable, &DELAYS) else {
            panic!("a retry is scheduled");
        };
        assert!(d <= DELAYS.retry_base);
        assert_eq!(s.desire(), Next::Nothing);
        assert_eq!(s.resync_due(), Next::Nothing);
        assert_eq!(s.retry_due(), Next::Sync);
        assert_eq!(s.failures(), 1);
        assert_eq!(s.finished(Outcome::Ok, &DELAYS), Next::Nothing);
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn a_final_failure_waits_for_the_resync_or_for_news() {
        let mut s = Schedule::default();
        s.desire();
        let next = s.finished(Outcome::Final { stale: false }, &DELAYS);
        assert_eq!(next, Next::RetryIn(DELAYS.resync));
        assert_eq!(s.resync_due(), Next::Nothing, "the retry is the resync");
        assert_eq!(s.desire(), Next::Sync, "news goes ahead");
    }

    #[test]
    fn a_stale_failed_plan_is_retried_at_once() {
        let mut s = Schedule::default();
        s.desire();
        let next = s.finished(Outcome::Final { stale: true }, &DELAYS);
        assert_eq!(next, Next::Sync);
        // A newer desire that waited: the same.
        s.desire();
        let next = s.finished(Outcome::Final { stale: false }, &DELAYS);
        assert_eq!(next, Next::Sync);
        assert_eq!(s.failures(), 2);
    }

    #[test]
    fn a_retryable_failure_drops_the_pending_desire_into_the_retry() {
        let mut s = Schedule::default();
        s.desire();
        s.desire();
        assert!(matches!(
            s.finished(Outcome::Retryable, &DELAYS),
            Next::RetryIn(_)
        ));
        assert_eq!(s.retry_due(), Next::Sync);
        assert_eq!(s.finished(Outcome::Ok, &DELAYS), Next::Nothing);
    }

    #[test]
    fn draining_starts_nothing() {
        let mut s = Schedule::default();
        s.desire();
        assert!(s.drain());
        assert_eq!(s.desire(), Next::Nothing);
        assert_eq!(s.finished(Outcome::Ok, &DELAYS), Next::Nothing);
        assert!(!s.drain());
    }
}
