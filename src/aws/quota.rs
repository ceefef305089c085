//! AWS's own throttling buckets, mirrored on the client side, so that a throttle lbmanager can
//! predict is waited out here instead of spent as a failed call.
//!
//! AWS throttles with token buckets, several per call: Elastic Load Balancing draws every call
//! from an account bucket *and* from the bucket of its category (registration, describe), per
//! account, region and API version; Route53 draws every request from an account bucket and the
//! bucket of its operation, and every changed record from a change-throughput bucket. A call goes
//! out only when every bucket it draws from has the tokens, and then takes them from all at once
//! (so a call waiting for one bucket holds nothing in the others).
//!
//! The published figures (`../shared/notes/aws-quotas.md` in the project's notes, and the README)
//! are the defaults; `share` leaves part of them to other tools of the account; one token of every
//! bucket is kept in reserve and every refill is paced 1% below AWS's, since two token buckets a
//! network apart disagree by milliseconds. Callers of one category queue in order (a tokio mutex is fair), so a steady
//! stream of calls for one load balancer can't starve another.
//!
//! Why not `governor`: it keeps one bucket per limiter and takes from it alone; a call here must
//! take from two or three buckets atomically, with fractional costs (changed records).

use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that tests can pause it; the same as std's otherwise.
use tokio::time::Instant;

/// One published bucket: how many tokens it holds, how many come back each second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub capacity: f64,
    pub refill: f64,
}

impl Bucket {
    pub const fn new(capacity: f64, refill: f64) -> Self {
        Bucket { capacity, refill }
    }

    /// The part of this bucket lbmanager allows itself: `share` of it, less one token kept in
    /// reserve, refilled a little below AWS's rate. Paced exactly at AWS's rate, a call that
    /// reaches AWS a few milliseconds early (network jitter, drift between the two clocks) finds
    /// its bucket empty; the reserve absorbs up to one refill period of that.
    pub fn scaled(self, share: f64) -> Self {
        Bucket {
            capacity: (self.capacity * share - RESERVE).max(1.0),
            refill: self.refill * share * PACING_MARGIN,
        }
    }
}

/// Refill rates are paced this far below AWS's (see [`Bucket::scaled`]).
pub const PACING_MARGIN: f64 = 0.99;
/// Tokens of each bucket never counted on (see [`Bucket::scaled`]).
pub const RESERVE: f64 = 1.0;

/// Elastic Load Balancing, per account, region and API version (Classic and v2 each have these).
pub mod elb {
    use super::{Bucket, Quota};

    /// Drawn by every call.
    pub const ACCOUNT: Bucket = Bucket::new(40.0, 10.0);
    /// Register and Deregister.
    pub const REGISTRATION: Bucket = Bucket::new(20.0, 4.0);
    /// Describe calls.
    pub const DESCRIBE: Bucket = Bucket::new(40.0, 10.0);

    /// The buckets' names, in the order of [`quota`]'s.
    pub const NAMES: [&str; 3] = ["account", "registration", "describe"];

    /// The two kinds of call lbmanager makes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Call {
        /// DescribeLoadBalancers, DescribeTargetGroups, DescribeTargetHealth.
        Describe,
        /// Register or Deregister.
        Registration,
    }

    /// One scope's buckets (an account, a region, an API version), `share` of them.
    pub fn quota(share: f64) -> Quota {
        Quota::new(
            &[ACCOUNT, REGISTRATION, DESCRIBE].map(|b| b.scaled(share)),
            2,
        )
    }

    /// The queue and the buckets of a call.
    fn draws(call: Call) -> (usize, [(usize, f64); 2]) {
        match call {
            Call::Registration => (0, [(0, 1.0), (1, 1.0)]),
            Call::Describe => (1, [(0, 1.0), (2, 1.0)]),
        }
    }

    /// Waits for and takes the quota of one call.
    pub async fn take(quota: &Quota, call: Call) {
        let (lane, draws) = draws(call);
        quota.take(lane, &draws).await;
    }

    /// AWS throttled a call of this kind.
    pub fn throttled(quota: &Quota, call: Call) {
        quota.throttled(&draws(call).1);
    }
}

/// Route53, per account (since 2026-07-30).
pub mod route53 {
    use super::{Bucket, Quota};
    /// Drawn by every request.
    pub const ACCOUNT: Bucket = Bucket::new(50.0, 10.0);
    /// The bucket of each operation not listed otherwise (ListResourceRecordSets,
    /// ChangeResourceRecordSets, GetChange and GetHostedZone among them): one each.
    pub const OPERATION: Bucket = Bucket::new(50.0, 10.0);
    /// Change throughput, per account: 1,500 changes at once, 100 a second after that, where a
    /// CREATE or a DELETE counts 1 and an UPSERT 2 (the Route53 developer guide's throttling
    /// page, "Tokens consumed per operation"); `--route53-change-burst` and
    /// `--route53-change-rate` set it.
    pub const CHANGES: Bucket = Bucket::new(1500.0, 100.0);

    /// The buckets' names, in the order of [`quota`]'s (see `draws`).
    pub const NAMES: [&str; 11] = [
        "account",
        "ListResourceRecordSets",
        "ChangeResourceRecordSets",
        "changed records",
        "GetChange",
        "GetHostedZone",
        "ListHealthChecks",
        "CreateHealthCheck",
        "DeleteHealthCheck",
        "GetHealthCheckStatus",
        "ChangeTagsForResource",
    ];

    /// The calls lbmanager makes.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Call {
        /// ListResourceRecordSets.
        List,
        /// ChangeResourceRecordSets drawing this many change tokens.
        Change(f64),
        /// GetChange.
        Get,
        /// GetHostedZone.
        GetZone,
        /// A health-check call: ListHealthChecks, CreateHealthCheck, DeleteHealthCheck,
        /// GetHealthCheckStatus, ChangeTagsForResource, each with its own bucket (Route53 lists
        /// none of them otherwise).
        Check(CheckCall),
    }

    /// The health-check operations lbmanager makes.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum CheckCall {
        List = 6,
        Create = 7,
        Delete = 8,
        Status = 9,
        Tag = 10,
    }

    /// The account's buckets, `share` of them; `changes` is AWS's change-throughput bucket.
    pub fn quota(share: f64, changes: Bucket) -> Quota {
        // Each operation its own bucket, by index: see `draws`.
        let mut buckets = [OPERATION; 11];
        (buckets[0], buckets[3]) = (ACCOUNT, changes);
        Quota::new(&buckets.map(|b| b.scaled(share)), 4)
    }

    /// The queue and the buckets of a call.
    fn draws(call: Call) -> (usize, Vec<(usize, f64)>) {
        match call {
            Call::List => (0, vec![(0, 1.0), (1, 1.0)]),
            Call::Change(n) => (1, vec![(0, 1.0), (2, 1.0), (3, n)]),
            Call::Get => (2, vec![(0, 1.0), (4, 1.0)]),
            Call::GetZone => (2, vec![(0, 1.0), (5, 1.0)]),
            // Their own queue: a burst of checks made waits behind no read of the zone.
            Call::Check(op) => (3, vec![(0, 1.0), (op as usize, 1.0)]),
        }
    }

    /// Waits for and takes the quota of one call.
    pub async fn take(quota: &Quota, call: Call) {
        let (lane, draws) = draws(call);
        quota.take(lane, &draws).await;
    }

    /// AWS throttled a call of this kind (which of its buckets was empty, AWS does not say).
    pub fn throttled(quota: &Quota, call: Call) {
        quota.throttled(&draws(call).1);
    }
}

/// How full one bucket is now (what the status page shows).
#[derive(Clone, Debug, PartialEq)]
pub struct BucketUse {
    pub name: &'static str,
    /// Tokens left now, of `capacity` (lbmanager's part of the bucket).
    pub tokens: f64,
    pub capacity: f64,
    /// Tokens back each second now: below the bucket's rate for a while after a throttle.
    pub refill: f64,
    /// Slowed down after AWS throttled a call that draws from it.
    pub slowed: bool,
}

/// The buckets of one throttling scope (an account and region of one API), shared by all the
/// actors that call it.
pub struct Quota {
    buckets: Mutex<Vec<Level>>,
    /// One queue per kind of call: callers of one kind take their turn in order.
    lanes: Vec<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Level {
    bucket: Bucket,
    tokens: f64,
    at: Instant,
    /// The part of the refill rate in use: halved at each throttle AWS answers (its bucket holds
    /// less than ours: other tools of the account spend it), then won back a little every second.
    pace: f64,
}

/// The least of the refill rate a throttled bucket keeps.
const MIN_PACE: f64 = 1.0 / 16.0;
/// How much of the refill rate a bucket wins back each second without a throttle.
const PACE_RECOVERY: f64 = 0.05;

impl Level {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.bucket.refill * self.pace).min(self.bucket.capacity);
        self.pace = (self.pace + elapsed * PACE_RECOVERY).min(1.0);
        self.at = now;
    }

    /// How long until `n` tokens are there (`n` no more than the capacity).
    fn wait_for(&self, n: f64) -> Duration {
        let missing = n.min(self.bucket.capacity) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / (self.bucket.refill * self.pace).max(1e-6))
        }
    }
}

impl Quota {
    /// Buckets start full, as AWS's do for an account that was quiet; `lanes` kinds of call.
    pub fn new(buckets: &[Bucket], lanes: usize) -> Self {
        let now = Instant::now();
        Quota {
            buckets: Mutex::new(
                buckets
                    .iter()
                    .map(|&bucket| Level {
                        bucket,
                        tokens: bucket.capacity,
                        at: now,
                        pace: 1.0,
                    })
                    .collect(),
            ),
            lanes: (0..lanes.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Waits, in `lane`'s queue, until every bucket of `draws` (index, tokens) has its tokens,
    /// then takes them all. A draw larger than its bucket waits for a full bucket and empties it.
    pub async fn take(&self, lane: usize, draws: &[(usize, f64)]) {
        let _turn = self.lanes[lane.min(self.lanes.len() - 1)].lock().await;
        loop {
            let wait = self.try_take(draws, Instant::now());
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// AWS throttled a call that drew from `draws`' buckets: one of them is empty on AWS's side,
    /// whatever ours say. Every one of them is emptied and paced at half its rate, so that the
    /// other callers of the scope wait too instead of each spending a throttled call.
    pub fn throttled(&self, draws: &[(usize, f64)]) {
        let mut levels = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for &(i, _) in draws {
            let level = &mut levels[i];
            level.refill(now);
            level.tokens = level.tokens.min(0.0);
            level.pace = (level.pace / 2.0).max(MIN_PACE);
        }
    }

    /// Each bucket as it stands now, named by `names` (in the order the buckets were given).
    pub fn uses(&self, names: &[&'static str]) -> Vec<BucketUse> {
        let mut levels = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        levels
            .iter_mut()
            .zip(names)
            .map(|(level, &name)| {
                level.refill(now);
                BucketUse {
                    name,
                    tokens: level.tokens.max(0.0),
                    capacity: level.bucket.capacity,
                    refill: level.bucket.refill * level.pace,
                    slowed: level.pace < 1.0,
                }
            })
            .collect()
    }

    /// Takes the tokens if all are there (returns zero), or says how long until they are.
    fn try_take(&self, draws: &[(usize, f64)], now: Instant) -> Duration {
        let mut levels = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = Duration::ZERO;
        for &(i, n) in draws {
            levels[i].refill(now);
            wait = wait.max(levels[i].wait_for(n));
        }
        if wait.is_zero() {
            for &(i, n) in draws {
                let level = &mut levels[i];
                level.tokens -= n.min(level.bucket.capacity);
            }
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_takes_from_every_bucket_it_draws_from_or_from_none() {
        let q = Quota::new(&[Bucket::new(3.0, 1.0), Bucket::new(1.0, 1.0)], 1);
        let t = Instant::now();
        assert_eq!(q.try_take(&[(0, 1.0), (1, 1.0)], t), Duration::ZERO);
        // The second bucket is empty: nothing is taken from the first either.
        let wait = q.try_take(&[(0, 1.0), (1, 1.0)], t);
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        assert_eq!(q.try_take(&[(0, 2.0)], t), Duration::ZERO, "two left");
        // One second later the second bucket has refilled one token, the first one too.
        let later = t + Duration::from_secs(1);
        assert_eq!(q.try_take(&[(0, 1.0), (1, 1.0)], later), Duration::ZERO);
    }

    #[test]
    fn a_throttle_empties_the_buckets_and_slows_their_refill_for_a_while() {
        let q = Quota::new(&[Bucket::new(10.0, 10.0)], 1);
        let t = Instant::now();
        q.throttled(&[(0, 1.0)]);
        // Empty, and refilled at 5 a second: one token in 0.2 s, not 0.1 s.
        let wait = q.try_take(&[(0, 1.0)], t);
        assert!(wait > Duration::from_millis(150), "{wait:?}");
        // Ten quiet seconds later the full rate is back.
        let later = t + Duration::from_secs(20);
        assert_eq!(q.try_take(&[(0, 10.0)], later), Duration::ZERO);
        let wait = q.try_take(&[(0, 1.0)], later);
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
    }

    #[test]
    fn a_draw_larger_than_its_bucket_waits_for_a_full_bucket() {
        let q = Quota::new(&[Bucket::new(10.0, 10.0)], 1);
        let t = Instant::now();
        assert_eq!(q.try_take(&[(0, 25.0)], t), Duration::ZERO);
        let wait = q.try_take(&[(0, 25.0)], t);
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
    }

    #[test]
    fn the_share_and_the_margin_scale_a_bucket() {
        let b = Bucket::new(20.0, 4.0).scaled(0.5);
        assert_eq!(b.capacity, 9.0);
        assert!((b.refill - 2.0 * PACING_MARGIN).abs() < 1e-9);
        assert_eq!(Bucket::new(1.0, 1.0).scaled(0.1).capacity, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_shows_what_is_left_and_whether_a_throttle_slowed_it() {
        let q = elb::quota(1.0);
        elb::take(&q, elb::Call::Registration).await;
        let uses = q.uses(&elb::NAMES);
        let by_name = |n: &str| uses.iter().find(|u| u.name == n).unwrap().clone();
        assert_eq!(uses.len(), 3);
        assert_eq!(
            by_name("registration").tokens,
            by_name("registration").capacity - 1.0
        );
        assert_eq!(by_name("describe").tokens, by_name("describe").capacity);
        assert!(!by_name("account").slowed);
        elb::throttled(&q, elb::Call::Describe);
        let uses = q.uses(&elb::NAMES);
        let describe = uses.iter().find(|u| u.name == "describe").unwrap();
        assert!(describe.slowed && describe.tokens == 0.0, "{describe:?}");
        assert!(describe.refill < elb::DESCRIBE.refill, "{describe:?}");
        assert!(
            !uses
                .iter()
                .find(|u| u.name == "registration")
                .unwrap()
                .slowed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_of_one_kind_are_paced_at_the_refill_rate_after_the_burst() {
        let q = Quota::new(&[Bucket::new(40.0, 10.0), Bucket::new(20.0, 4.0)], 1);
        let t = tokio::time::Instant::now();
        for _ in 0..28 {
            q.take(0, &[(0, 1.0), (1, 1.0)]).await;
        }
        // 20 at once, then 8 more at 4 a second: 2 seconds (the quota here is not scaled).
        let took = t.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "{took}");
    }
}
