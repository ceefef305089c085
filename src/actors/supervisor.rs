//! The Supervisor: owns the desired state, starts and restarts the other actors.
//!
//! It applies etcd's changes to [`DesiredState`], and sends each load balancer whose resolved
//! member set changed a new [`Desire`]. It spawns a [`LoadBalancer`] for each load balancer that
//! gets keys and a [`HostedZone`] for each zone; it checks every second that they are alive and
//! restarts any that died (a panic), handing the new actor the desired state it keeps. It also
//! deletes superseded `single`/`multiple` keys from etcd, and logs `initial sync complete` once every
//! load balancer known at start-up has been synced once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use slog::{debug, error, info, warn, Logger};

use super::etcd_watcher::{EtcdChanges, EtcdWatcher, KeyChange, WatchEvent};
use super::hosted_zone::HostedZone;
use super::load_balancer::{
    Backend, Desire, Drain, LoadBalancer, Retire, SetZone, Synced, Watched,
};
use super::state_writer::{
    Beat, DeleteKeys, DeleteSuperseded, Flush, Landed, ManagedRecord, PublishStatus, StateWriter,
};
use super::{Cause, Settings};
use crate::aws::Backends;
use crate::desired::{log_ignored, DesiredState, Ignored, Loaded, Revision};
use crate::etcd::{EtcdWrites, Snapshot};
use crate::key::{LbId, Member};
use crate::ownership::Ownership;
use crate::plan::Rejected;
use crate::sync::elb::Owned;

/// A load balancer actor the Supervisor started, and what it last sent it.
struct Child {
    addr: Addr<LoadBalancer>,
    members: Arc<BTreeSet<Member>>,
    generation: u64,
    /// The etcd revision of the latest change of its keys (see [`Desire::revision`]).
    revision: Revision,
    cause: Cause,
    /// Members AWS refuses, as last reported.
    rejected: Arc<Rejected>,
    restarts: Restarts,
}

/// How often an actor died without a good sync since: each restart waits longer, so an actor that
/// panics at every start costs an AWS call now and then, not every second.
#[derive(Default)]
struct Restarts {
    count: u32,
    not_before: Option<Instant>,
}

impl Restarts {
    /// Whether the actor may be restarted now; if so, counts the restart and returns the delay
    /// the next one will have to wait.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        if self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        // Doubling without jitter: restarts are checked once a second, so a jittered delay
        // could shrink back to that second.
        let delay = Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow(self.count.min(16)))
            .min(Duration::from_secs(300));
        self.count += 1;
        self.not_before = Some(now + delay);
        Some(delay)
    }
}

/// A round of syncs of every load balancer (at start-up, and after a relist): which ones still
/// owe their sync. When none does, and none failed, AWS was wholly in step with etcd.
struct Round {
    pending: HashSet<LbId>,
    total: usize,
    failed: usize,
    cause: Cause,
}

pub struct Supervisor {
    settings: Arc<Settings>,
    /// Where lbmanager's own keys live.
    layout: crate::layout::Layout,
    log: Logger,
    /// Every etcd write goes through the StateWriter, which owns these.
    etcd_writes: Arc<dyn EtcdWrites>,
    /// The client the EtcdWatcher watches with (none: no watcher, changes are sent directly).
    etcd_watch: Option<etcd_client::Client>,
    /// The AWS clients every load balancer and zone actor is given.
    aws: Backends,
    /// What etcd wants: the source of truth every actor is (re)started from.
    desired: DesiredState,
    /// Malformed keys already warned about (forgotten when the key is deleted).
    warned: crate::desired::Warned,
    /// The load balancers with an actor, and what the Supervisor last sent each.
    lbs: HashMap<LbId, Child>,
    /// One actor per hosted zone that has managed names.
    zones: HashMap<String, Addr<HostedZone>>,
    /// Restarts of dead zone actors, by zone.
    zone_restarts: HashMap<String, Restarts>,
    /// Numbers each desire sent, so a `Synced` can be matched to the desire it answers.
    generation: u64,
    /// The full sync under way (start-up or relist), if any.
    round: Option<Round>,
    /// The start-up snapshot, until `started` applies it.
    initial: Option<Snapshot>,
    /// A relist under way: what its keys say besides members (they go straight into `desired`).
    relisting: Option<Loaded>,
    /// Superseded keys whose deletion is under way.
    deleting: HashSet<String>,
    /// Load balancers with a durable managed record in etcd.
    recorded: HashSet<LbId>,
    /// Load balancers whose record is on its way to etcd: they get no desire (so make no change in
    /// AWS) until it has landed, or a `kill -9` right after their first Register would leave a
    /// load balancer nobody knows to empty.
    awaiting_record: HashSet<LbId>,
    /// The waiting keys of `lbmanager member … --healthy/--drain`, by load balancer (see
    /// [`crate::layout::Layout::waiting`]).
    waiting: HashMap<LbId, HashSet<String>>,
    /// `--ownership shared`: the members lbmanager added, per load balancer (read at start-up,
    /// kept up to date by the load balancers' reports, handed to a restarted actor).
    owned: HashMap<LbId, Arc<std::sync::Mutex<BTreeSet<String>>>>,
    /// Records of earlier versions to delete at start (see [`crate::etcd::Records::obsolete`]).
    obsolete: Vec<String>,
    /// The StateWriter, started with the Supervisor.
    state: Option<Addr<StateWriter>>,
    watcher: Option<Addr<EtcdWatcher>>,
    /// Shutting down: etcd changes are ignored.
    stopping: bool,
    /// `--once`: told the exit code when the start-up sync is done.
    once: Option<tokio::sync::oneshot::Sender<u8>>,
}

impl Supervisor {
    /// A Supervisor that starts from `initial` (read at start-up) and watches from its revision + 1.
    pub fn new(
        settings: Arc<Settings>,
        log: &Logger,
        etcd_writes: Arc<dyn EtcdWrites>,
        aws: Backends,
        initial: Snapshot,
    ) -> Self {
        Supervisor {
            layout: crate::layout::Layout::new(&settings.prefix),
            desired: DesiredState::with_filters(&settings.prefix, settings.filters.clone()),
            settings,
            log: log.clone(),
            etcd_writes,
            etcd_watch: None,
            aws,
            warned: Default::default(),
            lbs: HashMap::new(),
            zones: HashMap::new(),
            zone_restarts: HashMap::new(),
            generation: 0,
            round: None,
            initial: Some(initial),
            relisting: None,
            deleting: HashSet::new(),
            recorded: HashSet::new(),
            awaiting_record: HashSet::new(),
            obsolete: Vec::new(),
            owned: HashMap::new(),
            waiting: HashMap::new(),
            state: None,
            watcher: None,
            stopping: false,
            once: None,
        }
    }

    /// `--once`: when every load balancer has been synced once, send 0 (all in step) or 1.
    pub fn once_if(mut self, once: bool, done: tokio::sync::oneshot::Sender<u8>) -> Self {
        if once {
            self.once = Some(done);
        }
        self
    }

    /// The load balancers recorded as managed (read from the state prefix at start-up).
    pub fn with_records(mut self, recorded: HashSet<LbId>) -> Self {
        self.recorded = recorded;
        self
    }

    /// The ownership records read at start-up (`--ownership shared`).
    pub fn with_owned(mut self, owned: HashMap<LbId, BTreeSet<String>>) -> Self {
        self.owned = owned
            .into_iter()
            .map(|(lb, members)| (lb, Arc::new(std::sync::Mutex::new(members))))
            .collect();
        self
    }

    /// Records of earlier versions, to delete at start.
    pub fn with_obsolete(mut self, keys: Vec<String>) -> Self {
        self.obsolete = keys;
        self
    }

    /// Watches etcd with `client` (without, changes are sent to the Supervisor directly, as the
    /// actor tests do).
    pub fn watching(mut self, client: etcd_client::Client) -> Self {
        self.etcd_watch = Some(client);
        self
    }

    fn warn_once(&mut self, key: &str, why: &Ignored) {
        if let Ignored::Malformed(crate::key::KeyError::TooLong(_)) = why {
            self.settings
                .metrics
                .limit(crate::metrics::Limit::KeyLength);
        }
        let (log, metrics) = (&self.log, &self.settings.metrics);
        let on_full = || {
            metrics.limit(crate::metrics::Limit::WarnedKeys);
            warn!(log, "more keys count for nothing than lbmanager remembers; those past it are \
                not warned about one by one";
                "remembered" => crate::desired::MAX_WARNED);
        };
        if self.warned.first_time(key, on_full) {
            log_ignored(&self.log, key, why);
        }
    }

    /// Replaces the desired state with a whole snapshot and syncs every load balancer that has
    /// keys now or had them before (all of them, changed or not: after a relist nothing that was
    /// believed before is trusted), as one [`Round`].
    fn apply_snapshot(&mut self, snapshot: Snapshot, cause: Cause, ctx: &mut Context<Self>) {
        let (mut loaded, keys, revision) = (snapshot.loaded, snapshot.keys, snapshot.revision);
        self.desired = std::mem::replace(
            &mut loaded.desired,
            DesiredState::new(&self.settings.prefix),
        );
        self.apply_loaded(loaded, keys, revision, cause, ctx);
    }

    /// The desired state holds a whole read of the prefix now (`loaded` has what else the read
    /// found): syncs every load balancer that has keys now or had them before.
    fn apply_loaded(
        &mut self,
        loaded: Loaded,
        keys: usize,
        revision: Revision,
        cause: Cause,
        ctx: &mut Context<Self>,
    ) {
        // Records an earlier version kept in the member tree move to the state prefix (where a
        // purge of the tree does not reach them), then go.
        for lb in loaded.legacy_recorded {
            if self.recorded.insert(lb.clone()) {
                self.record(&lb, true);
            }
        }
        if !loaded.legacy_keys.is_empty() && !self.settings.dry_run {
            info!(self.log, "moving lbmanager's records out of the member tree";
                "keys" => loaded.legacy_keys.len(),
                "to" => self.layout.state_prefix().to_string());
            if let Some(state) = &self.state {
                state.do_send(DeleteKeys(loaded.legacy_keys));
            }
        }
        // Who waits on AWS's progress, as the read saw it (deletes missed meanwhile included).
        let mut waiting: HashMap<LbId, HashSet<String>> = HashMap::new();
        for (lb, key) in loaded.waiting {
            waiting.entry(lb).or_default().insert(key);
        }
        for (lb, child) in &self.lbs {
            let (was, is) = (self.waiting.contains_key(lb), waiting.contains_key(lb));
            if was != is {
                child.addr.do_send(Watched(is));
            }
        }
        self.waiting = waiting;
        self.warned
            .keep_only(loaded.ignored.iter().map(|(k, _)| k.as_str()));
        for (key, e) in &loaded.ignored {
            self.warn_once(key, e);
        }
        if loaded.ignored_more > 0 {
            self.settings
                .metrics
                .limit(crate::metrics::Limit::WarnedKeys);
            warn!(self.log, "more keys count for nothing than lbmanager remembers; those past it \
                are not warned about one by one";
                "remembered" => crate::desired::MAX_WARNED, "not_listed" => loaded.ignored_more);
        }
        let mut touched: HashSet<LbId> = self.desired.load_balancers().cloned().collect();
        touched.extend(self.lbs.keys().cloned());
        // Recorded as managed but without keys: their keys were deleted while lbmanager was away.
        touched.extend(self.recorded.iter().cloned());
        for lb in touched {
            self.reconcile(&lb, cause, true, revision, ctx);
        }
        let pending: HashSet<LbId> = self.lbs.keys().cloned().collect();
        info!(self.log, "read etcd";
            "keys" => keys, "load_balancers" => pending.len(),
            "revision" => revision, "cause" => %cause);
        let round = self.round.get_or_insert(Round {
            pending: HashSet::new(),
            total: 0,
            failed: 0,
            cause,
        });
        round.total += pending.len();
        round.pending.extend(pending);
        self.check_round();
    }

    /// Sends `lb` its desired members if they changed (or always, with `force`); starts its actor
    /// if it has none yet.
    /// `revision`: of the etcd change that makes it reconcile (the read's, for a full sync).
    fn reconcile(
        &mut self,
        lb: &LbId,
        cause: Cause,
        force: bool,
        revision: Revision,
        ctx: &mut Context<Self>,
    ) {
        let resolution = self.desired.resolve(lb);
        if !resolution.superseded.is_empty() {
            let decided_by = resolution.decided_by();
            self.delete_superseded(decided_by, resolution.superseded, ctx);
        }
        let mut members = Arc::new(resolution.members);
        if let Some(managed) = self.lbs.get(lb) {
            if managed.members == members {
                if !force && managed.revision >= revision {
                    return;
                }
                // The same set again (a relist of a big tree sends every one): share the one
                // the actor holds instead of a second copy.
                members = managed.members.clone();
            }
        } else if members.is_empty() && !self.recorded.contains(lb) {
            // A load balancer without keys is never touched (unless lbmanager managed it before).
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        if !self.lbs.contains_key(lb) {
            if self.recorded.insert(lb.clone()) && self.record(lb, true) {
                self.await_record(lb, ctx);
            }
            let addr = self.spawn_lb(lb, ctx);
            self.lbs.insert(
                lb.clone(),
                Child {
                    addr,
                    members: members.clone(),
                    generation,
                    revision,
                    cause,
                    rejected: Arc::default(),
                    restarts: Restarts::default(),
                },
            );
        }
        self.settings
            .metrics
            .members
            .get_or_create(&vec![(
                "load_balancer",
                crate::escape::escape(&lb.to_string()).into_owned(),
            )])
            .set(members.len() as i64);
        let managed = self.lbs.get_mut(lb).expect("inserted above");
        managed.members = members.clone();
        managed.generation = generation;
        managed.revision = managed.revision.max(revision);
        managed.cause = cause;
        if !self.awaiting_record.contains(lb) {
            managed.addr.do_send(Desire {
                members,
                generation,
                revision: managed.revision,
                cause,
            });
        }
    }

    /// Sends the record (or its removal) to the StateWriter; whether one was sent.
    fn record(&self, lb: &LbId, managed: bool) -> bool {
        if self.settings.dry_run {
            return false;
        }
        let Some(state) = &self.state else {
            return false;
        };
        state.do_send(if managed {
            ManagedRecord::Put(lb.clone())
        } else {
            ManagedRecord::Delete(lb.clone())
        });
        true
    }

    /// Holds `lb`'s desires back until its record has landed, then sends the latest.
    fn await_record(&mut self, lb: &LbId, ctx: &mut Context<Self>) {
        let Some(state) = self.state.clone() else {
            return;
        };
        self.awaiting_record.insert(lb.clone());
        let lb = lb.clone();
        let key = self.layout.managed(&lb);
        ctx.spawn(
            state
                .send(Landed(key))
                .into_actor(self)
                .map(move |_, act, _| {
                    act.awaiting_record.remove(&lb);
                    if let Some(child) = act.lbs.get(&lb) {
                        child.addr.do_send(Desire {
                            members: child.members.clone(),
                            generation: child.generation,
                            revision: child.revision,
                            cause: child.cause,
                        });
                    }
                }),
        );
    }

    fn spawn_lb(&mut self, lb: &LbId, ctx: &mut Context<Self>) -> Addr<LoadBalancer> {
        let backend = match lb {
            LbId::Elb { .. } => Backend::Elb(self.aws.elb.clone()),
            LbId::TargetGroup { .. } => Backend::Elb(self.aws.elbv2.clone()),
            LbId::Route53 { zone, .. } => Backend::Route53(self.zone(zone)),
        };
        let owned = (self.settings.ownership == Ownership::Shared).then(|| {
            let mirror = self.owned.entry(lb.clone()).or_default().clone();
            let members = mirror.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Owned {
                writes: self.etcd_writes.clone(),
                prefix: self.settings.prefix.clone(),
                lb: lb.clone(),
                members,
                mirror,
                releasing: BTreeSet::new(),
            }
        });
        let addr = LoadBalancer::new(
            lb.clone(),
            &self.log,
            backend,
            self.settings.clone(),
            ctx.address().recipient(),
        )
        .owning(owned)
        .start();
        if self.waiting.contains_key(lb) {
            addr.do_send(Watched(true));
        }
        addr
    }

    /// A waiting key came (`put`) or went: tells the load balancer whether anyone waits on it.
    fn waiter(&mut self, lb: LbId, key: &str, put: bool) {
        let keys = self.waiting.entry(lb.clone()).or_default();
        if put {
            keys.insert(key.to_string());
        } else {
            keys.remove(key);
        }
        let watched = !keys.is_empty();
        if !watched {
            self.waiting.remove(&lb);
        }
        if let Some(child) = self.lbs.get(&lb) {
            child.addr.do_send(Watched(watched));
        }
    }

    fn zone(&mut self, zone: &str) -> Addr<HostedZone> {
        if let Some(addr) = self.zones.get(zone) {
            return addr.clone();
        }
        let writes = (self.settings.ownership == Ownership::Shared && !self.settings.dry_run)
            .then(|| self.etcd_writes.clone());
        let addr = HostedZone::new(
            zone,
            self.aws.route53.clone(),
            &self.log,
            self.settings.clone(),
        )
        .recording(writes)
        .start();
        self.zones.insert(zone.to_string(), addr.clone());
        addr
    }

    /// Deletes keys that no longer count, guarded by every key the decision rests on.
    fn delete_superseded(
        &mut self,
        decided_by: Vec<(String, Revision)>,
        superseded: Vec<(String, Revision)>,
        ctx: &mut Context<Self>,
    ) {
        let todo: Vec<(String, Revision)> = superseded
            .into_iter()
            .filter(|(k, _)| !self.deleting.contains(k))
            .collect();
        if todo.is_empty() {
            return;
        }
        let winner = decided_by
            .first()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        if self.settings.dry_run {
            let keys: Vec<&str> = todo.iter().map(|(k, _)| k.as_str()).collect();
            info!(self.log, "would delete superseded keys from etcd";
                "winner" => &winner, "keys" => keys.join(","), "dry_run" => true);
            return;
        }
        self.deleting.extend(todo.iter().map(|(k, _)| k.clone()));
        let Some(writer) = self.state.clone() else {
            return;
        };
        let fut = writer.send(DeleteSuperseded {
            decided_by,
            superseded: todo.clone(),
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            let res = res.unwrap_or(Ok(0));
            for (k, _) in &todo {
                act.deleting.remove(k);
            }
            let keys: Vec<&str> = todo.iter().map(|(k, _)| k.as_str()).collect();
            match res {
                Ok(0) => debug!(act.log, "superseded keys changed meanwhile, left alone";
                    "keys" => keys.join(",")),
                Ok(n) => info!(act.log, "deleted superseded keys from etcd";
                    "winner" => &winner, "deleted" => n, "keys" => keys.join(",")),
                Err(e) => warn!(act.log, "could not delete superseded keys; \
                    they do not count and are retried on the next change or restart";
                    "error" => %e, "keys" => keys.join(",")),
            }
        }));
    }

    /// Restarts dead actors (a panic ends an actor) with the state the Supervisor keeps, each
    /// after a delay that grows while it keeps dying.
    fn check_actors(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let dead_zones: Vec<String> = self
            .zones
            .iter()
            .filter(|(_, addr)| !addr.connected())
            .map(|(z, _)| z.clone())
            .collect();
        for zone in dead_zones {
            let restarts = self.zone_restarts.entry(zone.clone()).or_default();
            let Some(next) = restarts.take(now) else {
                continue;
            };
            error!(self.log, "hosted zone actor died, restarting it";
                "zone" => &zone, "restarts" => restarts.count,
                "next_restart_no_sooner_than" => ?next);
            self.zones.remove(&zone);
            let addr = self.zone(&zone);
            for (lb, managed) in &self.lbs {
                if lb.zone() == Some(zone.as_str()) {
                    managed.addr.do_send(SetZone(addr.clone()));
                }
            }
        }
        if self.stopping {
            // No new syncs once the shutdown began: a dead load balancer stays dead (whatever it
            // had to do is done at the next start). Dead zones are still replaced above, so that
            // the load balancers waiting on them are told their sync is over.
            return;
        }
        let dead: Vec<LbId> = self
            .lbs
            .iter()
            .filter(|(_, m)| !m.addr.connected())
            .map(|(lb, _)| lb.clone())
            .collect();
        for lb in dead {
            let managed = self.lbs.get_mut(&lb).expect("listed above");
            let Some(next) = managed.restarts.take(now) else {
                continue;
            };
            error!(self.log, "load balancer actor died, restarting it";
                "lb" => lb.to_string(), "restarts" => managed.restarts.count,
                "next_restart_no_sooner_than" => ?next);
            let addr = self.spawn_lb(&lb, ctx);
            let awaiting = self.awaiting_record.contains(&lb);
            let managed = self.lbs.get_mut(&lb).expect("listed above");
            managed.addr = addr;
            managed.cause = Cause::Restart;
            if awaiting {
                continue;
            }
            managed.addr.do_send(Desire {
                members: managed.members.clone(),
                generation: managed.generation,
                revision: managed.revision,
                cause: Cause::Restart,
            });
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state = Some(
            StateWriter::new(self.etcd_writes.clone(), self.settings.clone(), &self.log).start(),
        );
        let mut initial = self.initial.take().unwrap_or_else(|| {
            Snapshot::from_keys(&self.settings.prefix, self.settings.filters.clone(), &[], 0)
        });
        let (revision, leased) = (initial.revision, std::mem::take(&mut initial.leased));
        self.apply_snapshot(initial, Cause::Startup, ctx);
        if let Some(client) = self.etcd_watch.clone() {
            self.watcher = Some(
                EtcdWatcher::new(
                    client,
                    self.settings.clone(),
                    ctx.address().recipient(),
                    &self.log,
                    revision + 1,
                    leased,
                )
                .start(),
            );
        }
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.check_actors(ctx));
        if !self.obsolete.is_empty() {
            let keys = std::mem::take(&mut self.obsolete);
            self.write_state(DeleteKeys(keys));
        }
        // The sign of life `lbmanager status` and `member … --wait` look for.
        self.write_state(Beat);
        ctx.run_interval(self.settings.resync_interval, |act, _| {
            act.write_state(Beat)
        });
    }
}

impl Supervisor {
    fn check_round(&mut self) {
        let done = self.round.as_ref().is_some_and(|s| s.pending.is_empty());
        if done {
            let s = self.round.take().expect("checked above");
            let what = if s.cause == Cause::Startup {
                "initial sync complete"
            } else {
                "full sync complete"
            };
            info!(self.log, "{}", what;
                "load_balancers" => s.total, "failed" => s.failed, "cause" => %s.cause);
            let metrics = &self.settings.metrics;
            metrics.set_initial_sync_done();
            if s.failed == 0 {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics.last_full_sync.set(now.as_secs_f64());
            }
            if let Some(done) = self.once.take() {
                let _ = done.send(u8::from(s.failed > 0));
            }
        }
    }
}

impl Handler<WatchEvent> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WatchEvent, ctx: &mut Self::Context) {
        if self.stopping {
            return;
        }
        match msg {
            WatchEvent::Changes(changes) => self.apply_changes(changes, ctx),
            WatchEvent::RelistStarted => {
                self.desired.begin_relist();
                self.relisting = Some(Loaded::new(
                    &self.settings.prefix,
                    self.settings.filters.clone(),
                ));
            }
            WatchEvent::RelistPage(page) => {
                if let Some(loaded) = self.relisting.as_mut() {
                    for (key, revision) in &page {
                        loaded.add_into(&mut self.desired, key, *revision);
                    }
                }
            }
            WatchEvent::Relisted { revision, keys } => {
                let removed = self.desired.end_relist();
                if let Some(loaded) = self.relisting.take() {
                    debug!(self.log, "relist applied"; "keys" => keys, "removed" => removed);
                    self.apply_loaded(loaded, keys, revision, Cause::Relist, ctx);
                }
            }
        }
    }
}

impl Supervisor {
    /// Applies etcd's changes to the desired state and reconciles the load balancers they touch.
    fn apply_changes(&mut self, msg: EtcdChanges, ctx: &mut Context<Self>) {
        // Each touched load balancer with its cause: a leased key's delete is a lease expiry.
        let mut touched: HashMap<LbId, (Cause, Revision)> = HashMap::new();
        for change in msg.changes {
            if let Some(lb) = self.layout.parse_waiting(change.key()) {
                let put = matches!(change, KeyChange::Put { .. });
                self.waiter(lb, change.key(), put);
                continue;
            }
            match change {
                KeyChange::Put { key, revision } => match self.desired.put(&key, revision) {
                    Ok(Some(lb)) => {
                        self.warned.forget(&key);
                        let entry = touched.entry(lb).or_insert((Cause::EtcdEvent, revision));
                        entry.1 = entry.1.max(revision);
                    }
                    Ok(None) => {}
                    Err(e) => self.warn_once(&key, &e),
                },
                KeyChange::Delete {
                    key,
                    leased,
                    revision,
                } => {
                    self.warned.forget(&key);
                    if let Some(lb) = self.desired.delete(&key) {
                        let cause = if leased {
                            Cause::LeaseExpiry
                        } else {
                            Cause::EtcdEvent
                        };
                        let before = touched.get(&lb).map_or(0, |t| t.1);
                        touched.insert(lb, (cause, before.max(revision)));
                    }
                }
            }
        }
        for (lb, (cause, revision)) in touched {
            self.reconcile(&lb, cause, false, revision, ctx);
        }
    }
}

impl Handler<Synced> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Synced, _: &mut Self::Context) {
        if let Some(round) = self.round.as_mut() {
            if round.pending.remove(&msg.lb) && msg.error.is_some() {
                round.failed += 1;
            }
        }
        self.check_round();
        if let Some(rejected) = msg.rejected {
            self.rejections(&msg.lb, rejected);
        }
        if let Some(status) = msg.status {
            self.write_state(PublishStatus(msg.lb.clone(), Some(status)));
        }
        if msg.error.is_none() {
            if let Some(managed) = self.lbs.get_mut(&msg.lb) {
                managed.restarts = Restarts::default();
            }
        }
        // A load balancer whose keys are all gone, once emptied, is no longer ours to touch.
        let retire = msg.error.is_none()
            && !msg.settling
            && self
                .lbs
                .get(&msg.lb)
                .is_some_and(|m| m.generation == msg.generation && m.members.is_empty())
            && self.desired.resolve(&msg.lb).members.is_empty();
        if retire {
            if let Some(managed) = self.lbs.remove(&msg.lb) {
                debug!(self.log, "load balancer has no keys left, no longer managed";
                    "lb" => msg.lb.to_string());
                managed.addr.do_send(Retire);
                self.settings.metrics.lb_retired(&msg.lb.to_string());
                if self.recorded.remove(&msg.lb) {
                    self.record(&msg.lb, false);
                }
                if !managed.rejected.is_empty() {
                    self.rejections(&msg.lb, Arc::default());
                }
                self.write_state(PublishStatus(msg.lb.clone(), None));
                // The zone actor (and its cache) goes when its last managed name does.
                if let Some(zone) = msg.lb.zone() {
                    if !self.lbs.keys().any(|lb| lb.zone() == Some(zone)) {
                        self.zones.remove(zone);
                        self.zone_restarts.remove(zone);
                    }
                }
            }
        }
    }
}

impl Supervisor {
    /// Sends a write to the StateWriter (none in a dry run).
    fn write_state<M>(&self, msg: M)
    where
        M: Message<Result = ()> + Send + 'static,
        StateWriter: Handler<M>,
    {
        if self.settings.dry_run {
            return;
        }
        if let Some(state) = &self.state {
            state.do_send(msg);
        }
    }

    /// A load balancer's refused members changed: warn about each new refusal (or new reason),
    /// with its key, once; count them. (The load balancer's status carries them to etcd.)
    fn rejections(&mut self, lb: &LbId, rejected: Arc<Rejected>) {
        let before = self
            .lbs
            .get(lb)
            .map(|m| m.rejected.clone())
            .unwrap_or_default();
        // One line per new refusal, up to a bound: AWS names every refused target in each
        // one's reason, so the lines (cut) and their number are kept small.
        let fresh: Vec<(&String, &String)> = rejected
            .iter()
            .filter(|(member, reason)| before.get(*member) != Some(*reason))
            .collect();
        for (member, reason) in fresh.iter().take(crate::status::REJECTED_LISTED) {
            warn!(self.log, "AWS rejected a member; the others are in step, and it is \
                tried again at each resync until its key is deleted";
                "lb" => lb.to_string(), "member" => member,
                "key" => self.desired.key_of(lb, member).unwrap_or_else(|| "-".into()),
                "reason" => crate::status::cut(reason));
        }
        let limit = match lb {
            LbId::Route53 { .. } => crate::metrics::Limit::ValuesPerRecordSet,
            _ => crate::metrics::Limit::MembersPerLoadBalancer,
        };
        for _ in fresh
            .iter()
            .filter(|(_, r)| r.starts_with("over the limit"))
        {
            self.settings.metrics.limit(limit);
        }
        if fresh.len() > crate::status::REJECTED_LISTED {
            warn!(self.log, "AWS rejected more members than are named one by one";
                "lb" => lb.to_string(),
                "not_named" => fresh.len() - crate::status::REJECTED_LISTED);
        }
        for member in before.keys().filter(|m| !rejected.contains_key(*m)) {
            info!(self.log, "member no longer rejected"; "lb" => lb.to_string(), "member" => member);
        }
        let labels = vec![(
            "load_balancer",
            crate::escape::escape(&lb.to_string()).into_owned(),
        )];
        if rejected.is_empty() {
            self.settings.metrics.rejected_members.remove(&labels);
        } else {
            self.settings
                .metrics
                .rejected_members
                .get_or_create(&labels)
                .set(rejected.len() as i64);
        }
        if let Some(managed) = self.lbs.get_mut(lb) {
            managed.rejected = rejected;
        }
    }
}

/// Graceful stop: no new work (the watch stops, etcd changes are ignored), and the answer comes
/// once every sync in flight has ended and the StateWriter has written everything it was sent. Whatever was not done is done at the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        if let Some(watcher) = self.watcher.take() {
            watcher.do_send(super::etcd_watcher::Stop);
        }
        let drains: Vec<_> = self.lbs.values().map(|m| m.addr.send(Drain)).collect();
        let writer = self.state.clone();
        Box::pin(async move {
            futures::future::join_all(drains).await;
            // Then every record and rejection written so far lands in etcd.
            if let Some(writer) = writer {
                let _ = writer.send(Flush).await;
            }
        })
    }
}

/// Asks the Supervisor how many hosted zone actors it keeps (tests only).
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ZoneCount;

#[cfg(test)]
impl Handler<ZoneCount> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: ZoneCount, _: &mut Self::Context) -> usize {
        self.zones.len()
    }
}

/// Asks the Supervisor how many load balancers it manages (tests only).
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ManagedCount;

#[cfg(test)]
impl Handler<ManagedCount> for Supervisor {
    type Result = usize;

    fn handle(&mut self, _: ManagedCount, _: &mut Self::Context) -> usize {
        self.lbs.len()
    }
}
