//! The Supervisor: carries out the fleet's rules ([`Fleet`]) with actors.
//!
//! It routes what it hears (the start-up read, the watch's changes, each load balancer's report,
//! the actors it finds dead) to the [`Fleet`] and does what the fleet says: it spawns a
//! [`LoadBalancer`] per load balancer (of its kind, with its account's AWS client) and a
//! [`HostedZone`] per zone, sends them their desires, and hands every etcd write to the
//! [`StateWriter`]. It checks every second which actors died.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use slog::{debug, info, warn, Logger};

use super::etcd_watcher::{EtcdWatcher, WatchEvent};
use super::hosted_zone::HostedZone;
use super::load_balancer::{
    Barrier, Drain, Elb, Fqdn, LbHandle, LoadBalancer, Retire, SetZone, Synced, Watched,
};
use super::state_writer::{
    Beat, DeleteKeys, DeleteSuperseded, Flush, Landed, ManagedRecord, PublishStatus, StateWriter,
};
use super::{Cause, Settings};
use crate::aws::roles::Accounts;
use crate::etcd::{EtcdWrites, Snapshot};
use crate::fleet::{Command, Config, Fleet, Report};
use crate::key::LbId;
use crate::ownership::Ownership;
use crate::status::LbStatus;
use crate::sync::elb::Owned;

/// A load balancer's actor recorded its members as these (`--ownership shared`): what a
/// restarted actor starts from.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OwnedChanged(pub LbId, pub BTreeSet<String>);

pub struct Supervisor {
    settings: Arc<Settings>,
    log: Logger,
    /// The fleet's rules and state.
    fleet: Fleet,
    /// The StateWriter's, which owns every write lbmanager makes.
    etcd_writes: Arc<dyn EtcdWrites>,
    /// The client the EtcdWatcher watches with (none: no watcher, changes are sent directly).
    etcd_watch: Option<crate::etcd::Failover>,
    /// The AWS clients every load balancer and zone actor is given.
    aws: Accounts,
    /// The load balancers' actors.
    actors: HashMap<LbId, LbHandle>,
    /// One actor per hosted zone that has managed names.
    zones: HashMap<String, Addr<HostedZone>>,
    /// The start-up snapshot, until `started` applies it.
    initial: Option<Snapshot>,
    /// Stale records to delete at start (see [`crate::etcd::Records::obsolete`]).
    obsolete: Vec<String>,
    /// The StateWriter, started with the Supervisor.
    state: Option<Addr<StateWriter>>,
    watcher: Option<Addr<EtcdWatcher>>,
    /// `--once`: told the exit code when the start-up sync is done.
    once: Option<tokio::sync::oneshot::Sender<u8>>,
}

impl Supervisor {
    /// A Supervisor that starts from `initial` (read at start-up) and watches from its revision + 1.
    pub fn new(
        settings: Arc<Settings>,
        log: &Logger,
        etcd_writes: Arc<dyn EtcdWrites>,
        aws: impl Into<Accounts>,
        initial: Snapshot,
    ) -> Self {
        let config = Config {
            layout: settings.layout.clone(),
            filters: settings.filters.clone(),
            dry_run: settings.dry_run,
            shared: settings.ownership == Ownership::Shared,
            once: false,
        };
        Supervisor {
            fleet: Fleet::new(config),
            settings,
            log: log.clone(),
            etcd_writes,
            etcd_watch: None,
            aws: aws.into(),
            actors: HashMap::new(),
            zones: HashMap::new(),
            initial: Some(initial),
            obsolete: Vec::new(),
            state: None,
            watcher: None,
            once: None,
        }
    }

    /// `--once`: when every load balancer has been synced once, send 0 (all in step) or 1.
    pub fn once_if(self, once: bool, done: tokio::sync::oneshot::Sender<u8>) -> Self {
        Supervisor {
            fleet: self.fleet.once(once),
            once: once.then_some(done),
            ..self
        }
    }

    /// The load balancers recorded as managed (read from the state prefix at start-up).
    pub fn with_records(self, recorded: HashSet<LbId>) -> Self {
        Supervisor {
            fleet: self.fleet.with_records(recorded),
            ..self
        }
    }

    /// The ownership records read at start-up (`--ownership shared`).
    pub fn with_owned(self, owned: HashMap<LbId, BTreeSet<String>>) -> Self {
        Supervisor {
            fleet: self.fleet.with_owned(owned),
            ..self
        }
    }

    /// The statuses the last leader published (see [`crate::etcd::Records::published`]).
    pub fn with_published(self, published: HashMap<LbId, Arc<LbStatus>>) -> Self {
        Supervisor {
            fleet: self.fleet.with_published(published),
            ..self
        }
    }

    /// Stale records, to delete at start.
    pub fn with_obsolete(mut self, keys: Vec<String>) -> Self {
        self.obsolete = keys;
        self
    }

    /// Watches etcd with `etcd`'s client (without, changes are sent to the Supervisor directly,
    /// as the actor tests do).
    pub fn watching(mut self, etcd: crate::etcd::Failover) -> Self {
        self.etcd_watch = Some(etcd);
        self
    }

    /// Does what the fleet said.
    fn carry_out(&mut self, commands: Vec<Command>, ctx: &mut Context<Self>) {
        // The AWS reads of a round's syncs gather (see `aws::loader::round`).
        crate::aws::loader::round(self.fleet.in_round());
        for command in commands {
            match command {
                Command::Spawn {
                    lb,
                    owned,
                    published,
                    current,
                    watched,
                } => {
                    let actor = self.spawn_lb(&lb, owned, published, current, ctx);
                    if watched {
                        actor.watched.do_send(Watched(true));
                    }
                    self.actors.insert(lb, actor);
                }
                Command::Desire { lb, desire } => {
                    if let Some(actor) = self.actors.get(&lb) {
                        actor.desire.do_send(desire);
                    }
                }
                Command::Watched { lb, watched } => {
                    if let Some(actor) = self.actors.get(&lb) {
                        actor.watched.do_send(Watched(watched));
                    }
                }
                Command::Barrier { lb, revision } => {
                    if let Some(actor) = self.actors.get(&lb) {
                        actor.barrier.do_send(Barrier(revision));
                    }
                }
                Command::Retire { lb } => {
                    if let Some(actor) = self.actors.remove(&lb) {
                        actor.retire.do_send(Retire);
                    }
                }
                Command::RestartZone { zone, lbs } => {
                    self.zones.remove(&zone);
                    let addr = self.zone(&zone);
                    for lb in lbs {
                        if let Some(set_zone) =
                            self.actors.get(&lb).and_then(|a| a.set_zone.as_ref())
                        {
                            set_zone.do_send(SetZone(addr.clone()));
                        }
                    }
                }
                Command::DropZone { zone } => {
                    self.zones.remove(&zone);
                }
                Command::Record { lb, managed } => self.write_state(match managed {
                    true => ManagedRecord::Put(lb),
                    false => ManagedRecord::Delete(lb),
                }),
                Command::AwaitRecord { lb } => self.await_record(lb, ctx),
                Command::DeleteSuperseded {
                    decided_by,
                    superseded,
                    winner,
                } => self.delete_superseded(decided_by, superseded, winner, ctx),
                Command::Publish { lb, status } => self.write_state(PublishStatus(lb, status)),
                Command::Exit(code) => {
                    if let Some(done) = self.once.take() {
                        let _ = done.send(code);
                    }
                }
                Command::Note(note) => super::notes::tell(&self.log, &self.settings.metrics, note),
            }
        }
    }

    /// Sends a write to the StateWriter.
    fn write_state<M>(&self, msg: M)
    where
        M: Message<Result = ()> + Send + 'static,
        StateWriter: Handler<M>,
    {
        if let Some(state) = &self.state {
            state.do_send(msg);
        }
    }

    /// Tells the fleet once `lb`'s managed record has landed.
    fn await_record(&mut self, lb: LbId, ctx: &mut Context<Self>) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let key = self.settings.layout.managed(&lb);
        ctx.spawn(
            state
                .send(Landed(key))
                .into_actor(self)
                .map(move |_, act, ctx| {
                    let commands = act.fleet.record_landed(&lb);
                    act.carry_out(commands, ctx);
                }),
        );
    }

    /// Deletes keys that no longer count through the StateWriter; logs what came of it.
    fn delete_superseded(
        &mut self,
        decided_by: Vec<(String, crate::desired::Revision)>,
        superseded: Vec<(String, crate::desired::Revision)>,
        winner: String,
        ctx: &mut Context<Self>,
    ) {
        let Some(writer) = self.state.clone() else {
            return;
        };
        let fut = writer.send(DeleteSuperseded {
            decided_by,
            superseded: superseded.clone(),
        });
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
            act.fleet.superseded_done(&superseded);
            let keys: Vec<&str> = superseded.iter().map(|(k, _)| k.as_str()).collect();
            match res.unwrap_or(Ok(0)) {
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

    /// Starts `lb`'s actor, of its kind, with its account's client (or its zone's actor).
    fn spawn_lb(
        &mut self,
        lb: &LbId,
        owned: Option<BTreeSet<String>>,
        published: Option<Arc<LbStatus>>,
        current: bool,
        ctx: &mut Context<Self>,
    ) -> LbHandle {
        let owned = owned.map(|members| {
            let (me, id) = (ctx.address(), lb.clone());
            Owned {
                writes: self.ownership_writes(),
                layout: self.settings.layout.clone(),
                lb: lb.clone(),
                members,
                recorded: Arc::new(move |members: &BTreeSet<String>| {
                    me.do_send(OwnedChanged(id.clone(), members.clone()))
                }),
                releasing: BTreeSet::new(),
                claimed: HashMap::new(),
            }
        });
        let (settings, me) = (self.settings.clone(), ctx.address().recipient());
        match lb {
            LbId::Elb { region, name } => {
                let kind = Elb::classic(self.aws.elb(region, name), region, name);
                let actor = LoadBalancer::new(lb.clone(), kind, &self.log, settings, me);
                let actor = actor.starting_from(published, current);
                actor.owning(owned).start().into()
            }
            LbId::TargetGroup { region, name } => {
                let kind = Elb::target_group(self.aws.elbv2(region, name), region, name);
                let actor = LoadBalancer::new(lb.clone(), kind, &self.log, settings, me);
                let actor = actor.starting_from(published, current);
                actor.owning(owned).start().into()
            }
            LbId::Route53 { zone, fqdn } => {
                let pending = published.as_ref().map(|p| p.dns_pending.clone());
                let kind = Fqdn::new(self.zone(zone), zone, fqdn, pending.unwrap_or_default());
                let actor = LoadBalancer::new(lb.clone(), kind, &self.log, settings, me);
                let actor = actor.starting_from(published, current);
                actor.owning(owned).start().into()
            }
        }
    }

    /// The ownership records' writes: through the StateWriter.
    fn ownership_writes(&self) -> Arc<dyn crate::etcd::OwnershipWrites> {
        let state = self
            .state
            .clone()
            .expect("the StateWriter starts with the Supervisor");
        Arc::new(super::state_writer::Ownership(state))
    }

    fn zone(&mut self, zone: &str) -> Addr<HostedZone> {
        if let Some(addr) = self.zones.get(zone) {
            return addr.clone();
        }
        let writes = (self.settings.ownership == Ownership::Shared && !self.settings.dry_run)
            .then(|| self.ownership_writes());
        let addr = HostedZone::new(
            zone,
            self.aws.route53(zone),
            &self.log,
            self.settings.clone(),
        )
        .recording(writes)
        .start();
        self.zones.insert(zone.to_string(), addr.clone());
        addr
    }

    /// Tells the fleet which actors died (a panic ends an actor).
    fn check_actors(&mut self, ctx: &mut Context<Self>) {
        let dead_zones: Vec<String> = self
            .zones
            .iter()
            .filter(|(_, addr)| !addr.connected())
            .map(|(z, _)| z.clone())
            .collect();
        let dead: Vec<LbId> = self
            .actors
            .iter()
            .filter(|(_, addr)| !addr.connected())
            .map(|(lb, _)| lb.clone())
            .collect();
        if dead.is_empty() && dead_zones.is_empty() {
            return;
        }
        let commands =
            self.fleet
                .stopped(tokio::time::Instant::now().into_std(), &dead, &dead_zones);
        self.carry_out(commands, ctx);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state = Some(
            StateWriter::new(self.etcd_writes.clone(), self.settings.clone(), &self.log).start(),
        );
        let mut initial = self.initial.take().unwrap_or_else(|| {
            Snapshot::from_keys(
                self.settings.prefix(),
                self.settings.filters.clone(),
                &[],
                0,
            )
        });
        let (revision, leased) = (initial.revision, std::mem::take(&mut initial.leased));
        let cuts = std::mem::take(&mut initial.cuts);
        let commands = self
            .fleet
            .snapshot(initial.loaded, initial.keys, revision, Cause::Startup);
        self.carry_out(commands, ctx);
        if let Some(etcd) = self.etcd_watch.clone() {
            self.watcher = Some(
                EtcdWatcher::new(
                    etcd,
                    self.settings.clone(),
                    ctx.address().recipient(),
                    &self.log,
                    revision + 1,
                    (leased, cuts),
                )
                .start(),
            );
        }
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.check_actors(ctx));
        if self.settings.dry_run {
            return;
        }
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

impl Handler<WatchEvent> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WatchEvent, ctx: &mut Self::Context) {
        let commands = match msg {
            WatchEvent::Changes(changes) => self.fleet.changes(changes),
            WatchEvent::RelistStarted => {
                self.fleet.relist_started();
                return;
            }
            WatchEvent::RelistPage(page) => {
                self.fleet.relist_page(&page);
                return;
            }
            WatchEvent::Relisted { revision, keys } => self.fleet.relisted(revision, keys),
        };
        self.carry_out(commands, ctx);
    }
}

impl Handler<Synced> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Synced, ctx: &mut Self::Context) {
        let commands = self.fleet.synced(Report {
            lb: msg.lb,
            sync: msg.sync,
            generation: msg.generation,
            failed: msg.error.is_some(),
            settling: msg.settling,
            rejected: msg.rejected,
            status: msg.status,
        });
        self.carry_out(commands, ctx);
    }
}

impl Handler<OwnedChanged> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: OwnedChanged, _: &mut Self::Context) {
        self.fleet.owned_changed(msg.0, msg.1);
    }
}

/// One view of the live status page (see [`crate::board`]), from what the fleet has in hand
/// (whoever serves it says whether this instance leads and is ready).
#[derive(Message)]
#[rtype(result = "crate::board::Board")]
pub struct ShowBoard(pub crate::board::View);

impl Handler<ShowBoard> for Supervisor {
    type Result = MessageResult<ShowBoard>;

    fn handle(&mut self, msg: ShowBoard, _: &mut Self::Context) -> Self::Result {
        let seen = self
            .fleet
            .each()
            .map(|(lb, wanted, changed, status)| crate::board::Seen {
                lb,
                wanted,
                changed,
                status,
            });
        let mut board = crate::board::board(seen, &msg.0, crate::status::now());
        board.version = env!("CARGO_PKG_VERSION").to_string();
        board.ignored = self.fleet.ignored().cloned().collect();
        MessageResult(board)
    }
}

/// What `lbmanager status --output json` prints, from what the fleet has in hand (`/status.json`).
#[derive(Message)]
#[rtype(result = "crate::status::table::StatusReport")]
pub struct ShowReport;

impl Handler<ShowReport> for Supervisor {
    type Result = MessageResult<ShowReport>;

    fn handle(&mut self, _: ShowReport, _: &mut Self::Context) -> Self::Result {
        use crate::status::table::{DaemonSeen, StatusReport};
        MessageResult(StatusReport {
            daemon: Some(DaemonSeen {
                version: env!("CARGO_PKG_VERSION").to_string(),
                reported_secs_ago: 0,
                resync_interval_secs: self.settings.resync_interval.as_secs(),
                stale: false,
            }),
            load_balancers: self.fleet.report(crate::status::now()),
        })
    }
}

/// Graceful stop: no new work (the watch stops, etcd changes are ignored), and the answer comes
/// once every sync in flight has ended and the StateWriter has written everything it was sent.
/// Whatever was not done is done at the next start.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.fleet.shutdown();
        if let Some(watcher) = self.watcher.take() {
            watcher.do_send(super::etcd_watcher::Stop);
        }
        let drains: Vec<_> = self.actors.values().map(|a| a.drain.send(Drain)).collect();
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
        self.fleet.managed()
    }
}
