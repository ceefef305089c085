//! One sync of a batch of FQDNs of one hosted zone: read (per FQDN, or the whole zone when that
//! takes fewer calls, or from what the zone remembers), plan, and apply in as few calls as Route53
//! allows. Each name of the batch is one [`Name`] as the sync goes; the health checks of names
//! in a `--route53-health-check` scope are [`checks`]'s, with their own cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

mod checks;
pub use checks::CheckCache;

use slog::{info, warn, Logger};

use super::{gone_is_in_step, plan_fqdn_values, Cause, Checks, SyncOptions};
use crate::aws::{AwsError, ChangeId, ErrorKind, Route53Api};
use crate::etcd::OwnershipWrites;
use crate::health_check::CheckSpec;
use crate::key::LbId;
use crate::layout::Layout;
use crate::plan::{pack_batches, Action, Limit, Policy, RecordChange, RecordSet, Refusal};

/// What the zone remembers between syncs.
#[derive(Debug, Default)]
pub struct ZoneCache {
    /// Its record sets, by FQDN (an empty list: known to have none).
    pub sets: HashMap<String, Vec<RecordSet>>,
    /// How many record sets it holds, of every type and owner (None: Route53 would not say), and
    /// when it was asked.
    pub size: Option<(Option<u64>, Instant)>,
    /// `--route53-health-check`: what the zone knows of its checks.
    pub checks: CheckCache,
}

impl ZoneCache {
    /// The cache of a zone whose checks' references start with `reference_prefix`.
    pub fn new(reference_prefix: String) -> Self {
        ZoneCache {
            checks: CheckCache::new(reference_prefix),
            ..ZoneCache::default()
        }
    }
}

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

/// The values of `ips` left out for Route53's limit (of values per record set, or of multivalue
/// answers per name when `checked`), each with its reason: those `published` now are kept first.
/// The name's load balancer reports them as refusals, as an ELB's sync does its members past
/// AWS's limit.
pub fn refused_over_limit(
    ips: &BTreeSet<IpAddr>,
    published: impl Fn(&IpAddr) -> bool,
    checked: bool,
) -> crate::plan::Rejected {
    let why = Refusal::OverLimit(match checked {
        true => Limit::MultivalueAnswers,
        false => Limit::RecordValues,
    });
    crate::plan::values_over_limit(ips, published, checked)
        .into_iter()
        .map(|ip| (ip.to_string(), why.clone()))
        .collect()
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
    pub layout: &'a Layout,
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

/// One batch's sync as it goes, a step per method: read, list and make the checks, plan, claim
/// (shared), apply, release (shared), drop the checks no longer used, read their health, finish.
struct ZoneRun<'a> {
    zone: &'a str,
    /// The batch's names, in its order.
    names: Vec<Name<'a>>,
    /// The zone's checks were listed at a start: those of names outside the batch are looked at
    /// too (see [`ZoneRun::drop_strays`]).
    strays: bool,
}

/// One name of the batch, as its sync goes.
struct Name<'a> {
    want: &'a FqdnWant,
    result: Result<(), AwsError>,
    /// `--ownership shared`: the values lbmanager owns, as the sync claims and releases them.
    owned: Option<BTreeSet<IpAddr>>,
    /// Read for this sync (not planned from the cache).
    read: bool,
    /// The longest TTL of its record sets before the sync changed them.
    ttl_before: Option<i64>,
    /// The change that carried its changes (none: nothing changed, or Route53 gave no id).
    change: Option<ChangeId>,
    /// A change of the name was applied (whatever id Route53 gave it).
    changed: bool,
    /// `--route53-health-check`: each value's check, for a name in a scope.
    checks: Option<Checks>,
    /// Each value's health, as Route53's checkers last reported it.
    health: BTreeMap<IpAddr, String>,
    /// Checks no record set uses any longer, left until its change is `INSYNC`.
    checks_waiting: bool,
}

impl<'a> ZoneRun<'a> {
    fn new(zone: &'a str, batch: &'a [FqdnWant]) -> Self {
        let names = batch
            .iter()
            .map(|want| Name {
                want,
                result: Ok(()),
                owned: want.owned.clone(),
                read: false,
                ttl_before: None,
                change: None,
                changed: false,
                checks: None,
                health: BTreeMap::new(),
                checks_waiting: false,
            })
            .collect();
        ZoneRun {
            zone,
            names,
            strays: false,
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
        for name in &mut self.names {
            let want = name.want;
            // Upsert-only and shared ownership keep values that are not lbmanager's, so they
            // must know the current ones exactly (another tool may have changed them): read
            // afresh.
            name.read = want.cause.rereads()
                || options.policy == Policy::UpsertOnly
                || want.owned.is_some()
                || !cache.sets.contains_key(&want.fqdn);
        }
        let due: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i].read)
            .collect();
        // One name costs one call whatever the zone's size: its size only matters for more.
        if due.len() > 1 && cache.size.is_none_or(|(_, at)| at.elapsed() >= SIZE_FRESH) {
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
        if read_whole_zone(due.len(), cache.size.and_then(|(n, _)| n)) {
            match api.zone_record_sets(self.zone).await {
                Ok(sets) => {
                    cache.sets.clear();
                    for set in sets {
                        cache.sets.entry(set.name.clone()).or_default().push(set);
                    }
                    for &i in &due {
                        cache
                            .sets
                            .entry(self.names[i].want.fqdn.clone())
                            .or_default();
                    }
                }
                Err(e) => {
                    for &i in &due {
                        let name = &mut self.names[i];
                        name.result = gone_is_empty(name.want, e.clone());
                    }
                }
            }
        } else {
            for &i in &due {
                let name = &mut self.names[i];
                match api.record_sets(self.zone, &name.want.fqdn).await {
                    Ok(sets) => {
                        cache.sets.insert(name.want.fqdn.clone(), sets);
                    }
                    Err(e) => name.result = gone_is_empty(name.want, e),
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
        for (i, name) in self.names.iter_mut().enumerate() {
            if name.result.is_err() {
                continue;
            }
            let desire = name.want;
            let current = cache
                .sets
                .get(&desire.fqdn)
                .map(Vec::as_slice)
                .unwrap_or_default();
            name.ttl_before = current.iter().map(|s| s.ttl).max();
            let changes = plan_fqdn_values(
                &desire.fqdn,
                &desire.ips,
                current,
                options.route53_ttl,
                options.policy,
                desire.owned.as_ref(),
                name.checks.as_ref(),
            );
            if !changes.is_empty() {
                groups.push((i, changes));
            }
        }
        groups
    }

    /// Shared: records in etcd the values this sync is about to add, before it adds them.
    async fn claim(
        &mut self,
        recorder: &Recorder<'_>,
        groups: &[(usize, Vec<RecordChange>)],
    ) -> Result<(), AwsError> {
        let mut claims = Vec::new();
        for (i, changes) in groups {
            let name = &self.names[*i];
            if let Some(ours) = &name.owned {
                // Only what this sync adds: a wanted value already there is someone else's.
                let added = changes.iter().flat_map(|c| c.added.iter());
                for ip in added.filter(|ip| name.want.ips.contains(*ip) && !ours.contains(*ip)) {
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
            if let Some(ours) = self.names[i].owned.as_mut() {
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
        for chunk in pack_batches(groups) {
            let all: Vec<RecordChange> = chunk.iter().flat_map(|(_, c)| c.clone()).collect();
            match api.change(self.zone, &all).await {
                Ok(id) => {
                    for (i, changes) in &chunk {
                        self.names[*i].applied(cache, changes, &id, log);
                    }
                }
                Err(e) if chunk.len() > 1 && !e.is_retryable() => {
                    for (i, changes) in &chunk {
                        let name = &mut self.names[*i];
                        match api.change(self.zone, changes).await {
                            Ok(id) => name.applied(cache, changes, &id, log),
                            Err(e) => name.failed(cache, e),
                        }
                    }
                }
                Err(e) => {
                    for (i, _) in &chunk {
                        self.names[*i].failed(cache, e.clone());
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
        for (i, name) in self.names.iter().enumerate() {
            if let (Ok(()), Some(ours)) = (&name.result, name.owned.as_ref()) {
                // Out of the record set as it now stands (upsert-only keeps them: still ours).
                let present: BTreeSet<IpAddr> = cache
                    .sets
                    .get(&name.want.fqdn)
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s.values.iter())
                    .filter_map(|v| v.parse().ok())
                    .collect();
                for ip in ours.iter().filter(|ip| !present.contains(*ip)) {
                    if !name.want.ips.contains(ip) {
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
                    if let Some(ours) = self.names[i].owned.as_mut() {
                        ours.remove(&ip);
                    }
                }
            }
            Err(e) => {
                let e = self.etcd_error("forgetting ownership in etcd", e);
                for (i, _) in released {
                    self.names[i].result = Err(e.clone());
                }
            }
        }
    }

    /// The ownership records of values of the batch's FQDNs.
    fn owned_keys(&self, recorder: &Recorder<'_>, values: &[(usize, IpAddr)]) -> Vec<String> {
        values
            .iter()
            .map(|(i, ip)| {
                recorder
                    .layout
                    .owned(&self.names[*i].want.lb, &ip.to_string())
            })
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
        self.names
            .into_iter()
            .map(|name| FqdnResult {
                result: result(name.result),
                from_cache: false,
                sets: None,
                owned: name.owned,
                ttl_before: None,
                change: None,
                health: BTreeMap::new(),
                checks_waiting: false,
            })
            .collect()
    }

    /// One result per desire, in order, with the record sets as the zone now knows them.
    fn finish(self, cache: &ZoneCache) -> Vec<FqdnResult> {
        self.names
            .into_iter()
            .map(|name| FqdnResult {
                change: name.change,
                owned: name.owned,
                sets: name
                    .result
                    .is_ok()
                    .then(|| cache.sets.get(&name.want.fqdn).cloned())
                    .flatten(),
                result: name.result,
                from_cache: !name.read,
                ttl_before: name.ttl_before,
                health: name.health,
                checks_waiting: name.checks_waiting,
            })
            .collect()
    }
}

impl Name<'_> {
    /// Route53 accepted the name's `changes` as change `id`: the zone's cache holds them now.
    fn applied(&mut self, cache: &mut ZoneCache, changes: &[RecordChange], id: &str, log: &Logger) {
        applied(cache, &self.want.fqdn, changes);
        log_changes(log, self.want, changes, Some(id));
        self.change = (!id.is_empty()).then(|| id.to_string());
        self.changed = true;
    }

    /// The name's change (or a deletion of one of its checks) failed with `e`: read afresh
    /// before the retry.
    fn failed(&mut self, cache: &mut ZoneCache, e: AwsError) {
        forget(cache, self.want);
        self.result = Err(e);
    }
}

/// A change of `desire`'s name (or the deletion of one of its checks) failed: what the zone
/// knows of it is read again, and its checks are listed again before they are used (one deleted
/// by hand is named by no change again). The list is kept till then: the batch's other names
/// still delete by it.
fn forget(cache: &mut ZoneCache, desire: &FqdnWant) {
    cache.sets.remove(&desire.fqdn);
    if desire.check.is_some() || cache.checks.known.is_some() {
        cache.checks.stale = true;
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

    pub(super) fn wants(n: usize, cause: Cause) -> Vec<FqdnWant> {
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
    pub(super) fn setup() -> (SyncOptions, Logger) {
        let options = SyncOptions {
            policy: Policy::Sync,
            dry_run: false,
            route53_ttl: 60,
        };
        (options, Logger::root(slog::Discard, slog::o!()))
    }
}
