//! In-memory fakes of the AWS traits, for unit and actor tests: they keep state like AWS does,
//! count calls, can delay calls (to make overlaps observable) and fail on demand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{AwsError, ChangeId, ChangeState, ElbApi, ErrorKind, Permit, Route53Api};
use crate::health_check::{CheckSpec, HealthCheck};
use crate::key::Target;
use crate::plan::{Action, RecordChange, RecordSet, RecordType, Registered};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fake Classic ELB service.
#[derive(Default)]
pub struct FakeElb {
    lbs: Mutex<HashMap<(String, String), BTreeSet<String>>>,
    /// Every call made, as `Operation name [ids]`.
    pub calls: Mutex<Vec<String>>,
    /// Errors to return from the next calls, in order.
    pub fail_next: Mutex<Vec<ErrorKind>>,
    /// Panic on the next call, once.
    pub panic_next: Mutex<bool>,
    /// Panic on every call.
    pub panic_always: std::sync::atomic::AtomicBool,
    pub delay: Mutex<Duration>,
    /// How long a permit takes (AWS's quota spent by others).
    pub permit_delay: Mutex<Duration>,
    in_flight: AtomicUsize,
    /// The most calls that were ever in flight at once (across all load balancers).
    pub max_in_flight: AtomicUsize,
    /// Members reported as draining (target-group semantics), by load balancer.
    draining: Mutex<HashMap<(String, String), BTreeSet<String>>>,
    /// Members AWS refuses to register (terminated instances), as real AWS does: the whole call
    /// fails and registers nothing.
    pub invalid: Mutex<BTreeSet<String>>,
    /// Whether the refusal names the bad members (real AWS mostly does); `false` makes the caller
    /// bisect.
    pub name_invalid: Mutex<bool>,
    /// Health states reported for members (AWS's word, settling), by member.
    pub health: Mutex<HashMap<String, crate::plan::Health>>,
}

impl FakeElb {
    pub fn with_lbs(lbs: &[(&str, &str)]) -> Self {
        let fake = FakeElb::default();
        for (region, name) in lbs {
            fake.create(region, name);
        }
        fake
    }

    pub fn create(&self, region: &str, name: &str) {
        lock(&self.lbs).insert((region.into(), name.into()), BTreeSet::new());
    }

    pub fn instances(&self, region: &str, name: &str) -> Option<BTreeSet<String>> {
        lock(&self.lbs).get(&(region.into(), name.into())).cloned()
    }

    pub fn set_instances(&self, region: &str, name: &str, ids: &[&str]) {
        lock(&self.lbs).insert(
            (region.into(), name.into()),
            ids.iter().map(|s| s.to_string()).collect(),
        );
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Makes AWS refuse to register these members from now on (`named`: say which in the error).
    pub fn set_invalid(&self, ids: &[&str], named: bool) {
        *lock(&self.invalid) = ids.iter().map(|s| s.to_string()).collect();
        *lock(&self.name_invalid) = named;
    }

    /// Marks members as draining: reported apart from the registered ones until registered again.
    pub fn set_draining(&self, region: &str, name: &str, ids: &[&str]) {
        lock(&self.draining).insert(
            (region.into(), name.into()),
            ids.iter().map(|s| s.to_string()).collect(),
        );
    }

    /// Reports `member` in `state` from now on.
    pub fn set_health(&self, member: &str, state: &str) {
        lock(&self.health).insert(
            member.to_string(),
            crate::plan::Health {
                state: state.to_string(),
            },
        );
    }

    async fn enter(
        &self,
        op: &'static str,
        target: String,
        detail: String,
    ) -> Result<(), AwsError> {
        lock(&self.calls).push(format!("{op} {target}{detail}"));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = *lock(&self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if std::mem::take(&mut *lock(&self.panic_next)) || self.panic_always.load(Ordering::SeqCst)
        {
            panic!("injected panic in {op} on {target}");
        }
        let mut fails = lock(&self.fail_next);
        if !fails.is_empty() {
            let kind = fails.remove(0);
            return Err(AwsError::new(kind, op, target, "injected fault"));
        }
        Ok(())
    }

    fn update(
        &self,
        op: &'static str,
        region: &str,
        name: &str,
        f: impl FnOnce(&mut BTreeSet<String>),
    ) -> Result<(), AwsError> {
        let mut lbs = lock(&self.lbs);
        let set = lbs
            .get_mut(&(region.to_string(), name.to_string()))
            .ok_or_else(|| {
                AwsError::not_found(op, format!("elb/{region}/{name}"), "LoadBalancerNotFound")
            })?;
        f(set);
        Ok(())
    }
}

#[async_trait]
impl ElbApi for FakeElb {
    async fn members(&self, region: &str, name: &str) -> Result<Registered, AwsError> {
        let target = format!("elb/{region}/{name}");
        self.enter("DescribeLoadBalancers", target.clone(), String::new())
            .await?;
        let members = self.instances(region, name).ok_or_else(|| {
            AwsError::not_found("DescribeLoadBalancers", target, "LoadBalancerNotFound")
        })?;
        let draining = lock(&self.draining)
            .get(&(region.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_default();
        // The fake keeps members as the key grammar spells them; the trait carries them typed.
        let typed = |set: &BTreeSet<String>| -> BTreeSet<Target> {
            set.iter()
                .filter_map(|s| crate::key::parse_target(s).ok())
                .collect()
        };
        let mut health: BTreeMap<Target, crate::plan::Health> = lock(&self.health)
            .iter()
            .filter(|(m, _)| members.contains(*m))
            .filter_map(|(m, h)| Some((crate::key::parse_target(m).ok()?, h.clone())))
            .collect();
        for t in typed(&draining) {
            health.insert(
                t,
                crate::plan::Health {
                    state: crate::status::DRAINING.into(),
                },
            );
        }
        Ok(Registered {
            members: typed(&members.difference(&draining).cloned().collect()),
            draining: typed(&draining),
            health,
            ..Registered::default()
        })
    }

    async fn permit(&self, _region: &str, _name: &str) -> Permit {
        let delay = *lock(&self.permit_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Permit::granted()
    }

    async fn register(
        &self,
        region: &str,
        name: &str,
        ids: &[Target],
        _paid: Permit,
    ) -> Result<(), AwsError> {
        let ids: Vec<String> = ids.iter().map(Target::to_string).collect();
        let op = "RegisterInstancesWithLoadBalancer";
        self.enter(op, format!("elb/{region}/{name}"), format!(" {ids:?}"))
            .await?;
        let bad: Vec<&String> = {
            let invalid = lock(&self.invalid);
            ids.iter().filter(|id| invalid.contains(*id)).collect()
        };
        if !bad.is_empty() {
            let message = if *lock(&self.name_invalid) {
                format!(
                    "InvalidInstance: EC2 instance {} is not in running state",
                    bad[0]
                )
            } else {
                "InvalidInstance: some instances are not in running state".to_string()
            };
            return Err(AwsError::new(
                ErrorKind::InvalidMember,
                op,
                format!("elb/{region}/{name}"),
                message,
            ));
        }
        if let Some(d) = lock(&self.draining).get_mut(&(region.to_string(), name.to_string())) {
            for id in &ids {
                d.remove(id);
            }
        }
        self.update(op, region, name, |set| set.extend(ids.iter().cloned()))
    }

    async fn deregister(
        &self,
        region: &str,
        name: &str,
        ids: &[Target],
        _paid: Permit,
    ) -> Result<(), AwsError> {
        let ids: Vec<String> = ids.iter().map(Target::to_string).collect();
        let op = "DeregisterInstancesFromLoadBalancer";
        self.enter(op, format!("elb/{region}/{name}"), format!(" {ids:?}"))
            .await?;
        self.update(op, region, name, |set| {
            for id in &ids {
                set.remove(id);
            }
        })
    }
}

/// The record sets of one zone by name, type and set identifier.
type ZoneRecords = BTreeMap<(String, RecordType, Option<String>), RecordSet>;

fn record_key(set: &RecordSet) -> (String, RecordType, Option<String>) {
    (set.name.clone(), set.rtype, set.set_id.clone())
}

/// A fake Route53 that, like the real one, rejects a DELETE that does not match exactly and a
/// CREATE of a record set that exists, and that records any overlap of two calls on one zone.
#[derive(Default)]
pub struct FakeRoute53 {
    zones: Mutex<HashMap<String, ZoneRecords>>,
    in_flight: Mutex<HashMap<String, usize>>,
    /// How many times two calls on one zone overlapped (must stay 0).
    pub overlaps: AtomicUsize,
    /// Every call made, as `Operation zone detail`.
    pub calls: Mutex<Vec<String>>,
    pub fail_next: Mutex<Vec<ErrorKind>>,
    pub delay: Mutex<Duration>,
    /// Panic on the next call (after its delay), once.
    pub panic_next: Mutex<bool>,
    /// How many GetChange polls answer `PENDING` for each change made from now on (as Route53,
    /// which takes seconds to put a change on every name server; 0: `INSYNC` at the first poll).
    pub pending_polls: Mutex<u32>,
    /// Record sets of other types and owners the zones hold besides those the fake keeps (a
    /// zone of 12,000 record sets without keeping them): counted by GetHostedZone and in the
    /// pages of a whole-zone read.
    pub foreign_sets: std::sync::atomic::AtomicU64,
    /// Faults for the next GetChange polls (apart from `fail_next`, which the zone's reads and
    /// changes take).
    pub fail_polls: Mutex<Vec<ErrorKind>>,
    /// While set, every change stays `PENDING` (a Route53 slow to propagate).
    pub hold: std::sync::atomic::AtomicBool,
    /// The changes made (each its own id, as Route53 gives): how many polls each still answers
    /// `PENDING`.
    changes: Mutex<BTreeMap<String, u32>>,
    /// The account's health checks by id, and the references of those deleted (Route53 refuses
    /// them for good).
    pub checks: Mutex<BTreeMap<String, HealthCheck>>,
    /// Each check's tags (kept apart from `calls`: they change nothing lbmanager reads).
    pub tags: Mutex<HashMap<String, Vec<(String, String)>>>,
    deleted_references: Mutex<std::collections::HashSet<String>>,
    /// The account's most health checks (Route53's default: 200); 0: no limit.
    pub max_checks: AtomicUsize,
    /// What GetHealthCheckStatus says of an IP's check (`healthy` when not set).
    pub health: Mutex<HashMap<std::net::IpAddr, String>>,
    /// The next CreateHealthCheck makes its check and then fails (its answer lost).
    pub lose_next_create: std::sync::atomic::AtomicBool,
}

impl FakeRoute53 {
    /// The ids of the changes made, in order, and whether each is `INSYNC` by now.
    pub fn changes(&self) -> Vec<(String, bool)> {
        lock(&self.changes)
            .iter()
            .map(|(id, left)| (id.clone(), *left == 0 && !self.held()))
            .collect()
    }

    /// A change made by someone else (an earlier leader), `PENDING` for `polls` polls.
    pub fn made_elsewhere(&self, id: &str, polls: u32) {
        lock(&self.changes).insert(id.to_string(), polls);
    }

    fn held(&self) -> bool {
        self.hold.load(Ordering::SeqCst)
    }

    pub fn with_zones(zones: &[&str]) -> Self {
        let fake = FakeRoute53::default();
        for z in zones {
            lock(&fake.zones).insert(z.to_string(), BTreeMap::new());
        }
        fake
    }

    /// The simple record set of that name and type, if any.
    pub fn record(&self, zone: &str, name: &str, rtype: RecordType) -> Option<RecordSet> {
        lock(&self.zones)
            .get(zone)?
            .get(&(name.to_string(), rtype, None))
            .cloned()
    }

    /// The multivalue answer record sets of that name.
    pub fn multivalue(&self, zone: &str, name: &str) -> Vec<RecordSet> {
        let zones = lock(&self.zones);
        let sets = zones.get(zone).into_iter().flat_map(|z| z.values());
        sets.filter(|s| s.name == name && s.set_id.is_some())
            .cloned()
            .collect()
    }

    pub fn put_record(&self, zone: &str, set: RecordSet) {
        lock(&self.zones)
            .entry(zone.to_string())
            .or_default()
            .insert(record_key(&set), set);
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Every record set of `zone`, as a List would answer.
    fn zone_sets(&self, zone: &str) -> Result<Vec<RecordSet>, AwsError> {
        let zones = lock(&self.zones);
        let records = zones.get(zone).ok_or_else(|| {
            AwsError::not_found("ListResourceRecordSets", zone, "NoSuchHostedZone")
        })?;
        Ok(records.values().cloned().collect())
    }

    /// A call on `zone` (or, `None`, on the account's health checks, which belong to no zone):
    /// recorded, delayed, and failed or panicking as the test asked. Calls on one zone that
    /// overlap are counted (a zone's actor makes them one at a time).
    async fn enter(
        &self,
        op: &'static str,
        zone: Option<&str>,
        detail: String,
    ) -> Result<(), AwsError> {
        let scope = zone.unwrap_or("account");
        lock(&self.calls).push(format!("{op} {scope} {detail}"));
        if let Some(zone) = zone {
            let mut in_flight = lock(&self.in_flight);
            let n = in_flight.entry(zone.to_string()).or_default();
            if *n > 0 {
                self.overlaps.fetch_add(1, Ordering::SeqCst);
            }
            *n += 1;
        }
        let delay = *lock(&self.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(zone) = zone {
            *lock(&self.in_flight).entry(zone.to_string()).or_default() -= 1;
        }
        let zone = scope;
        if std::mem::take(&mut *lock(&self.panic_next)) {
            panic!("injected panic in {op} on {zone}");
        }
        let mut fails = lock(&self.fail_next);
        if !fails.is_empty() {
            let kind = fails.remove(0);
            return Err(AwsError::new(kind, op, zone, "injected fault"));
        }
        Ok(())
    }
}

#[async_trait]
impl Route53Api for FakeRoute53 {
    async fn record_sets(&self, zone: &str, fqdn: &str) -> Result<Vec<RecordSet>, AwsError> {
        self.enter("ListResourceRecordSets", Some(zone), fqdn.to_string())
            .await?;
        let mut sets = self.zone_sets(zone)?;
        sets.retain(|s| s.name == fqdn);
        Ok(sets)
    }

    async fn zone_record_sets(&self, zone: &str) -> Result<Vec<RecordSet>, AwsError> {
        // One call per page of 300, as Route53 answers.
        let sets = self.zone_sets(zone)?.len() as u64;
        let pages = (sets + self.foreign_sets.load(Ordering::SeqCst))
            .div_ceil(300)
            .max(1);
        for page in 1..=pages {
            self.enter(
                "ListResourceRecordSets",
                Some(zone),
                format!("(zone, page {page})"),
            )
            .await?;
        }
        self.zone_sets(zone)
    }

    async fn zone_size(&self, zone: &str) -> Result<u64, AwsError> {
        lock(&self.calls).push(format!("GetHostedZone {zone}"));
        let sets = self.zone_sets(zone)?.len() as u64;
        Ok(sets + self.foreign_sets.load(Ordering::SeqCst))
    }

    async fn change_state(&self, zone: &str, id: &str) -> Result<ChangeState, AwsError> {
        lock(&self.calls).push(format!("GetChange {zone} {id}"));
        let mut fails = lock(&self.fail_polls);
        if !fails.is_empty() {
            let kind = fails.remove(0);
            return Err(AwsError::new(kind, "GetChange", zone, "injected fault"));
        }
        let mut changes = lock(&self.changes);
        let Some(left) = changes.get_mut(id) else {
            return Err(AwsError::not_found(
                "GetChange",
                zone,
                format!("NoSuchChange: {id}"),
            ));
        };
        if self.held() {
            return Ok(ChangeState::Pending);
        }
        if *left > 0 {
            *left -= 1;
            return Ok(ChangeState::Pending);
        }
        Ok(ChangeState::InSync)
    }

    async fn change(&self, zone: &str, changes: &[RecordChange]) -> Result<ChangeId, AwsError> {
        let detail = changes
            .iter()
            .map(|c| format!("{}:{}:{}", c.action.as_str(), c.set.name, c.set.rtype))
            .collect::<Vec<_>>()
            .join(",");
        self.enter("ChangeResourceRecordSets", Some(zone), detail)
            .await?;
        let mut zones = lock(&self.zones);
        let invalid =
            |msg: String| AwsError::new(ErrorKind::Rejected, "ChangeResourceRecordSets", zone, msg);
        let records = zones.get_mut(zone).ok_or_else(|| {
            AwsError::not_found("ChangeResourceRecordSets", zone, "NoSuchHostedZone")
        })?;
        // A record set naming a check Route53 does not have is refused.
        for c in changes {
            let named = c
                .set
                .health_check
                .as_ref()
                .filter(|_| c.action != Action::Delete);
            if let Some(id) = named.filter(|id| !lock(&self.checks).contains_key(*id)) {
                return Err(AwsError::not_found(
                    "ChangeResourceRecordSets",
                    zone,
                    format!("NoSuchHealthCheck: {id}"),
                ));
            }
        }
        // All or nothing: applied to a copy, kept only if every change and the end state are
        // valid (Route53 refuses a simple record set beside multivalue answers of its name and
        // type).
        let mut after = records.clone();
        for c in changes {
            let key = record_key(&c.set);
            match c.action {
                Action::Create if after.contains_key(&key) => {
                    return Err(invalid(format!("{} exists", c.set.name)))
                }
                Action::Delete if after.get(&key) != Some(&c.set) => {
                    return Err(invalid(format!("{} does not match", c.set.name)))
                }
                Action::Create | Action::Upsert => {
                    after.insert(key, c.set.clone());
                }
                Action::Delete => {
                    after.remove(&key);
                }
            }
        }
        for c in changes {
            let mixed = after
                .values()
                .filter(|s| s.name == c.set.name && s.rtype == c.set.rtype)
                .map(|s| s.set_id.is_some())
                .collect::<std::collections::BTreeSet<bool>>();
            if mixed.len() > 1 {
                return Err(invalid(format!(
                    "{} would have simple and multivalue record sets",
                    c.set.name
                )));
            }
        }
        *records = after;
        let mut made = lock(&self.changes);
        // Zero-padded: the ids sort in the order the changes were made.
        let id = format!("/change/CFAKE{:08}", made.len() + 1);
        made.insert(id.clone(), *lock(&self.pending_polls));
        Ok(id)
    }

    async fn health_checks(&self, prefix: &str) -> Result<Vec<HealthCheck>, AwsError> {
        self.enter("ListHealthChecks", None, prefix.to_string())
            .await?;
        let checks = lock(&self.checks);
        Ok(checks
            .values()
            .filter(|c| c.reference.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn create_health_check(
        &self,
        reference: &str,
        fqdn: &str,
        ip: std::net::IpAddr,
        spec: &CheckSpec,
    ) -> Result<String, AwsError> {
        self.enter("CreateHealthCheck", None, format!("{fqdn} {ip} {spec}"))
            .await?;
        let refused = |code: &str| {
            AwsError::new(
                ErrorKind::Rejected,
                "CreateHealthCheck",
                fqdn,
                format!("HTTP 400, {code}"),
            )
        };
        let mut checks = lock(&self.checks);
        // Route53's rules for a reference seen before.
        if lock(&self.deleted_references).contains(reference) {
            return Err(refused("HealthCheckAlreadyExists"));
        }
        if let Some(c) = checks.values().find(|c| c.reference == reference) {
            if c.is(fqdn, &ip, spec) {
                return Ok(c.id.clone());
            }
            return Err(refused("HealthCheckAlreadyExists"));
        }
        let max = self.max_checks.load(Ordering::SeqCst);
        if max > 0 && checks.len() >= max {
            return Err(refused("TooManyHealthChecks"));
        }
        let id = format!(
            "hc-{:06}",
            checks.len() + lock(&self.deleted_references).len() + 1
        );
        checks.insert(
            id.clone(),
            HealthCheck {
                id: id.clone(),
                reference: reference.to_string(),
                ip,
                fqdn: fqdn.to_string(),
                spec: spec.clone(),
            },
        );
        if self.lose_next_create.swap(false, Ordering::SeqCst) {
            return Err(AwsError::new(
                ErrorKind::Transient,
                "CreateHealthCheck",
                fqdn,
                "injected: the answer was lost",
            ));
        }
        Ok(id)
    }

    async fn tag_health_check(
        &self,
        id: &str,
        tags: &[(&'static str, String)],
    ) -> Result<(), AwsError> {
        let tags = tags.iter().map(|(k, v)| (k.to_string(), v.clone()));
        lock(&self.tags)
            .entry(id.to_string())
            .or_default()
            .extend(tags);
        Ok(())
    }

    async fn delete_health_check(&self, id: &str) -> Result<(), AwsError> {
        self.enter("DeleteHealthCheck", None, id.to_string())
            .await?;
        if let Some(c) = lock(&self.checks).remove(id) {
            lock(&self.deleted_references).insert(c.reference);
        }
        Ok(())
    }

    async fn health_check_status(&self, id: &str) -> Result<String, AwsError> {
        lock(&self.calls).push(format!("GetHealthCheckStatus account {id}"));
        let ip = lock(&self.checks)
            .get(id)
            .map(|c| c.ip)
            .ok_or_else(|| AwsError::not_found("GetHealthCheckStatus", id, "NoSuchHealthCheck"))?;
        Ok(lock(&self.health)
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| "healthy".into()))
    }
}
