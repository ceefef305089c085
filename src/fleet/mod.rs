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
//!
//! One `impl Fleet` by concern, each file with its tests: [`wants`] (what etcd wants, the keys
//! that count for nothing, hosts' waiting keys, superseded keys), [`children`] (the actors, their
//! desires, restarts, reports and retirement), [`rounds`] (rounds of full syncs, `--once`).

mod children;
mod rounds;
#[cfg(test)]
mod testing;
mod wants;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::desired::{DesiredState, Ignored, Loaded, Revision, Warned};
use crate::filter::Filters;
use crate::key::{LbId, Member};
use crate::layout::Layout;
use crate::plan::{Refusal, Rejected};
use crate::status::LbStatus;
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
    /// (`--ownership shared`: the members lbmanager added there) and from the status last
    /// published for it (its members, TTL and Route53 changes not yet `INSYNC`, by this
    /// lbmanager or the one before), and told whether anyone waits. `current`: no key of `lb`
    /// changed after that status (a status that still says the same is not written again).
    Spawn {
        lb: LbId,
        owned: Option<BTreeSet<String>>,
        published: Option<Arc<LbStatus>>,
        current: bool,
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
    /// `member` of `lb` (named by its `key`) is left out of AWS, newly or for a new reason.
    Rejected {
        lb: LbId,
        member: String,
        key: Option<String>,
        refusal: Refusal,
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
    /// The member tree's prefix and lbmanager's keys under it.
    pub layout: Layout,
    pub filters: Filters,
    pub dry_run: bool,
    /// `--ownership shared`: actors start from the members lbmanager owns.
    pub shared: bool,
    /// `--once`: say [`Command::Exit`] when the start-up round is over.
    pub once: bool,
}

pub struct Fleet {
    config: Config,
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
    /// Each load balancer's status as last published (at start-up: as the last leader
    /// published it), handed to its actor whenever it starts. Shared with the actors.
    published: HashMap<LbId, Arc<LbStatus>>,
    /// The keys last found to count for nothing, with why (at most [`IGNORED_SHOWN`], newest
    /// last): for the status page.
    ignored: std::collections::VecDeque<(String, String)>,
    /// Shutting down: etcd changes are ignored, and dead actors stay dead.
    stopping: bool,
    /// The commands of the event being handled.
    out: Vec<Command>,
}

/// Keys counting for nothing the status page lists (the newest), each once while it stays.
pub const IGNORED_SHOWN: usize = 20;

impl Fleet {
    pub fn new(config: Config) -> Self {
        Fleet {
            desired: DesiredState::with_filters(config.layout.prefix(), config.filters.clone()),
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
            published: HashMap::new(),
            ignored: Default::default(),
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

    /// The statuses the last leader published (see [`crate::etcd::Records::published`]): each
    /// actor starts from its own.
    pub fn with_published(mut self, published: HashMap<LbId, Arc<LbStatus>>) -> Self {
        self.published = published;
        self
    }

    /// A round (start-up, relist) is under way: every load balancer is about to sync.
    pub fn in_round(&self) -> bool {
        self.round.is_some()
    }

    /// How many load balancers are managed.
    pub fn managed(&self) -> usize {
        self.lbs.len()
    }

    /// Each managed load balancer: what etcd wants of it, the etcd revision of the latest change
    /// of its keys, and its status as last published.
    pub fn each(
        &self,
    ) -> impl Iterator<Item = (&LbId, &BTreeSet<Member>, Revision, Option<&LbStatus>)> {
        self.lbs.iter().map(|(lb, child)| {
            let status = self.published.get(lb).map(|s| &**s);
            (lb, &*child.members, child.revision, status)
        })
    }

    /// The keys last found to count for nothing, with why, newest last.
    pub fn ignored(&self) -> impl Iterator<Item = &(String, String)> {
        self.ignored.iter()
    }

    /// The rows of `lbmanager status`, from what the fleet has in hand: what etcd wants and the
    /// statuses last published (the live status page's source: no etcd read, no AWS call).
    pub fn report(&self, now: u64) -> Vec<crate::status::table::StatusRow> {
        // Each load balancer's members as last resolved (not resolved again per view).
        let desired: std::collections::BTreeMap<LbId, BTreeSet<Member>> = self
            .lbs
            .iter()
            .filter(|(_, child)| !child.members.is_empty())
            .map(|(lb, child)| (lb.clone(), (*child.members).clone()))
            .collect();
        let published: std::collections::BTreeMap<&LbId, &LbStatus> = self
            .published
            .iter()
            .map(|(lb, status)| (lb, &**status))
            .collect();
        crate::status::table::rows(&desired, &published, now)
    }

    fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    fn note(&mut self, note: Note) {
        self.out.push(Command::Note(note));
    }

    /// Shutting down: etcd changes are ignored from now on, and dead actors stay dead.
    pub fn shutdown(&mut self) {
        self.stopping = true;
    }
}
