//! The actor system against the in-memory fakes: ordering, coalescing, concurrency, per-zone
//! serialisation, retries and restarts. The Supervisor is fed etcd changes directly.
//!
//! Every test runs on tokio's paused clock: timers (retries, resyncs, restarts, the fakes'
//! delays) fire as soon as nothing else can run, so the tests take no real time and their call
//! counts are exact. The actors read tokio's clock (`tokio::time::Instant`), which is the real one
//! outside these tests.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix::prelude::*;

use super::etcd_watcher::{EtcdChanges, KeyChange, WatchEvent};
use super::supervisor::{ManagedCount, Supervisor, ZoneCount};
use super::Settings;
use crate::aws::fake::{FakeElb, FakeRoute53};
use crate::aws::ErrorKind;
use crate::etcd::fake::FakeEtcd;
use crate::etcd::Snapshot;
use crate::plan::RecordType;

/// The member key of www.example.com (in zone Z1) with the value 192.0.2.1.
const WWW: &str = "/lbManager/route53/us-east-1/Z1/www.example.com/multiple/192.0.2.1";
/// Where www.example.com's status is written.
const WWW_STATUS: &str = "/lbmanager-state/lbManager/status/route53/Z1/www.example.com";
const A: &str = "/lbManager/elb/us-east-1/a/multiple/i-0000000a";
const B: &str = "/lbManager/elb/us-east-1/b/multiple/i-0000000b";
/// A member of target group tg, and the key `member add --healthy` writes while it waits.
const TG: &str = "/lbManager/elbv2/us-east-1/tg/multiple/i-00000001:80";
const TG_WAITING: &str = "/lbManager/_waiting/elbv2/us-east-1/tg/i-00000001:80";

/// The member key of instance `i-{n:08x}` of classic load balancer `lb` (us-east-1).
fn elb_key(lb: &str, n: u32) -> String {
    format!("/lbManager/elb/us-east-1/{lb}/multiple/i-{n:08x}")
}

/// The test settings, as `change` leaves them.
fn settings_with(change: impl FnOnce(&mut Settings)) -> Arc<Settings> {
    let mut settings = Settings {
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        resync_interval: Duration::from_secs(3600),
        ..Settings::default()
    };
    change(&mut settings);
    Arc::new(settings)
}

fn settings() -> Arc<Settings> {
    settings_with(|_| {})
}

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// A Supervisor (not started yet) whose etcd writes go to `etcd`, on `keys` read at revision
/// 100.
fn supervisor(
    etcd: &Arc<FakeEtcd>,
    settings: &Arc<Settings>,
    elb: &Arc<FakeElb>,
    r53: &Arc<FakeRoute53>,
    keys: &[(&str, i64)],
) -> Supervisor {
    let keys: Vec<(String, i64)> = keys.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    let snapshot = Snapshot::from_keys(settings.prefix(), settings.filters.clone(), &keys, 100);
    let aws = crate::aws::Backends {
        elb: elb.clone(),
        elbv2: elb.clone(),
        route53: r53.clone(),
    };
    Supervisor::new(settings.clone(), &log(), etcd.clone(), aws, snapshot)
}

fn start_on(
    etcd: &Arc<FakeEtcd>,
    settings: &Arc<Settings>,
    elb: &Arc<FakeElb>,
    r53: &Arc<FakeRoute53>,
    keys: &[(&str, i64)],
) -> Addr<Supervisor> {
    supervisor(etcd, settings, elb, r53, keys).start()
}

/// A fake the test does not look at.
fn ignored<T: Default>() -> Arc<T> {
    Arc::default()
}

/// Starts a Supervisor with the test settings, its etcd writes dropped.
fn start(elb: &Arc<FakeElb>, r53: &Arc<FakeRoute53>, keys: &[(&str, i64)]) -> Addr<Supervisor> {
    start_on(&ignored(), &settings(), elb, r53, keys)
}

fn put(key: &str, revision: i64) -> WatchEvent {
    WatchEvent::Changes(EtcdChanges {
        changes: vec![KeyChange::Put {
            key: key.into(),
            revision,
        }],
        revision,
    })
}

fn del(key: &str, revision: i64) -> WatchEvent {
    WatchEvent::Changes(EtcdChanges {
        changes: vec![KeyChange::Delete {
            key: key.into(),
            leased: false,
            revision,
        }],
        revision,
    })
}

/// Polls `cond` every 10 ms until it holds; panics after 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asks the Supervisor `ask()` every 10 ms until it answers 0; panics after 10 s.
async fn until_none<M>(sup: &Addr<Supervisor>, ask: impl Fn() -> M, what: &str)
where
    M: Message<Result = usize> + Send + 'static,
    Supervisor: Handler<M>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while sup.send(ask()).await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fake ELB API with these (empty) load balancers in us-east-1.
fn elbs(names: &[&str]) -> Arc<FakeElb> {
    let lbs: Vec<(&str, &str)> = names.iter().map(|n| ("us-east-1", *n)).collect();
    Arc::new(FakeElb::with_lbs(&lbs))
}

fn ids(list: &[&str]) -> Option<std::collections::BTreeSet<String>> {
    Some(list.iter().map(|s| s.to_string()).collect())
}

/// Whether load balancer `lb` (us-east-1) has exactly `members`.
fn has(elb: &FakeElb, lb: &str, members: &[&str]) -> bool {
    elb.instances("us-east-1", lb) == ids(members)
}

/// Waits until load balancer `lb` (us-east-1) has exactly `members`.
async fn until_members(elb: &FakeElb, lb: &str, members: &[&str]) {
    eventually(&format!("{lb} has {members:?}"), || has(elb, lb, members)).await
}

/// How many members load balancer `lb` (us-east-1) has.
fn members(elb: &FakeElb, lb: &str) -> usize {
    elb.instances("us-east-1", lb).map_or(0, |s| s.len())
}

/// How many of `calls` are `op` calls.
fn count(calls: &[String], op: &str) -> usize {
    calls.iter().filter(|c| c.starts_with(op)).count()
}

fn describes(elb: &FakeElb) -> usize {
    count(&elb.calls(), "Describe")
}

fn registers(elb: &FakeElb) -> usize {
    count(&elb.calls(), "Register")
}

/// The values of www.example.com's A record set in Z1.
fn www_a(r53: &FakeRoute53) -> Option<Vec<String>> {
    r53.record("Z1", "www.example.com", RecordType::A)
        .map(|s| s.values)
}

fn www() -> crate::key::LbId {
    "route53/Z1/www.example.com".parse().unwrap()
}

/// Sets www.example.com's A record set in Z1 by hand, behind the zone actor's back.
fn set_a_by_hand(r53: &FakeRoute53, values: &[&str]) {
    r53.put_record(
        "Z1",
        crate::plan::RecordSet {
            name: "www.example.com".into(),
            rtype: RecordType::A,
            ttl: 60,
            values: values.iter().map(|v| v.to_string()).collect(),
            set_id: None,
            health_check: None,
        },
    );
}

/// The status of `key` as it last landed in etcd.
fn landed_status(etcd: &FakeEtcd, key: &str) -> Option<crate::status::LbStatus> {
    let landed = etcd.landed.lock().unwrap();
    let (_, last) = landed.iter().rev().find(|(k, _)| k == key)?;
    serde_json::from_str(last).ok()
}

/// The status the Supervisor published for a load balancer (through the StateWriter).
fn published(etcd: &FakeEtcd, lb: &str) -> Option<crate::status::LbStatus> {
    let layout = crate::layout::Layout::new("/lbManager");
    let lb = layout
        .parse_status(&format!("/lbmanager-state/lbManager/status/{lb}"))
        .expect("a load balancer path");
    let key = layout.status(&lb);
    serde_json::from_str(&etcd.get(&key)?).ok()
}

/// Whether tg's first member is published with the health `state`.
fn health_is(etcd: &FakeEtcd, state: &str) -> bool {
    published(etcd, "elbv2/us-east-1/tg")
        .is_some_and(|s| s.members[0].state.as_deref() == Some(state))
}

#[actix_rt::test]
async fn add_then_remove_in_quick_succession_ends_absent() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    *elb.delay.lock().unwrap() = Duration::from_millis(50);
    let sup = start(&elb, &ignored(), &[]);
    sup.send(put(A, 101)).await.unwrap();
    // A new load balancer's first change waits for its managed record: the remove comes once the
    // add is under way.
    eventually("the add is under way", || registers(&elb) > 0).await;
    sup.send(del(A, 102)).await.unwrap();
    eventually("the add was applied and undone", || {
        registers(&elb) > 0 && count(&elb.calls(), "Deregister") > 0
    })
    .await;
    until_members(&elb, "a", &[]).await;
    // The remove was merged into one follow-up sync: Describe, Register, Describe, Deregister.
    eventually("all four calls made", || elb.calls().len() == 4).await;
    // No actor left for a load balancer without keys.
    assert_eq!(sup.send(ManagedCount).await.unwrap(), 0);
}

#[actix_rt::test]
async fn burst_is_coalesced_into_few_calls() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    *elb.delay.lock().unwrap() = Duration::from_millis(30);
    let sup = start(&elb, &ignored(), &[]);
    for i in 0..50u32 {
        sup.do_send(put(&elb_key("a", i), 101 + i as i64));
    }
    eventually("all 50 registered", || members(&elb, "a") == 50).await;
    let calls = elb.calls();
    assert_eq!(
        count(&calls, "Register"),
        1,
        "one Register for one burst: {calls:?}"
    );
}

/// A sync that waits for AWS's quota before its Register plans again once it has it: what
/// arrived meanwhile goes out in the same call, and no second sync follows for it.
#[actix_rt::test]
async fn changes_that_arrive_while_a_sync_waits_for_quota_go_out_in_its_call() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    *elb.permit_delay.lock().unwrap() = Duration::from_millis(300);
    let sup = start(&elb, &ignored(), &[]);
    sup.send(put(&elb_key("a", 0), 101)).await.unwrap();
    // The first sync reads the ELB, then waits for quota.
    eventually("the first read", || describes(&elb) > 0).await;
    for i in 1..5u32 {
        sup.send(put(&elb_key("a", i), 101 + i as i64))
            .await
            .unwrap();
    }
    eventually("all 5 registered", || members(&elb, "a") == 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = elb.calls();
    assert_eq!(count(&calls, "Register"), 1, "{calls:?}");
    assert_eq!(count(&calls, "Describe"), 1, "no second sync: {calls:?}");
}

#[actix_rt::test]
async fn two_load_balancers_sync_concurrently() {
    tokio::time::pause();
    let elb = elbs(&["a", "b"]);
    *elb.delay.lock().unwrap() = Duration::from_millis(200);
    let _sup = start(&elb, &ignored(), &[(A, 1), (B, 2)]);
    until_members(&elb, "a", &["i-0000000a"]).await;
    until_members(&elb, "b", &["i-0000000b"]).await;
    assert_eq!(elb.max_in_flight.load(SeqCst), 2);
}

#[actix_rt::test]
async fn changes_of_one_zone_never_overlap_and_are_batched() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    *r53.delay.lock().unwrap() = Duration::from_millis(20);
    let sup = start(&ignored(), &r53, &[]);
    let mut rev = 100;
    for round in 0..3 {
        for i in 0..20 {
            let (v4, v6) = (
                format!("10.0.{round}.{i}"),
                format!("2001:db8::{round}:{i}"),
            );
            for ip in [v4, v6] {
                rev += 1;
                let key = format!("/lbManager/route53/us-east-1/Z1/h{i}.example.com/multiple/{ip}");
                sup.do_send(put(&key, rev));
            }
        }
    }
    eventually("all 20 FQDNs have 3 A and 3 AAAA values", || {
        (0..20).all(|i| {
            let name = format!("h{i}.example.com");
            let values = |rtype| r53.record("Z1", &name, rtype).map(|s| s.values.len());
            values(RecordType::A) == Some(3) && values(RecordType::Aaaa) == Some(3)
        })
    })
    .await;
    let calls = r53.calls();
    assert_eq!(r53.overlaps.load(SeqCst), 0, "{calls:?}");
    let changes = count(&calls, "ChangeResourceRecordSets");
    assert!(changes < 20, "{changes} change calls for 20 FQDNs");
    // Reads: the zone remembers what it read and wrote, so 120 changes need only a few reads.
    assert_eq!(count(&calls, "ListResourceRecordSets"), 2, "{calls:?}");
}

#[actix_rt::test]
async fn zone_cache_is_bypassed_by_resync_so_drift_is_seen() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    let settings = settings_with(|s| s.resync_interval = Duration::from_millis(300));
    let _sup = start_on(&ignored(), &settings, &ignored(), &r53, &[(WWW, 1)]);
    let in_step = || www_a(&r53) == Some(vec!["192.0.2.1".into()]);
    eventually("record created", in_step).await;
    // By hand, behind the zone's back.
    set_a_by_hand(&r53, &["198.51.100.7"]);
    eventually("drift corrected", in_step).await;
}

#[actix_rt::test]
async fn throttling_is_retried_until_it_converges() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    elb.fail_next.lock().unwrap().extend([
        ErrorKind::Throttled,
        ErrorKind::Transient,
        ErrorKind::Throttled,
    ]);
    let _sup = start(&elb, &ignored(), &[(A, 1)]);
    until_members(&elb, "a", &["i-0000000a"]).await;
    // The three that failed, then the read and the Register that succeeded.
    assert_eq!(elb.calls().len(), 5, "{:?}", elb.calls());
}

#[actix_rt::test]
async fn missing_load_balancer_does_not_hold_up_others() {
    tokio::time::pause();
    let elb = elbs(&["b"]);
    let _sup = start(&elb, &ignored(), &[(A, 1), (B, 2)]);
    until_members(&elb, "b", &["i-0000000b"]).await;
    assert_eq!(elb.instances("us-east-1", "a"), None);
}

#[actix_rt::test]
async fn panicking_actor_is_restarted_and_converges() {
    tokio::time::pause();
    let elb = elbs(&["a", "b"]);
    *elb.panic_next.lock().unwrap() = true;
    let sup = start(&elb, &ignored(), &[(A, 1)]);
    eventually("the panic happened", || !*elb.panic_next.lock().unwrap()).await;
    sup.send(put(B, 3)).await.unwrap();
    until_members(&elb, "a", &["i-0000000a"]).await;
    until_members(&elb, "b", &["i-0000000b"]).await;
}

#[actix_rt::test]
async fn drift_is_corrected_by_resync() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    let settings = settings_with(|s| s.resync_interval = Duration::from_millis(200));
    let _sup = start_on(&ignored(), &settings, &elb, &ignored(), &[(A, 1)]);
    until_members(&elb, "a", &["i-0000000a"]).await;
    elb.set_instances("us-east-1", "a", &["i-0000000f"]);
    until_members(&elb, "a", &["i-0000000a"]).await;
}

#[actix_rt::test]
async fn draining_target_wanted_is_registered_again_unwanted_left_alone() {
    tokio::time::pause();
    let elb = elbs(&["tg"]);
    elb.set_instances("us-east-1", "tg", &["i-00000001:80", "i-00000002:80"]);
    elb.set_draining("us-east-1", "tg", &["i-00000001:80", "i-00000002:80"]);
    let _sup = start(&elb, &ignored(), &[(TG, 1)]);
    eventually("the wanted draining target registered again", || {
        elb.calls()
            .iter()
            .any(|c| c.starts_with("Register") && c.contains("i-00000001:80"))
    })
    .await;
    // The unwanted one is draining already: never deregistered (twice).
    assert_eq!(count(&elb.calls(), "Deregister"), 0, "{:?}", elb.calls());
}

#[actix_rt::test]
async fn a_load_balancer_gone_from_aws_with_no_keys_left_is_retired() {
    tokio::time::pause();
    let elb = Arc::new(FakeElb::default());
    let sup = start(&elb, &ignored(), &[(A, 1)]);
    eventually("the failing sync happened", || !elb.calls().is_empty()).await;
    assert_eq!(sup.send(ManagedCount).await.unwrap(), 1);
    sup.send(del(A, 2)).await.unwrap();
    until_none(&sup, || ManagedCount, "the load balancer retired").await;
}

#[actix_rt::test]
async fn a_refused_member_is_set_aside_by_bisecting_and_the_rest_converges() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    // AWS names no instance: lbmanager must find the bad one itself.
    elb.set_invalid(&["i-0000000d"], false);
    elb.set_instances("us-east-1", "a", &["i-00000001"]);
    let keys: Vec<String> = (0xa..=0xd).map(|n| elb_key("a", n)).collect();
    let keys: Vec<(&str, i64)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
    let _sup = start(&elb, &ignored(), &keys);
    // Every accepted member registered, the extra one gone.
    until_members(&elb, "a", &["i-0000000a", "i-0000000b", "i-0000000c"]).await;
}

#[actix_rt::test]
async fn a_single_switch_to_a_refused_member_keeps_the_current_one() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    elb.set_invalid(&["i-0000000d"], true);
    elb.set_instances("us-east-1", "a", &["i-00000001"]);
    let sup = start(&elb, &ignored(), &[]);
    let single = "/lbManager/elb/us-east-1/a/single/i-0000000d";
    sup.send(put(single, 101)).await.unwrap();
    eventually("the refused register was tried", || registers(&elb) > 0).await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(elb.instances("us-east-1", "a"), ids(&["i-00000001"]));
    assert_eq!(count(&elb.calls(), "Deregister"), 0);
}

#[actix_rt::test]
async fn a_failure_retrying_cannot_fix_is_retried_at_once_when_a_newer_desire_waits() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    *elb.delay.lock().unwrap() = Duration::from_millis(100);
    elb.fail_next.lock().unwrap().push(ErrorKind::Rejected);
    let sup = start(&elb, &ignored(), &[]);
    sup.send(put(A, 101)).await.unwrap();
    eventually("the failing sync is in flight", || !elb.calls().is_empty()).await;
    // Arrives while the failing sync is in flight, and is applied without waiting for a resync.
    sup.send(put(&elb_key("a", 0xc), 102)).await.unwrap();
    until_members(&elb, "a", &["i-0000000a", "i-0000000c"]).await;
}

#[actix_rt::test]
async fn a_change_planned_from_the_zone_cache_and_refused_is_retried_from_a_fresh_read() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    let sup = start(&ignored(), &r53, &[(WWW, 1)]);
    let created = || www_a(&r53) == Some(vec!["192.0.2.1".into()]);
    eventually("record created", created).await;
    // By hand: the zone's cache no longer matches, so a DELETE built from it is refused.
    set_a_by_hand(&r53, &["192.0.2.1", "198.51.100.7"]);
    sup.send(del(WWW, 2)).await.unwrap();
    eventually("record deleted from a fresh read", || www_a(&r53).is_none()).await;
}

#[actix_rt::test]
async fn an_actor_that_panics_at_every_start_is_restarted_ever_more_slowly() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    elb.panic_always.store(true, SeqCst);
    let _sup = start(&elb, &ignored(), &[(A, 1)]);
    actix_rt::time::sleep(Duration::from_millis(6500)).await;
    // Restarts after 1 s, then 2 s, then 4 s: the first try and three restarts, where a restart
    // every second would have made seven (tokio's paused clock: exactly so).
    assert_eq!(elb.calls().len(), 4, "{:?}", elb.calls());
}

#[actix_rt::test]
async fn a_panic_mid_sync_does_not_leak_a_pending_sync() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    *elb.panic_next.lock().unwrap() = true;
    let settings = settings();
    let _sup = start_on(&ignored(), &settings, &elb, &ignored(), &[(A, 1)]);
    until_members(&elb, "a", &["i-0000000a"]).await;
    let metrics = &settings.metrics;
    eventually("no sync left pending", || metrics.syncs_pending.get() == 0).await;
}

#[actix_rt::test]
async fn a_zone_without_managed_names_is_freed() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    let sup = start(&ignored(), &r53, &[(WWW, 1)]);
    eventually("record created", || www_a(&r53).is_some()).await;
    assert_eq!(sup.send(ZoneCount).await.unwrap(), 1);
    sup.send(del(WWW, 2)).await.unwrap();
    until_none(&sup, || ZoneCount, "the zone actor freed").await;
}

#[actix_rt::test]
async fn a_relist_resyncs_every_load_balancer_and_counts_as_a_full_sync() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    let settings = settings();
    let sup = start_on(&ignored(), &settings, &elb, &ignored(), &[(A, 1)]);
    until_members(&elb, "a", &["i-0000000a"]).await;
    let full_sync = || settings.metrics.last_full_sync.get() > 0.0;
    eventually("start-up full sync", full_sync).await;
    settings.metrics.last_full_sync.set(0.0);
    let before = describes(&elb);
    // Drift that only a fresh read sees; the relisted keys are the same as before.
    elb.set_instances("us-east-1", "a", &["i-0000000f"]);
    use WatchEvent::{RelistPage, RelistStarted, Relisted};
    sup.send(RelistStarted).await.unwrap();
    let page = vec![(A.to_string(), 1)];
    sup.send(RelistPage(page)).await.unwrap();
    let (revision, keys) = (200, 1);
    sup.send(Relisted { revision, keys }).await.unwrap();
    // The unchanged load balancer is read again, and corrected.
    let corrected = || describes(&elb) > before && has(&elb, "a", &["i-0000000a"]);
    eventually("read again and corrected", corrected).await;
    eventually("the relist counts as a full sync", full_sync).await;
}

#[actix_rt::test]
async fn superseded_keys_are_deleted_through_the_etcd_writer() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    let etcd = Arc::new(FakeEtcd::default());
    let old = "/lbManager/elb/us-east-1/a/single/i-0000000a";
    let new = "/lbManager/elb/us-east-1/a/single/i-0000000b";
    let old_rev = etcd.put_key(old, "");
    let sup = start_on(&etcd, &settings(), &elb, &ignored(), &[(old, old_rev)]);
    until_members(&elb, "a", &["i-0000000a"]).await;
    sup.send(put(new, etcd.put_key(new, ""))).await.unwrap();
    eventually("switched, and the superseded key deleted", || {
        has(&elb, "a", &["i-0000000b"]) && etcd.get(old).is_none()
    })
    .await;
    assert!(etcd.get(new).is_some());
    // The managed record went through the same writer.
    let managed = "/lbmanager-state/lbManager/managed/elb/us-east-1/a";
    assert!(etcd.get(managed).is_some());
}

#[actix_rt::test]
async fn a_drain_ends_when_the_zone_of_the_sync_in_flight_dies() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    *r53.delay.lock().unwrap() = Duration::from_millis(300);
    *r53.panic_next.lock().unwrap() = true;
    let sup = start(&ignored(), &r53, &[(WWW, 1)]);
    eventually("the zone's read is in flight", || !r53.calls().is_empty()).await;
    // The zone dies with the sync in flight; the Supervisor replaces it and tells the load
    // balancer, whose drain is then over.
    let stopped = sup.send(super::supervisor::Shutdown);
    actix_rt::time::timeout(Duration::from_secs(8), stopped)
        .await
        .expect("the shutdown ends when the zone of the sync in flight dies")
        .unwrap();
}

#[actix_rt::test]
async fn a_load_balancer_that_dies_during_the_shutdown_is_not_restarted() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    *elb.delay.lock().unwrap() = Duration::from_millis(300);
    *elb.panic_next.lock().unwrap() = true;
    let sup = start(&elb, &ignored(), &[(A, 1)]);
    eventually("the first read is in flight", || !elb.calls().is_empty()).await;
    sup.send(super::supervisor::Shutdown).await.unwrap();
    let calls = elb.calls();
    // The Supervisor checks for dead actors every second.
    actix_rt::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(elb.calls(), calls, "no sync after the shutdown");
}

#[actix_rt::test]
async fn the_managed_record_is_in_etcd_before_the_first_change_in_aws() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    let etcd = Arc::new(FakeEtcd::default());
    *etcd.put_delay.lock().unwrap() = Duration::from_millis(300);
    let sup = start_on(&etcd, &settings(), &elb, &ignored(), &[]);
    sup.send(put(A, 101)).await.unwrap();
    let record = "/lbmanager-state/lbManager/managed/elb/us-east-1/a";
    eventually("the first Register", || {
        let registered = registers(&elb) > 0;
        // The moment AWS is first changed, the record must already be there.
        assert!(
            !registered || etcd.get(record).is_some(),
            "Register went out before the managed record was written"
        );
        registered
    })
    .await;
}

#[actix_rt::test]
async fn health_is_read_again_only_while_someone_waits_and_published_as_it_settles() {
    tokio::time::pause();
    let elb = elbs(&["tg"]);
    let etcd = Arc::new(FakeEtcd::default());
    let sup = start_on(&etcd, &settings(), &elb, &ignored(), &[(TG, 7)]);
    eventually("registered and published", || {
        // A start-up sync brings AWS to the whole read's revision.
        published(&etcd, "elbv2/us-east-1/tg")
            .is_some_and(|s| s.revision == 100 && s.members.len() == 1)
    })
    .await;
    elb.set_health("i-00000001:80", "initial");
    // Nobody waits: no read but the sync's own.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(describes(&elb), 1, "{:?}", elb.calls());

    // `member add --healthy` waits: the load balancer is read until the target settles.
    sup.send(put(TG_WAITING, 8)).await.unwrap();
    eventually("the health read back", || health_is(&etcd, "initial")).await;
    elb.set_health("i-00000001:80", "healthy");
    eventually("healthy, published", || health_is(&etcd, "healthy")).await;
    sup.send(del(TG_WAITING, 9)).await.unwrap();
    let reads = describes(&elb);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(describes(&elb), reads, "settled: no more reads");
}

#[actix_rt::test]
async fn a_key_written_again_moves_the_published_revision_without_a_call() {
    tokio::time::pause();
    let elb = elbs(&["a"]);
    let etcd = Arc::new(FakeEtcd::default());
    let sup = start_on(&etcd, &settings(), &elb, &ignored(), &[(A, 5)]);
    let in_step_at = |revision| {
        published(&etcd, "elb/us-east-1/a").is_some_and(|s| s.revision == revision && s.in_step)
    };
    eventually("published at the read's revision", || in_step_at(100)).await;
    let calls = elb.calls().len();
    sup.send(put(A, 120)).await.unwrap();
    eventually("published at the new revision", || in_step_at(120)).await;
    assert_eq!(elb.calls().len(), calls, "{:?}", elb.calls());
}

#[actix_rt::test]
async fn a_waiter_found_at_start_up_gets_its_settling_reads() {
    tokio::time::pause();
    let elb = elbs(&["tg"]);
    elb.set_instances("us-east-1", "tg", &["i-00000001:80"]);
    elb.set_health("i-00000001:80", "initial");
    let etcd = Arc::new(FakeEtcd::default());
    let keys = [(TG, 1), (TG_WAITING, 2)];
    let _sup = start_on(&etcd, &settings(), &elb, &ignored(), &keys);
    eventually("read again while it settles", || describes(&elb) >= 2).await;
    elb.set_health("i-00000001:80", "healthy");
    eventually("healthy, published", || health_is(&etcd, "healthy")).await;
}

/// A record etcd refuses for its size is written again cut down to its counts, not retried as
/// it is; a record whose writes keep failing delays neither the other records nor a new load
/// balancer's first sync; `lbmanager_records_unwritten` counts it.
#[actix_rt::test]
async fn a_record_etcd_refuses_delays_no_other_and_is_not_retried_as_it_is() {
    tokio::time::pause();
    let elb = elbs(&["big", "other"]);
    let etcd = Arc::new(FakeEtcd::default());
    *etcd.max_value.lock().unwrap() = Some(600);
    let status = "/lbmanager-state/lbManager/status/elb/us-east-1/big";
    let blocked = "/lbmanager-state/lbManager/status/elb/us-east-1/other";
    etcd.failing.lock().unwrap().insert(blocked.to_string());
    let mut keys: Vec<String> = (0..40).map(|n| elb_key("big", n)).collect();
    keys.push(elb_key("other", 0xf));
    let keys: Vec<(&str, i64)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
    let settings = settings();
    let sup = start_on(&etcd, &settings, &elb, &ignored(), &keys);
    eventually("the smaller status written", || etcd.get(status).is_some()).await;
    let written: crate::status::LbStatus =
        serde_json::from_str(&etcd.get(status).unwrap()).unwrap();
    assert!(written.members.is_empty() && written.members_more == 40);
    assert_eq!(written.desired, 40);
    // The first (whole) record was tried once, not again.
    let tries = |key: &str| {
        let puts = etcd.puts.lock().unwrap();
        puts.iter().filter(|(k, _)| k == key).count()
    };
    assert_eq!(tries(status), 2, "{:?}", etcd.puts.lock().unwrap());
    // The other load balancer synced although its status cannot be written, and a new one
    // starts (its record written, its members registered) while that write keeps failing.
    assert_eq!(elb.instances("us-east-1", "other"), ids(&["i-0000000f"]));
    eventually("the failing record is counted", || {
        settings.metrics.records_unwritten.get() == 1
    })
    .await;
    elb.create("us-east-1", "late");
    let late = elb_key("late", 0xe);
    sup.send(put(&late, etcd.put_key(&late, ""))).await.unwrap();
    until_members(&elb, "late", &["i-0000000e"]).await;
    eventually("the failing write is retried", || tries(blocked) >= 2).await;
    let metrics = settings.metrics.encode();
    assert!(metrics.contains("limit_exceeded_total{limit=\"record_refused\"} 1"));
}

/// `--ownership shared`: an ownership record etcd does not delete when its member leaves AWS
/// (etcd out of reach for a moment) is deleted once etcd takes writes again, also when that was
/// the load balancer's last member. The soak found records left for good: the delete was
/// best effort, "forgotten at a later sync", and a load balancer with no keys left is retired
/// after that sync, so none came.
#[actix_rt::test]
async fn an_ownership_record_etcd_did_not_delete_is_deleted_when_it_can_be() {
    tokio::time::pause();
    let settings = settings_with(|s| s.ownership = crate::ownership::Ownership::Shared);
    let elb = elbs(&["a"]);
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    let etcd = Arc::new(FakeEtcd::default());
    let sup = start_on(&etcd, &settings, &elb, &r53, &[]);
    let records = [
        "/lbmanager-state/lbManager/owned/elb/us-east-1/a/i-0000000a",
        "/lbmanager-state/lbManager/owned/route53/Z1/www.example.com/192.0.2.1",
    ];
    for key in [A, WWW] {
        sup.send(put(key, etcd.put_key(key, ""))).await.unwrap();
    }
    eventually("both members in AWS, recorded as lbmanager's", || {
        has(&elb, "a", &["i-0000000a"])
            && www_a(&r53).is_some()
            && records.iter().all(|r| etcd.get(r).is_some())
    })
    .await;
    for record in records {
        etcd.failing.lock().unwrap().insert(record.into());
    }
    for (n, key) in [A, WWW].into_iter().enumerate() {
        sup.send(del(key, 200 + n as i64)).await.unwrap();
    }
    eventually("both members out of AWS", || {
        has(&elb, "a", &[]) && www_a(&r53).is_none()
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    etcd.failing.lock().unwrap().clear();
    for record in records {
        eventually(record, || etcd.get(record).is_none()).await;
    }
}

/// The status of an FQDN whose last value a sync removed says how long resolvers may still
/// hand it out (the TTL it had), also from an actor that published nothing before (a leader
/// just elected). The soak found `member remove --drain` exiting at once after a new leader
/// removed the last value: its status had no TTL, so there was none to wait out.
#[actix_rt::test]
async fn the_status_after_the_last_value_went_keeps_the_ttl_it_had() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    set_a_by_hand(&r53, &["192.0.2.1"]);
    let etcd = Arc::new(FakeEtcd::default());
    // Managed before (its keys were deleted while lbmanager was away): emptied at start.
    let _sup = supervisor(&etcd, &settings(), &ignored(), &r53, &[])
        .with_records([www()].into())
        .start();
    eventually("the record set deleted", || www_a(&r53).is_none()).await;
    let status = || landed_status(&etcd, WWW_STATUS);
    eventually("its status written", || status().is_some()).await;
    let status = status().unwrap();
    assert!(status.members.is_empty(), "{status:?}");
    assert_eq!(status.ttl, Some(60), "{status:?}");
}

/// Route53 has accepted a change long before every one of its name servers has it: until
/// GetChange says INSYNC, the names' statuses list the change as pending (so `--wait` and
/// `--drain` wait), and once it is, they say so without another sync. One GetChange per change,
/// not per name.
#[actix_rt::test]
async fn a_route53_change_stays_pending_in_the_status_until_route53_says_insync() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    r53.hold.store(true, SeqCst);
    let etcd = Arc::new(FakeEtcd::default());
    let settings = settings_with(|s| s.route53_slow_change = Duration::from_millis(500));
    let api = "/lbManager/route53/us-east-1/Z1/api.example.com/multiple/192.0.2.2";
    let _sup = start_on(&etcd, &settings, &ignored(), &r53, &[(WWW, 1), (api, 2)]);
    let api_status = "/lbmanager-state/lbManager/status/route53/Z1/api.example.com";
    // How many changes each status lists as pending.
    let pending = |key: &str| landed_status(&etcd, key).map(|s| s.dns_pending.len());
    let all_pending = |n| {
        [WWW_STATUS, api_status]
            .iter()
            .all(|k| pending(k) == Some(n))
    };
    eventually("both statuses list the change", || all_pending(1)).await;
    let made = r53.changes();
    assert_eq!(made.len(), 1, "both names in one change: {made:?}");
    let www = landed_status(&etcd, WWW_STATUS).unwrap();
    assert_eq!(www.dns_pending[0].id, made[0].0);
    eventually("a GetChange", || count(&r53.calls(), "GetChange") > 0).await;
    // Pending past the slow-change bound (0.5 s here): said and counted, once.
    eventually("the slow change counted", || {
        settings.metrics.route53_changes_slow.get() == 1
    })
    .await;
    assert_eq!(settings.metrics.route53_changes_pending.get(), 1);
    r53.hold.store(false, SeqCst);
    eventually("both statuses say it is INSYNC", || all_pending(0)).await;
    let calls = r53.calls();
    let polls: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("GetChange"))
        .collect();
    // One change, asked about as one.
    let asked = format!("GetChange Z1 {}", made[0].0);
    assert!(polls.iter().all(|c| *c == &asked), "{polls:?}");
    // A status that changed only in that is not a sync: no second change was made.
    assert_eq!(r53.changes().len(), 1);
    assert_eq!(settings.metrics.route53_changes_slow.get(), 1);
    assert_eq!(settings.metrics.route53_changes_pending.get(), 0);
}

/// A new leader follows on the Route53 changes its predecessor saw PENDING (read from the
/// statuses it left): its first status of the name still lists them, so a wait is not told
/// "done" before they are INSYNC, and drops them once Route53 says so.
#[actix_rt::test]
async fn a_new_leader_follows_the_changes_its_predecessor_left_pending() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    r53.hold.store(true, SeqCst);
    r53.made_elsewhere("/change/CEARLIER", 0);
    set_a_by_hand(&r53, &["192.0.2.1"]);
    let etcd = Arc::new(FakeEtcd::default());
    let earlier = crate::status::PendingChange {
        id: "/change/CEARLIER".into(),
        since: 1,
        revision: 40,
    };
    let _sup = supervisor(&etcd, &settings(), &ignored(), &r53, &[(WWW, 40)])
        .with_records([www()].into())
        .with_published(
            [(
                www(),
                Arc::new(crate::status::LbStatus {
                    load_balancer: www().to_string(),
                    revision: 40,
                    dns_pending: vec![earlier],
                    ..Default::default()
                }),
            )]
            .into(),
        )
        .start();
    eventually("its first status lists the earlier change", || {
        landed_status(&etcd, WWW_STATUS).is_some_and(|s| {
            s.revision >= 40 && s.dns_pending.iter().any(|p| p.id == "/change/CEARLIER")
        })
    })
    .await;
    // Nothing was to change: the name is as the earlier change left it.
    assert!(r53.changes().len() == 1, "{:?}", r53.changes());
    r53.hold.store(false, SeqCst);
    eventually("the change dropped once INSYNC", || {
        landed_status(&etcd, WWW_STATUS).is_some_and(|s| s.dns_pending.is_empty())
    })
    .await;
}

/// A change Route53 will not say anything about (GetChange refused: the role lacks the action)
/// is not waited for to the end of every wait: the names are told, with a warning.
#[actix_rt::test]
async fn a_change_route53_refuses_to_report_on_is_not_waited_for_forever() {
    tokio::time::pause();
    let r53 = Arc::new(FakeRoute53::with_zones(&["Z1"]));
    r53.hold.store(true, SeqCst);
    r53.fail_polls.lock().unwrap().push(ErrorKind::Rejected);
    let etcd = Arc::new(FakeEtcd::default());
    let _sup = start_on(&etcd, &settings(), &ignored(), &r53, &[(WWW, 1)]);
    // How many changes the status lists as pending (`None`: no status yet).
    let pending = || landed_status(&etcd, WWW_STATUS).map(|s| s.dns_pending.len());
    eventually("the change listed as pending", || pending() > Some(0)).await;
    eventually("no longer waited for once refused", || pending() == Some(0)).await;
    // Still PENDING in Route53.
    assert!(r53.changes().iter().all(|(_, insync)| !insync));
}

/// A status queued behind other writes and then removed (its load balancer retired at once) is
/// written before its removal: a `--drain` on it reads the TTL the record sets had, not just
/// that the status is gone (the 60-minute soak's Route53 drain that exited before the TTL).
#[actix_rt::test]
async fn a_last_status_is_written_before_its_removal() {
    tokio::time::pause();
    use super::state_writer::{Flush, PublishStatus, StateWriter};
    let etcd = Arc::new(FakeEtcd::default());
    *etcd.put_delay.lock().unwrap() = Duration::from_millis(50);
    let writer = StateWriter::new(etcd.clone(), settings(), &log()).start();
    let status: Arc<crate::status::LbStatus> = Arc::new(
        serde_json::from_str(
            r#"{"load_balancer":"x","revision":5,"in_step":true,"desired":0,"members":[],
                "ttl":60,"last_sync":{"at":1,"ok":true,"cause":"etcd event"}}"#,
        )
        .unwrap(),
    );
    let lb = |fqdn: &str| crate::key::LbId::Route53 {
        zone: "Z1".into(),
        fqdn: fqdn.into(),
    };
    // www's write goes out first; api's waits behind it, and is then removed.
    writer.do_send(PublishStatus(lb("www.example.com"), Some(status.clone())));
    writer.do_send(PublishStatus(lb("api.example.com"), Some(status)));
    writer.do_send(PublishStatus(lb("api.example.com"), None));
    writer.send(Flush).await.unwrap();
    let api = "/lbmanager-state/lbManager/status/route53/Z1/api.example.com";
    let puts = etcd.puts.lock().unwrap().clone();
    assert!(puts.iter().any(|(k, _)| k == api), "{puts:?}");
    assert_eq!(etcd.get(api), None, "removed after it was written");
}

/// `--ownership shared`: an owned member taken out of AWS by hand (or with its load balancer)
/// whose key then goes is forgotten at the sync of that change, not only at a resync (the
/// 60-minute soak's records violations); a member claimed moments ago is not (a read may not
/// show its registration yet).
#[actix_rt::test]
async fn an_owned_member_taken_out_by_hand_is_forgotten_when_its_key_goes() {
    tokio::time::pause();
    let settings = settings_with(|s| s.ownership = crate::ownership::Ownership::Shared);
    let elb = elbs(&["a"]);
    let etcd = Arc::new(FakeEtcd::default());
    let sup = start_on(&etcd, &settings, &elb, &ignored(), &[]);
    let record = "/lbmanager-state/lbManager/owned/elb/us-east-1/a/i-0000000a";
    sup.send(put(A, etcd.put_key(A, ""))).await.unwrap();
    eventually("registered and recorded", || {
        has(&elb, "a", &["i-0000000a"]) && etcd.get(record).is_some()
    })
    .await;
    // Past the time a read may lag a registration; then out by hand, and its key deleted.
    actix_rt::time::sleep(crate::sync::elb::JUST_CLAIMED + Duration::from_millis(200)).await;
    elb.set_instances("us-east-1", "a", &[]);
    sup.send(del(A, 300)).await.unwrap();
    eventually("its record forgotten", || etcd.get(record).is_none()).await;
}
