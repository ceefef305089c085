//! One actor per Route53 hosted zone: every change to the zone passes through its mailbox, and it
//! runs one sync at a time, so two changes of one zone never overlap (as the original lbManager
//! promised). Desires that arrive while a sync runs wait and go out together in the next one: one
//! read per FQDN, then as few ChangeResourceRecordSets calls as Route53's limits allow.
//!
//! The zone keeps what it read of its record sets (updated by its own writes, dropped after a
//! failed one) so that a stream of changes to one FQDN costs no read per change; a resync always
//! reads afresh, which is what catches changes made by hand.
//!
//! The zone attempts each desire once and answers the FQDN's [`LoadBalancer`] with the result;
//! retrying is the load balancer's business (one place for backoff).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;
use slog::{info, Logger};

use super::{Cause, Settings};
use crate::aws::{AwsError, ErrorKind, Route53Api};
use crate::key::LbId;
use crate::plan::{pack_batches, plan_fqdn, Action, Policy, RecordChange, RecordSet};

/// What the zone knows of its record sets, by FQDN (an empty list: known to have none).
pub type ZoneCache = HashMap<String, Vec<RecordSet>>;

/// From this many FQDNs to read at once, one paged read of the whole zone (300 record sets a
/// page) is cheaper than a read per FQDN.
const FULL_READ_AT: usize = 4;

/// What one FQDN's A and AAAA record sets should hold.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ZoneDesire {
    pub lb: LbId,
    pub fqdn: String,
    pub ips: BTreeSet<IpAddr>,
    pub generation: u64,
    pub cause: Cause,
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
}

pub struct HostedZone {
    zone: String,
    api: Arc<dyn Route53Api>,
    log: Logger,
    settings: Arc<Settings>,
    pending: BTreeMap<String, ZoneDesire>,
    busy: bool,
    cache: ZoneCache,
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
            cache: ZoneCache::new(),
        }
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.pending.is_empty() {
            return;
        }
        self.busy = true;
        let batch: Vec<ZoneDesire> = std::mem::take(&mut self.pending).into_values().collect();
        let (api, zone, log, settings) = (
            self.api.clone(),
            self.zone.clone(),
            self.log.clone(),
            self.settings.clone(),
        );
        let mut cache = std::mem::take(&mut self.cache);
        let fut = async move {
            let results = sync_zone(&*api, &zone, &batch, &settings, &mut cache, &log).await;
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
        self.pending.insert(msg.fqdn.clone(), msg);
        self.run(ctx);
    }
}

/// How one FQDN's sync in a zone batch ended.
#[derive(Debug)]
pub struct FqdnResult {
    pub result: Result<(), AwsError>,
    /// The plan was built from the zone's cache, not from a read made for this sync.
    pub from_cache: bool,
}

/// Syncs a batch of FQDNs of one zone: reads each FQDN's record sets, plans, and applies all
/// changes in as few calls as the limits allow. A batch refused for a reason retrying can't fix is
/// split into one call per FQDN, so one bad FQDN does not hold up the others. Returns one result per
/// desire, in order.
pub async fn sync_zone(
    api: &dyn Route53Api,
    zone: &str,
    batch: &[ZoneDesire],
    settings: &Settings,
    cache: &mut ZoneCache,
    log: &Logger,
) -> Vec<FqdnResult> {
    let (ttl, policy) = (settings.route53_ttl, settings.policy);
    let mut results: Vec<Result<(), AwsError>> = vec![Ok(()); batch.len()];
    // What must be read: FQDNs not known, and all of them on a resync.
    let due: Vec<usize> = (0..batch.len())
        .filter(|&i| {
            // Upsert-only keeps the current values, so it must know them exactly: read afresh.
            matches!(batch[i].cause, Cause::Resync | Cause::Relist)
                || settings.policy == Policy::UpsertOnly
                || !cache.contains_key(&batch[i].fqdn)
        })
        .collect();
    if due.len() >= FULL_READ_AT {
        match api.zone_record_sets(zone).await {
            Ok(sets) => {
                cache.clear();
                for set in sets {
                    cache.entry(set.name.clone()).or_default().push(set);
                }
                for &i in &due {
                    cache.entry(batch[i].fqdn.clone()).or_default();
                }
            }
            Err(e) => {
                for &i in &due {
                    results[i] = gone_is_empty(&batch[i], e.clone());
                }
            }
        }
    } else {
        for &i in &due {
            match api.record_sets(zone, &batch[i].fqdn).await {
                Ok(sets) => {
                    cache.insert(batch[i].fqdn.clone(), sets);
                }
                Err(e) => results[i] = gone_is_empty(&batch[i], e),
            }
        }
    }
    let mut groups: Vec<(usize, Vec<RecordChange>)> = Vec::new();
    for (i, desire) in batch.iter().enumerate() {
        if results[i].is_err() {
            continue;
        }
        let current = cache
            .get(&desire.fqdn)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let changes = plan_fqdn(&desire.fqdn, &desire.ips, current, ttl, policy);
        if !changes.is_empty() {
            groups.push((i, changes));
        }
    }
    if settings.dry_run {
        for (i, changes) in &groups {
            log_changes(log, &batch[*i], changes, true);
        }
        return results
            .into_iter()
            .map(|result| FqdnResult {
                result,
                from_cache: false,
            })
            .collect();
    }
    for chunk in pack_batches(groups) {
        let all: Vec<RecordChange> = chunk.iter().flat_map(|(_, c)| c.clone()).collect();
        match api.change(zone, &all).await {
            Ok(()) => {
                for (i, changes) in &chunk {
                    applied(cache, &batch[*i].fqdn, changes);
                    log_changes(log, &batch[*i], changes, false);
                }
            }
            Err(e) if chunk.len() > 1 && !e.is_retryable() => {
                for (i, changes) in &chunk {
                    results[*i] = api.change(zone, changes).await;
                    if results[*i].is_ok() {
                        applied(cache, &batch[*i].fqdn, changes);
                        log_changes(log, &batch[*i], changes, false);
                    } else {
                        cache.remove(&batch[*i].fqdn);
                    }
                }
            }
            Err(e) => {
                for (i, _) in &chunk {
                    cache.remove(&batch[*i].fqdn);
                    results[*i] = Err(e.clone());
                }
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, result)| FqdnResult {
            result,
            from_cache: !due.contains(&i),
        })
        .collect()
}

/// A zone that no longer exists holds none of an FQDN that should have no records: in step.
fn gone_is_empty(desire: &ZoneDesire, e: AwsError) -> Result<(), AwsError> {
    if e.kind == ErrorKind::NotFound && desire.ips.is_empty() {
        Ok(())
    } else {
        Err(e)
    }
}

/// Updates the cache with changes Route53 accepted: the record sets are now exactly what was sent.
fn applied(cache: &mut ZoneCache, fqdn: &str, changes: &[RecordChange]) {
    let sets = cache.entry(fqdn.to_string()).or_default();
    for c in changes {
        sets.retain(|s| s.rtype != c.set.rtype);
        if c.action != Action::Delete {
            sets.push(c.set.clone());
        }
    }
}

fn log_changes(log: &Logger, desire: &ZoneDesire, changes: &[RecordChange], dry_run: bool) {
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let msg = if dry_run {
        "would change record set"
    } else {
        "changed record set"
    };
    for c in changes {
        info!(log, "{}", msg;
            "lb" => desire.lb.to_string(),
            "action" => c.action.as_str(),
            "type" => c.set.rtype.as_str(),
            "added" => list(&c.added),
            "removed" => list(&c.removed),
            "ttl" => c.set.ttl,
            "cause" => %desire.cause);
    }
}
