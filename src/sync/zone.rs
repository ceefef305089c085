//! One sync of a batch of FQDNs of one hosted zone: read (per FQDN, or the whole zone when that
//! takes fewer calls, or from what the zone remembers), plan, and apply in as few calls as Route53
//! allows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use slog::{info, warn, Logger};

use super::{gone_is_in_step, plan_fqdn_values, Cause, Checks, SyncOptions};
use crate::aws::{AwsError, ChangeId, ErrorKind, Route53Api};
use crate::etcd::OwnershipWrites;
use crate::health_check::{CheckSpec, HealthCheck};
use crate::key::LbId;
use crate::layout::Layout;
use crate::plan::{pack_batches, Action, Policy, RecordChange, RecordSet};

/// What the zone remembers between syncs.
#[derive(Debug, Default)]
pub struct ZoneCache {
    /// Its record sets, by FQDN (an empty list: known to have none).
    pub sets: HashMap<String, Vec<RecordSet>>,
    /// How many record sets it holds, of every type and owner (None: Route53 would not say), and
    /// when it was asked.
    pub size: Option<(Option<u64>, Instant)>,
    /// `--route53-health-check`: the zone's checks (None: not listed yet, or the list failed).
    pub checks: Option<Vec<HealthCheck>>,
    /// The start of its checks' `CallerReference` (see [`Reference`]); set by the zone's actor.
    pub reference_prefix: String,
    /// The reference of each creation under way (kept for its retries, so a creation whose
    /// answer was lost makes no second check).
    pub creating: HashMap<(String, IpAddr, CheckSpec), String>,
    /// The last nonce given to a reference: each is new.
    pub nonce: u64,
    /// Values whose check Route53 refused to make (said once).
    pub refused: HashSet<(String, IpAddr)>,
    /// A change or a deletion failed since the checks were listed: listed again before use.
    pub checks_stale: bool,
}

impl ZoneCache {
    /// The cache of a zone whose checks' references start with `reference_prefix`.
    pub fn new(reference_prefix: String) -> Self {
        ZoneCache {
            reference_prefix,
            ..ZoneCache::default()
        }
    }

    /// A new reference for a check of this zone.
    fn reference(&mut self) -> String {
        // Milliseconds and a random thousandth: new across restarts and leaders too.
        let now = crate::health_check::now_millis();
        self.nonce = (now * 1000 + fastrand::u64(..1000)).max(self.nonce + 1);
        format!("{}{:x}", self.reference_prefix, self.nonce)
    }
}

/// How old a check no record set uses must be before a start deletes it (see
/// [`ZoneRun::drop_strays`]).
const STRAY_AGE: Duration = Duration::from_secs(600);

/// The record sets one page of ListResourceRecordSets holds at most.
const PAGE: u64 = 300;
/// How long the zone's size, as GetHostedZone said it, is trusted to choose how to read.
const SIZE_FRESH: Duration = Duration::from_secs(300);
/// How many FQDNs to read at once make a whole-zone read worth it when the zone's size is not
/// known (GetHostedZone failed).
const FULL_READ_AT: usize = 4;

/// Whether to read `due` FQDNs with one paged read of the whole zone (`size` record sets, 300 a
/// page) rather than one name-targeted read each: only when it takes fewer calls. A zone of
/// 12,000 record sets takes 40 pages; a name, one call (two if it has more than ten record sets).
pub fn read_whole_zone(due: usize, size: Option<u64>) -> bool {
    match size {
        Some(size) => size.div_ceil(PAGE).max(1) < due as u64,
        None => due >= FULL_READ_AT,
    }
}

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
    /// `--route53-health-check`: published as multivalue answers, each value with this check.
    pub check: Option<CheckSpec>,
    /// A change of the name is still `PENDING` (set by the zone's actor from what it follows):
    /// Route53's name servers may still answer with record sets that name checks it no longer
    /// uses, so those are not deleted yet.
    pub dns_busy: bool,
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
    /// The Route53 change that carried this FQDN's changes (none: nothing to change), `PENDING`
    /// until every Route53 name server has it.
    pub change: Option<ChangeId>,
    /// `--route53-health-check`: each value's health as Route53's checkers last reported it
    /// (read at start-up and at each resync).
    pub health: BTreeMap<IpAddr, String>,
    /// Checks of the name no record set uses any longer, left until the change that stopped
    /// using them is `INSYNC`: a sync of the name then deletes them.
    pub checks_waiting: bool,
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
    let mut run = ZoneRun::new(zone, batch);
    run.read(api, options, cache, log).await;
    run.list_checks(api, cache, log).await;
    run.make_checks(api, options, cache, log).await;
    let groups = run.plan(options, cache);
    if options.dry_run {
        for (i, changes) in &groups {
            log_changes(log, &batch[*i], changes, None);
        }
        return run.unapplied(|result| result);
    }
    if let Some(recorder) = &recorder {
        // Shared: the values about to be added are recorded first, durably.
        if let Err(e) = run.claim(recorder, &groups).await {
            return run.unapplied(|_| Err(e.clone()));
        }
    }
    run.apply(api, groups, cache, log).await;
    if let Some(recorder) = &recorder {
        run.release(recorder, cache).await;
    }
    run.drop_checks(api, cache, log).await;
    run.drop_strays(api, cache, log).await;
    run.read_health(api, cache, log).await;
    run.finish(cache)
}

/// One batch's sync as it goes, a step per method: read, plan, claim (shared), apply, release
/// (shared), finish. Each FQDN of the batch has its slot in every vector.
struct ZoneRun<'a> {
    zone: &'a str,
    batch: &'a [FqdnWant],
    results: Vec<Result<(), AwsError>>,
    /// `--ownership shared`: the values lbmanager owns, as the sync claims and releases them.
    owned: Vec<Option<BTreeSet<IpAddr>>>,
    /// The FQDNs read for this sync (the others were planned from the cache).
    due: Vec<usize>,
    ttl_before: Vec<Option<i64>>,
    /// The change that carried each FQDN's changes.
    changes: Vec<Option<ChangeId>>,
    /// `--route53-health-check`: each value's check, for FQDNs in a scope.
    checks: Vec<Option<Checks>>,
    health: Vec<BTreeMap<IpAddr, String>>,
    /// The zone's checks were listed at a start: those of names outside the batch are looked at
    /// too (see [`ZoneRun::drop_strays`]).
    strays: bool,
    checks_waiting: Vec<bool>,
    /// A change of the name was applied (whatever id Route53 gave it).
    changed: Vec<bool>,
}

impl<'a> ZoneRun<'a> {
    fn new(zone: &'a str, batch: &'a [FqdnWant]) -> Self {
        ZoneRun {
            zone,
            batch,
            results: vec![Ok(()); batch.len()],
            owned: batch.iter().map(|d| d.owned.clone()).collect(),
            due: Vec::new(),
            ttl_before: vec![None; batch.len()],
            changes: vec![None; batch.len()],
            checks: vec![None; batch.len()],
            health: vec![BTreeMap::new(); batch.len()],
            strays: false,
            checks_waiting: vec![false; batch.len()],
            changed: vec![false; batch.len()],
        }
    }

    /// Reads what must be read: FQDNs not known, and all of them on a resync; per FQDN, or the
    /// whole zone when that is cheaper.
    async fn read(
        &mut self,
        api: &dyn Route53Api,
        options: &SyncOptions,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        let batch = self.batch;
        self.due = (0..batch.len())
            .filter(|&i| {
                // Upsert-only and shared ownership keep values that are not lbmanager's, so they
                // must know the current ones exactly (another tool may have changed them): read
                // afresh.
                matches!(batch[i].cause, Cause::Resync | Cause::Relist)
                    || options.policy == Policy::UpsertOnly
                    || batch[i].owned.is_some()
                    || !cache.sets.contains_key(&batch[i].fqdn)
            })
            .collect();
        // One name costs one call whatever the zone's size: its size only matters for more.
        if self.due.len() > 1 && cache.size.is_none_or(|(_, at)| at.elapsed() >= SIZE_FRESH) {
            // Unknown (refused, failed): a rule of thumb decides until it is asked again.
            let size = match api.zone_size(self.zone).await {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!(log, "could not read the zone's size; choosing how to read it by a \
                        rule of thumb for a while (grant route53:GetHostedZone)"; "error" => %e);
                    None
                }
            };
            cache.size = Some((size, Instant::now()));
        }
        if read_whole_zone(self.due.len(), cache.size.and_then(|(n, _)| n)) {
            match api.zone_record_sets(self.zone).await {
                Ok(sets) => {
                    cache.sets.clear();
                    for set in sets {
                        cache.sets.entry(set.name.clone()).or_default().push(set);
                    }
                    for &i in &self.due {
                        cache.sets.entry(batch[i].fqdn.clone()).or_default();
                    }
                }
                Err(e) => {
                    for &i in &self.due {
                        self.results[i] = gone_is_empty(&batch[i], e.clone());
                    }
                }
            }
        } else {
            for &i in &self.due {
                match api.record_sets(self.zone, &batch[i].fqdn).await {
                    Ok(sets) => {
                        cache.sets.insert(batch[i].fqdn.clone(), sets);
                    }
                    Err(e) => self.results[i] = gone_is_empty(&batch[i], e),
                }
            }
        }
    }

    /// Plans each FQDN read (or known) against what it should hold: the changes, by FQDN.
    fn plan(
        &mut self,
        options: &SyncOptions,
        cache: &ZoneCache,
    ) -> Vec<(usize, Vec<RecordChange>)> {
        let mut groups = Vec::new();
        for (i, desire) in self.batch.iter().enumerate() {
            if self.results[i].is_err() {
                continue;
            }
            let current = cache
                .sets
                .get(&desire.fqdn)
                .map(Vec::as_slice)
                .unwrap_or_default();
            self.ttl_before[i] = current.iter().map(|s| s.ttl).max();
            let changes = plan_fqdn_values(
                &desire.fqdn,
                &desire.ips,
                current,
                options.route53_ttl,
                options.policy,
                desire.owned.as_ref(),
                self.checks[i].as_ref(),
            );
            if !changes.is_empty() {
                groups.push((i, changes));
            }
        }
        groups
    }

    /// `--route53-health-check`: lists the zone's checks at a start (whatever its names: another
    /// leader may have left some to delete), and after that when they matter and are not known,
    /// are stale, or on a resync (which catches a check deleted by hand): when a name of the batch
    /// is in a scope, or has lbmanager's multivalue answers with checks (left by a run with the
    /// flag, to be switched back). Past its start, a zone with neither makes no health-check call.
    async fn list_checks(&mut self, api: &dyn Route53Api, cache: &mut ZoneCache, log: &Logger) {
        let batch = self.batch;
        let with_checks = |i: usize| {
            batch[i].check.is_some()
                || cache
                    .sets
                    .get(&batch[i].fqdn)
                    .is_some_and(|sets| sets.iter().any(|s| s.health_check.is_some()))
        };
        let needed: Vec<usize> = (0..batch.len())
            .filter(|&i| self.results[i].is_ok() && with_checks(i))
            .collect();
        // At a start the zone's checks are listed whatever its names: an earlier run (another
        // leader) may have left some waiting to be deleted.
        let start = batch
            .iter()
            .any(|d| matches!(d.cause, Cause::Startup | Cause::Relist | Cause::Restart));
        let full = start || needed.iter().any(|&i| batch[i].cause == Cause::Resync);
        if needed.is_empty() && !start {
            return;
        }
        if cache.checks.is_some() && !full && !cache.checks_stale {
            return;
        }
        match api.health_checks(&cache.reference_prefix).await {
            Ok(checks) => {
                cache.checks = Some(checks);
                cache.checks_stale = false;
                self.strays = start;
            }
            Err(e) if needed.is_empty() => {
                // Nothing of the flag's here: a role without route53:ListHealthChecks is fine.
                slog::debug!(log, "could not list the zone's Route53 health checks"; "error" => %e);
            }
            Err(e) => {
                // Its names with checks wait (retried): switched without the list, a name
                // leaving its scope would leave its checks behind for good.
                warn!(log, "could not list the zone's Route53 health checks (grant \
                    route53:ListHealthChecks); its names with health checks wait";
                    "error" => %e);
                cache.checks = None;
                for i in needed {
                    self.results[i] = Err(e.clone());
                }
            }
        }
    }

    /// Makes the checks missing for the values of the names in a scope, before any record set
    /// names them. A value whose check Route53 refuses (`TooManyHealthChecks` past the account's
    /// limit, say) is said once and published without one (Route53 then takes it for healthy);
    /// a failure retrying can fix fails the name's sync (retried).
    async fn make_checks(
        &mut self,
        api: &dyn Route53Api,
        options: &SyncOptions,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        let batch = self.batch;
        for (i, desire) in batch.iter().enumerate() {
            let (Some(spec), Ok(()), Some(_)) = (&desire.check, &self.results[i], &cache.checks)
            else {
                continue;
            };
            let current = cache.sets.get(&desire.fqdn).cloned().unwrap_or_default();
            let in_use: HashSet<&str> = current
                .iter()
                .filter_map(|s| s.health_check.as_deref())
                .collect();
            let full = matches!(
                desire.cause,
                Cause::Resync | Cause::Relist | Cause::Startup | Cause::Restart
            );
            let mut checks = Checks::new();
            for ip in crate::plan::multivalue_values(&desire.ips, &current, options.policy) {
                // The check a record set names already, if there are two (no needless UPSERT).
                let mut known: Vec<&HealthCheck> = cache
                    .checks
                    .iter()
                    .flatten()
                    .filter(|c| c.is(&desire.fqdn, &ip, spec))
                    .collect();
                known.sort_by_key(|c| !in_use.contains(c.id.as_str()));
                if let Some(c) = known.first() {
                    checks.insert(ip, Some(c.id.clone()));
                    continue;
                }
                // Refused before (a private address, the account's limit): asked again at the
                // next full sync, not at every event.
                if !full && cache.refused.contains(&(desire.fqdn.clone(), ip)) {
                    checks.insert(ip, None);
                    continue;
                }
                if options.dry_run {
                    info!(log, "would create health check"; "lb" => desire.lb.to_string(),
                        "value" => %ip, "check" => %spec);
                    checks.insert(ip, None);
                    continue;
                }
                let key = (desire.fqdn.clone(), ip, spec.clone());
                let mut reference = match cache.creating.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let r = cache.reference();
                        cache.creating.insert(key.clone(), r.clone());
                        r
                    }
                };
                let mut made = api
                    .create_health_check(&reference, &desire.fqdn, ip, spec)
                    .await;
                if made
                    .as_ref()
                    .is_err_and(|e| e.message.contains("HealthCheckAlreadyExists"))
                {
                    // The reference is spent (a check since deleted had it): a new one, once.
                    reference = cache.reference();
                    cache.creating.insert(key.clone(), reference.clone());
                    made = api
                        .create_health_check(&reference, &desire.fqdn, ip, spec)
                        .await;
                }
                match made {
                    Ok(id) => {
                        info!(log, "created health check"; "lb" => desire.lb.to_string(),
                            "value" => %ip, "check" => %spec, "health_check" => esc(&id),
                            "cause" => %desire.cause);
                        cache.creating.remove(&key);
                        cache.refused.remove(&(desire.fqdn.clone(), ip));
                        if let Some(list) = cache.checks.as_mut() {
                            list.push(HealthCheck {
                                id: id.clone(),
                                reference,
                                ip,
                                fqdn: desire.fqdn.clone(),
                                spec: spec.clone(),
                            });
                        }
                        checks.insert(ip, Some(id));
                    }
                    Err(e) if e.is_retryable() => {
                        self.results[i] = Err(e);
                        break;
                    }
                    Err(e) => {
                        // This reference is spent (Route53 keeps refusing it): the next try
                        // makes a new one.
                        cache.creating.remove(&key);
                        if cache.refused.insert((desire.fqdn.clone(), ip)) {
                            warn!(log, "Route53 refused to make a value's health check; the value \
                                is published without one (answered as healthy) and the check is \
                                asked for again at each resync (README, Limits)";
                                "lb" => desire.lb.to_string(), "value" => %ip, "error" => %e);
                        }
                        checks.insert(ip, None);
                    }
                }
            }
            self.checks[i] = Some(checks);
        }
    }

    /// Deletes the zone's checks of the batch's names that no record set names any longer (the
    /// value gone, its check changed, the name out of every scope), once the change that stopped
    /// naming them is `INSYNC`: until then Route53's name servers may still answer with record
    /// sets that name them, and a deleted check's status is undefined (AWS: update the records,
    /// wait for them to propagate, then delete). A name with a change in flight (made by this
    /// sync or still `PENDING`) reports its checks as waiting; its load balancer syncs it again
    /// once the change is `INSYNC`, and is not retired before. A deletion that fails fails the
    /// name's sync (retried).
    async fn drop_checks(&mut self, api: &dyn Route53Api, cache: &mut ZoneCache, log: &Logger) {
        let batch = self.batch;
        for (i, desire) in batch.iter().enumerate() {
            let Some(known) = cache.checks.as_ref() else {
                return;
            };
            if self.results[i].is_err() {
                continue;
            }
            let named: HashSet<&str> = cache
                .sets
                .get(&desire.fqdn)
                .into_iter()
                .flatten()
                .filter_map(|s| s.health_check.as_deref())
                .collect();
            let unused: Vec<HealthCheck> = known
                .iter()
                .filter(|c| c.fqdn == desire.fqdn && !named.contains(c.id.as_str()))
                .cloned()
                .collect();
            if unused.is_empty() {
                continue;
            }
            if desire.dns_busy || self.changed[i] {
                self.checks_waiting[i] = true;
                continue;
            }
            for check in unused {
                match api.delete_health_check(&check.id).await {
                    Ok(()) => {
                        info!(log, "deleted health check no record set uses";
                            "lb" => desire.lb.to_string(), "value" => %check.ip,
                            "check" => esc(&check.spec.to_string()), "health_check" => esc(&check.id),
                            "cause" => %desire.cause);
                        if let Some(list) = cache.checks.as_mut() {
                            list.retain(|c| c.id != check.id);
                        }
                    }
                    Err(e) => {
                        // Read afresh before the retry (which then backs off).
                        forget(cache, desire);
                        self.results[i] = Err(e);
                        break;
                    }
                }
            }
        }
    }

    /// At a start, the zone's checks of names outside the batch that no record set of their name
    /// uses (made just before a crash for a value removed meanwhile, or left by a name no longer
    /// managed): each such name is read once, and the checks none of its record sets names are
    /// deleted. A check in use is never deleted (Route53 would no longer know the value's health);
    /// one deleted that a later sync wants again is made anew. Failures are said and left to the
    /// next start.
    async fn drop_strays(&mut self, api: &dyn Route53Api, cache: &mut ZoneCache, log: &Logger) {
        if !self.strays {
            return;
        }
        let ours: HashSet<&str> = self.batch.iter().map(|d| d.fqdn.as_str()).collect();
        let names: BTreeSet<String> = cache
            .checks
            .iter()
            .flatten()
            .filter(|c| !ours.contains(c.fqdn.as_str()))
            .map(|c| c.fqdn.clone())
            .collect();
        for fqdn in names {
            let used: HashSet<String> = match api.record_sets(self.zone, &fqdn).await {
                Ok(sets) => sets.into_iter().filter_map(|s| s.health_check).collect(),
                Err(e) => {
                    warn!(log, "could not read a name with health checks of lbmanager's; they \
                        are looked at again at the next start"; "fqdn" => esc(&fqdn),
                        "error" => %e);
                    continue;
                }
            };
            // A check made moments ago may be about to be used (by another lbmanager of the
            // same prefix in the account, say): only those older than STRAY_AGE go.
            let now = crate::health_check::now_millis();
            let stray: Vec<HealthCheck> = cache
                .checks
                .iter()
                .flatten()
                .filter(|c| c.fqdn == fqdn && !used.contains(&c.id))
                .filter(|c| {
                    crate::health_check::Reference::made_at(&c.reference)
                        .is_none_or(|at| now.saturating_sub(at) >= STRAY_AGE.as_millis() as u64)
                })
                .cloned()
                .collect();
            for check in stray {
                match api.delete_health_check(&check.id).await {
                    Ok(()) => {
                        info!(log, "deleted health check no record set uses";
                            "fqdn" => esc(&fqdn), "value" => %check.ip,
                            "check" => esc(&check.spec.to_string()), "health_check" => esc(&check.id),
                            "cause" => "start-up: no name of lbmanager's uses it");
                        if let Some(list) = cache.checks.as_mut() {
                            list.retain(|c| c.id != check.id);
                        }
                    }
                    Err(e) => warn!(log, "could not delete a health check no record set uses";
                        "health_check" => esc(&check.id), "error" => %e),
                }
            }
        }
    }

    /// Reads the health Route53's checkers report of each value of the names in a scope (one
    /// GetHealthCheckStatus per value), at start-up, at each resync, and while someone waits for
    /// a value to be healthy (`member add --healthy`: the load balancer's settling reads): between
    /// them, a value's health is what was read last. A failed read is no failed sync.
    async fn read_health(&mut self, api: &dyn Route53Api, cache: &ZoneCache, log: &Logger) {
        for (i, desire) in self.batch.iter().enumerate() {
            let full = matches!(
                desire.cause,
                Cause::Resync | Cause::Relist | Cause::Startup | Cause::Restart | Cause::Settle
            );
            if !full || desire.check.is_none() || self.results[i].is_err() {
                continue;
            }
            let sets = cache.sets.get(&desire.fqdn).into_iter().flatten();
            for set in sets {
                let (Some(id), Some(ip)) = (&set.health_check, set.values.first()) else {
                    continue;
                };
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    continue;
                };
                match api.health_check_status(id).await {
                    Ok(state) => {
                        self.health[i].insert(ip, state);
                    }
                    Err(e) => {
                        slog::debug!(log, "could not read a health check's status";
                            "health_check" => esc(id), "error" => %e);
                    }
                }
            }
        }
    }

    /// Shared: records in etcd the values this sync is about to add, before it adds them.
    async fn claim(
        &mut self,
        recorder: &Recorder<'_>,
        groups: &[(usize, Vec<RecordChange>)],
    ) -> Result<(), AwsError> {
        let mut claims = Vec::new();
        for (i, changes) in groups {
            if let Some(ours) = &self.owned[*i] {
                // Only what this sync adds: a wanted value already there is someone else's.
                let added = changes.iter().flat_map(|c| c.added.iter());
                for ip in added.filter(|ip| self.batch[*i].ips.contains(*ip) && !ours.contains(*ip))
                {
                    claims.push((*i, *ip));
                }
            }
        }
        if claims.is_empty() {
            return Ok(());
        }
        let keys = self.owned_keys(recorder, &claims);
        if let Err(e) = recorder.writes.record_many(&keys, &[]).await {
            return Err(self.etcd_error("recording ownership in etcd", e));
        }
        for (i, ip) in claims {
            if let Some(ours) = self.owned[i].as_mut() {
                ours.insert(ip);
            }
        }
        Ok(())
    }

    /// Applies the changes in as few calls as the limits allow; a batch refused for a reason
    /// retrying can't fix goes again one FQDN at a time.
    async fn apply(
        &mut self,
        api: &dyn Route53Api,
        groups: Vec<(usize, Vec<RecordChange>)>,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        let batch = self.batch;
        for chunk in pack_batches(groups) {
            let all: Vec<RecordChange> = chunk.iter().flat_map(|(_, c)| c.clone()).collect();
            match api.change(self.zone, &all).await {
                Ok(id) => {
                    for (i, changes) in &chunk {
                        applied(cache, &batch[*i].fqdn, changes);
                        log_changes(log, &batch[*i], changes, Some(&id));
                        self.changes[*i] = (!id.is_empty()).then(|| id.clone());
                        self.changed[*i] = true;
                    }
                }
                Err(e) if chunk.len() > 1 && !e.is_retryable() => {
                    for (i, changes) in &chunk {
                        match api.change(self.zone, changes).await {
                            Ok(id) => {
                                applied(cache, &batch[*i].fqdn, changes);
                                log_changes(log, &batch[*i], changes, Some(&id));
                                self.changes[*i] = (!id.is_empty()).then_some(id);
                                self.changed[*i] = true;
                            }
                            Err(e) => {
                                forget(cache, &batch[*i]);
                                self.results[*i] = Err(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    for (i, _) in &chunk {
                        forget(cache, &batch[*i]);
                        self.results[*i] = Err(e.clone());
                    }
                }
            }
        }
    }

    /// Shared: forgets the values that are out (once the record set no longer has them). Not done
    /// until they are forgotten: a failure fails the FQDN's sync, which is retried (AWS, read
    /// again, is in step by then, and the values are released again). Left to a later sync, a name
    /// with no keys left would have none: it is retired after this one.
    async fn release(&mut self, recorder: &Recorder<'_>, cache: &ZoneCache) {
        let mut released = Vec::new();
        for (i, result) in self.results.iter().enumerate() {
            if let (Ok(()), Some(ours)) = (result, self.owned[i].as_ref()) {
                // Out of the record set as it now stands (upsert-only keeps them: still ours).
                let present: BTreeSet<IpAddr> = cache
                    .sets
                    .get(&self.batch[i].fqdn)
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s.values.iter())
                    .filter_map(|v| v.parse().ok())
                    .collect();
                for ip in ours.iter().filter(|ip| !present.contains(*ip)) {
                    if !self.batch[i].ips.contains(ip) {
                        released.push((i, *ip));
                    }
                }
            }
        }
        if released.is_empty() {
            return;
        }
        let keys = self.owned_keys(recorder, &released);
        match recorder.writes.record_many(&[], &keys).await {
            Ok(()) => {
                for (i, ip) in released {
                    if let Some(ours) = self.owned[i].as_mut() {
                        ours.remove(&ip);
                    }
                }
            }
            Err(e) => {
                let e = self.etcd_error("forgetting ownership in etcd", e);
                for (i, _) in released {
                    self.results[i] = Err(e.clone());
                }
            }
        }
    }

    /// The ownership records of values of the batch's FQDNs.
    fn owned_keys(&self, recorder: &Recorder<'_>, values: &[(usize, IpAddr)]) -> Vec<String> {
        let layout = Layout::new(recorder.prefix);
        values
            .iter()
            .map(|(i, ip)| layout.owned(&self.batch[*i].lb, &ip.to_string()))
            .collect()
    }

    /// An etcd write the sync depends on failed: the sync is retried like one AWS refused.
    fn etcd_error(&self, doing: &'static str, e: impl std::fmt::Display) -> AwsError {
        AwsError::new(ErrorKind::Transient, doing, self.zone, e.to_string())
    }

    /// The results of a sync that applied nothing (a dry run, or one stopped before it changed
    /// AWS): no record sets to report, no TTL waited out.
    fn unapplied(
        self,
        result: impl Fn(Result<(), AwsError>) -> Result<(), AwsError>,
    ) -> Vec<FqdnResult> {
        self.results
            .into_iter()
            .zip(self.owned)
            .map(|(r, owned)| FqdnResult {
                result: result(r),
                from_cache: false,
                sets: None,
                owned,
                ttl_before: None,
                change: None,
                health: BTreeMap::new(),
                checks_waiting: false,
            })
            .collect()
    }

    /// One result per desire, in order, with the record sets as the zone now knows them.
    fn finish(self, cache: &ZoneCache) -> Vec<FqdnResult> {
        let (batch, due, ttl_before) = (self.batch, self.due, self.ttl_before);
        let mut changes = self.changes;
        let mut health = self.health;
        let waiting = self.checks_waiting;
        self.results
            .into_iter()
            .zip(self.owned)
            .enumerate()
            .map(|(i, (result, owned))| FqdnResult {
                change: changes[i].take(),
                owned,
                sets: result
                    .is_ok()
                    .then(|| cache.sets.get(&batch[i].fqdn).cloned())
                    .flatten(),
                result,
                from_cache: !due.contains(&i),
                ttl_before: ttl_before[i],
                health: std::mem::take(&mut health[i]),
                checks_waiting: waiting[i],
            })
            .collect()
    }
}

/// A change of `desire`'s name (or the deletion of one of its checks) failed: what the zone
/// knows of it is read again, and its checks are listed again before they are used (one deleted
/// by hand is named by no change again). The list is kept till then: the batch's other names
/// still delete by it.
fn forget(cache: &mut ZoneCache, desire: &FqdnWant) {
    cache.sets.remove(&desire.fqdn);
    if desire.check.is_some() || cache.checks.is_some() {
        cache.checks_stale = true;
    }
}

/// A value from AWS (a health check's id, path, FQDN) as a log line may show it.
fn esc(s: &str) -> String {
    crate::escape::escape(s).into_owned()
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
    let sets = cache.sets.entry(fqdn.to_string()).or_default();
    for c in changes {
        sets.retain(|s| s.rtype != c.set.rtype || s.set_id != c.set.set_id);
        if c.action != Action::Delete {
            sets.push(c.set.clone());
        }
    }
}

/// Says what changed (or, in a dry run, `change` None, what would): `change` is Route53's id of
/// the change that carried it.
fn log_changes(log: &Logger, desire: &FqdnWant, changes: &[RecordChange], change: Option<&str>) {
    let list = |ips: &[IpAddr]| {
        ips.iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let msg = if change.is_none() {
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
            "change" => change.unwrap_or_default(),
            "cause" => %desire.cause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::fake::FakeRoute53;
    use std::sync::atomic::Ordering;

    #[test]
    fn the_whole_zone_is_read_only_when_it_takes_fewer_calls() {
        // 100 record sets: one page, cheaper from two names on.
        assert!(!read_whole_zone(1, Some(100)));
        assert!(read_whole_zone(2, Some(100)));
        // 12,000: 40 pages; 10 names are 10 calls.
        assert!(!read_whole_zone(10, Some(12_000)));
        assert!(!read_whole_zone(40, Some(12_000)));
        assert!(read_whole_zone(41, Some(12_000)));
        // 100,000: 334 pages.
        assert!(!read_whole_zone(300, Some(100_000)));
        assert!(read_whole_zone(335, Some(100_000)));
        // Size unknown: the rule of thumb.
        assert!(!read_whole_zone(3, None));
        assert!(read_whole_zone(4, None));
    }

    fn wants(n: usize, cause: Cause) -> Vec<FqdnWant> {
        (0..n)
            .map(|i| FqdnWant {
                lb: crate::key::LbId::Route53 {
                    zone: "Z1".into(),
                    fqdn: format!("h{i}.example.com"),
                },
                fqdn: format!("h{i}.example.com"),
                ips: [format!("192.0.2.{i}").parse().unwrap()].into(),
                cause,
                owned: None,
                check: None,
                dns_busy: false,
            })
            .collect()
    }

    /// Calls of each operation since `from`.
    fn counted(r53: &FakeRoute53, from: usize) -> (usize, usize) {
        let calls = r53.calls();
        let of = |op: &str| calls[from..].iter().filter(|c| c.starts_with(op)).count();
        (of("ListResourceRecordSets"), of("GetHostedZone"))
    }

    /// In a zone of 12,000 record sets (other tools'), start-up and each resync of 10 names take
    /// one read per name (plus GetHostedZone, once in a while); in a small zone, one page.
    #[tokio::test]
    async fn ten_names_of_a_large_zone_are_read_by_name_and_of_a_small_one_at_once() {
        let r53 = FakeRoute53::with_zones(&["Z1"]);
        r53.foreign_sets.store(12_000, Ordering::SeqCst);
        let (options, log) = setup();
        let mut cache = ZoneCache::default();
        let start = wants(10, Cause::Startup);
        let results = sync_zone(&r53, "Z1", &start, &options, &mut cache, &log, None).await;
        assert!(results.iter().all(|r| r.result.is_ok()));
        assert_eq!(counted(&r53, 0), (10, 1), "{:?}", r53.calls());
        let before = r53.calls().len();
        let resync = wants(10, Cause::Resync);
        sync_zone(&r53, "Z1", &resync, &options, &mut cache, &log, None).await;
        assert_eq!(counted(&r53, before), (10, 0), "the size is remembered");
        // A small zone: its size asked again (after SIZE_FRESH), one page for all ten.
        r53.foreign_sets.store(100, Ordering::SeqCst);
        cache.size = None;
        let before = r53.calls().len();
        sync_zone(&r53, "Z1", &resync, &options, &mut cache, &log, None).await;
        assert_eq!(
            counted(&r53, before),
            (1, 1),
            "{:?}",
            &r53.calls()[before..]
        );
    }

    /// The options of a sync in these tests, and a log that keeps nothing.
    fn setup() -> (SyncOptions, Logger) {
        let options = SyncOptions {
            policy: Policy::Sync,
            dry_run: false,
            route53_ttl: 60,
        };
        (options, Logger::root(slog::Discard, slog::o!()))
    }

    fn checked(ips: &[&str], cause: Cause, spec: Option<&CheckSpec>) -> Vec<FqdnWant> {
        let mut w = wants(1, cause);
        w[0].fqdn = "www.example.com".into();
        w[0].ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        w[0].check = spec.cloned();
        w
    }

    fn ids(r53: &FakeRoute53) -> Vec<(String, String)> {
        let checks = r53.checks.lock().unwrap();
        checks
            .values()
            .map(|c| (c.id.clone(), c.ip.to_string()))
            .collect()
    }

    /// The multivalue life cycle against a fake Route53 that keeps CallerReference as Route53
    /// does: values come with their checks (made first), a value goes with its check (deleted
    /// after), a restart makes no second check, a creation whose answer was lost neither, a
    /// value added again gets a new check, and without the flag the name is one simple record
    /// set again and its checks are gone. A name outside the scope is left simple throughout.
    #[tokio::test]
    async fn multivalue_answers_and_their_checks_live_and_die_with_the_values() {
        use crate::plan::RecordType;
        let r53 = FakeRoute53::with_zones(&["Z1"]);
        let (options, log) = setup();
        let spec = crate::health_check::parse_rule("route53/Z1/*=HTTP:80/health")
            .unwrap()
            .spec;
        let prefix = "lbm-00000000-Z1-".to_string();
        let mut cache = ZoneCache::new(prefix.clone());
        let two = ["192.0.2.1", "192.0.2.2"];
        let mut batch = checked(&two, Cause::Startup, Some(&spec));
        let mut plain = wants(1, Cause::Startup);
        plain[0].fqdn = "plain.example.com".into();
        batch.extend(plain.clone());
        let r = sync_zone(&r53, "Z1", &batch, &options, &mut cache, &log, None).await;
        assert!(r.iter().all(|r| r.result.is_ok()), "{r:?}");
        let sets = r53.multivalue("Z1", "www.example.com");
        assert_eq!(sets.len(), 2);
        let made = ids(&r53);
        assert_eq!(made.len(), 2);
        for set in &sets {
            let check = r53.checks.lock().unwrap()[set.health_check.as_ref().unwrap()].clone();
            assert_eq!(check.ip.to_string(), set.values[0]);
            assert_eq!(
                (check.fqdn.as_str(), &check.spec),
                ("www.example.com", &spec)
            );
            assert!(check.reference.starts_with(&prefix) && check.reference.len() <= 64);
        }
        assert!(r53.record("Z1", "www.example.com", RecordType::A).is_none());
        assert!(r53
            .record("Z1", "plain.example.com", RecordType::A)
            .is_some());
        assert!(r53.multivalue("Z1", "plain.example.com").is_empty());
        // Check made before the record set that names it.
        let calls = r53.calls();
        let create = calls
            .iter()
            .position(|c| c.starts_with("CreateHealthCheck"))
            .unwrap();
        let change = calls
            .iter()
            .position(|c| c.starts_with("ChangeResource"))
            .unwrap();
        assert!(create < change, "{calls:?}");

        // A value goes: its record set; its check once that change is INSYNC (while it is
        // PENDING, name servers may still answer with the record set that names it).
        let one = checked(&two[..1], Cause::EtcdEvent, Some(&spec));
        let r = sync_zone(&r53, "Z1", &one, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok() && r[0].checks_waiting, "{r:?}");
        assert_eq!(r53.multivalue("Z1", "www.example.com").len(), 1);
        assert_eq!(ids(&r53), made, "not yet: the change is PENDING");
        let mut busy = checked(&two[..1], Cause::Settle, Some(&spec));
        busy[0].dns_busy = true;
        let r = sync_zone(&r53, "Z1", &busy, &options, &mut cache, &log, None).await;
        assert!(r[0].checks_waiting);
        assert_eq!(ids(&r53), made, "not while a change of the name is PENDING");
        let settle = checked(&two[..1], Cause::Settle, Some(&spec));
        let r = sync_zone(&r53, "Z1", &settle, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok() && !r[0].checks_waiting, "{r:?}");
        assert_eq!(ids(&r53), made[..1].to_vec());

        // A restart (a new cache): no second check.
        let mut cache = ZoneCache::new(prefix.clone());
        let start = checked(&two[..1], Cause::Startup, Some(&spec));
        let r = sync_zone(&r53, "Z1", &start, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok());
        assert_eq!(ids(&r53), made[..1].to_vec());
        assert_eq!(
            r[0].health
                .get(&two[0].parse().unwrap())
                .map(String::as_str),
            Some("healthy")
        );

        // The value added again, the creation's answer lost: retried with the same reference,
        // Route53 answers with the check it made; one check, a new one (its old reference is
        // spent).
        r53.lose_next_create.store(true, Ordering::SeqCst);
        let again = checked(&two, Cause::EtcdEvent, Some(&spec));
        let r = sync_zone(&r53, "Z1", &again, &options, &mut cache, &log, None).await;
        assert!(
            r[0].result.is_err(),
            "the lost answer fails the sync (retried): {:?} {r:?}",
            r53.calls()
        );
        let r = sync_zone(&r53, "Z1", &again, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok(), "{r:?}");
        assert_eq!(ids(&r53).len(), 2, "{:?}", ids(&r53));
        assert_eq!(r53.multivalue("Z1", "www.example.com").len(), 2);

        // Health as Route53's checkers report it, read at a resync.
        r53.health
            .lock()
            .unwrap()
            .insert(two[1].parse().unwrap(), "unhealthy".into());
        let resync = checked(&two, Cause::Resync, Some(&spec));
        let r = sync_zone(&r53, "Z1", &resync, &options, &mut cache, &log, None).await;
        assert_eq!(
            r[0].health
                .get(&two[1].parse().unwrap())
                .map(String::as_str),
            Some("unhealthy")
        );

        // Restarted without the flag: one simple record set, and no check left.
        let mut cache = ZoneCache::new(prefix.clone());
        let mut off = checked(&two, Cause::Startup, None);
        off.extend(plain);
        let r = sync_zone(&r53, "Z1", &off, &options, &mut cache, &log, None).await;
        assert!(r.iter().all(|r| r.result.is_ok()), "{r:?}");
        assert!(r[0].checks_waiting && ids(&r53).len() == 2);
        let settle = checked(&two, Cause::Settle, None);
        sync_zone(&r53, "Z1", &settle, &options, &mut cache, &log, None).await;
        assert!(r53.multivalue("Z1", "www.example.com").is_empty());
        let simple = r53.record("Z1", "www.example.com", RecordType::A).unwrap();
        assert_eq!(simple.values, ["192.0.2.1", "192.0.2.2"]);
        assert!(ids(&r53).is_empty());
        let switches = r53
            .calls()
            .iter()
            .filter(|c| c.starts_with("ChangeResource") && c.contains("www.example.com"))
            .count();
        assert_eq!(switches, 4, "each switch is one batch: {:?}", r53.calls());
    }

    /// Past the account's limit of health checks, the values whose check Route53 refuses are
    /// published without one (Route53 answers them as healthy); the others keep theirs.
    #[tokio::test]
    async fn past_the_limit_of_checks_a_value_is_published_without_one() {
        let r53 = FakeRoute53::with_zones(&["Z1"]);
        r53.max_checks.store(1, Ordering::SeqCst);
        let (options, log) = setup();
        let spec = crate::health_check::parse_rule("route53/*/*=TCP:443")
            .unwrap()
            .spec;
        let mut cache = ZoneCache::new("lbm-00000000-Z1-".into());
        let batch = checked(&["192.0.2.1", "192.0.2.2"], Cause::Startup, Some(&spec));
        let r = sync_zone(&r53, "Z1", &batch, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok(), "{r:?}");
        let sets = r53.multivalue("Z1", "www.example.com");
        let with: Vec<bool> = sets.iter().map(|s| s.health_check.is_some()).collect();
        assert_eq!(with, [true, false]);
    }

    /// At a start, a check of lbmanager's that no record set of its name uses (made just before a
    /// crash, for a value removed meanwhile) is deleted; one a name outside the batch uses is
    /// kept.
    #[tokio::test]
    async fn at_a_start_a_check_no_record_set_uses_is_deleted() {
        let r53 = FakeRoute53::with_zones(&["Z1"]);
        let (options, log) = setup();
        let spec = crate::health_check::parse_rule("route53/*/*=TCP:443")
            .unwrap()
            .spec;
        let prefix = "lbm-00000000-Z1-";
        let check = |id: &str, fqdn: &str, ip: &str| HealthCheck {
            id: id.into(),
            reference: format!("{prefix}{id}"),
            ip: ip.parse().unwrap(),
            fqdn: fqdn.into(),
            spec: spec.clone(),
        };
        for c in [
            check("hc-stray", "gone.example.com", "192.0.2.50"),
            check("hc-used", "api.example.com", "192.0.2.60"),
        ] {
            r53.checks.lock().unwrap().insert(c.id.clone(), c);
        }
        r53.put_record(
            "Z1",
            RecordSet {
                name: "api.example.com".into(),
                rtype: crate::plan::RecordType::A,
                ttl: 60,
                values: vec!["192.0.2.60".into()],
                set_id: Some("192.0.2.60".into()),
                health_check: Some("hc-used".into()),
            },
        );
        let mut cache = ZoneCache::new(prefix.into());
        let batch = checked(&["192.0.2.1"], Cause::Startup, Some(&spec));
        let r = sync_zone(&r53, "Z1", &batch, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok(), "{r:?}");
        let left: Vec<String> = ids(&r53).into_iter().map(|(id, _)| id).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&"hc-used".to_string()) && !left.contains(&"hc-stray".to_string()));
        // Not at an event's sync: nothing outside the batch is read.
        let before = r53.calls().len();
        let event = checked(&["192.0.2.1", "192.0.2.2"], Cause::EtcdEvent, Some(&spec));
        sync_zone(&r53, "Z1", &event, &options, &mut cache, &log, None).await;
        let calls = &r53.calls()[before..];
        assert!(
            !calls.iter().any(|c| c.contains("api.example.com")),
            "{calls:?}"
        );
    }

    /// A leader that switched a name back to one simple record set and died before the change
    /// was INSYNC left its checks: the next one lists the zone's checks at its start, although
    /// nothing of the name shows a check any longer, and deletes them (once no change of the
    /// name is PENDING).
    #[tokio::test]
    async fn checks_left_waiting_by_another_leader_are_deleted_at_a_start() {
        let r53 = FakeRoute53::with_zones(&["Z1"]);
        let (options, log) = setup();
        let spec = crate::health_check::parse_rule("route53/*/*=TCP:443")
            .unwrap()
            .spec;
        let prefix = "lbm-00000000-Z1-";
        r53.checks.lock().unwrap().insert(
            "hc-left".into(),
            HealthCheck {
                id: "hc-left".into(),
                reference: format!("{prefix}1"),
                ip: "192.0.2.1".parse().unwrap(),
                fqdn: "www.example.com".into(),
                spec,
            },
        );
        r53.put_record(
            "Z1",
            RecordSet::simple(
                "www.example.com",
                crate::plan::RecordType::A,
                60,
                vec!["192.0.2.1".into()],
            ),
        );
        let mut cache = ZoneCache::new(prefix.into());
        let mut start = checked(&["192.0.2.1"], Cause::Startup, None);
        start[0].dns_busy = true;
        let r = sync_zone(&r53, "Z1", &start, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok() && r[0].checks_waiting, "{r:?}");
        assert_eq!(
            ids(&r53).len(),
            1,
            "not while the previous change is PENDING"
        );
        let settle = checked(&["192.0.2.1"], Cause::Settle, None);
        let r = sync_zone(&r53, "Z1", &settle, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok() && !r[0].checks_waiting, "{r:?}");
        assert!(ids(&r53).is_empty());
    }
}
