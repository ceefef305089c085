//! The fleet's rules, as a state machine with no actor system and no etcd in it (as
//! [`crate::sync::schedule`] is for one load balancer's syncs).
//!
//! - Every load balancer with keys (or recorded as managed) has an actor, started with the
//!   members lbmanager owns there and told whether anyone waits on it; each new set of members
//!   goes to it as a [`Desire`], numbered, with the etcd revision it reflects. A load balancer
//!   met for the first time gets its managed record first, and no desire until that has landed.
//! - A `single`/`multiple` key that no longer counts is deleted, guarded by the keys the
//!   decision rests on, once (not again while its delete is under way).
//! - An actor that died is restarted from what the fleet keeps, each time a little later while
//!   it keeps dying ([`Restarts`]); a zone actor likewise, and its load balancers are told.
//! - A load balancer whose keys are all gone is retired once a sync has emptied it of lbmanager's
//!   members and AWS has settled: its actor stops, its record and status go, and its zone's
//!   actor with the zone's last name.
//! - A round (start-up, relist) is complete when every load balancer has synced once; with
//!   `--once`, that is the exit, 0 when none failed.
//!
//! Events go in as method calls; each returns the [`Command`]s the Supervisor actor carries out,
//! among them the [`Note`]s of what an operator should read or a metric should count. The fleet
//! itself logs nothing, counts nothing and reads no clock (the time comes in with the event):
//! it is tested by what it returns.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::desired::{DesiredState, Ignored, Loaded, Revision, Warned};
use crate::filter::Filters;
use crate::key::{LbId, Member};
use crate::layout::Layout;
use crate::plan::Rejected;
use crate::status::{LbStatus, PendingChange};
use crate::sync::Cause;

/// A change of one key, as the watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    Put {
        key: String,
        revision: Revision,
    },
    /// `leased`: the key had a lease (its delete is, in practice, the lease's expiry).
    Delete {
        key: String,
        leased: bool,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl KeyChange {
    pub fn key(&self) -> &str {
        match self {
            KeyChange::Put { key, .. } | KeyChange::Delete { key, .. } => key,
        }
    }
}

/// Changes from the watch, in etcd's order.
#[derive(Debug)]
pub struct EtcdChanges {
    pub changes: Vec<KeyChange>,
    pub revision: Revision,
}

/// The members a load balancer should have now.
#[derive(Clone, Debug)]
pub struct Desire {
    pub members: Arc<BTreeSet<Member>>,
    /// Increases with every new desire the fleet sends; echoed in the load balancer's report.
    pub generation: u64,
    /// The etcd revision of the latest change of this load balancer's keys the members reflect:
    /// once they are in AWS, the published status says AWS is in step up to it.
    pub revision: Revision,
    pub cause: Cause,
}

/// What a load balancer reports after each sync attempt.
#[derive(Debug)]
pub struct Report {
    pub lb: LbId,
    /// A sync ended (false: only the status changed between syncs, a Route53 change now
    /// `INSYNC`, say: no round counts it).
    pub sync: bool,
    /// The generation of the desire the sync set out with.
    pub generation: u64,
    pub failed: bool,
    /// AWS is still moving members (a target draining, …): not retired until it has settled,
    /// so that whoever waits for the drain is told.
    pub settling: bool,
    /// The members AWS refuses, when that set (or a reason) changed.
    pub rejected: Option<Arc<Rejected>>,
    /// The load balancer's status, when something in it changed.
    pub status: Option<Arc<LbStatus>>,
}

/// What the Supervisor actor does for the fleet.
#[derive(Debug)]
pub enum Command {
    /// Start an actor for `lb` (and its zone's, if that has none), starting from `owned`
    /// (`--ownership shared`: the members lbmanager added there) and the Route53 changes of it
    /// not yet `INSYNC` (`dns_pending`), and told whether anyone waits.
    Spawn {
        lb: LbId,
        owned: Option<BTreeSet<String>>,
        dns_pending: Vec<PendingChange>,
        watched: bool,
    },
    /// Send `lb` the members it should have.
    Desire { lb: LbId, desire: Desire },
    /// Tell `lb` whether anyone waits on AWS's progress with its members.
    Watched { lb: LbId, watched: bool },
    /// A host waits on `lb` from etcd's `revision` on (a waiting key written then): `lb` raises
    /// its status to that revision once it is idle and in step (see
    /// [`crate::status::Change::NotThere`]). Sent after the desires of the same changes.
    Barrier { lb: LbId, revision: Revision },
    /// Stop `lb`'s actor: no longer managed.
    Retire { lb: LbId },
    /// Start `zone`'s actor again (it died) and hand it to `lbs`.
    RestartZone { zone: String, lbs: Vec<LbId> },
    /// The zone's last managed name went: its actor (and cache) go too.
    DropZone { zone: String },
    /// Write (`managed`) or delete `lb`'s managed record.
    Record { lb: LbId, managed: bool },
    /// Report [`Fleet::record_landed`] once `lb`'s managed record is in etcd.
    AwaitRecord { lb: LbId },
    /// Delete keys that no longer count, each guarded by the keys the decision rests on
    /// (`winner` names the one that decided, for the log); report
    /// [`Fleet::superseded_done`] after.
    DeleteSuperseded {
        decided_by: Vec<(String, Revision)>,
        superseded: Vec<(String, Revision)>,
        winner: String,
    },
    /// Write `lb`'s status (`None`: delete it).
    Publish {
        lb: LbId,
        status: Option<Arc<LbStatus>>,
    },
    /// `--once`: the start-up round is over; exit with this code.
    Exit(u8),
    /// Tell the operator (a log line) or the metrics.
    Note(Note),
}

/// What the fleet decided that an operator should read in the log or a metric should count; the
/// Supervisor carries it out (`actors::notes`), in order with the other commands.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    /// A dead zone actor is restarted (its `restarts`th time; the next waits at least `next`).
    ZoneRestarted {
        zone: String,
        restarts: u32,
        next: Duration,
    },
    /// A dead load balancer actor is restarted.
    LbRestarted {
        lb: LbId,
        restarts: u32,
        next: Duration,
    },
    /// A key counts for nothing (said once per key while it stays).
    KeyIgnored { key: String, why: Ignored },
    /// More keys count for nothing than are remembered: those past it are not named one by one
    /// (`not_listed`: how many a read left unnamed, when it knows).
    IgnoredPastRemembered { not_listed: Option<usize> },
    /// A relist's keys are applied.
    Relisted { keys: usize, removed: usize },
    /// A whole read of the prefix is applied: `load_balancers` sync as a round.
    ReadEtcd {
        keys: usize,
        load_balancers: usize,
        revision: Revision,
        cause: Cause,
    },
    /// `--dry-run`: these superseded keys would be deleted.
    WouldDeleteSuperseded { winner: String, keys: Vec<String> },
    /// `lb` wants this many members now.
    Members { lb: LbId, count: usize },
    /// `lb` has no keys left and is no longer managed.
    Retired { lb: LbId },
    /// A round of full syncs is over (`cause` [`Cause::Startup`]: the initial one).
    RoundDone {
        cause: Cause,
        total: usize,
        failed: usize,
    },
    /// AWS refused `member` of `lb` (named by its `key`), newly or for a new reason;
    /// `over_limit`: lbmanager left it out, past AWS's limit per load balancer or record set.
    Rejected {
        lb: LbId,
        member: String,
        key: Option<String>,
        reason: String,
        over_limit: bool,
    },
    /// More new refusals than are named one by one (`over_limit`: how many of those unnamed
    /// were past the limit).
    RejectedUnnamed {
        lb: LbId,
        not_named: usize,
        over_limit: usize,
    },
    /// `member` of `lb` is no longer refused.
    NoLongerRejected { lb: LbId, member: String },
    /// `lb` has this many refused members now.
    RejectedCount { lb: LbId, count: usize },
}

/// How often an actor died without a good sync since: each restart waits longer, so an actor that
/// panics at every start costs an AWS call now and then, not every second.
#[derive(Debug, Default)]
pub struct Restarts {
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

/// A load balancer with an actor, and what the fleet last sent it.
struct Child {
    members: Arc<BTreeSet<Member>>,
    generation: u64,
    /// The etcd revision of the latest change of its keys (see [`Desire::revision`]).
    revision: Revision,
    cause: Cause,
    /// Members AWS refuses, as last reported.
    rejected: Arc<Rejected>,
    restarts: Restarts,
    /// The latest barrier of a host (see [`Command::Barrier`]): handed again to an actor
    /// restarted after a panic.
    barrier: Revision,
}

impl Child {
    fn desire(&self) -> Desire {
        Desire {
            members: self.members.clone(),
            generation: self.generation,
            revision: self.revision,
            cause: self.cause,
        }
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

/// What the fleet is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub prefix: String,
    pub filters: Filters,
    pub dry_run: bool,
    /// `--ownership shared`: actors start from the members lbmanager owns.
    pub shared: bool,
    /// `--once`: say [`Command::Exit`] when the start-up round is over.
    pub once: bool,
}

pub struct Fleet {
    config: Config,
    layout: Layout,
    /// What etcd wants: the source of truth every actor is (re)started from.
    desired: DesiredState,
    /// Malformed keys already warned about (forgotten when the key is deleted).
    warned: Warned,
    lbs: HashMap<LbId, Child>,
    /// Restarts of dead zone actors, by zone.
    zone_restarts: HashMap<String, Restarts>,
    /// Numbers each desire sent, so a report can be matched to the desire it answers.
    generation: u64,
    /// The full sync under way (start-up or relist), if any.
    round: Option<Round>,
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
    /// [`Layout::waiting`]).
    waiting: HashMap<LbId, HashSet<String>>,
    /// `--ownership shared`: the members lbmanager added, per load balancer (read at start-up,
    /// kept up to date by the load balancers' reports, handed to a restarted actor).
    owned: HashMap<LbId, BTreeSet<String>>,
    /// Route53: each name's changes not yet `INSYNC`, as last published (at start-up: as the
    /// last leader published them), handed to its actor whenever it starts.
    dns_pending: HashMap<LbId, Vec<PendingChange>>,
    /// Shutting down: etcd changes are ignored, and dead actors stay dead.
    stopping: bool,
    /// The commands of the event being handled.
    out: Vec<Command>,
}

impl Fleet {
    pub fn new(config: Config) -> Self {
        Fleet {
            layout: Layout::new(&config.prefix),
            desired: DesiredState::with_filters(&config.prefix, config.filters.clone()),
            config,
            warned: Warned::default(),
            lbs: HashMap::new(),
            zone_restarts: HashMap::new(),
            generation: 0,
            round: None,
            relisting: None,
            deleting: HashSet::new(),
            recorded: HashSet::new(),
            awaiting_record: HashSet::new(),
            waiting: HashMap::new(),
            owned: HashMap::new(),
            dns_pending: HashMap::new(),
            stopping: false,
            out: Vec::new(),
        }
    }

    /// The load balancers recorded as managed (read from the state prefix at start-up).
    pub fn with_records(mut self, recorded: HashSet<LbId>) -> Self {
        self.recorded = recorded;
        self
    }

    /// `--once`: say [`Command::Exit`] when the start-up round is over.
    pub fn once(mut self, once: bool) -> Self {
        self.config.once = once;
        self
    }

    /// The ownership records read at start-up (`--ownership shared`).
    pub fn with_owned(mut self, owned: HashMap<LbId, BTreeSet<String>>) -> Self {
        self.owned = owned;
        self
    }

    /// The Route53 changes the last leader saw `PENDING` (see
    /// [`crate::etcd::Records::dns_pending`]): each name's actor follows them on from its start.
    pub fn with_dns_pending(mut self, pending: HashMap<LbId, Vec<PendingChange>>) -> Self {
        self.dns_pending = pending;
        self
    }

    /// How many load balancers are managed.
    pub fn managed(&self) -> usize {
        self.lbs.len()
    }

    fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    fn note(&mut self, note: Note) {
        self.out.push(Command::Note(note));
    }

    /// A whole read of the prefix (start-up): the desired state becomes what it says, and every
    /// load balancer that has keys, or is recorded as managed, syncs as one round.
    pub fn snapshot(
        &mut self,
        mut loaded: Loaded,
        keys: usize,
        revision: Revision,
        cause: Cause,
    ) -> Vec<Command> {
        self.desired =
            std::mem::replace(&mut loaded.desired, DesiredState::new(&self.config.prefix));
        self.apply_loaded(loaded, keys, revision, cause);
        self.take()
    }

    /// A relist begins: its keys follow in pages.
    pub fn relist_started(&mut self) {
        if self.stopping {
            return;
        }
        self.desired.begin_relist();
        self.relisting = Some(Loaded::new(
            &self.config.prefix,
            self.config.filters.clone(),
        ));
    }

    /// (key, mod_revision) of a page of the relist.
    pub fn relist_page(&mut self, page: &[(String, Revision)]) {
        if self.stopping {
            return;
        }
        if let Some(loaded) = self.relisting.as_mut() {
            for (key, revision) in page {
                loaded.add_into(&mut self.desired, key, *revision);
            }
        }
    }

    /// The relist read everything (keys it did not bring were deleted meanwhile): every load
    /// balancer syncs, as one round; nothing believed before is trusted.
    pub fn relisted(&mut self, revision: Revision, keys: usize) -> Vec<Command> {
        if self.stopping {
            return Vec::new();
        }
        let removed = self.desired.end_relist();
        if let Some(loaded) = self.relisting.take() {
            self.note(Note::Relisted { keys, removed });
            self.apply_loaded(loaded, keys, revision, Cause::Relist);
        }
        self.take()
    }

    /// Applies etcd's changes to the desired state and reconciles the load balancers they touch.
    pub fn changes(&mut self, msg: EtcdChanges) -> Vec<Command> {
        if self.stopping {
            return Vec::new();
        }
        // Each touched load balancer with its cause: a leased key's delete is a lease expiry.
        let mut touched: HashMap<LbId, (Cause, Revision)> = HashMap::new();
        let mut barriers = Vec::new();
        for change in msg.changes {
            if let Some(lb) = self.layout.parse_waiting(change.key()) {
                if let KeyChange::Put { revision, .. } = &change {
                    barriers.push((lb.clone(), *revision));
                }
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
            self.reconcile(&lb, cause, false, revision);
        }
        // After the desires: a barrier is passed only once what came before it is applied.
        for (lb, revision) in barriers {
            if let Some(child) = self.lbs.get_mut(&lb) {
                child.barrier = child.barrier.max(revision);
                self.out.push(Command::Barrier { lb, revision });
            }
        }
        self.take()
    }

    /// A load balancer's report after a sync attempt.
    pub fn synced(&mut self, report: Report) -> Vec<Command> {
        let lb = &report.lb;
        if let Some(round) = self.round.as_mut().filter(|_| report.sync) {
            if round.pending.remove(lb) && report.failed {
                round.failed += 1;
            }
        }
        self.check_round();
        if let Some(rejected) = report.rejected {
            self.rejections(lb, rejected);
        }
        if let Some(status) = report.status {
            // What the name's actor, restarted after a panic, follows on from.
            if status.dns_pending.is_empty() {
                self.dns_pending.remove(lb);
            } else {
                self.dns_pending
                    .insert(lb.clone(), status.dns_pending.clone());
            }
            self.publish(lb, Some(status));
        }
        if report.sync && !report.failed {
            if let Some(child) = self.lbs.get_mut(lb) {
                child.restarts = Restarts::default();
            }
        }
        // A load balancer whose keys are all gone, once emptied, is no longer ours to touch.
        let retire = !report.failed
            && !report.settling
            && self
                .lbs
                .get(lb)
                .is_some_and(|c| c.generation == report.generation && c.members.is_empty())
            && self.desired.resolve(lb).members.is_empty();
        if retire {
            self.retire(lb);
        }
        self.take()
    }

    /// `lb`'s managed record has landed: it gets its latest desire.
    pub fn record_landed(&mut self, lb: &LbId) -> Vec<Command> {
        self.awaiting_record.remove(lb);
        if let Some(child) = self.lbs.get(lb) {
            self.out.push(Command::Desire {
                lb: lb.clone(),
                desire: child.desire(),
            });
        }
        self.take()
    }

    /// The delete of these superseded keys is over (done, or failed: retried at the next change).
    pub fn superseded_done(&mut self, keys: &[(String, Revision)]) {
        for (k, _) in keys {
            self.deleting.remove(k);
        }
    }

    /// `lb`'s actor recorded its members as these (`--ownership shared`).
    pub fn owned_changed(&mut self, lb: LbId, members: BTreeSet<String>) {
        self.owned.insert(lb, members);
    }

    /// These actors were found dead (a panic ends an actor): each is restarted with the state the
    /// fleet keeps, after a delay that grows while it keeps dying.
    pub fn stopped(&mut self, now: Instant, lbs: &[LbId], zones: &[String]) -> Vec<Command> {
        for zone in zones {
            let restarts = self.zone_restarts.entry(zone.clone()).or_default();
            let Some(next) = restarts.take(now) else {
                continue;
            };
            self.out.push(Command::Note(Note::ZoneRestarted {
                zone: zone.clone(),
                restarts: restarts.count,
                next,
            }));
            let lbs = self
                .lbs
                .keys()
                .filter(|lb| lb.zone() == Some(zone.as_str()))
                .cloned()
                .collect();
            self.out.push(Command::RestartZone {
                zone: zone.clone(),
                lbs,
            });
        }
        if self.stopping {
            // No new syncs once the shutdown began: a dead load balancer stays dead (whatever it
            // had to do is done at the next start). Dead zones are still replaced above, so that
            // the load balancers waiting on them are told their sync is over.
            return self.take();
        }
        for lb in lbs {
            let Some(child) = self.lbs.get_mut(lb) else {
                continue;
            };
            let Some(next) = child.restarts.take(now) else {
                continue;
            };
            child.cause = Cause::Restart;
            self.out.push(Command::Note(Note::LbRestarted {
                lb: lb.clone(),
                restarts: child.restarts.count,
                next,
            }));
            let (desire, barrier) = (child.desire(), child.barrier);
            self.out.push(Command::Spawn {
                lb: lb.clone(),
                owned: self.owned_of(lb),
                dns_pending: self.dns_pending.get(lb).cloned().unwrap_or_default(),
                watched: self.waiting.contains_key(lb),
            });
            if !self.awaiting_record.contains(lb) {
                self.out.push(Command::Desire {
                    lb: lb.clone(),
                    desire,
                });
            }
            if barrier > 0 {
                self.out.push(Command::Barrier {
                    lb: lb.clone(),
                    revision: barrier,
                });
            }
        }
        self.take()
    }

    /// Shutting down: etcd changes are ignored from now on, and dead actors stay dead.
    pub fn shutdown(&mut self) {
        self.stopping = true;
    }

    /// What a (re)started actor starts from, with `--ownership shared`.
    fn owned_of(&self, lb: &LbId) -> Option<BTreeSet<String>> {
        self.config
            .shared
            .then(|| self.owned.get(lb).cloned().unwrap_or_default())
    }

    fn warn_once(&mut self, key: &str, why: &Ignored) {
        let out = &mut self.out;
        let on_full = || {
            out.push(Command::Note(Note::IgnoredPastRemembered {
                not_listed: None,
            }))
        };
        if self.warned.first_time(key, on_full) {
            self.note(Note::KeyIgnored {
                key: key.to_string(),
                why: why.clone(),
            });
        }
    }

    /// The desired state holds a whole read of the prefix now (`loaded` has what else the read
    /// found): syncs every load balancer that has keys now or had them before (all of them,
    /// changed or not: after a relist nothing that was believed before is trusted), as one
    /// [`Round`].
    fn apply_loaded(&mut self, loaded: Loaded, keys: usize, revision: Revision, cause: Cause) {
        // Who waits on AWS's progress, as the read saw it (deletes missed meanwhile included).
        let mut waiting: HashMap<LbId, HashSet<String>> = HashMap::new();
        for (lb, key) in loaded.waiting {
            waiting.entry(lb).or_default().insert(key);
        }
        for lb in self.lbs.keys() {
            let (was, is) = (self.waiting.contains_key(lb), waiting.contains_key(lb));
            if was != is {
                self.out.push(Command::Watched {
                    lb: lb.clone(),
                    watched: is,
                });
            }
        }
        self.waiting = waiting;
        self.warned
            .keep_only(loaded.ignored.iter().map(|(k, _)| k.as_str()));
        for (key, e) in &loaded.ignored {
            self.warn_once(key, e);
        }
        if loaded.ignored_more > 0 {
            self.note(Note::IgnoredPastRemembered {
                not_listed: Some(loaded.ignored_more),
            });
        }
        let mut touched: HashSet<LbId> = self.desired.load_balancers().cloned().collect();
        touched.extend(self.lbs.keys().cloned());
        // Recorded as managed but without keys: their keys were deleted while lbmanager was away.
        touched.extend(self.recorded.iter().cloned());
        for lb in touched {
            self.reconcile(&lb, cause, true, revision);
        }
        let pending: HashSet<LbId> = self.lbs.keys().cloned().collect();
        self.note(Note::ReadEtcd {
            keys,
            load_balancers: pending.len(),
            revision,
            cause,
        });
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
    /// if it has none yet. `revision`: of the etcd change that makes it reconcile (the read's,
    /// for a full sync).
    fn reconcile(&mut self, lb: &LbId, cause: Cause, force: bool, revision: Revision) {
        let resolution = self.desired.resolve(lb);
        if !resolution.superseded.is_empty() {
            let decided_by = resolution.decided_by();
            self.delete_superseded(decided_by, resolution.superseded);
        }
        let mut members = Arc::new(resolution.members);
        if let Some(child) = self.lbs.get(lb) {
            if child.members == members {
                if !force && child.revision >= revision {
                    return;
                }
                // The same set again (a relist of a big tree sends every one): share the one
                // the actor holds instead of a second copy.
                members = child.members.clone();
            }
        } else if members.is_empty() && !self.recorded.contains(lb) {
            // A load balancer without keys is never touched (unless lbmanager managed it before).
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        if !self.lbs.contains_key(lb) {
            if self.recorded.insert(lb.clone()) && self.record(lb, true) {
                self.awaiting_record.insert(lb.clone());
                self.out.push(Command::AwaitRecord { lb: lb.clone() });
            }
            self.out.push(Command::Spawn {
                lb: lb.clone(),
                owned: self.owned_of(lb),
                dns_pending: self.dns_pending.get(lb).cloned().unwrap_or_default(),
                watched: self.waiting.contains_key(lb),
            });
            self.lbs.insert(
                lb.clone(),
                Child {
                    members: members.clone(),
                    generation,
                    revision,
                    cause,
                    rejected: Arc::default(),
                    restarts: Restarts::default(),
                    barrier: 0,
                },
            );
        }
        self.note(Note::Members {
            lb: lb.clone(),
            count: members.len(),
        });
        let child = self.lbs.get_mut(lb).expect("inserted above");
        child.members = members;
        child.generation = generation;
        child.revision = child.revision.max(revision);
        child.cause = cause;
        if !self.awaiting_record.contains(lb) {
            let desire = child.desire();
            self.out.push(Command::Desire {
                lb: lb.clone(),
                desire,
            });
        }
    }

    /// Writes the record (or its removal); whether one is written (none in a dry run).
    fn record(&mut self, lb: &LbId, managed: bool) -> bool {
        if self.config.dry_run {
            return false;
        }
        self.out.push(Command::Record {
            lb: lb.clone(),
            managed,
        });
        true
    }

    /// Writes (or deletes) a status (none in a dry run).
    fn publish(&mut self, lb: &LbId, status: Option<Arc<LbStatus>>) {
        if !self.config.dry_run {
            self.out.push(Command::Publish {
                lb: lb.clone(),
                status,
            });
        }
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
        if self.lbs.contains_key(&lb) {
            self.out.push(Command::Watched { lb, watched });
        }
    }

    /// Deletes keys that no longer count, guarded by every key the decision rests on.
    fn delete_superseded(
        &mut self,
        decided_by: Vec<(String, Revision)>,
        superseded: Vec<(String, Revision)>,
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
        if self.config.dry_run {
            let keys = todo.into_iter().map(|(k, _)| k).collect();
            self.note(Note::WouldDeleteSuperseded { winner, keys });
            return;
        }
        self.deleting.extend(todo.iter().map(|(k, _)| k.clone()));
        self.out.push(Command::DeleteSuperseded {
            decided_by,
            superseded: todo,
            winner,
        });
    }

    /// `lb` has no keys left and AWS is emptied of lbmanager's members: no longer managed.
    fn retire(&mut self, lb: &LbId) {
        let Some(child) = self.lbs.remove(lb) else {
            return;
        };
        self.note(Note::Retired { lb: lb.clone() });
        self.out.push(Command::Retire { lb: lb.clone() });
        self.dns_pending.remove(lb);
        if self.recorded.remove(lb) {
            self.record(lb, false);
        }
        if !child.rejected.is_empty() {
            self.rejections(lb, Arc::default());
        }
        self.publish(lb, None);
        // The zone actor (and its cache) goes when its last managed name does.
        if let Some(zone) = lb.zone() {
            if !self.lbs.keys().any(|lb| lb.zone() == Some(zone)) {
                self.zone_restarts.remove(zone);
                self.out.push(Command::DropZone {
                    zone: zone.to_string(),
                });
            }
        }
    }

    fn check_round(&mut self) {
        if !self.round.as_ref().is_some_and(|s| s.pending.is_empty()) {
            return;
        }
        let round = self.round.take().expect("checked above");
        self.note(Note::RoundDone {
            cause: round.cause,
            total: round.total,
            failed: round.failed,
        });
        if self.config.once {
            self.config.once = false;
            self.out.push(Command::Exit(u8::from(round.failed > 0)));
        }
    }

    /// A load balancer's refused members changed: warn about each new refusal (or new reason),
    /// with its key, once; count them. (The load balancer's status carries them to etcd.)
    fn rejections(&mut self, lb: &LbId, rejected: Arc<Rejected>) {
        let before = self
            .lbs
            .get(lb)
            .map(|c| c.rejected.clone())
            .unwrap_or_default();
        // One line per new refusal, up to a bound: AWS names every refused target in each
        // one's reason, so the lines (cut) and their number are kept small.
        let fresh: Vec<(&String, &String)> = rejected
            .iter()
            .filter(|(member, reason)| before.get(*member) != Some(*reason))
            .collect();
        let over_limit = |reason: &str| reason.starts_with("over the limit");
        let mut notes = Vec::new();
        for (member, reason) in fresh.iter().take(crate::status::REJECTED_LISTED) {
            notes.push(Note::Rejected {
                lb: lb.clone(),
                member: member.to_string(),
                key: self.desired.key_of(lb, member),
                reason: reason.to_string(),
                over_limit: over_limit(reason),
            });
        }
        if fresh.len() > crate::status::REJECTED_LISTED {
            let unnamed = &fresh[crate::status::REJECTED_LISTED..];
            notes.push(Note::RejectedUnnamed {
                lb: lb.clone(),
                not_named: unnamed.len(),
                over_limit: unnamed.iter().filter(|(_, r)| over_limit(r)).count(),
            });
        }
        for member in before.keys().filter(|m| !rejected.contains_key(*m)) {
            notes.push(Note::NoLongerRejected {
                lb: lb.clone(),
                member: member.clone(),
            });
        }
        notes.push(Note::RejectedCount {
            lb: lb.clone(),
            count: rejected.len(),
        });
        for note in notes {
            self.note(note);
        }
        if let Some(child) = self.lbs.get_mut(lb) {
            child.rejected = rejected;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/lbManager/elb/us-east-1/a/multiple/i-0000000a";
    const A2: &str = "/lbManager/elb/us-east-1/a/multiple/i-000000a2";
    const A_SINGLE: &str = "/lbManager/elb/us-east-1/a/single/i-000000a3";
    const B: &str = "/lbManager/elb/us-east-1/b/multiple/i-0000000b";
    const WWW: &str = "/lbManager/route53/us-east-1/Z1/www.example.com/multiple/192.0.2.1";

    fn lb(name: &str) -> LbId {
        LbId::Elb {
            region: "us-east-1".into(),
            name: name.into(),
        }
    }

    fn fleet(once: bool) -> Fleet {
        let config = Config {
            prefix: "/lbManager".into(),
            filters: Filters::default(),
            dry_run: false,
            shared: false,
            once,
        };
        Fleet::new(config)
    }

    /// A fleet started from `keys`, every managed record landed.
    fn started(once: bool, keys: &[&str]) -> (Fleet, Vec<Command>) {
        let mut fleet = fleet(once);
        let keys: Vec<(String, Revision)> = keys.iter().map(|k| (k.to_string(), 5)).collect();
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let mut out = acts(fleet.snapshot(loaded, keys.len(), 10, Cause::Startup));
        let landed: Vec<LbId> = out
            .iter()
            .filter_map(|c| match c {
                Command::AwaitRecord { lb } => Some(lb.clone()),
                _ => None,
            })
            .collect();
        for lb in landed {
            out.extend(acts(fleet.record_landed(&lb)));
        }
        (fleet, out)
    }

    /// What the fleet has done, without what it said: its notes are tested apart.
    fn acts(out: Vec<Command>) -> Vec<Command> {
        out.into_iter()
            .filter(|c| !matches!(c, Command::Note(_)))
            .collect()
    }

    fn notes(out: &[Command]) -> Vec<&Note> {
        out.iter()
            .filter_map(|c| match c {
                Command::Note(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    fn desire_of(out: &[Command], of: &LbId) -> Option<Desire> {
        out.iter().rev().find_map(|c| match c {
            Command::Desire { lb, desire } if lb == of => Some(desire.clone()),
            _ => None,
        })
    }

    fn ok(lb: &LbId, generation: u64) -> Report {
        Report {
            lb: lb.clone(),
            sync: true,
            generation,
            failed: false,
            settling: false,
            rejected: None,
            status: None,
        }
    }

    fn change(changes: Vec<KeyChange>) -> EtcdChanges {
        EtcdChanges {
            changes,
            revision: 0,
        }
    }

    fn delete(key: &str, revision: Revision) -> KeyChange {
        KeyChange::Delete {
            key: key.into(),
            leased: false,
            revision,
        }
    }

    fn put(key: &str, revision: Revision) -> KeyChange {
        KeyChange::Put {
            key: key.into(),
            revision,
        }
    }

    #[test]
    fn a_new_load_balancer_gets_no_desire_until_its_record_has_landed() {
        let mut fleet = fleet(false);
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &[]);
        assert!(acts(fleet.snapshot(loaded, 0, 10, Cause::Startup)).is_empty());
        let out = acts(fleet.changes(change(vec![put(A, 11)])));
        assert!(matches!(&out[0], Command::Record { managed: true, .. }));
        assert!(matches!(&out[1], Command::AwaitRecord { .. }));
        assert!(matches!(&out[2], Command::Spawn { watched: false, .. }));
        assert!(desire_of(&out, &lb("a")).is_none());
        // A second key meanwhile: still nothing sent; then the latest once the record landed.
        assert!(desire_of(&acts(fleet.changes(change(vec![put(A2, 12)]))), &lb("a")).is_none());
        let desire = desire_of(&acts(fleet.record_landed(&lb("a"))), &lb("a")).unwrap();
        assert_eq!((desire.members.len(), desire.revision), (2, 12));
    }

    #[test]
    fn a_dead_actor_is_restarted_ever_more_slowly_and_a_good_sync_resets_that() {
        let (mut fleet, out) = started(false, &[A]);
        let generation = desire_of(&out, &lb("a")).unwrap().generation;
        let t0 = Instant::now();
        let restarted = |out: &[Command]| {
            out.iter()
                .any(|c| matches!(c, Command::Spawn { lb: l, .. } if *l == lb("a")))
        };
        let out = acts(fleet.stopped(t0, &[lb("a")], &[]));
        assert!(restarted(&out));
        let desire = desire_of(&out, &lb("a")).unwrap();
        assert_eq!(
            (desire.generation, desire.cause),
            (generation, Cause::Restart)
        );
        // Dead again at once: the next restart waits 1 s, the one after 2 s.
        assert!(acts(fleet.stopped(t0, &[lb("a")], &[])).is_empty());
        assert!(acts(fleet.stopped(t0 + Duration::from_millis(900), &[lb("a")], &[])).is_empty());
        assert!(restarted(&acts(fleet.stopped(
            t0 + Duration::from_secs(1),
            &[lb("a")],
            &[]
        ))));
        assert!(acts(fleet.stopped(t0 + Duration::from_millis(2900), &[lb("a")], &[])).is_empty());
        assert!(restarted(&acts(fleet.stopped(
            t0 + Duration::from_secs(3),
            &[lb("a")],
            &[]
        ))));
        // A good sync: the next death is restarted at once.
        acts(fleet.synced(ok(&lb("a"), generation)));
        assert!(restarted(&acts(fleet.stopped(
            t0 + Duration::from_secs(3),
            &[lb("a")],
            &[]
        ))));
        // Shutting down: the dead stay dead.
        fleet.shutdown();
        assert!(acts(fleet.stopped(t0 + Duration::from_secs(600), &[lb("a")], &[])).is_empty());
    }

    #[test]
    fn a_dead_zone_actor_is_restarted_and_handed_to_its_names() {
        let (mut fleet, _) = started(false, &[WWW, A]);
        let out = acts(fleet.stopped(Instant::now(), &[], &["Z1".into()]));
        match &out[..] {
            [Command::RestartZone { zone, lbs }] => {
                assert_eq!(zone, "Z1");
                assert_eq!(lbs.len(), 1);
                assert_eq!(lbs[0].zone(), Some("Z1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn superseded_keys_are_deleted_once_while_under_way() {
        let (mut fleet, out) = started(false, &[A, A2]);
        assert!(!out
            .iter()
            .any(|c| matches!(c, Command::DeleteSuperseded { .. })));
        let out = acts(fleet.changes(change(vec![put(A_SINGLE, 20)])));
        let superseded = out
            .iter()
            .find_map(|c| match c {
                Command::DeleteSuperseded {
                    superseded, winner, ..
                } => Some((superseded.clone(), winner.clone())),
                _ => None,
            })
            .expect("a delete");
        assert_eq!(superseded.1, A_SINGLE);
        assert_eq!(superseded.0.len(), 2);
        assert_eq!(desire_of(&out, &lb("a")).unwrap().members.len(), 1);
        // Another change while the delete is under way: not asked again.
        let again = acts(fleet.changes(change(vec![put(B, 21)])));
        assert!(!again
            .iter()
            .any(|c| matches!(c, Command::DeleteSuperseded { .. })));
        // Done (say it failed): the next change of that load balancer asks again.
        fleet.superseded_done(&superseded.0);
        let again = acts(fleet.changes(change(vec![put(A_SINGLE, 22)])));
        assert!(again
            .iter()
            .any(|c| matches!(c, Command::DeleteSuperseded { .. })));
    }

    #[test]
    fn once_exits_when_every_load_balancer_synced_once_saying_whether_one_failed() {
        for failed in [false, true] {
            let (mut fleet, out) = started(true, &[A, B]);
            let ga = desire_of(&out, &lb("a")).unwrap().generation;
            let gb = desire_of(&out, &lb("b")).unwrap().generation;
            assert!(acts(fleet.synced(ok(&lb("a"), ga))).is_empty());
            let mut report = ok(&lb("b"), gb);
            report.failed = failed;
            let out = acts(fleet.synced(report));
            assert!(
                matches!(out[..], [Command::Exit(code)] if code == u8::from(failed)),
                "{out:?}"
            );
            // Once only.
            assert!(acts(fleet.synced(ok(&lb("a"), ga))).is_empty());
        }
    }

    #[test]
    fn a_load_balancer_is_retired_when_its_keys_are_gone_and_aws_is_emptied() {
        let (mut fleet, _) = started(false, &[A, WWW]);
        let out = acts(fleet.changes(change(vec![delete(A, 30)])));
        let emptied = desire_of(&out, &lb("a")).unwrap();
        assert!(emptied.members.is_empty());
        // A failed sync, a settling one, or one of an older desire retires nothing.
        let mut failed = ok(&lb("a"), emptied.generation);
        failed.failed = true;
        assert!(acts(fleet.synced(failed)).is_empty());
        let mut settling = ok(&lb("a"), emptied.generation);
        settling.settling = true;
        assert!(acts(fleet.synced(settling)).is_empty());
        assert!(acts(fleet.synced(ok(&lb("a"), emptied.generation - 1))).is_empty());
        let out = acts(fleet.synced(ok(&lb("a"), emptied.generation)));
        assert!(matches!(&out[0], Command::Retire { .. }));
        assert!(matches!(&out[1], Command::Record { managed: false, .. }));
        assert!(matches!(&out[2], Command::Publish { status: None, .. }));
        assert_eq!(fleet.managed(), 1);
        // The zone's last name: its actor goes too.
        let www = lb_of(WWW);
        let emptied = desire_of(&acts(fleet.changes(change(vec![delete(WWW, 31)]))), &www).unwrap();
        let out = acts(fleet.synced(ok(&www, emptied.generation)));
        assert!(matches!(out.last(), Some(Command::DropZone { zone }) if zone == "Z1"));
        assert_eq!(fleet.managed(), 0);
    }

    fn lb_of(key: &str) -> LbId {
        crate::key::parse("/lbManager", key).unwrap().unwrap().lb
    }

    #[test]
    fn waiters_are_told_to_their_load_balancer_and_to_a_new_one() {
        let (mut fleet, _) = started(false, &[A]);
        let layout = Layout::new("/lbManager");
        let member = Member::Instance("i-0000000a".into());
        let waiting = layout.waiting(&lb("a"), &member);
        let out = acts(fleet.changes(change(vec![put(&waiting, 40)])));
        assert!(matches!(
            &out[..],
            [
                Command::Watched { watched: true, .. },
                Command::Barrier { revision: 40, .. }
            ]
        ));
        let out = acts(fleet.changes(change(vec![delete(&waiting, 41)])));
        assert!(matches!(
            &out[..],
            [Command::Watched { watched: false, .. }]
        ));
        // Someone waits on a load balancer before its first key: it starts watched.
        let waiting = layout.waiting(&lb("b"), &Member::Instance("i-0000000b".into()));
        assert!(acts(fleet.changes(change(vec![put(&waiting, 42)]))).is_empty());
        let out = acts(fleet.changes(change(vec![put(B, 43)])));
        assert!(out
            .iter()
            .any(|c| matches!(c, Command::Spawn { watched: true, .. })));
    }

    /// The 60-minute soak's remove_wait violation (a key that was not there): a host's barrier
    /// reaches the load balancer after the desires of the changes before it, so the load
    /// balancer raises its status to it only once those are applied.
    #[test]
    fn a_barrier_comes_after_the_desires_of_the_changes_before_it() {
        let (mut fleet, _) = started(false, &[A]);
        let waiting =
            Layout::new("/lbManager").waiting(&lb("a"), &Member::Instance("i-0000000a".into()));
        let out = acts(fleet.changes(change(vec![put(&waiting, 50), delete(A, 51)])));
        let desire = out.iter().position(|c| matches!(c, Command::Desire { .. }));
        let barrier = out
            .iter()
            .position(|c| matches!(c, Command::Barrier { revision: 50, .. }));
        assert!(desire.unwrap() < barrier.unwrap(), "{out:?}");
        // An actor restarted after a panic is handed the barrier again, after its desire.
        let out = acts(fleet.stopped(Instant::now(), &[lb("a")], &[]));
        let desire = out.iter().position(|c| matches!(c, Command::Desire { .. }));
        let barrier = out
            .iter()
            .position(|c| matches!(c, Command::Barrier { revision: 50, .. }));
        assert!(desire.unwrap() < barrier.unwrap(), "{out:?}");
    }

    /// What is said of a start: the read, then the round once every load balancer has synced;
    /// a key that counts for nothing, once while it stays.
    #[test]
    fn a_start_notes_the_read_the_ignored_keys_once_and_the_round() {
        const BAD: &str = "/lbManager/elb/us-east-1/a/multiple/not-an-instance";
        let mut fleet = fleet(false);
        let keys = [(A.to_string(), 5), (BAD.to_string(), 6)];
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let out = fleet.snapshot(loaded, 2, 10, Cause::Startup);
        let said = notes(&out);
        assert!(
            matches!(said[0], Note::KeyIgnored { key, .. } if key == BAD),
            "{said:?}"
        );
        assert!(said.contains(&&Note::ReadEtcd {
            keys: 2,
            load_balancers: 1,
            revision: 10,
            cause: Cause::Startup
        }));
        assert!(!said.iter().any(|n| matches!(n, Note::RoundDone { .. })));
        let generation = desire_of(&fleet.record_landed(&lb("a")), &lb("a"))
            .unwrap()
            .generation;
        let out = fleet.synced(ok(&lb("a"), generation));
        assert_eq!(
            notes(&out),
            [&Note::RoundDone {
                cause: Cause::Startup,
                total: 1,
                failed: 0
            }]
        );
        // The same key in the next read: not said again.
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let out = fleet.snapshot(loaded, 2, 11, Cause::Relist);
        assert!(!notes(&out)
            .iter()
            .any(|n| matches!(n, Note::KeyIgnored { .. })));
    }

    /// A restart is said with its count and how long the next one waits at least.
    #[test]
    fn a_restart_is_noted_with_its_count() {
        let (mut fleet, _) = started(false, &[A]);
        let out = fleet.stopped(Instant::now(), &[lb("a")], &[]);
        assert_eq!(
            notes(&out),
            [&Note::LbRestarted {
                lb: lb("a"),
                restarts: 1,
                next: Duration::from_secs(1)
            }]
        );
    }

    /// A refusal is said once, with the member's key; its end too; the count follows both.
    #[test]
    fn refusals_are_noted_once_with_their_key() {
        let (mut fleet, out) = started(false, &[A]);
        let generation = desire_of(&out, &lb("a")).unwrap().generation;
        let refused: Rejected = [("i-0000000a".to_string(), "InvalidInstance".to_string())].into();
        let report = |rejected: &Rejected| Report {
            rejected: Some(Arc::new(rejected.clone())),
            ..ok(&lb("a"), generation)
        };
        fleet.synced(ok(&lb("a"), generation)); // the start-up round's end
        let out = fleet.synced(report(&refused));
        assert_eq!(
            notes(&out),
            [
                &Note::Rejected {
                    lb: lb("a"),
                    member: "i-0000000a".into(),
                    key: Some(A.into()),
                    reason: "InvalidInstance".into(),
                    over_limit: false,
                },
                &Note::RejectedCount {
                    lb: lb("a"),
                    count: 1
                },
            ]
        );
        // The same refusal again: only the count.
        let out = fleet.synced(report(&refused));
        assert!(!notes(&out)
            .iter()
            .any(|n| matches!(n, Note::Rejected { .. })));
        let out = fleet.synced(report(&Rejected::new()));
        assert!(notes(&out).contains(&&Note::NoLongerRejected {
            lb: lb("a"),
            member: "i-0000000a".into()
        }));
        assert!(notes(&out).contains(&&Note::RejectedCount {
            lb: lb("a"),
            count: 0
        }));
    }
}
