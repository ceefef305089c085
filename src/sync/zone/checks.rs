//! `--route53-health-check`: the zone's side of its names' health checks, beside the record-set
//! sync of [`super`]. A zone lists lbmanager's checks (by their reference's prefix), makes the
//! missing ones before any record set names them, deletes those no record set uses once the
//! change that stopped using them is `INSYNC` (and, at a start, those no name of lbmanager's
//! uses), and reads the health Route53's checkers report. What it knows of them is its
//! [`CheckCache`].

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use slog::{info, warn, Logger};

use super::{esc, FqdnWant, ZoneCache, ZoneRun};
use crate::aws::Route53Api;
use crate::health_check::{CheckSpec, HealthCheck};
use crate::sync::{Checks, SyncOptions};
use std::collections::HashMap;
use std::net::IpAddr;

/// How old a check no record set uses must be before a start deletes it (see
/// [`ZoneRun::drop_strays`]).
const STRAY_AGE: Duration = Duration::from_secs(600);

/// What a zone knows of its health checks between syncs.
#[derive(Debug, Default)]
pub struct CheckCache {
    /// The zone's checks (None: not listed yet, or the list failed).
    pub known: Option<Vec<HealthCheck>>,
    /// The start of its checks' `CallerReference` (see [`crate::health_check::Reference`]).
    pub reference_prefix: String,
    /// The reference of each creation under way (kept for its retries, so a creation whose
    /// answer was lost makes no second check).
    pub creating: HashMap<(String, IpAddr, CheckSpec), String>,
    /// The last nonce given to a reference: each is new.
    pub nonce: u64,
    /// Values whose check Route53 refused to make (said once).
    pub refused: HashSet<(String, IpAddr)>,
    /// A change or a deletion failed since the checks were listed: listed again before use.
    pub stale: bool,
}

impl CheckCache {
    /// The cache of a zone whose checks' references start with `reference_prefix`.
    pub fn new(reference_prefix: String) -> Self {
        CheckCache {
            reference_prefix,
            ..CheckCache::default()
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

impl ZoneRun<'_> {
    /// `--route53-health-check`: lists the zone's checks at a start (whatever its names: another
    /// leader may have left some to delete), and after that when they matter and are not known,
    /// are stale, or on a resync (which catches a check deleted by hand): when a name of the batch
    /// is in a scope, or has lbmanager's multivalue answers with checks (left by a run with the
    /// flag, to be switched back). Past its start, a zone with neither makes no health-check call.
    pub(super) async fn list_checks(
        &mut self,
        api: &dyn Route53Api,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        let with_checks = |want: &FqdnWant| {
            want.check.is_some()
                || cache
                    .sets
                    .get(&want.fqdn)
                    .is_some_and(|sets| sets.iter().any(|s| s.health_check.is_some()))
        };
        let needed: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i].result.is_ok() && with_checks(self.names[i].want))
            .collect();
        // At a start the zone's checks are listed whatever its names: an earlier run (another
        // leader) may have left some waiting to be deleted.
        let start = self.names.iter().any(|n| n.want.cause.is_start());
        let full = start || needed.iter().any(|&i| self.names[i].want.cause.is_full());
        if needed.is_empty() && !start {
            return;
        }
        if cache.checks.known.is_some() && !full && !cache.checks.stale {
            return;
        }
        match api.health_checks(&cache.checks.reference_prefix).await {
            Ok(checks) => {
                cache.checks.known = Some(checks);
                cache.checks.stale = false;
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
                cache.checks.known = None;
                for i in needed {
                    self.names[i].result = Err(e.clone());
                }
            }
        }
    }

    /// Makes the checks missing for the values of the names in a scope, before any record set
    /// names them. A value whose check Route53 refuses (`TooManyHealthChecks` past the account's
    /// limit, say) is said once and published without one (Route53 then takes it for healthy);
    /// a failure retrying can fix fails the name's sync (retried).
    pub(super) async fn make_checks(
        &mut self,
        api: &dyn Route53Api,
        options: &SyncOptions,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        for i in 0..self.names.len() {
            let desire = self.names[i].want;
            let (Some(spec), Ok(()), Some(_)) =
                (&desire.check, &self.names[i].result, &cache.checks.known)
            else {
                continue;
            };
            let current = cache.sets.get(&desire.fqdn).cloned().unwrap_or_default();
            let in_use: HashSet<&str> = current
                .iter()
                .filter_map(|s| s.health_check.as_deref())
                .collect();
            let full = desire.cause.is_full();
            let mut checks = Checks::new();
            for ip in crate::plan::multivalue_values(&desire.ips, &current, options.policy) {
                // The check a record set names already, if there are two (no needless UPSERT).
                let mut known: Vec<&HealthCheck> = cache
                    .checks
                    .known
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
                if !full && cache.checks.refused.contains(&(desire.fqdn.clone(), ip)) {
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
                let mut reference = match cache.checks.creating.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let r = cache.checks.reference();
                        cache.checks.creating.insert(key.clone(), r.clone());
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
                    reference = cache.checks.reference();
                    cache.checks.creating.insert(key.clone(), reference.clone());
                    made = api
                        .create_health_check(&reference, &desire.fqdn, ip, spec)
                        .await;
                }
                match made {
                    Ok(id) => {
                        info!(log, "created health check"; "lb" => desire.lb.to_string(),
                            "value" => %ip, "check" => %spec, "health_check" => esc(&id),
                            "cause" => %desire.cause);
                        let tags = crate::health_check::tags(&reference, &desire.fqdn, &ip);
                        if let Err(e) = api.tag_health_check(&id, &tags).await {
                            warn!(log, "could not tag a health check; it is used all the same \
                                (its reference says whose it is)";
                                "health_check" => esc(&id), "error" => %e);
                        }
                        cache.checks.creating.remove(&key);
                        cache.checks.refused.remove(&(desire.fqdn.clone(), ip));
                        if let Some(list) = cache.checks.known.as_mut() {
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
                        self.names[i].result = Err(e);
                        break;
                    }
                    Err(e) => {
                        // This reference is spent (Route53 keeps refusing it): the next try
                        // makes a new one.
                        cache.checks.creating.remove(&key);
                        if cache.checks.refused.insert((desire.fqdn.clone(), ip)) {
                            warn!(log, "Route53 refused to make a value's health check; the value \
                                is published without one (answered as healthy) and the check is \
                                asked for again at each resync (README, Limits)";
                                "lb" => desire.lb.to_string(), "value" => %ip, "error" => %e);
                        }
                        checks.insert(ip, None);
                    }
                }
            }
            self.names[i].checks = Some(checks);
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
    pub(super) async fn drop_checks(
        &mut self,
        api: &dyn Route53Api,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        for i in 0..self.names.len() {
            let desire = self.names[i].want;
            let Some(known) = cache.checks.known.as_ref() else {
                return;
            };
            if self.names[i].result.is_err() {
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
            if desire.dns_busy || self.names[i].changed {
                self.names[i].checks_waiting = true;
                continue;
            }
            for check in unused {
                match api.delete_health_check(&check.id).await {
                    Ok(()) => {
                        info!(log, "deleted health check no record set uses";
                            "lb" => desire.lb.to_string(), "value" => %check.ip,
                            "check" => esc(&check.spec.to_string()), "health_check" => esc(&check.id),
                            "cause" => %desire.cause);
                        if let Some(list) = cache.checks.known.as_mut() {
                            list.retain(|c| c.id != check.id);
                        }
                    }
                    Err(e) => {
                        // Read afresh before the retry (which then backs off).
                        self.names[i].failed(cache, e);
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
    pub(super) async fn drop_strays(
        &mut self,
        api: &dyn Route53Api,
        cache: &mut ZoneCache,
        log: &Logger,
    ) {
        if !self.strays {
            return;
        }
        let ours: HashSet<&str> = self.names.iter().map(|n| n.want.fqdn.as_str()).collect();
        let names: BTreeSet<String> = cache
            .checks
            .known
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
                .known
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
                        if let Some(list) = cache.checks.known.as_mut() {
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
    pub(super) async fn read_health(
        &mut self,
        api: &dyn Route53Api,
        cache: &ZoneCache,
        log: &Logger,
    ) {
        for i in 0..self.names.len() {
            let desire = self.names[i].want;
            if !desire.cause.reads_health()
                || desire.check.is_none()
                || self.names[i].result.is_err()
            {
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
                        self.names[i].health.insert(ip, state);
                    }
                    Err(e) => {
                        slog::debug!(log, "could not read a health check's status";
                            "health_check" => esc(id), "error" => %e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{setup, wants};
    use super::super::*;
    use crate::aws::fake::FakeRoute53;
    use crate::health_check::HealthCheck;
    use crate::plan::RecordType;
    use std::sync::atomic::Ordering;

    /// The check of a `--route53-health-check` rule.
    fn spec(rule: &str) -> CheckSpec {
        crate::health_check::parse_rule(rule).unwrap().spec
    }

    /// The health a sync read of the value `ip`.
    fn health<'a>(r: &'a FqdnResult, ip: &str) -> Option<&'a str> {
        r.health.get(&ip.parse().unwrap()).map(String::as_str)
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
        let r53 = FakeRoute53::with_zones(&["Z1"]);
        let (options, log) = setup();
        let spec = spec("route53/Z1/*=HTTP:80/health");
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
            assert_eq!(check.fqdn, "www.example.com");
            assert_eq!(check.spec, spec);
            assert!(check.reference.starts_with(&prefix) && check.reference.len() <= 64);
        }
        let a = |name: &str| r53.record("Z1", name, RecordType::A);
        assert!(a("www.example.com").is_none());
        assert!(a("plain.example.com").is_some());
        assert!(r53.multivalue("Z1", "plain.example.com").is_empty());
        // Check made before the record set that names it.
        let calls = r53.calls();
        let at = |op: &str| calls.iter().position(|c| c.starts_with(op)).unwrap();
        assert!(at("CreateHealthCheck") < at("ChangeResource"), "{calls:?}");

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
        assert_eq!(health(&r[0], two[0]), Some("healthy"));

        // The value added again, the creation's answer lost: retried with the same reference,
        // Route53 answers with the check it made; one check, a new one (its old reference is
        // spent).
        r53.lose_next_create.store(true, Ordering::SeqCst);
        let again = checked(&two, Cause::EtcdEvent, Some(&spec));
        let r = sync_zone(&r53, "Z1", &again, &options, &mut cache, &log, None).await;
        // The lost answer fails the sync (retried).
        assert!(r[0].result.is_err(), "{:?} {r:?}", r53.calls());
        let r = sync_zone(&r53, "Z1", &again, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok(), "{r:?}");
        assert_eq!(ids(&r53).len(), 2, "{:?}", ids(&r53));
        assert_eq!(r53.multivalue("Z1", "www.example.com").len(), 2);

        // Health as Route53's checkers report it, read at a resync.
        let ip = two[1].parse().unwrap();
        r53.health.lock().unwrap().insert(ip, "unhealthy".into());
        let resync = checked(&two, Cause::Resync, Some(&spec));
        let r = sync_zone(&r53, "Z1", &resync, &options, &mut cache, &log, None).await;
        assert_eq!(health(&r[0], two[1]), Some("unhealthy"));

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
        let simple = a("www.example.com").unwrap();
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
        let spec = spec("route53/*/*=TCP:443");
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
        let spec = spec("route53/*/*=TCP:443");
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
                rtype: RecordType::A,
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
        let spec = spec("route53/*/*=TCP:443");
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
        let values = vec!["192.0.2.1".into()];
        r53.put_record(
            "Z1",
            RecordSet::simple("www.example.com", RecordType::A, 60, values),
        );
        let mut cache = ZoneCache::new(prefix.into());
        let mut start = checked(&["192.0.2.1"], Cause::Startup, None);
        start[0].dns_busy = true;
        let r = sync_zone(&r53, "Z1", &start, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok() && r[0].checks_waiting, "{r:?}");
        let left = ids(&r53);
        assert_eq!(left.len(), 1, "not while the previous change is PENDING");
        let settle = checked(&["192.0.2.1"], Cause::Settle, None);
        let r = sync_zone(&r53, "Z1", &settle, &options, &mut cache, &log, None).await;
        assert!(r[0].result.is_ok() && !r[0].checks_waiting, "{r:?}");
        assert!(ids(&r53).is_empty());
    }
}
