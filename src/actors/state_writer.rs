//! The StateWriter owns every write lbmanager makes to etcd (through [`EtcdWrites`]). It keeps
//! lbmanager's durable record of the load balancers it manages (`STATE/managed/...`, see
//! [`crate::key::managed_key`]) in etcd, each load balancer's published status (`STATE/status/...`,
//! see [`crate::status`]: the members AWS refuses among it) and the daemon's heartbeat.
//!
//! The record is what lets a start-up empty a load balancer whose keys were all deleted while
//! lbmanager was stopped: without it, such a load balancer would look like one lbmanager never
//! touched. Writes go through this actor's mailbox one at a time, in the Supervisor's order, and a
//! failed write is retried (with backoff) before the next one, so a record and its removal can
//! never pass each other.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use slog::{debug, warn, Logger};

use super::{backoff, Settings};
use crate::desired::Revision;
use crate::etcd::{EtcdError, EtcdWrites};
use crate::key::{heartbeat_key, managed_key, status_key, LbId};
use crate::status::{Heartbeat, LbStatus};

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
    log: Logger,
}

impl StateWriter {
    pub fn new(etcd: Arc<dyn EtcdWrites>, settings: Arc<Settings>, log: &Logger) -> Self {
        StateWriter {
            etcd,
            settings,
            log: log.new(slog::o!("actor" => "state-writer")),
        }
    }
}

impl Actor for StateWriter {
    type Context = Context<Self>;
}

/// Delete keys (the records earlier versions kept in the member tree, once moved).
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

/// Answered once every write sent before it has landed (writes go one at a time, holding the
/// mailbox): the Supervisor's way to know a record is durable, and the shutdown's way to drain.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for StateWriter {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {}
}

impl Handler<ManagedRecord> for StateWriter {
    type Result = ();

    fn handle(&mut self, msg: ManagedRecord, ctx: &mut Self::Context) {
        let (key, value) = match msg {
            ManagedRecord::Put(lb) => (
                managed_key(&self.settings.prefix, &lb),
                Some(lb.to_string()),
            ),
            ManagedRecord::Delete(lb) => (managed_key(&self.settings.prefix, &lb), None),
        };
        self.write(key, value, ctx);
    }
}

impl Handler<PublishStatus> for StateWriter {
    type Result = ();

    fn handle(&mut self, PublishStatus(lb, status): PublishStatus, ctx: &mut Self::Context) {
        let key = status_key(&self.settings.prefix, &lb);
        let value = status.map(|s| serde_json::to_string(&*s).unwrap_or_default());
        self.write(key, value, ctx);
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
        self.write(heartbeat_key(&self.settings.prefix), Some(value), ctx);
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

impl StateWriter {
    /// Puts `value` at `key` (`None`: deletes it), retrying until it lands.
    fn write(&mut self, key: String, value: Option<String>, ctx: &mut Context<Self>) {
        let etcd = self.etcd.clone();
        let log = self.log.clone();
        // `wait` holds the mailbox until this write has landed: the next one waits its turn.
        ctx.wait(
            async move {
                let mut attempt = 0;
                let record = value.is_some();
                loop {
                    let res = match &value {
                        Some(v) => etcd.put(&key, v).await,
                        None => etcd.delete(&key).await,
                    };
                    match res {
                        Ok(()) => {
                            debug!(log, "record updated"; "key" => &key, "present" => record);
                            return;
                        }
                        Err(e) => {
                            let delay = backoff(
                                attempt,
                                Duration::from_millis(200),
                                Duration::from_secs(10),
                            );
                            attempt += 1;
                            warn!(log, "writing a record failed, will retry";
                                "key" => &key, "error" => %e, "retry_in" => ?delay);
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}
