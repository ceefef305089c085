//! One actor per Route53 hosted zone: every change to the zone passes through its mailbox, and it
//! runs one sync at a time, so two changes of one zone never overlap (as the original lbManager
//! promised). Desires that arrive while a sync runs wait and go out together in the next one: one
//! read per FQDN, then as few ChangeResourceRecordSets calls as Route53's limits allow.
//!
//! The zone keeps what it read of its record sets (updated by its own writes, dropped after a
//! failed one) so that a stream of changes to one FQDN costs no read per change; a resync always
//! reads afresh, which is what catches changes made by hand.
//!
//! The zone attempts each desire once and answers the FQDN's load balancer (through the desire's
//! `reply` recipient) with the result; retrying is the load balancer's business (one place for
//! backoff).

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use slog::Logger;

use super::{Cause, Settings};
use crate::aws::{AwsError, Route53Api};
use crate::sync::zone::{sync_zone, FqdnWant, Recorder, ZoneCache};

/// What one FQDN's A and AAAA record sets should hold.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ZoneDesire {
    pub want: FqdnWant,
    pub generation: u64,
    pub reply: Recipient<ZoneSynced>,
}

/// A zone's answer to a [`ZoneDesire`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ZoneSynced {
    pub generation: u64,
    pub error: Option<AwsError>,
    /// The failed plan was built from what the zone remembered, not from a fresh read: a retry
    /// from a fresh read may well succeed at once.
    pub stale: bool,
    /// The FQDN's record sets after a sync that succeeded.
    pub sets: Option<Vec<crate::plan::RecordSet>>,
    /// `--ownership shared`: the values lbmanager owns after the sync.
    pub owned: Option<std::collections::BTreeSet<std::net::IpAddr>>,
    /// The longest TTL the FQDN's record sets had before the sync (see
    /// [`crate::sync::zone::FqdnResult::ttl_before`]).
    pub ttl_before: Option<i64>,
}

/// How long the zone gathers the desires of a full sync (start-up, relist, restart) before its
/// first batch. They arrive in waves, as the names' managed records land in etcd; without the
/// wait the first wave goes out alone and the rest in more, smaller batches. A change from an
/// etcd event goes out at once.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

pub struct HostedZone {
    /// The hosted zone id.
    zone: String,
    api: Arc<dyn Route53Api>,
    log: Logger,
    settings: Arc<Settings>,
    /// Desires waiting for the next sync, the newest per FQDN (an older one is superseded).
    pending: BTreeMap<String, ZoneDesire>,
    /// A sync of this zone is running: the next waits, so two changes never overlap.
    busy: bool,
    /// A full sync's desires are being gathered (see [`GATHER`]).
    gathering: bool,
    /// What the zone last read or wrote, so a stream of changes costs no read per change.
    cache: ZoneCache,
    /// `--ownership shared`: where the values lbmanager adds are recorded.
    writes: Option<Arc<dyn crate::etcd::OwnershipWrites>>,
}

impl HostedZone {
    pub fn new(
        zone: &str,
        api: Arc<dyn Route53Api>,
        log: &Logger,
        settings: Arc<Settings>,
    ) -> Self {
        HostedZone {
            zone: zone.to_string(),
            api,
            log: log.new(slog::o!("zone" => zone.to_string())),
            settings,
            pending: BTreeMap::new(),
            busy: false,
            gathering: false,
            cache: ZoneCache::new(),
            writes: None,
        }
    }

    /// `--ownership shared`: records the values it adds with `writes`.
    pub fn recording(mut self, writes: Option<Arc<dyn crate::etcd::OwnershipWrites>>) -> Self {
        self.writes = writes;
        self
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.pending.is_empty() {
            return;
        }
        self.busy = true;
        let batch: Vec<ZoneDesire> = std::mem::take(&mut self.pending).into_values().collect();
        let (api, zone, log, options) = (
            self.api.clone(),
            self.zone.clone(),
            self.log.clone(),
            self.settings.sync_options(),
        );
        let mut cache = std::mem::take(&mut self.cache);
        let (writes, prefix) = (self.writes.clone(), self.settings.prefix.clone());
        let fut = async move {
            let wants: Vec<FqdnWant> = batch.iter().map(|d| d.want.clone()).collect();
            let recorder = writes.as_deref().map(|writes| Recorder {
                writes,
                prefix: &prefix,
            });
            let results =
                sync_zone(&*api, &zone, &wants, &options, &mut cache, &log, recorder).await;
            (batch, results, cache)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|(batch, results, cache), act, ctx| {
                    act.cache = cache;
                    for (desire, result) in batch.into_iter().zip(results) {
                        desire.reply.do_send(ZoneSynced {
                            generation: desire.generation,
                            error: result.result.err(),
                            stale: result.from_cache,
                            sets: result.sets,
                            owned: result.owned,
                            ttl_before: result.ttl_before,
                        });
                    }
                    act.busy = false;
                    act.run(ctx);
                }),
        );
    }
}

impl Actor for HostedZone {
    type Context = Context<Self>;
}

impl Handler<ZoneDesire> for HostedZone {
    type Result = ();

    fn handle(&mut self, msg: ZoneDesire, ctx: &mut Self::Context) {
        let full_sync = matches!(
            msg.want.cause,
            Cause::Startup | Cause::Relist | Cause::Restart
        );
        self.pending.insert(msg.want.fqdn.clone(), msg);
        if self.gathering {
            return;
        }
        if full_sync && !self.busy {
            self.gathering = true;
            ctx.run_later(GATHER, |act, ctx| {
                act.gathering = false;
                act.run(ctx);
            });
            return;
        }
        self.run(ctx);
    }
}
