//! One sync of a batch of FQDNs of one hosted zone: read (per FQDN, or the whole zone when many are
//! due, or from what the zone remembers), plan, and apply in as few calls as Route53 allows.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use slog::{info, Logger};

use super::{gone_is_in_step, Cause, SyncOptions};
use crate::aws::{AwsError, Route53Api};
use crate::etcd::OwnershipWrites;
use crate::key::LbId;
use crate::layout::Layout;
use crate::ownership::{shared_ttl, with_foreign};
use crate::plan::{pack_batches, plan_fqdn, Action, Policy, RecordChange, RecordSet};

/// What the zone knows of its record sets, by FQDN (an empty list: known to have none).
pub type ZoneCache = HashMap<String, Vec<RecordSet>>;

/// From this many FQDNs to read at once, one paged read of the whole zone (300 record sets a
/// page) is cheaper than a read per FQDN.
const FULL_READ_AT: usize = 4;

/// What one FQDN's A and AAAA record sets should hold.
#[derive(Clone, Debug)]
pub struct FqdnWant {
    /// The load balancer (for log lines).
    pub lb: LbId,
    pub fqdn: String,
    pub ips: BTreeSet<IpAddr>,
    pub cause: Cause,
    /// `--ownership shared`: the values lbmanager added (the others' are kept).
    pub owned: Option<BTreeSet<IpAddr>>,
}

/// How one FQDN's sync in a zone batch ended.
#[derive(Debug)]
pub struct FqdnResult {
    pub result: Result<(), AwsError>,
    /// The plan was built from the zone's cache, not from a read made for this sync.
    pub from_cache: bool,
    /// The FQDN's record sets after the sync, as far as the zone knows them.
    pub sets: Option<Vec<RecordSet>>,
    /// `--ownership shared`: the values lbmanager owns after the sync.
    pub owned: Option<BTreeSet<IpAddr>>,
    /// The longest TTL of the FQDN's record sets before this sync changed them: how long
    /// resolvers may still hand out a value it removed (also once no record set is left).
    pub ttl_before: Option<i64>,
}

/// Where `--ownership shared` records the values lbmanager adds.
pub struct Recorder<'a> {
    pub writes: &'a dyn OwnershipWrites,
    pub prefix: &'a str,
}

/// Syncs a batch of FQDNs of one zone: reads each FQDN's record sets, plans, and applies all
/// changes in as few calls as the limits allow. A batch refused for a reason retrying can't fix is
/// split into one call per FQDN, so one bad FQDN does not hold up the others. Returns one result per
/// desire, in order.
pub async fn sync_zone(
    api: &dyn Route53Api,
    zone: &str,
    batch: &[FqdnWant],
    options: &SyncOptions,
    cache: &mut ZoneCache,
    log: &Logger,
    recorder: Option<Recorder<'_>>,
) -> Vec<FqdnResult> {
    let mut owned: Vec<Option<BTreeSet<IpAddr>>> = batch.iter().map(|d| d.owned.clone()).collect();
    let (ttl, policy) = (options.route53_ttl, options.policy);
    let mut results: Vec<Result<(), AwsError>> = vec![Ok(()); batch.len()];
    // What must be read: FQDNs not known, and all of them on a resync.
    let due: Vec<usize> = (0..batch.len())
        .filter(|&i| {
            // Upsert-only and shared ownership keep values that are not lbmanager's, so they
            // must know the current ones exactly (another tool may have changed them): read
            // afresh.
            matches!(batch[i].cause, Cause::Resync | Cause::Relist)
                || options.policy == Policy::UpsertOnly
                || batch[i].owned.is_some()
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
    let mut ttl_before: Vec<Option<i64>> = vec![None; batch.len()];
    for (i, desire) in batch.iter().enumerate() {
        if results[i].is_err() {
            continue;
        }
        let current = cache
            .get(&desire.fqdn)
            .map(Vec::as_slice)
            .unwrap_or_default();
        ttl_before[i] = current.iter().map(|s| s.ttl).max();
        // Shared: the others' values stay in the record set.
        let (ips, ttl) = match &desire.owned {
            Some(owned) => (
                with_foreign(&desire.ips, current, owned),
                shared_ttl(current, owned, ttl),
            ),
            None => (desire.ips.clone(), ttl),
        };
        let changes = plan_fqdn(&desire.fqdn, &ips, current, ttl, policy);
        if !changes.is_empty() {
            groups.push((i, changes));
        }
    }
    if options.dry_run {
        for (i, changes) in &groups {
            log_changes(log, &batch[*i], changes, true);
        }
        return results
            .into_iter()
            .zip(owned)
            .map(|(result, owned)| FqdnResult {
                result,
                from_cache: false,
                sets: None,
                owned,
                ttl_before: None,
            })
            .collect();
    }
    // Shared: the values about to be added are recorded first, durably.
    if let Some(recorder) = &recorder {
        let mut claims = Vec::new();
        for (i, changes) in &groups {
            if let Some(ours) = &owned[*i] {
                // Only what this sync adds: a wanted value already there is someone else's.
                let added = changes.iter().flat_map(|c| c.added.iter());
                for ip in added.filter(|ip| batch[*i].ips.contains(*ip) && !ours.contains(*ip)) {
                    claims.push((*i, *ip));
                }
            }
        }
        if !claims.is_empty() {
            let keys: Vec<String> = claims
                .iter()
                .map(|(i, ip)| Layout::new(recorder.prefix).owned(&batch[*i].lb, &ip.to_string()))
                .collect();
            if let Err(e) = recorder.writes.record_many(&keys, &[]).await {
                let e = AwsError::new(
                    crate::aws::ErrorKind::Transient,
                    "recording ownership in etcd",
                    zone,
                    e.to_string(),
                );
                return results
                    .into_iter()
                    .zip(owned)
                    .map(|(_, owned)| FqdnResult {
                        result: Err(e.clone()),
                        from_cache: false,
                        sets: None,
                        owned,
                        ttl_before: None,
                    })
                    .collect();
            }
            for (i, ip) in claims {
                if let Some(ours) = owned[i].as_mut() {
                    ours.insert(ip);
                }
            }
        }
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
    // Shared: forget the values that are out (once the record set no longer has them).
    if let Some(recorder) = &recorder {
        let mut released = Vec::new();
        for (i, result) in results.iter().enumerate() {
            if let (Ok(()), Some(ours)) = (result, owned[i].as_ref()) {
                // Out of the record set as it now stands (upsert-only keeps them: still ours).
                let present: BTreeSet<IpAddr> = cache
                    .get(&batch[i].fqdn)
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s.values.iter())
                    .filter_map(|v| v.parse().ok())
                    .collect();
                for ip in ours.iter().filter(|ip| !present.contains(*ip)) {
                    if !batch[i].ips.contains(ip) {
                        released.push((i, *ip));
                    }
                }
            }
        }
        let keys: Vec<String> = released
            .iter()
            .map(|(i, ip)| Layout::new(recorder.prefix).owned(&batch[*i].lb, &ip.to_string()))
            .collect();
        // Not done until they are forgotten: a failure fails the FQDN's sync, which is retried
        // (AWS, read again, is in step by then, and the values are released again). Left to a
        // later sync, a name with no keys left would have none: it is retired after this one.
        if !keys.is_empty() {
            match recorder.writes.record_many(&[], &keys).await {
                Ok(()) => {
                    for (i, ip) in released {
                        if let Some(ours) = owned[i].as_mut() {
                            ours.remove(&ip);
                        }
                    }
                }
                Err(e) => {
                    let e = AwsError::new(
                        crate::aws::ErrorKind::Transient,
                        "forgetting ownership in etcd",
                        zone,
                        e.to_string(),
                    );
                    for (i, _) in released {
                        results[i] = Err(e.clone());
                    }
                }
            }
        }
    }
    results
        .into_iter()
        .zip(owned)
        .enumerate()
        .map(|(i, (result, owned))| FqdnResult {
            owned,
            sets: result
                .is_ok()
                .then(|| cache.get(&batch[i].fqdn).cloned())
                .flatten(),
            result,
            from_cache: !due.contains(&i),
            ttl_before: ttl_before[i],
        })
        .collect()
}

/// A zone that no longer exists holds none of an FQDN that should have no records: in step.
fn gone_is_empty(desire: &FqdnWant, e: AwsError) -> Result<(), AwsError> {
    if gone_is_in_step(&e, desire.ips.is_empty()) {
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

fn log_changes(log: &Logger, desire: &FqdnWant, changes: &[RecordChange], dry_run: bool) {
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
