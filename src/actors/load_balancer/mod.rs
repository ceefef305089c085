//! One actor per load balancer: a Classic ELB, a target group, or one Route53 FQDN.
//!
//! It holds the latest desired member set and makes sure AWS gets there. *When* it syncs is the
//! pure [`Schedule`]'s business (one in flight, one pending, backoff, resync); *how* is
//! [`crate::sync`]'s; what it publishes is [`crate::status`]'s. The actor is generic over its
//! [`Kind`]: an ELB or a target group ([`Elb`]) runs its sync itself; an FQDN ([`Fqdn`]) hands its
//! desired record sets to its zone's `HostedZone`, which serialises all changes of the zone, and
//! follows its Route53 changes until they are `INSYNC`. Each kind keeps its own fields and rules;
//! what they share (the desire, the schedule, the status, the reports, draining, settling reads)
//! is here, once.

use std::sync::Arc;

use actix::prelude::*;
use slog::{warn, Logger};

use super::{Cause, Settings};
use crate::aws::AwsError;
use crate::key::LbId;
use crate::plan::Rejected;
use crate::status::{self, LastSync, LbStatus, MemberState, PendingChange};
use crate::sync::elb::Owned;
use crate::sync::schedule::{Next, Outcome, Schedule};

mod elb;
mod fqdn;
mod messages;

pub use elb::Elb;
pub use fqdn::{Fqdn, SetZone};
pub use messages::{Barrier, Desire, Drain, LbHandle, Retire, Synced, Watched};

/// What differs between the kinds of load balancer: how a sync runs and what it saw of AWS.
/// Everything else (when to sync, the status, the reports) is [`LoadBalancer`]'s, the same for
/// all.
pub trait Kind: Sized + Unpin + 'static {
    /// What one sync saw of AWS, for the status.
    type Seen;

    /// Starts the sync of `desire` (already [`LoadBalancer::in_flight`]); it ends with
    /// [`LoadBalancer::finished`].
    fn start(lb: &mut LoadBalancer<Self>, desire: Desire, ctx: &mut Context<LoadBalancer<Self>>);

    /// The members, record TTL and etcd revision of the status after a sync that saw `seen`.
    fn status_of(
        lb: &LoadBalancer<Self>,
        seen: Self::Seen,
        in_flight: &InFlight,
    ) -> (Vec<MemberState>, Option<i64>, i64);

    /// A new desire arrived (before the schedule follows it).
    fn desired(&mut self, _desire: &Desire) {}

    /// The same members were written again while AWS refuses some: the next sync tries them again.
    fn retry_refused(&mut self) {}

    /// Not to be retired yet, for a reason of this kind's own.
    fn holding(&self) -> bool {
        false
    }

    /// The Route53 changes not yet `INSYNC` that a status at `revision` carries.
    fn carried(&mut self, _revision: i64) -> Vec<PendingChange> {
        Vec::new()
    }
}

/// A sync in flight. Dropping it (the sync ended, or the actor stopped or panicked mid-sync)
/// takes it off the `syncs_pending` gauge, so the gauge never leaks.
pub struct InFlight {
    pending: prometheus_client::metrics::gauge::Gauge,
    started: tokio::time::Instant,
    /// The desire it set out with (a zone sync brings AWS to exactly that one).
    revision: i64,
    cause: Cause,
}

impl InFlight {
    fn new(settings: &Settings, desire: &Desire) -> Self {
        let pending = settings.metrics.syncs_pending.clone();
        pending.inc();
        InFlight {
            pending,
            started: tokio::time::Instant::now(),
            revision: desire.revision,
            cause: desire.cause,
        }
    }
}

/// The first wait before reading a settling load balancer again (doubling up to
/// [`SETTLE_MAX`]): registrations, health checks and draining take seconds to minutes.
const SETTLE_FIRST: std::time::Duration = std::time::Duration::from_secs(2);
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pending.dec();
    }
}

/// A load balancer's actor, of kind `K`.
pub struct LoadBalancer<K: Kind> {
    id: LbId,
    log: Logger,
    settings: Arc<Settings>,
    supervisor: Recipient<Synced>,
    desired: Option<Desire>,
    /// The generation AWS was last brought to (a sync that succeeded).
    synced: Option<u64>,
    /// The status as last published (see [`crate::status`]), shared with the StateWriter until
    /// it is written (one copy of a status of 1,000 members, not three).
    published: Option<Arc<LbStatus>>,
    /// The read scheduled while members settle (health checks, draining), and how many were made.
    settle: Option<SpawnHandle>,
    settle_reads: u32,
    /// Someone waits on AWS's progress (see [`Watched`]).
    watched: bool,
    /// `--ownership shared`: the members lbmanager added (none: `exclusive`).
    owned: Option<Owned>,
    /// The members last found in AWS that lbmanager did not add, and leaves alone.
    foreign: Vec<String>,
    /// When to sync: the rules, without the actor.
    schedule: Schedule,
    /// The metric side of the sync in flight.
    in_flight: Option<InFlight>,
    /// The scheduled retry, if any.
    retry: Option<SpawnHandle>,
    /// Wanted members AWS refused at the last sync, with its reasons.
    rejected: Rejected,
    /// The revision of the status this actor started from, while no key changed since (see
    /// [`Self::starting_from`]).
    current: Option<i64>,
    /// Set by [`Drain`]: who waits for the sync in flight to end.
    draining: Option<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// The latest [`Barrier`]: a status published while idle and in step is at that revision at
    /// least.
    barrier: i64,
    /// What this kind of load balancer keeps of its own.
    kind: K,
}

impl<K: Kind> LoadBalancer<K> {
    pub fn new(
        id: LbId,
        kind: K,
        log: &Logger,
        settings: Arc<Settings>,
        supervisor: Recipient<Synced>,
    ) -> Self {
        let log = log.new(slog::o!("lb" => id.to_string()));
        LoadBalancer {
            id,
            log,
            settings,
            supervisor,
            desired: None,
            synced: None,
            published: None,
            settle: None,
            settle_reads: 0,
            watched: false,
            owned: None,
            foreign: Vec::new(),
            schedule: Schedule::default(),
            in_flight: None,
            retry: None,
            rejected: Rejected::new(),
            current: None,
            draining: None,
            barrier: 0,
            kind,
        }
    }

    /// Does what the schedule says.
    fn follow(&mut self, next: Next, ctx: &mut Context<Self>) {
        match next {
            Next::Nothing => {}
            Next::Sync => {
                if let Some(handle) = self.retry.take() {
                    ctx.cancel_future(handle);
                }
                self.start_sync(ctx);
            }
            Next::RetryIn(delay) => {
                self.retry = Some(ctx.run_later(delay, |act, ctx| {
                    act.retry = None;
                    let next = act.schedule.retry_due();
                    act.follow(next, ctx);
                }));
            }
        }
    }

    /// Follows `next`; a sync it starts runs for `cause`.
    fn follow_for(&mut self, cause: Cause, next: Next, ctx: &mut Context<Self>) {
        if next == Next::Sync {
            if let Some(desire) = self.desired.as_mut() {
                desire.cause = cause;
            }
        }
        self.follow(next, ctx);
    }

    fn start_sync(&mut self, ctx: &mut Context<Self>) {
        let Some(desire) = self.desired.clone() else {
            self.schedule.abandon();
            return;
        };
        self.in_flight = Some(InFlight::new(&self.settings, &desire));
        K::start(self, desire, ctx);
    }

    /// `--ownership shared`: what lbmanager added to this load balancer, and where to record it.
    pub fn owning(mut self, owned: Option<Owned>) -> Self {
        self.owned = owned;
        self
    }

    /// Starts from the status last published for this load balancer (by this lbmanager before
    /// a restart of the actor, or by the one before): what it knew of AWS stands until a sync
    /// says otherwise. `current`: no key changed after it, so a sync that finds the same
    /// writes nothing (see [`Self::update_status`]).
    pub fn starting_from(mut self, published: Option<Arc<LbStatus>>, current: bool) -> Self {
        self.current = current
            .then(|| published.as_ref().map(|p| p.revision))
            .flatten();
        self.published = published;
        self
    }

    /// Shutting down and nothing in flight any more: answer whoever waits in [`Drain`].
    fn release_drain(&mut self) {
        if let Some(waiting) = self.draining.as_mut() {
            for tx in waiting.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    /// Keeps the members AWS refused; returns them when the set or a reason changed.
    fn update_rejected(&mut self, rejected: Rejected) -> Option<Arc<Rejected>> {
        if rejected == self.rejected {
            return None;
        }
        self.rejected = rejected;
        Some(Arc::new(self.rejected.clone()))
    }

    /// Says (once per change) which members lbmanager leaves alone because it did not add them.
    fn note_foreign(&mut self, members: &[status::MemberState]) {
        let wanted = self
            .desired
            .as_ref()
            .map(|d| d.members.clone())
            .unwrap_or_default();
        let foreign: Vec<String> = members
            .iter()
            .filter(|m| m.foreign && !wanted.iter().any(|w| status::names(&self.id, w, &m.member)))
            .map(|m| m.member.to_string())
            .collect();
        if foreign != self.foreign {
            if !foreign.is_empty() {
                slog::info!(self.log, "leaving members lbmanager did not add (--ownership shared)";
                    "kept" => foreign.join(","));
            }
            self.foreign = foreign;
        }
    }

    /// The kind label of this load balancer's metrics.
    fn kind(&self) -> &'static str {
        match self.id {
            LbId::Elb { .. } => "elb",
            LbId::TargetGroup { .. } => "elbv2",
            LbId::Route53 { .. } => "route53",
        }
    }

    /// A sync ended: it brought AWS to `generation` (or failed with `error`; `stale`: its plan
    /// was built from what the zone remembered), saw `seen` (nothing when it failed), and the
    /// refused members changed to `rejected`. Publishes, reports, and follows the schedule.
    fn finished(
        &mut self,
        generation: u64,
        error: Option<AwsError>,
        rejected: Option<Arc<Rejected>>,
        stale: bool,
        seen: Option<K::Seen>,
        ctx: &mut Context<Self>,
    ) {
        let Some(in_flight) = self.in_flight.take() else {
            // The answer of a sync given up (its zone actor was replaced).
            return;
        };
        if error.is_none() {
            self.synced = Some(generation);
        }
        let status = self.update_status(&in_flight, generation, error.as_ref(), seen);
        self.settings
            .metrics
            .synced(self.kind(), error.is_none(), in_flight.started.elapsed());
        drop(in_flight);
        self.report(true, generation, error.clone(), rejected, status);
        self.release_drain();
        let outcome = match &error {
            None => Outcome::Ok,
            Some(e) if e.is_retryable() => Outcome::Retryable,
            Some(_) => Outcome::Final { stale },
        };
        let next = self.schedule.finished(outcome, &self.settings.delays());
        self.settings.metrics.lb_synced(
            &self.id.to_string(),
            error.is_none(),
            self.schedule.failures(),
        );
        if let Some(err) = &error {
            let failures = self.schedule.failures();
            match next {
                Next::Sync => warn!(self.log, "sync failed, retrying at once from a fresh read \
                    (the failed plan was already out of date)";
                    "error" => %err, "stale_plan" => stale, "failures" => failures),
                Next::RetryIn(delay) => warn!(self.log, "sync failed, will retry";
                    "error" => %err, "retry_in" => ?delay, "failures" => failures),
                Next::Nothing => {}
            }
        }
        self.follow(next, ctx);
        self.settle_later(ctx);
    }

    /// Builds the status after a sync; returns it when it differs from the one published.
    fn update_status(
        &mut self,
        in_flight: &InFlight,
        generation: u64,
        error: Option<&AwsError>,
        seen: Option<K::Seen>,
    ) -> Option<Arc<LbStatus>> {
        let previous = self.published.as_deref();
        let (members, ttl, revision) = match seen {
            Some(seen) => K::status_of(self, seen, in_flight),
            // The sync failed: what was published before still stands.
            None => (
                previous.map(|p| p.members.clone()).unwrap_or_default(),
                previous.and_then(|p| p.ttl),
                previous.map_or(0, |p| p.revision),
            ),
        };
        self.note_foreign(&members);
        let latest = self.desired.as_ref();
        let in_step = error.is_none() && latest.map(|d| d.generation) == Some(generation);
        // In step with the latest desire: every change before a host's barrier is applied.
        let revision = match in_step {
            true => revision.max(self.barrier),
            false => revision,
        };
        let status = LbStatus {
            load_balancer: self.id.to_string(),
            revision,
            in_step,
            desired: latest.map_or(0, |d| d.members.len()),
            members,
            members_more: 0,
            ttl,
            last_sync: LastSync {
                at: status::now(),
                ok: error.is_none(),
                cause: in_flight.cause.to_string(),
                error: error.map(|e| e.to_string()),
            },
            rejected: status::Rejections::of(&self.rejected),
            dns_pending: self.kind.carried(revision),
        };
        let (mut status, cut) = status.bounded();
        if cut {
            self.settings
                .metrics
                .limit(crate::metrics::Limit::RecordSize);
        }
        // Started from a status that no key changed since (a restart, a new leader): in step,
        // AWS is where that status says, up to its revision. Said again, it is not written.
        if let Some(current) = self.current.take().filter(|_| in_step) {
            let mut same = status.clone();
            same.revision = current;
            if self.published.as_ref().is_some_and(|p| same.same_as(p)) {
                status = same;
            }
        }
        self.publish(status)
    }

    /// Keeps `status` as the published one; returns it when it differs from the last.
    fn publish(&mut self, status: LbStatus) -> Option<Arc<LbStatus>> {
        if self.published.as_ref().is_some_and(|p| status.same_as(p)) {
            return None;
        }
        let status = Arc::new(status);
        self.published = Some(status.clone());
        Some(status)
    }

    /// Not to be retired yet: AWS is still moving members while someone waits (see
    /// [`Self::settling`]), or its kind holds it (a Route53 change of the name not `INSYNC`
    /// yet, so that a `--drain` waiting for it is told, from the status, when it is).
    fn holding(&self) -> bool {
        self.settling() || self.kind.holding()
    }

    /// Whether someone waits (see [`Watched`]) while a member is not (yet) healthy as last
    /// published: a registration not read back yet, health checks under way or failing while the
    /// application starts (`initial`, `unhealthy`, `OutOfService`, …), a target draining. The
    /// waiter's lease bounds how long that lasts.
    fn settling(&self) -> bool {
        self.watched
            && self
                .published
                .as_ref()
                .is_some_and(|p| status::settling(&self.id, p))
    }

    /// While someone waits and AWS is still moving members (see [`Self::settling`]), reads the
    /// load balancer again in a little while, waiting longer each time: whoever waits in
    /// `lbmanager member … --healthy/--drain` learns of it from the status. Nobody waiting, or
    /// a settled load balancer, costs nothing.
    fn settle_later(&mut self, ctx: &mut Context<Self>) {
        if !self.settling() {
            self.settle_reads = 0;
            return;
        }
        if self.settle.is_some() {
            return;
        }
        let delay = SETTLE_FIRST
            .saturating_mul(2u32.saturating_pow(self.settle_reads.min(8)))
            .min(SETTLE_MAX)
            .min(self.settings.resync_interval);
        self.settle = Some(ctx.run_later(delay, |act, ctx| {
            act.settle = None;
            act.settle_reads += 1;
            let next = act.schedule.resync_due();
            act.follow_for(Cause::Settle, next, ctx);
        }));
    }
}

impl<K: Kind> Actor for LoadBalancer<K> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.resync_interval, |act, ctx| {
            let next = act.schedule.resync_due();
            act.follow_for(Cause::Resync, next, ctx);
        });
    }
}

impl<K: Kind> Handler<Desire> for LoadBalancer<K> {
    type Result = ();

    fn handle(&mut self, msg: Desire, ctx: &mut Self::Context) {
        // The same members again, AWS already brought to them and nothing under way: only the
        // revision moves (a key written again, or one that does not count): no call to AWS.
        let unchanged = self.desired.as_ref().is_some_and(|d| {
            d.members == msg.members && self.synced == Some(d.generation) && self.schedule.idle()
        });
        self.kind.desired(&msg);
        let (generation, revision) = (msg.generation, msg.revision);
        let event = msg.cause.is_etcd_change();
        if event {
            // A key changed: the status started from no longer holds for every key.
            self.current = None;
        }
        self.desired = Some(msg);
        if unchanged && event && !self.rejected.is_empty() {
            // Refused members: the next sync tries them again instead.
            self.kind.retry_refused();
        } else if unchanged && event {
            self.synced = Some(generation);
            let status = self.published.as_deref().cloned().map(|mut p| {
                p.revision = p.revision.max(revision);
                p.dns_pending = self.kind.carried(p.revision);
                p
            });
            let status = status.and_then(|s| self.publish(s));
            self.report(true, generation, None, None, status);
            return;
        }
        let next = self.schedule.desire();
        self.follow(next, ctx);
    }
}

impl<K: Kind> LoadBalancer<K> {
    /// Publishes the last status changed by `edit` (when that changes it), between syncs.
    fn republish(&mut self, edit: impl FnOnce(&mut LbStatus)) {
        let status = self.published.as_deref().cloned().and_then(|mut p| {
            edit(&mut p);
            self.publish(p)
        });
        // The generation AWS was last brought to: one older than the latest desire keeps the
        // load balancer from being retired.
        self.report(false, self.synced.unwrap_or_default(), None, None, status);
    }

    /// Tells the Supervisor of a sync's end (`sync`) or of a status changed between syncs.
    fn report(
        &self,
        sync: bool,
        generation: u64,
        error: Option<AwsError>,
        rejected: Option<Arc<Rejected>>,
        status: Option<Arc<LbStatus>>,
    ) {
        self.supervisor.do_send(Synced {
            lb: self.id.clone(),
            sync,
            generation,
            error,
            rejected,
            status,
            // A sync in flight may still change AWS: not retired under it.
            settling: self.holding() || self.in_flight.is_some(),
        });
    }
}

impl<K: Kind> Handler<Barrier> for LoadBalancer<K> {
    type Result = ();

    fn handle(&mut self, Barrier(revision): Barrier, _: &mut Self::Context) {
        self.barrier = self.barrier.max(revision);
        // Idle and in step: nothing before the barrier waits to be applied. Otherwise the status
        // of the sync that brings it in step is raised (see `update_status`).
        let idle = self.in_flight.is_none()
            && self.schedule.idle()
            && self
                .desired
                .as_ref()
                .is_some_and(|d| self.synced == Some(d.generation))
            && self.published.as_ref().is_some_and(|p| p.last_sync.ok);
        if idle {
            let barrier = self.barrier;
            self.republish(|p| p.revision = p.revision.max(barrier));
        }
    }
}

impl<K: Kind> Handler<Watched> for LoadBalancer<K> {
    type Result = ();

    fn handle(&mut self, Watched(watched): Watched, ctx: &mut Self::Context) {
        self.watched = watched;
        if watched {
            self.settle_reads = 0;
            self.settle_later(ctx);
        } else if let Some(handle) = self.settle.take() {
            ctx.cancel_future(handle);
        }
    }
}

impl<K: Kind> Handler<Drain> for LoadBalancer<K> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> Self::Result {
        if let Some(handle) = self.retry.take() {
            ctx.cancel_future(handle);
        }
        let waiting = self.draining.get_or_insert_with(Vec::new);
        if !self.schedule.drain() {
            return Box::pin(async {});
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiting.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl<K: Kind> Handler<Retire> for LoadBalancer<K> {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
