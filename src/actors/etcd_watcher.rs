//! The EtcdWatcher: turns etcd's watch stream into [`WatchEvent`]s for whoever consumes them (the
//! Supervisor), without knowing who that is: it holds a `Recipient<WatchEvent>`, as kube-runtime's
//! watcher emits events to any consumer.
//!
//! It resumes from the last revision it delivered + 1 after any break (etcd restart, network,
//! cancelled watch, a member that lost its leader), with capped exponential backoff that only real
//! progress resets, so no event is lost and etcd is not hammered while it is away. It reads the
//! whole prefix again and hands it on page by page ([`WatchEvent::RelistStarted`],
//! [`WatchEvent::RelistPage`]s, [`WatchEvent::Relisted`]: a relist, as kube-runtime's watcher
//! does) whenever the history it would resume from is unusable:
//! - compacted away, so even a delete made during the gap reaches AWS;
//! - gone backwards: etcd was restored from a snapshot, and the revision it would resume from now
//!   means something else (changes written after the restore would never arrive);
//! - a watch that keeps breaking at one revision (say a revision too big to deliver): looping
//!   there forever would ignore every later change.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use etcd_client::{EventType, WatchOptions, WatchResponse};
use futures::StreamExt;
use slog::{debug, info, warn, Logger};

use super::{backoff, Settings};

/// The largest watch response accepted. etcd sends one revision in one response, and a `del
/// --prefix` of a big tree is one revision: 40,000 deleted keys are over gRPC's default 4 MiB.
const WATCH_MAX_MESSAGE: usize = etcd::MAX_MESSAGE;

/// A watch that breaks this many times in a row at one revision, without progress, is given up
/// for a relist.
const RELIST_AFTER_FAILURES: u32 = 3;
use crate::desired::Revision;
use crate::etcd::{self, Failover};

pub use crate::fleet::{EtcdChanges, KeyChange};

/// What the watcher reports.
#[derive(Message)]
#[rtype(result = "()")]
pub enum WatchEvent {
    /// Keys changed.
    Changes(EtcdChanges),
    /// A relist begins: the whole prefix is read again after the watch lost usable history. Its
    /// keys follow in [`WatchEvent::RelistPage`]s, then [`WatchEvent::Relisted`]; a relist that
    /// fails half-way begins again.
    RelistStarted,
    /// (key, mod_revision) of a page of the relist.
    RelistPage(Vec<(String, Revision)>),
    /// The relist read everything: keys it did not bring were deleted meanwhile.
    Relisted { revision: Revision, keys: usize },
}

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
    /// The client of every endpoint (for the watch), and the way to another member for a
    /// relist's page whose member goes away.
    etcd: Failover,
    settings: Arc<Settings>,
    consumer: Recipient<WatchEvent>,
    log: Logger,
    /// The first revision not yet delivered.
    next_revision: Revision,
    attempt: u32,
    stream: Option<SpawnHandle>,
    /// Increases with every watch; items of an older watch are stale and ignored (a broken stream
    /// may still deliver a few items after it was given up).
    epoch: u64,
    /// Breaks of an established watch in a row at `next_revision`, with no progress between.
    stuck: u32,
    /// The current watch was created and has not delivered progress yet.
    established: bool,
    /// Keys written under a lease. Known from the puts themselves, so that the watch needs no
    /// previous values: asking etcd for them makes it look up every deleted key's last value,
    /// which takes it half a minute for a `del --prefix` of 40,000 keys.
    leased: HashSet<String>,
    /// Where a relist cuts the prefix (see [`etcd::Cuts`]): learned from the read before.
    cuts: etcd::Cuts,
}

/// One item of watch number `.0`: a response, an error, or `None` when the stream ended.
type Item = (u64, Option<Result<WatchResponse, etcd_client::Error>>);

impl EtcdWatcher {
    pub fn new(
        etcd: Failover,
        settings: Arc<Settings>,
        consumer: Recipient<WatchEvent>,
        log: &Logger,
        next_revision: Revision,
        (leased, cuts): (HashSet<String>, etcd::Cuts),
    ) -> Self {
        EtcdWatcher {
            etcd,
            settings,
            consumer,
            log: log.new(slog::o!("actor" => "etcd-watcher")),
            next_revision,
            attempt: 0,
            stream: None,
            epoch: 0,
            stuck: 0,
            established: false,
            leased,
            cuts,
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
        let mut client = self
            .etcd
            .client()
            .watch_client()
            .max_decoding_message_size(WATCH_MAX_MESSAGE);
        let key = etcd::watch_key(self.settings.prefix());
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next_revision)
            .with_progress_notify();
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

    /// Real progress: events delivered, or etcd saying the watch has caught up.
    fn progress(&mut self) {
        self.attempt = 0;
        self.stuck = 0;
        self.established = false;
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>, reason: &str) {
        self.drop_stream(ctx);
        self.settings.metrics.set_watch_live(false);
        self.settings.metrics.watch_reconnects.inc();
        if std::mem::take(&mut self.established) {
            self.stuck += 1;
            if self.stuck >= RELIST_AFTER_FAILURES {
                warn!(self.log, "etcd watch keeps breaking at one revision, relisting \
                    instead of looping (changes up to now are read whole)";
                    "reason" => reason, "revision" => self.next_revision,
                    "breaks" => self.stuck);
                self.stuck = 0;
                return self.relist(ctx);
            }
        }
        let delay = self.delay();
        warn!(self.log, "etcd watch broken, will reconnect";
            "reason" => reason, "retry_in" => ?delay, "resume_revision" => self.next_revision);
        ctx.run_later(delay, |act, ctx| act.watch(ctx));
    }

    /// A response said the store is at `seen`, below what was already delivered: etcd was
    /// restored from a snapshot, or the member answering lags behind. A linearizable read (which
    /// the leader answers) tells which; a store that really went back is relisted.
    fn check_store_revision(&mut self, seen: Revision, ctx: &mut Context<Self>) {
        let mut client = self.etcd.client();
        let key = etcd::watch_key(self.settings.prefix());
        let fut = async move {
            let options = etcd_client::GetOptions::new().with_count_only();
            client.get(key, Some(options)).await
        };
        // `wait`: no watch item is handled before the answer.
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            let store = match res {
                Ok(resp) => resp.header().map(|h| h.revision()).unwrap_or(seen),
                Err(e) => return act.retry_later(ctx, &e.to_string()),
            };
            if store < act.next_revision - 1 {
                warn!(act.log, "etcd's revision went backwards (restored from a snapshot?), \
                    relisting: the revisions lbmanager knew now mean something else";
                    "store_revision" => store, "expected_at_least" => act.next_revision - 1);
                act.relist(ctx);
            }
        }));
    }

    fn relist(&mut self, ctx: &mut Context<Self>) {
        self.drop_stream(ctx);
        self.settings.metrics.set_watch_live(false);
        let mut etcd = self.etcd.clone();
        let prefix = self.settings.prefix().to_string();
        let log = self.log.clone();
        let consumer = self.consumer.clone();
        let cuts = self.cuts.clone();
        // Page by page to the Supervisor, which loads them into the state it uses: the relist
        // never holds the tree twice.
        consumer.do_send(WatchEvent::RelistStarted);
        let fut = async move {
            let mut leased = HashSet::new();
            let read = etcd::read_prefix(
                &mut etcd,
                &prefix,
                (etcd::SNAPSHOT_PAGE, &cuts, None),
                &log,
                &mut |keys: &[(&str, Revision, bool)]| {
                    let page = keys
                        .iter()
                        .map(|&(key, revision, lease)| {
                            if lease {
                                leased.insert(key.to_string());
                            }
                            (key.to_string(), revision)
                        })
                        .collect();
                    consumer.do_send(WatchEvent::RelistPage(page));
                },
            )
            .await;
            read.map(|read| (read, leased))
        };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((read, leased)) => {
                info!(act.log, "re-read the whole prefix";
                    "keys" => read.keys, "revision" => read.revision);
                act.next_revision = read.revision + 1;
                act.leased = leased;
                act.cuts = read.cuts.clone();
                act.consumer.do_send(WatchEvent::Relisted {
                    revision: read.revision,
                    keys: read.keys,
                });
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
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if revision > 0 && revision < self.next_revision - 1 {
            self.check_store_revision(revision, ctx);
        }
        if resp.created() {
            self.established = true;
            self.settings.metrics.set_watch_live(true);
            return;
        }
        let mut changes = Vec::with_capacity(resp.events().len());
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let key = key.to_string();
            changes.push(match event.event_type() {
                EventType::Put => {
                    if kv.lease() != 0 {
                        self.leased.insert(key.clone());
                    } else {
                        self.leased.remove(&key);
                    }
                    KeyChange::Put {
                        key,
                        revision: kv.mod_revision(),
                    }
                }
                EventType::Delete => KeyChange::Delete {
                    leased: self.leased.remove(&key),
                    key,
                    revision: kv.mod_revision(),
                },
            });
            self.next_revision = self.next_revision.max(kv.mod_revision() + 1);
        }
        self.settings
            .metrics
            .watch_revision
            .set(self.next_revision - 1);
        self.progress();
        if changes.is_empty() {
            if resp.events().is_empty() {
                // A progress notification: nothing under the prefix changed up to `revision`.
                self.next_revision = self.next_revision.max(revision + 1);
            }
            return;
        }
        self.consumer
            .do_send(WatchEvent::Changes(EtcdChanges { changes, revision }));
    }

    fn finished(&mut self, _: &mut Self::Context) {
        // The default stops the actor. The end of a stream is its `None` item, handled above.
    }
}
