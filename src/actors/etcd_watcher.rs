//! The EtcdWatcher: turns etcd's watch stream into [`EtcdChanges`] for the Supervisor.
//!
//! It resumes from the last revision it delivered + 1 after any break (etcd restart, network,
//! cancelled watch), with capped exponential backoff, so no event is lost and etcd is not hammered
//! while it is away. When that revision has been compacted away, the history is gone: it reads the
//! whole prefix again and hands the Supervisor a [`Snapshot`] (a relist, as kube-runtime's watcher
//! does), so even a delete made during the gap reaches AWS.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use futures::StreamExt;
use slog::{debug, info, warn, Logger};

use super::supervisor::Supervisor;
use super::{backoff, Settings};
use crate::desired::Revision;
use crate::etcd::{self, Snapshot};

/// One change of a key under the prefix.
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
    },
}

/// Changes from the watch, in etcd's order.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct EtcdChanges {
    pub changes: Vec<KeyChange>,
    pub revision: Revision,
}

/// The whole prefix, read again after the watch lost history.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relisted(pub Snapshot);

/// Stop watching (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for EtcdWatcher {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

pub struct EtcdWatcher {
    client: Client,
    settings: Arc<Settings>,
    supervisor: Addr<Supervisor>,
    log: Logger,
    /// The first revision not yet delivered.
    next_revision: Revision,
    attempt: u32,
    stream: Option<SpawnHandle>,
    /// Increases with every watch; items of an older watch are stale and ignored (a broken stream
    /// may still deliver a few items after it was given up).
    epoch: u64,
}

/// One item of watch number `.0`: a response, an error, or `None` when the stream ended.
type Item = (u64, Option<Result<WatchResponse, etcd_client::Error>>);

impl EtcdWatcher {
    pub fn new(
        client: Client,
        settings: Arc<Settings>,
        supervisor: Addr<Supervisor>,
        log: &Logger,
        next_revision: Revision,
    ) -> Self {
        EtcdWatcher {
            client,
            settings,
            supervisor,
            log: log.new(slog::o!("actor" => "etcd-watcher")),
            next_revision,
            attempt: 0,
            stream: None,
            epoch: 0,
        }
    }

    fn delay(&mut self) -> Duration {
        self.attempt += 1;
        backoff(
            self.attempt - 1,
            Duration::from_millis(200),
            Duration::from_secs(10),
        )
    }

    /// Gives up the current watch, if any: its remaining items are ignored.
    fn drop_stream(&mut self, ctx: &mut Context<Self>) {
        self.epoch += 1;
        if let Some(handle) = self.stream.take() {
            ctx.cancel_future(handle);
        }
    }

    fn watch(&mut self, ctx: &mut Context<Self>) {
        self.drop_stream(ctx);
        let epoch = self.epoch;
        let mut client = self.client.clone();
        let key = etcd::watch_key(&self.settings.prefix);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next_revision)
            .with_progress_notify()
            // The previous value tells a leased key's delete (a lease expiry) from others.
            .with_prev_key();
        let fut = async move { client.watch(key, Some(options)).await };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(stream) => {
                debug!(act.log, "watching"; "from_revision" => act.next_revision);
                let items = stream
                    .map(move |item| (epoch, Some(item)))
                    .chain(futures::stream::once(async move { (epoch, None) }));
                act.stream = Some(ctx.add_stream(items));
            }
            Err(e) => act.retry_later(ctx, &e.to_string()),
        }));
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>, reason: &str) {
        self.drop_stream(ctx);
        self.settings.metrics.set_watch_live(false);
        self.settings.metrics.watch_reconnects.inc();
        let delay = self.delay();
        warn!(self.log, "etcd watch broken, will reconnect";
            "reason" => reason, "retry_in" => ?delay, "resume_revision" => self.next_revision);
        ctx.run_later(delay, |act, ctx| act.watch(ctx));
    }

    fn relist(&mut self, ctx: &mut Context<Self>) {
        self.drop_stream(ctx);
        self.settings.metrics.set_watch_live(false);
        let mut client = self.client.clone();
        let prefix = self.settings.prefix.clone();
        let fut =
            async move { etcd::read_snapshot(&mut client, &prefix, etcd::SNAPSHOT_PAGE).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(snapshot) => {
                info!(act.log, "re-read the whole prefix after compaction";
                    "keys" => snapshot.keys.len(), "revision" => snapshot.revision);
                act.next_revision = snapshot.revision + 1;
                act.supervisor.do_send(Relisted(snapshot));
                act.watch(ctx);
            }
            Err(e) => {
                let delay = act.delay();
                warn!(act.log, "relist failed, will retry"; "error" => %e, "retry_in" => ?delay);
                ctx.run_later(delay, |act, ctx| act.relist(ctx));
            }
        }));
    }
}

impl Actor for EtcdWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.watch(ctx);
    }
}

impl StreamHandler<Item> for EtcdWatcher {
    fn handle(&mut self, (epoch, item): Item, ctx: &mut Self::Context) {
        if epoch != self.epoch {
            return;
        }
        let resp = match item {
            Some(Ok(resp)) => resp,
            Some(Err(e)) => return self.retry_later(ctx, &e.to_string()),
            None => return self.retry_later(ctx, "watch stream ended"),
        };
        if resp.compact_revision() > 0 {
            warn!(self.log, "watch history compacted away, relisting";
                "wanted_revision" => self.next_revision,
                "compact_revision" => resp.compact_revision());
            return self.relist(ctx);
        }
        if resp.canceled() {
            return self.retry_later(ctx, &format!("watch cancelled: {}", resp.cancel_reason()));
        }
        if resp.created() {
            self.attempt = 0;
            self.settings.metrics.set_watch_live(true);
            return;
        }
        let mut changes = Vec::with_capacity(resp.events().len());
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let key = key.to_string();
            changes.push(match event.event_type() {
                EventType::Put => KeyChange::Put {
                    key,
                    revision: kv.mod_revision(),
                },
                EventType::Delete => KeyChange::Delete {
                    key,
                    leased: event.prev_kv().is_some_and(|p| p.lease() != 0),
                },
            });
            self.next_revision = self.next_revision.max(kv.mod_revision() + 1);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.settings
            .metrics
            .watch_revision
            .set(self.next_revision - 1);
        if changes.is_empty() {
            if resp.events().is_empty() {
                // A progress notification: nothing under the prefix changed up to `revision`.
                self.next_revision = self.next_revision.max(revision + 1);
            }
            return;
        }
        self.supervisor.do_send(EtcdChanges { changes, revision });
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The default stops the actor. The end of a stream is its `None` item, handled above.
    }
}
