//! One actor per load balancer (a Classic ELB, a target group, or one Route53 FQDN).
//!
//! It holds the latest desired member set and makes sure AWS gets there. *When* it syncs is the
//! pure [`Schedule`]'s business (one in flight, one pending, backoff, resync); *how* is
//! [`crate::sync`]'s. For an ELB or a target group it runs [`sync_elb`] itself; for an FQDN it hands
//! its desired record sets to its zone's [`HostedZone`], which serialises all changes of the zone.
//! The actor only routes messages between them and keeps the metrics.

use std::sync::Arc;

use actix::prelude::*;
use slog::{warn, Logger};

use super::hosted_zone::{ChangeInSync, HostedZone, ZoneDesire, ZoneSynced};
use super::{Cause, Settings};
use crate::aws::{AwsError, ElbApi};
use crate::key::LbId;
use crate::plan::{RecordSet, Rejected};
use crate::status::{self, LastSync, LbStatus, PendingChange};
use crate::sync::elb::{sync_elb, ElbSync, ElbSyncContext, Owned, Want, Wanted};
use crate::sync::ips_of;
use crate::sync::schedule::{Next, Outcome, Schedule};
use crate::sync::zone::FqdnWant;

/// Where a load balancer's members live.
#[derive(Clone)]
pub enum Backend {
    Elb(Arc<dyn ElbApi>),
    Route53(Addr<HostedZone>),
}

pub use crate::fleet::Desire;

/// The members a load balancer should have now, as the fleet decided.
impl Message for Desire {
    type Result = ();
}

/// A Route53 load balancer's zone actor was replaced (after a restart).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetZone(pub Addr<HostedZone>);

/// Whether someone waits on AWS's progress with this load balancer's members (see
/// [`crate::layout::Layout::waiting`]): only then is it read again while they settle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watched(pub bool);

/// A host waits from this etcd revision on (see [`crate::status::Change::NotThere`]): the status
/// is raised to it once the load balancer is idle and in step with every change before it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Barrier(pub i64);

/// The Supervisor no longer needs this load balancer (no keys, AWS emptied): stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Shutting down: start no new sync, and answer once the one in flight (if any) has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Report to the Supervisor after each sync attempt.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Synced {
    pub lb: LbId,
    /// A sync ended (false: the status changed between syncs).
    pub sync: bool,
    pub generation: u64,
    pub error: Option<AwsError>,
    /// The members AWS refuses, when that set (or a reason) changed with this sync.
    pub rejected: Option<Arc<Rejected>>,
    /// The load balancer's status, when something in it changed (see [`crate::status`]).
    pub status: Option<Arc<LbStatus>>,
    /// AWS is still moving members (a target draining, …): a load balancer without keys is not
    /// done with until it has settled, so that whoever waits for the drain is told.
    pub settling: bool,
}

/// A sync in flight. Dropping it (the sync ended, or the actor stopped or panicked mid-sync)
/// takes it off the `syncs_pending` gauge, so the gauge never leaks.
struct InFlight {
    pending: prometheus_client::metrics::gauge::Gauge,
    started: std::time::Instant,
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
            started: std::time::Instant::now(),
            revision: desire.revision,
            cause: desire.cause,
        }
    }
}

/// What a sync saw of AWS, for the status.
enum Seen {
    Elb(Box<ElbSync>),
    /// A zone's record sets after the sync, the longest TTL they had before it, and the health
    /// read of its values (`--route53-health-check`).
    Zone(
        Vec<RecordSet>,
        Option<i64>,
        std::collections::BTreeMap<std::net::IpAddr, String>,
    ),
    /// The sync failed: what was published before still stands.
    Nothing,
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

pub struct LoadBalancer {
    id: LbId,
    log: Logger,
    backend: Backend,
    settings: Arc<Settings>,
    supervisor: Recipient<Synced>,
    desired: Option<Desire>,
    /// The same desire, for the ELB sync in flight to read again after it waited.
    wanted: tokio::sync::watch::Sender<Want>,
    /// The generation AWS was last brought to (a sync that succeeded).
    synced: Option<u64>,
    /// The status as last published (see [`crate::status`]), shared with the StateWriter until
    /// it is written (one copy of a status of 1,000 members, not three).
    published: Option<Arc<LbStatus>>,
    /// Route53: a change of the values left out for Route53's limit, to report with the sync.
    zone_rejected: Option<Arc<Rejected>>,
    /// The read scheduled while members settle (health checks, draining), and how many were made.
    settle: Option<SpawnHandle>,
    settle_reads: u32,
    /// Someone waits on AWS's progress (see [`Watched`]).
    watched: bool,
    /// `--ownership shared`: the members lbmanager added (none: `exclusive`).
    owned: Option<Owned>,
    /// The members last found in AWS that lbmanager did not add, and leaves alone.
    foreign: Vec<String>,
    /// A key was written again while AWS refuses members: the next sync tries them again (the
    /// instance may be running again), so `member add --wait` gets today's answer.
    retry_rejected: bool,
    /// When to sync: the rules, without the actor.
    schedule: Schedule,
    /// The metric side of the sync in flight.
    in_flight: Option<InFlight>,
    /// The scheduled retry, if any.
    retry: Option<SpawnHandle>,
    /// Wanted members AWS refused at the last sync, with its reasons.
    rejected: Rejected,
    /// Targets already warned about for not fitting the target group's type.
    mismatched: std::collections::HashSet<String>,
    /// Set by [`Drain`]: who waits for the sync in flight to end.
    draining: Option<Vec<tokio::sync::oneshot::Sender<()>>>,
    /// Route53: the changes of this name not yet `INSYNC`, oldest first (see
    /// [`LbStatus::dns_pending`]).
    dns_pending: Vec<PendingChange>,
    /// `--route53-health-check`: checks the name no longer uses wait for its last change to be
    /// `INSYNC`; the name is synced again then (and not retired before).
    checks_waiting: bool,
    /// The latest [`Barrier`]: a status published while idle and in step is at that revision at
    /// least.
    barrier: i64,
}

impl LoadBalancer {
    pub fn new(
        id: LbId,
        log: &Logger,
        backend: Backend,
        settings: Arc<Settings>,
        supervisor: Recipient<Synced>,
    ) -> Self {
        let log = log.new(slog::o!("lb" => id.to_string()));
        LoadBalancer {
            id,
            log,
            backend,
            settings,
            supervisor,
            desired: None,
            wanted: tokio::sync::watch::channel(Want::default()).0,
            synced: None,
            published: None,
            zone_rejected: None,
            settle: None,
            settle_reads: 0,
            watched: false,
            owned: None,
            foreign: Vec::new(),
            retry_rejected: false,
            schedule: Schedule::default(),
            in_flight: None,
            retry: None,
            rejected: Rejected::new(),
            mismatched: Default::default(),
            draining: None,
            dns_pending: Vec::new(),
            checks_waiting: false,
            barrier: 0,
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

    fn start_sync(&mut self, ctx: &mut Context<Self>) {
        let Some(desire) = self.desired.clone() else {
            self.schedule.abandon();
            return;
        };
        self.in_flight = Some(InFlight::new(&self.settings, &desire));
        match &self.backend {
            Backend::Elb(api) => {
                let (LbId::Elb { region, name } | LbId::TargetGroup { region, name }) =
                    self.id.clone()
                else {
                    unreachable!("an ELB backend serves ELBs and target groups only");
                };
                let (api, log) = (api.clone(), self.log.clone());
                let options = self.settings.sync_options();
                let what = match self.id {
                    LbId::TargetGroup { .. } => "targets",
                    _ => "instances",
                };
                let known = self.rejected.clone();
                // Refused members are tried again at a resync (or a relist, a restart), not at
                // every etcd event: each try is a failed call.
                let retry_rejected = !matches!(
                    desire.cause,
                    Cause::EtcdEvent | Cause::LeaseExpiry | Cause::Settle
                ) || std::mem::take(&mut self.retry_rejected);
                let read_health = desire.cause == Cause::Settle;
                let wanted: Wanted = self.wanted.subscribe();
                let cause = desire.cause;
                // Lent to the sync, and given back whatever happens (claims may have landed).
                let mut owned = self.owned.take();
                let fut = async move {
                    let ctx = ElbSyncContext {
                        api: &*api,
                        region: &region,
                        name: &name,
                        wanted: &wanted,
                        cause,
                        options: &options,
                        what,
                        log: &log,
                        known: &known,
                        retry_rejected,
                        read_health,
                    };
                    let res = sync_elb(&ctx, owned.as_mut()).await;
                    (res, owned)
                };
                ctx.spawn(fut.into_actor(self).map(move |(res, owned), act, ctx| {
                    act.owned = owned;
                    let (generation, error, rejected, seen) = match res {
                        Ok(mut sync) => {
                            act.warn_mismatched(std::mem::take(&mut sync.changes.mismatched));
                            let latest = act.desired.as_ref().map(|d| d.generation);
                            if latest == Some(sync.generation) {
                                act.schedule.covered();
                            }
                            let rejected = act.update_rejected(sync.rejected.clone());
                            (sync.generation, None, rejected, Seen::Elb(Box::new(sync)))
                        }
                        Err(e) => (desire.generation, Some(e), None, Seen::Nothing),
                    };
                    act.finished(generation, error, rejected, false, seen, ctx)
                }));
            }
            Backend::Route53(zone) => {
                let LbId::Route53 {
                    fqdn,
                    zone: zone_id,
                } = &self.id
                else {
                    unreachable!("a Route53 backend serves Route53 load balancers only");
                };
                let check =
                    crate::health_check::rule_for(&self.settings.health_checks, zone_id, fqdn)
                        .cloned();
                let (zone, fqdn) = (zone.clone(), fqdn.clone());
                let ips = ips_of(&desire.members);
                // Values past Route53's limit are left out by the plan; said as refusals.
                let published: std::collections::HashSet<&str> = self
                    .published
                    .iter()
                    .flat_map(|p| p.members.iter().map(|m| m.member.as_str()))
                    .collect();
                let over: Rejected = crate::plan::values_over_limit(
                    &ips,
                    |ip| published.contains(ip.to_string().as_str()),
                    check.is_some(),
                )
                .into_iter()
                .map(|ip| {
                    let why = match check {
                        Some(_) => crate::plan::over_limit_reason(
                            crate::plan::MAX_MULTIVALUE_VALUES,
                            "multivalue answers per name",
                        ),
                        None => crate::plan::over_limit_reason(
                            crate::plan::MAX_RECORD_VALUES,
                            "values per record set",
                        ),
                    };
                    (ip.to_string(), why)
                })
                .collect();
                // A change not handed over yet (its sync was given up) stays to be handed over.
                if let Some(changed) = self.update_rejected(over) {
                    self.zone_rejected = Some(changed);
                }
                zone.do_send(ZoneDesire {
                    want: FqdnWant {
                        lb: self.id.clone(),
                        fqdn,
                        ips,
                        cause: desire.cause,
                        owned: self
                            .owned
                            .as_ref()
                            .map(|o| o.members.iter().filter_map(|m| m.parse().ok()).collect()),
                        check,
                        dns_busy: false,
                    },
                    generation: desire.generation,
                    reply: ctx.address().recipient(),
                    in_sync: ctx.address().recipient(),
                    pending: self.dns_pending.iter().map(|p| p.id.clone()).collect(),
                });
            }
        }
    }

    /// Route53: changes of the name still `PENDING` when the previous leader last said, followed
    /// on (and published) until they are `INSYNC`.
    pub fn following(mut self, pending: Vec<PendingChange>) -> Self {
        self.dns_pending = pending;
        self
    }

    /// `--ownership shared`: what lbmanager added to this load balancer, and where to record it.
    pub fn owning(mut self, owned: Option<Owned>) -> Self {
        self.owned = owned;
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
            .map(|m| m.member.clone())
            .collect();
        if foreign != self.foreign {
            if !foreign.is_empty() {
                slog::info!(self.log, "leaving members lbmanager did not add (--ownership shared)";
                    "kept" => foreign.join(","));
            }
            self.foreign = foreign;
        }
    }

    /// Warns once about each target of a kind its target group does not take.
    fn warn_mismatched(&mut self, targets: Vec<crate::key::Target>) {
        for target in targets {
            if self.mismatched.insert(target.to_string()) {
                warn!(self.log, "ignoring a target of a kind the target group does not take";
                    "target" => %target);
            }
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

    fn finished(
        &mut self,
        generation: u64,
        error: Option<AwsError>,
        rejected: Option<Arc<Rejected>>,
        stale: bool,
        seen: Seen,
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
        let metrics = &self.settings.metrics;
        let result = if error.is_none() { "ok" } else { "error" };
        let kind = vec![("kind", self.kind().to_string())];
        let mut labels = kind.clone();
        labels.push(("result", result.to_string()));
        metrics.syncs.get_or_create(&labels).inc();
        metrics
            .sync_duration
            .get_or_create(&kind)
            .observe(in_flight.started.elapsed().as_secs_f64());
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
        seen: Seen,
    ) -> Option<Arc<LbStatus>> {
        let previous = self.published.as_deref();
        let (members, ttl, revision) = match seen {
            Seen::Elb(sync) => {
                let members = status::elb_members(
                    &self.id,
                    &sync.actual,
                    &sync.changes.register,
                    &sync.changes.deregister,
                    previous,
                    self.owned.as_ref().map(|o| &o.members),
                );
                (members, None, sync.revision)
            }
            Seen::Zone(sets, ttl_before, health) => {
                // Clients may still hold a value this sync removed for the TTL it had (also
                // once the last value is gone; and an actor just started has no status of its
                // own to remember it by, as a new leader's does not).
                let ttl = sets
                    .iter()
                    .map(|s| s.ttl)
                    .chain(ttl_before)
                    .max()
                    .or(previous.and_then(|p| p.ttl));
                let owned = self.owned.as_ref().map(|o| &o.members);
                let members = status::zone_members(&sets, owned, &health, previous);
                (members, ttl, in_flight.revision)
            }
            Seen::Nothing => (
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
            dns_pending: self.carried(revision),
        };
        let (status, cut) = status.bounded();
        if cut {
            self.settings
                .metrics
                .limit(crate::metrics::Limit::RecordSize);
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

    /// The Route53 changes not yet `INSYNC`, for a status at `revision`: the newest of them
    /// carries the name's record sets as of that revision (a sync that changed nothing found
    /// Route53 as that change left it), so a wait for it waits for that change.
    fn carried(&mut self, revision: i64) -> Vec<PendingChange> {
        if let Some(newest) = self.dns_pending.last_mut() {
            newest.revision = newest.revision.max(revision);
        }
        self.dns_pending.clone()
    }

    /// Not to be retired yet: AWS is still moving members while someone waits (see
    /// [`Self::settling`]), or a Route53 change of the name is not `INSYNC` yet (so that a
    /// `--drain` waiting for it is told, from the status, when it is).
    fn holding(&self) -> bool {
        self.settling() || !self.dns_pending.is_empty() || self.checks_waiting
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
            if next == Next::Sync {
                if let Some(desire) = act.desired.as_mut() {
                    desire.cause = Cause::Settle;
                }
            }
            act.follow(next, ctx);
        }));
    }
}

impl Actor for LoadBalancer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.resync_interval, |act, ctx| {
            let next = act.schedule.resync_due();
            if next == Next::Sync {
                if let Some(desire) = act.desired.as_mut() {
                    desire.cause = Cause::Resync;
                }
            }
            act.follow(next, ctx);
        });
    }
}

impl Handler<Desire> for LoadBalancer {
    type Result = ();

    fn handle(&mut self, msg: Desire, ctx: &mut Self::Context) {
        // The same members again, AWS already brought to them and nothing under way: only the
        // revision moves (a key written again, or one that does not count): no call to AWS.
        let unchanged = self.desired.as_ref().is_some_and(|d| {
            d.members == msg.members && self.synced == Some(d.generation) && self.schedule.idle()
        });
        self.wanted.send_replace(Want {
            members: msg.members.clone(),
            generation: msg.generation,
            revision: msg.revision,
        });
        let (generation, revision) = (msg.generation, msg.revision);
        let event = msg.cause.is_etcd_change();
        self.desired = Some(msg);
        if unchanged && event && !self.rejected.is_empty() {
            // Refused members: the next sync tries them again instead.
            self.retry_rejected = true;
        } else if unchanged && event {
            self.synced = Some(generation);
            let status = self.published.as_deref().cloned().map(|mut p| {
                p.revision = p.revision.max(revision);
                p.dns_pending = self.carried(p.revision);
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

impl Handler<ZoneSynced> for LoadBalancer {
    type Result = ();

    fn handle(&mut self, msg: ZoneSynced, ctx: &mut Self::Context) {
        if let (Some(change), Some(in_flight)) = (&msg.change, &self.in_flight) {
            self.dns_pending.push(PendingChange {
                id: change.clone(),
                since: status::now(),
                revision: in_flight.revision,
            });
            if self.dns_pending.len() > status::PENDING_LISTED {
                self.dns_pending.remove(0);
            }
        }
        if let (Some(owned), Some(ips)) = (self.owned.as_mut(), &msg.owned) {
            owned.set(ips.iter().map(|ip| ip.to_string()).collect());
        }
        let seen = match msg.sets {
            Some(sets) => Seen::Zone(sets, msg.ttl_before, msg.health),
            None => Seen::Nothing,
        };
        // The answer of the sync in flight (not of one given up).
        if msg.error.is_none() && self.in_flight.is_some() {
            self.checks_waiting = msg.checks_waiting;
        }
        let rejected = self.zone_rejected.take();
        self.finished(msg.generation, msg.error, rejected, msg.stale, seen, ctx);
        // Its change may be INSYNC already (told before this answer arrived).
        if self.checks_waiting && self.dns_pending.is_empty() {
            ctx.run_later(std::time::Duration::from_secs(1), |act, ctx| {
                act.drop_waiting_checks(ctx)
            });
        }
    }
}

impl LoadBalancer {
    /// Syncs the name again once no change of it is `PENDING`, when it has health checks it no
    /// longer uses: that sync deletes them (see [`crate::sync::zone::FqdnResult::checks_waiting`]).
    fn drop_waiting_checks(&mut self, ctx: &mut Context<Self>) {
        if !self.checks_waiting || !self.dns_pending.is_empty() {
            return;
        }
        let next = self.schedule.resync_due();
        if next == Next::Sync {
            if let Some(desire) = self.desired.as_mut() {
                desire.cause = Cause::Settle;
            }
        }
        self.follow(next, ctx);
    }
}

impl Handler<ChangeInSync> for LoadBalancer {
    type Result = ();

    /// A change of the name is on every Route53 name server: the status says so at once (a
    /// `--wait` or `--drain` may be waiting for just that).
    fn handle(&mut self, ChangeInSync(change): ChangeInSync, ctx: &mut Self::Context) {
        let before = self.dns_pending.len();
        self.dns_pending.retain(|p| p.id != change);
        if self.dns_pending.len() == before {
            return;
        }
        let pending = self.dns_pending.clone();
        self.republish(|p| p.dns_pending = pending);
        self.drop_waiting_checks(ctx);
    }
}

impl LoadBalancer {
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

impl Handler<Barrier> for LoadBalancer {
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

impl Handler<Watched> for LoadBalancer {
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

impl Handler<SetZone> for LoadBalancer {
    type Result = ();

    fn handle(&mut self, msg: SetZone, ctx: &mut Self::Context) {
        self.backend = Backend::Route53(msg.0);
        // Whatever was in flight died with the old zone actor: a drain waiting for it is over.
        self.in_flight = None;
        self.schedule.abandon();
        self.release_drain();
        if let Some(desire) = self.desired.as_mut() {
            desire.cause = Cause::Restart;
        }
        let next = self.schedule.request();
        self.follow(next, ctx);
    }
}

impl Handler<Drain> for LoadBalancer {
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

impl Handler<Retire> for LoadBalancer {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
