//! The StateWriter owns every write lbmanager makes to etcd (through [`EtcdWrites`]). It keeps
//! lbmanager's durable record of the load balancers it manages (`STATE/managed/...`, see
//! [`crate::layout::Layout::managed`]) in etcd, each load balancer's published status (`STATE/status/...`,
//! see [`crate::status`]: the members AWS refuses among it) and the daemon's heartbeat.
//!
//! The record is what lets a start-up empty a load balancer whose keys were all deleted while
//! lbmanager was stopped: without it, such a load balancer would look like one lbmanager never
//! touched. Writes go out one at a time, each key's in the Supervisor's order (only a key's
//! latest value is kept, so a record and its removal can never pass each other). A failed write
//! is retried with backoff while the other keys' writes go on: one record etcd will not take
//! delays no other, nor a load balancer's first sync (which waits only for its own record,
//! [`Landed`]). A record etcd refuses for its size is not retried as it is: a status is written
//! again cut down to its counts ([`LbStatus::minimal`]), with a warning and
//! `lbmanager_limit_exceeded_total{limit="record_refused"}`; `lbmanager_records_unwritten` counts
//! the records not current.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

// Tokio's clock (the real one in production): the actor tests run on its paused clock.
use tokio::time::Instant;

use actix::prelude::*;
use slog::{debug, error, warn, Logger};
use tokio::sync::oneshot;

use super::{backoff, Settings};
use crate::desired::Revision;
use crate::etcd::{EtcdError, EtcdWrites};
use crate::key::LbId;
use crate::layout::Layout;
use crate::metrics::Limit;
use crate::status::{Heartbeat, LbStatus, STATUS_MAX_BYTES};

/// Record that lbmanager manages a load balancer, or remove that record.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum ManagedRecord {
    Put(LbId),
    Delete(LbId),
}

/// Publish a load balancer's status (none: it is no longer managed, remove it).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct PublishStatus(pub LbId, pub Option<Arc<LbStatus>>);

/// Say that this lbmanager is alive (see [`Heartbeat`]).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Beat;

pub struct StateWriter {
    etcd: Arc<dyn EtcdWrites>,
    settings: Arc<Settings>,
    /// Where the records go.
    layout: Layout,
    log: Logger,
    /// The latest value to write at each key (`None`: delete it), in the order keys were first
    /// queued; a key written again before its write went out is written once, with its latest.
    queue: Queue,
    /// A write is out (one at a time).
    busy: bool,
    /// Who waits for a key's write to land ([`Landed`]).
    landed: Vec<(String, oneshot::Sender<()>)>,
    /// Who waits for every write sent so far to have landed or failed ([`Flush`]).
    flushed: Vec<oneshot::Sender<()>>,
}

/// How many failed writes of a status to be removed after it are tried before only its removal
/// is (see [`Pending::then_delete`]).
const THEN_DELETE_TRIES: u32 = 3;

/// What to write at a key: text, or a status serialized only when its write goes out (a status
/// of 1,000 members is ~30 KiB of JSON: a thousand of them queued at start-up would be 30 MiB).
#[derive(Clone, Debug)]
enum Value {
    Text(String),
    Status(Arc<LbStatus>),
}

impl Value {
    fn same(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Status(a), Value::Status(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A write waiting its turn.
struct Pending {
    /// None: delete the key.
    value: Option<Value>,
    /// Write the smaller form of a status (its counts, see [`LbStatus::minimal`]): etcd refused
    /// the whole one for its size.
    smaller: bool,
    /// Failed attempts so far.
    failures: u32,
    /// Its latest value has been tried (landed or failed): for [`Flush`].
    tried: bool,
    /// Not to be tried again before this (after a failure).
    not_before: Option<Instant>,
    /// Delete the key once its value (a status) has landed: a load balancer's last status is
    /// written before its removal, so whoever waits on it reads what its last sync did (the
    /// TTL its record sets had, say) and not only that it is gone.
    then_delete: bool,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<String>,
    pending: HashMap<String, Pending>,
}

impl Queue {
    fn push(&mut self, key: String, value: Option<Value>) {
        match self.pending.get_mut(&key) {
            // A status not written yet, then its removal: the status first.
            Some(p) if value.is_none() && matches!(p.value, Some(Value::Status(_))) => {
                p.then_delete = true;
                p.not_before = None;
                p.tried = false;
            }
            // A newer value replaces one not written yet; a failing key is tried again at once.
            Some(p) => {
                p.value = value;
                p.smaller = false;
                p.not_before = None;
                p.tried = false;
                p.then_delete = false;
            }
            None => {
                self.order.push_back(key.clone());
                self.pending.insert(
                    key,
                    Pending {
                        value,
                        smaller: false,
                        failures: 0,
                        tried: false,
                        not_before: None,
                        then_delete: false,
                    },
                );
            }
        }
    }

    /// The first key due now, taken out of the order (it goes back if its write fails), or when
    /// the next one is due.
    fn next_due(&mut self, now: Instant) -> Result<String, Option<Instant>> {
        let due = self
            .order
            .iter()
            .position(|k| self.pending[k].not_before.is_none_or(|t| t <= now));
        match due {
            Some(i) => Ok(self.order.remove(i).expect("position found")),
            None => Err(self
                .order
                .iter()
                .filter_map(|k| self.pending[k].not_before)
                .min()),
        }
    }

    /// Keys whose write has failed and is not done yet.
    fn failing(&self) -> usize {
        self.pending.values().filter(|p| p.failures > 0).count()
    }

    /// Every key's latest value has been tried at least once (for [`Flush`]).
    fn all_tried(&self) -> bool {
        self.pending.values().all(|p| p.tried)
    }
}

impl StateWriter {
    pub fn new(etcd: Arc<dyn EtcdWrites>, settings: Arc<Settings>, log: &Logger) -> Self {
        StateWriter {
            etcd,
            layout: settings.layout.clone(),
            settings,
            log: log.new(slog::o!("actor" => "state-writer")),
            queue: Queue::default(),
            busy: false,
            landed: Vec::new(),
            flushed: Vec::new(),
        }
    }
}

impl Actor for StateWriter {
    type Context = Context<Self>;
}

/// Delete keys (records found stale at start: the status of a load balancer no longer managed,
/// ownership records when ownership is not shared).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct DeleteKeys(pub Vec<String>);

impl Handler<DeleteKeys> for StateWriter {
    type Result = ();

    fn handle(&mut self, DeleteKeys(keys): DeleteKeys, ctx: &mut Self::Context) {
        for key in keys {
            self.write(key, None, ctx);
        }
    }
}

/// Answered once every write sent before it has landed or failed at least once: the shutdown's
/// way to drain without waiting forever on a record etcd refuses.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for StateWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flushed.push(tx);
        self.answer();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// Answered once nothing is left to write at this key: the Supervisor's way to know that a load
/// balancer's record is durable before its first change in AWS. Only that key's write is waited
/// for: another record that cannot be written delays nothing else.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Landed(pub String);

impl Handler<Landed> for StateWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Landed(key): Landed, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.queue.pending.contains_key(&key) {
            self.landed.push((key, tx));
        } else {
            let _ = tx.send(());
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<ManagedRecord> for StateWriter {
    type Result = ();

    fn handle(&mut self, msg: ManagedRecord, ctx: &mut Self::Context) {
        let (key, value) = match msg {
            ManagedRecord::Put(lb) => (self.layout.managed(&lb), Some(Value::Text(lb.to_string()))),
            ManagedRecord::Delete(lb) => (self.layout.managed(&lb), None),
        };
        self.write(key, value, ctx);
    }
}

impl Handler<PublishStatus> for StateWriter {
    type Result = ();

    fn handle(&mut self, PublishStatus(lb, status): PublishStatus, ctx: &mut Self::Context) {
        let key = self.layout.status(&lb);
        self.write(key, status.map(Value::Status), ctx);
    }
}

impl Handler<Beat> for StateWriter {
    type Result = ();

    fn handle(&mut self, _: Beat, ctx: &mut Self::Context) {
        let beat = Heartbeat {
            at: crate::status::now(),
            resync_interval_secs: self.settings.resync_interval.as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let value = serde_json::to_string(&beat).unwrap_or_default();
        self.write(self.layout.heartbeat(), Some(Value::Text(value)), ctx);
    }
}

/// Delete superseded keys (see [`crate::etcd::delete_superseded`]): one attempt, answered with
/// how many were deleted. Not queued behind the records: the deletes are guarded by revisions, so
/// their order does not matter.
#[derive(Message, Debug)]
#[rtype(result = "Result<usize, EtcdError>")]
pub struct DeleteSuperseded {
    /// The keys the decision rests on (see [`crate::desired::Resolution::decided_by`]).
    pub decided_by: Vec<(String, Revision)>,
    pub superseded: Vec<(String, Revision)>,
}

/// Record members as lbmanager's and forget others (`--ownership shared`), for a sync that
/// waits for the answer (see [`Ownership`]).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), EtcdError>")]
pub struct RecordOwnership {
    pub put: Vec<String>,
    pub delete: Vec<String>,
}

impl Handler<RecordOwnership> for StateWriter {
    type Result = ResponseFuture<Result<(), EtcdError>>;

    fn handle(&mut self, msg: RecordOwnership, _: &mut Self::Context) -> Self::Result {
        let etcd = self.etcd.clone();
        // Not queued behind the records: the sync that asks is waiting, and retries itself.
        Box::pin(async move { etcd.record_many(&msg.put, &msg.delete).await })
    }
}

/// The ownership writes of the syncs, carried by the StateWriter.
pub struct Ownership(pub Addr<StateWriter>);

#[async_trait::async_trait]
impl crate::etcd::OwnershipWrites for Ownership {
    async fn record_many(&self, put: &[String], delete: &[String]) -> Result<(), EtcdError> {
        let msg = RecordOwnership {
            put: put.to_vec(),
            delete: delete.to_vec(),
        };
        self.0.send(msg).await.unwrap_or_else(|e| {
            Err(EtcdError::Write {
                key: put.first().or(delete.first()).cloned().unwrap_or_default(),
                source: etcd_client::Error::Internal(format!("the StateWriter is gone: {e}")),
            })
        })
    }
}

impl Handler<DeleteSuperseded> for StateWriter {
    type Result = ResponseFuture<Result<usize, EtcdError>>;

    fn handle(&mut self, msg: DeleteSuperseded, _: &mut Self::Context) -> Self::Result {
        let etcd = self.etcd.clone();
        Box::pin(async move {
            etcd.delete_superseded(&msg.decided_by, &msg.superseded)
                .await
        })
    }
}

/// Whether etcd refused a write for its size (`--max-request-bytes`, 1.5 MiB by default): the
/// same write would be refused again, so it is not retried as it is.
fn too_large(e: &EtcdError) -> bool {
    e.to_string().contains("request is too large")
}

impl StateWriter {
    /// Queues `value` for `key` (`None`: delete it).
    fn write(&mut self, key: String, value: Option<Value>, ctx: &mut Context<Self>) {
        self.queue.push(key, value);
        self.pump(ctx);
    }

    /// The text to write for `p` now: a status serialized, and cut down to its counts when it
    /// is past its bound (never, by construction; etcd's own limit may be lower still) or etcd
    /// refused it for its size.
    fn text(&self, key: &str, p: &Pending) -> Option<String> {
        let json = |s: &LbStatus| serde_json::to_string(s).unwrap_or_default();
        match p.value.as_ref()? {
            Value::Text(t) => Some(t.clone()),
            Value::Status(s) if p.smaller => Some(json(&s.minimal())),
            Value::Status(s) => {
                let whole = json(s);
                if whole.len() <= STATUS_MAX_BYTES {
                    return Some(whole);
                }
                self.settings.metrics.limit(Limit::RecordSize);
                warn!(self.log, "a record is past its bound; writing a smaller one";
                    "key" => key, "bytes" => whole.len(), "bound" => STATUS_MAX_BYTES);
                Some(json(&s.minimal()))
            }
        }
    }

    /// Sends the next due write, if none is out. One write at a time keeps etcd's load small and
    /// the order of a key's writes; a failing key waits out its backoff behind the others.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let key = match self.queue.next_due(Instant::now()) {
            Ok(key) => key,
            Err(next) => {
                if let Some(at) = next {
                    ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
                        act.pump(ctx)
                    });
                }
                return;
            }
        };
        let pending = &self.queue.pending[&key];
        let (value, text) = (pending.value.clone(), self.text(&key, pending));
        self.busy = true;
        let etcd = self.etcd.clone();
        let write = async move {
            let res = match &text {
                Some(v) => etcd.put(&key, v).await,
                None => etcd.delete(&key).await,
            };
            (key, value, text.map_or(0, |t| t.len()), res)
        };
        ctx.spawn(
            write
                .into_actor(self)
                .map(|(key, value, bytes, res), act, ctx| {
                    act.busy = false;
                    act.done(key, value, bytes, res);
                    act.settings
                        .metrics
                        .records_unwritten
                        .set(act.queue.failing() as i64);
                    act.answer();
                    act.pump(ctx);
                }),
        );
    }

    /// A write of `key` (`bytes` long) ended.
    fn done(
        &mut self,
        key: String,
        value: Option<Value>,
        bytes: usize,
        res: Result<(), EtcdError>,
    ) {
        let Some(p) = self.queue.pending.get_mut(&key) else {
            return;
        };
        let newer = match (&p.value, &value) {
            (Some(a), Some(b)) => !a.same(b),
            (None, None) => false,
            _ => true,
        };
        match res {
            Ok(()) if newer => {
                // A newer value came in meanwhile: it goes in its turn, behind the others (a
                // status that changes faster than etcd takes it must not hold them up).
                p.failures = 0;
                self.queue.order.push_back(key);
            }
            Ok(()) if p.then_delete => {
                debug!(self.log, "record updated, to be removed"; "key" => &key);
                p.value = None;
                p.then_delete = false;
                p.failures = 0;
                p.tried = false;
                self.queue.order.push_front(key);
            }
            Ok(()) => {
                debug!(self.log, "record updated"; "key" => &key, "present" => value.is_some());
                self.queue.pending.remove(&key);
            }
            Err(e) if too_large(&e) && !newer => {
                self.settings.metrics.limit(Limit::RecordRefused);
                if matches!(p.value, Some(Value::Status(_))) && !p.smaller {
                    warn!(self.log, "etcd refused a record for its size; writing a smaller \
                        one (counts only)";
                        "key" => &key, "bytes" => bytes, "error" => %e);
                    p.smaller = true;
                    self.queue.order.push_front(key);
                } else if p.then_delete {
                    // Its removal is what counts now.
                    p.value = None;
                    p.then_delete = false;
                    p.smaller = false;
                    self.queue.order.push_front(key);
                } else {
                    error!(self.log, "etcd refused a record for its size, and there is \
                        none smaller; it is not written (raise etcd's --max-request-bytes)";
                        "key" => &key, "bytes" => bytes, "error" => %e);
                    self.queue.pending.remove(&key);
                }
            }
            // A status that etcd keeps refusing is not worth holding its removal up for.
            Err(_) if p.then_delete && p.failures >= THEN_DELETE_TRIES => {
                p.value = None;
                p.then_delete = false;
                p.smaller = false;
                self.queue.order.push_front(key);
            }
            Err(e) => {
                p.tried |= !newer;
                let delay = backoff(
                    p.failures,
                    Duration::from_millis(200),
                    Duration::from_secs(10),
                );
                p.failures += 1;
                if !newer {
                    p.not_before = Some(Instant::now() + delay);
                }
                warn!(self.log, "writing a record failed, will retry (other records go on)";
                    "key" => &key, "error" => %e, "retry_in" => ?delay,
                    "attempt" => p.failures);
                self.queue.order.push_back(key);
            }
        }
    }

    /// Answers whoever waits on what has landed.
    fn answer(&mut self) {
        let pending = &self.queue.pending;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.landed)
            .into_iter()
            .partition(|(k, _)| !pending.contains_key(k));
        self.landed = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
        if !self.busy && self.queue.all_tried() {
            for tx in self.flushed.drain(..) {
                let _ = tx.send(());
            }
        }
    }
}
