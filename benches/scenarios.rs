//! Benchmark scenarios A–E of BENCHMARKS.md, against a real etcd and moto, for lbmanager and, in
//! the same run, for a naive baseline that makes one AWS call per etcd event (as the Go original
//! and an `etcdctl watch | aws` loop do).
//!
//! Run: `cargo bench --bench scenarios` (needs etcd and moto: `scripts/install-deps.sh`).
//! One scenario: `cargo bench --bench scenarios -- A` (A, B1, B2, C, D, E, M).
//! It prints a Markdown table; timings are measurements, never assertions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancing::types::Instance;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use etcd_client::{EventType, GetOptions, WatchOptions};
use lbmanager::key::{self, LbId, Member};
use lbmanager_testkit::proxy::TcpCut;
use lbmanager_testkit::throttle::{self, Rules, Throttler};
use lbmanager_testkit::*;

const P: &str = "/lbManager";
const LONG: Duration = Duration::from_secs(900);

struct Row {
    scenario: &'static str,
    tool: &'static str,
    calls: String,
    time: String,
    notes: String,
}

fn inst(n: usize) -> String {
    format!("i-{n:08x}")
}

fn elb_key(lb: &str, n: usize) -> String {
    format!("{P}/elb/us-east-1/{lb}/multiple/{}", inst(n))
}

/// Writes keys back-to-back from one client over one connection.
async fn put_all(etcd: &Etcd, keys: &[String]) {
    let mut client = etcd.client().await;
    for k in keys {
        client.put(k.as_str(), "", None).await.unwrap();
    }
}

fn lbmanager_calls(moto: &Moto) -> Vec<RecordedCall> {
    moto.recorded()
        .into_iter()
        .filter(|c| c.by_lbmanager())
        .collect()
}

fn is_r53_change(c: &RecordedCall) -> bool {
    c.method == "POST" && c.url.contains("/rrset")
}

/// The naive baseline: one AWS call (Route53: the original's List + UPSERT) per etcd event,
/// existing keys first. Returns the number of AWS calls it made.
async fn baseline(etcd: &Etcd, aws: &Aws, calls: Arc<AtomicUsize>) {
    let mut client = etcd.client().await;
    let existing = client
        .get(
            format!("{P}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let rev = existing.header().unwrap().revision();
    let mut ips: BTreeMap<(String, String), BTreeSet<IpAddr>> = BTreeMap::new();
    for kv in existing.kvs() {
        naive_event(aws, kv.key_str().unwrap(), true, &mut ips, &calls).await;
    }
    let mut stream = client
        .watch(
            format!("{P}/"),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await
        .unwrap();
    while let Ok(Some(resp)) = stream.message().await {
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            let put = ev.event_type() == EventType::Put;
            naive_event(aws, kv.key_str().unwrap(), put, &mut ips, &calls).await;
        }
    }
}

async fn naive_event(
    aws: &Aws,
    k: &str,
    put: bool,
    ips: &mut BTreeMap<(String, String), BTreeSet<IpAddr>>,
    calls: &AtomicUsize,
) {
    let Ok(Some(mk)) = key::parse(P, k) else {
        return;
    };
    match (mk.lb, mk.member) {
        (LbId::Elb { region, name }, Member::Instance(id)) => {
            let elb = aws.elb(&region);
            let i = Instance::builder().instance_id(id).build();
            if put {
                let _ = elb
                    .register_instances_with_load_balancer()
                    .load_balancer_name(name)
                    .instances(i)
                    .send()
                    .await;
            } else {
                let _ = elb
                    .deregister_instances_from_load_balancer()
                    .load_balancer_name(name)
                    .instances(i)
                    .send()
                    .await;
            }
            calls.fetch_add(1, Ordering::SeqCst);
        }
        (LbId::Route53 { zone, fqdn }, Member::Ip(ip)) => {
            let set = ips.entry((zone.clone(), fqdn.clone())).or_default();
            if put {
                set.insert(ip);
            } else {
                set.remove(&ip);
            }
            let _ = aws
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(&zone)
                .start_record_name(&fqdn)
                .max_items(1)
                .send()
                .await;
            calls.fetch_add(1, Ordering::SeqCst);
            let v4: Vec<ResourceRecord> = set
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(|ip| {
                    ResourceRecord::builder()
                        .value(ip.to_string())
                        .build()
                        .unwrap()
                })
                .collect();
            if v4.is_empty() {
                return;
            }
            let change = Change::builder()
                .action(ChangeAction::Upsert)
                .resource_record_set(
                    ResourceRecordSet::builder()
                        .name(&fqdn)
                        .r#type(RrType::A)
                        .ttl(60)
                        .set_resource_records(Some(v4))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            let _ = aws
                .route53
                .change_resource_record_sets()
                .hosted_zone_id(&zone)
                .change_batch(ChangeBatch::builder().changes(change).build().unwrap())
                .send()
                .await;
            calls.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
}

/// Waits (polling every 20 ms) until `done` holds; returns the time since `since`.
async fn until<F, Fut>(since: Instant, done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually("convergence", LONG, done).await;
    since.elapsed()
}

async fn elb_count(aws: &Aws, lb: &str) -> usize {
    aws.instances("us-east-1", lb).await.len()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The most calls in any one-second window.
fn peak_per_second(arrivals: &[Instant]) -> usize {
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(arrivals[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn scenario_a(rows: &mut Vec<Row>) {
    let keys: Vec<String> = (0..1000).map(|i| elb_key("webLB", i)).collect();
    {
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        aws.create_elb("us-east-1", "webLB").await;
        let daemon = Daemon::start(&etcd, &moto, &["--log-level", "info"]);
        daemon.wait_log("initial sync complete").await;
        moto.start_recording();
        let t = Instant::now();
        put_all(&etcd, &keys).await;
        let took = until(t, || async { elb_count(&aws, "webLB").await == 1000 }).await;
        let calls = lbmanager_calls(&moto);
        let syncs = calls
            .iter()
            .filter(|c| c.body.contains("DescribeLoadBalancers"))
            .count();
        push(
            rows,
            Row {
                scenario: "A: 1,000 instances added one key at a time to one ELB",
                tool: "lbmanager",
                calls: format!(
                    "{} ({syncs} syncs, {:.1} calls/sync)",
                    calls.len(),
                    calls.len() as f64 / syncs as f64
                ),
                time: secs(took),
                notes: "defaults (AWS's quotas)".into(),
            },
        );
    }
    {
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        aws.create_elb("us-east-1", "webLB").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let naive = tokio::task::spawn_local({
            let (etcd_url, moto_url, calls) = (etcd.url.clone(), moto.url.clone(), calls.clone());
            async move { run_baseline(&etcd_url, &moto_url, calls).await }
        });
        let t = Instant::now();
        put_all(&etcd, &keys).await;
        let took = until(t, || async { elb_count(&aws, "webLB").await == 1000 }).await;
        naive.abort();
        push(
            rows,
            Row {
                scenario: "A",
                tool: "naive baseline",
                calls: calls.load(Ordering::SeqCst).to_string(),
                time: secs(took),
                notes: "one Register per event".into(),
            },
        );
    }
}

async fn run_baseline(etcd_url: &str, moto_url: &str, calls: Arc<AtomicUsize>) {
    let etcd = Etcd::attach(etcd_url);
    let aws = Aws::at(moto_url).await;
    baseline(&etcd, &aws, calls).await;
}

/// The baseline making each call once (as the Go original did: no retries).
async fn run_baseline_once(etcd_url: &str, url: &str, calls: Arc<AtomicUsize>) {
    let etcd = Etcd::attach(etcd_url);
    let aws = Aws::without_retries(url).await;
    baseline(&etcd, &aws, calls).await;
}

/// 10,000 members over 100 FQDNs (100 each) in one zone.
fn route53_keys(zone: &str, fqdns: usize, per: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for f in 0..fqdns {
        for i in 0..per {
            keys.push(format!(
                "{P}/route53/us-east-1/{zone}/h{f}.example.com/multiple/10.{}.{}.{}",
                f / 200,
                (f % 200),
                i
            ));
        }
    }
    keys
}

async fn zone_complete(aws: &Aws, zone: &str, fqdns: usize, per: usize) -> bool {
    let mut start: Option<String> = None;
    let mut full = 0;
    loop {
        let mut req = aws
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .max_items(300);
        if let Some(s) = &start {
            req = req.start_record_name(s);
        }
        let Ok(out) = req.send().await else {
            return false;
        };
        full += out
            .resource_record_sets()
            .iter()
            .filter(|s| s.r#type() == &RrType::A && s.resource_records().len() == per)
            .count();
        match (out.is_truncated(), out.next_record_name()) {
            (true, Some(n)) => start = Some(n.to_string()),
            _ => return full == fqdns,
        }
    }
}

async fn scenario_b(rows: &mut Vec<Row>, which: &str) {
    if which == "B1" || which == "all" {
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        let zone = aws.create_zone("example.com").await;
        etcd.put_many(route53_keys(&zone, 100, 100).into_iter())
            .await;
        moto.start_recording();
        let t = Instant::now();
        let daemon = Daemon::start(&etcd, &moto, &["--log-level", "info"]);
        let took = until(t, || async { zone_complete(&aws, &zone, 100, 100).await }).await;
        drop(daemon);
        let calls = lbmanager_calls(&moto);
        let changes = calls.iter().filter(|c| is_r53_change(c)).count();
        push(
            rows,
            Row {
                scenario: "B1: 10,000 Route53 members over 100 FQDNs, in etcd at start",
                tool: "lbmanager",
                calls: format!("{} ({changes} ChangeResourceRecordSets)", calls.len()),
                time: secs(took),
                notes: "defaults (AWS's quotas)".into(),
            },
        );
        // The baseline replays every existing key as an event.
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        let zone = aws.create_zone("example.com").await;
        etcd.put_many(route53_keys(&zone, 100, 100).into_iter())
            .await;
        let calls = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let naive = tokio::task::spawn_local({
            let (etcd_url, moto_url, calls) = (etcd.url.clone(), moto.url.clone(), calls.clone());
            async move { run_baseline(&etcd_url, &moto_url, calls).await }
        });
        let took = until(t, || async { zone_complete(&aws, &zone, 100, 100).await }).await;
        naive.abort();
        let n = calls.load(Ordering::SeqCst);
        push(
            rows,
            Row {
                scenario: "B1",
                tool: "naive baseline",
                calls: format!("{n} ({} ChangeResourceRecordSets)", n / 2),
                time: secs(took),
                notes: "List + UPSERT per key".into(),
            },
        );
    }
    if which == "B2" || which == "all" {
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        let zone = aws.create_zone("example.com").await;
        let rules = Rules::default();
        let proxy = Throttler::start(moto.port, rules);
        let mut daemon = Daemon::unstarted();
        daemon.spawn(&etcd.url, &proxy.url, &["--log-level", "info"]);
        daemon.wait_log("initial sync complete").await;
        proxy.seen.lock().unwrap().clear();
        let t = Instant::now();
        put_all(&etcd, &route53_keys(&zone, 100, 100)).await;
        let written = t.elapsed();
        let took = until(t, || async { zone_complete(&aws, &zone, 100, 100).await }).await;
        let seen = proxy.seen.lock().unwrap().clone();
        let changes: Vec<&throttle::Seen> = seen
            .iter()
            .filter(|s| s.operation.contains("ChangeResourceRecordSets"))
            .collect();
        let tokens: f64 = changes.iter().map(|s| s.records).sum();
        // The most change tokens drawn in any one second, against what the bucket gives in one.
        let peak_tokens = changes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                changes[i..]
                    .iter()
                    .take_while(|d| d.at.duration_since(c.at) < Duration::from_secs(1))
                    .map(|d| d.records)
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        let arrivals: Vec<Instant> = seen.iter().map(|s| s.at).collect();
        push(
            rows,
            Row {
                scenario: "B2: the same 10,000 written back-to-back while running, AWS's throttling emulated",
                tool: "lbmanager",
                calls: format!(
                    "{} ({} ChangeResourceRecordSets, {} throttled)",
                    seen.len(),
                    changes.len(),
                    seen.iter().filter(|s| s.throttled).count()
                ),
                time: secs(took),
                notes: format!(
                    "writes took {}; {tokens} change tokens in all, at most {peak_tokens} in any 1 s \
                     (the bucket: {} at once, {}/s); peak {} requests in any 1 s (50 at once, 10/s)",
                    secs(written),
                    rules.route53_changes.0,
                    rules.route53_changes.1,
                    peak_per_second(&arrivals)
                ),
            },
        );
        drop(daemon);
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        let zone = aws.create_zone("example.com").await;
        let calls = Arc::new(AtomicUsize::new(0));
        let naive = tokio::task::spawn_local({
            let (etcd_url, moto_url, calls) = (etcd.url.clone(), moto.url.clone(), calls.clone());
            async move { run_baseline(&etcd_url, &moto_url, calls).await }
        });
        let t = Instant::now();
        put_all(&etcd, &route53_keys(&zone, 100, 100)).await;
        let took = until(t, || async { zone_complete(&aws, &zone, 100, 100).await }).await;
        naive.abort();
        push(
            rows,
            Row {
                scenario: "B2",
                tool: "naive baseline",
                calls: calls.load(Ordering::SeqCst).to_string(),
                time: secs(took),
                notes: "List + UPSERT per event, no rate limit".into(),
            },
        );
    }
}

/// The least time AWS's buckets allow for `draws` (how many calls draw from each bucket, and the
/// bucket): for each bucket, what its burst does not cover, at its refill rate; the largest.
fn quota_floor(draws: &[(usize, (f64, f64))]) -> Duration {
    let secs = draws
        .iter()
        .map(|&(n, (capacity, refill))| ((n as f64 - capacity) / refill).max(0.0))
        .fold(0.0, f64::max);
    Duration::from_secs_f64(secs)
}

async fn scenario_c(rows: &mut Vec<Row>) {
    let lbs: Vec<String> = (0..100).map(|i| format!("lb{i:03}")).collect();
    // Interleaved: every ELB gets its 10 instances over the whole burst.
    let keys: Vec<String> = (0..10)
        .flat_map(|n| lbs.iter().map(move |lb| elb_key(lb, n)))
        .collect();
    // The unavoidable calls: one Describe and one Register per ELB.
    let rules = Rules::default();
    let floor = quota_floor(&[
        (100, rules.elb_registration),
        (100, rules.elb_describe),
        (200, rules.elb_account),
    ]);
    // DescribeLoadBalancers answers in pages: follow the markers.
    let complete = |aws: &Aws| {
        let aws = aws.elb("us-east-1");
        async move {
            let (mut full, mut marker) = (0, None);
            loop {
                let req = aws.describe_load_balancers().set_marker(marker.take());
                let Ok(out) = req.send().await else {
                    return 0;
                };
                full += out
                    .load_balancer_descriptions()
                    .iter()
                    .filter(|d| d.instances().len() == 10)
                    .count();
                match out.next_marker() {
                    Some(m) if !m.is_empty() => marker = Some(m.to_string()),
                    _ => return full,
                }
            }
        }
    };
    for tool in [
        "lbmanager",
        "lbmanager, --aws-quota-share 100, no throttling",
        "naive baseline",
    ] {
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        for lb in &lbs {
            aws.create_elb("us-east-1", lb).await;
        }
        // AWS's throttling, emulated in front of moto (the unthrottled run goes straight to moto).
        let proxy = Throttler::start(moto.port, rules);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut daemon = None;
        let mut naive = None;
        if tool == "naive baseline" {
            naive = Some(tokio::task::spawn_local({
                let (etcd_url, url, calls) = (etcd.url.clone(), proxy.url.clone(), calls.clone());
                async move { run_baseline_once(&etcd_url, &url, calls).await }
            }));
        } else {
            let mut d = Daemon::unstarted();
            if tool == "lbmanager" {
                d.spawn(&etcd.url, &proxy.url, &["--log-level", "info"]);
            } else {
                d.spawn(
                    &etcd.url,
                    &moto.url,
                    &["--log-level", "info", "--aws-quota-share", "100"],
                );
            }
            d.wait_log("initial sync complete").await;
            daemon = Some(d);
        }
        proxy.seen.lock().unwrap().clear();
        moto.start_recording();
        let t = Instant::now();
        put_all(&etcd, &keys).await;
        let (took, done) = if naive.is_some() {
            // The baseline ignores what fails: it is done when it has made its 1,000 calls.
            eventually("the baseline's calls", LONG, || async {
                calls.load(Ordering::SeqCst) >= keys.len()
            })
            .await;
            (t.elapsed(), complete(&aws).await)
        } else {
            (
                until(t, || async { complete(&aws).await == lbs.len() }).await,
                lbs.len(),
            )
        };
        let seen = proxy.seen.lock().unwrap().clone();
        let (n, registers, throttled) = if tool.contains("no throttling") {
            let c = lbmanager_calls(&moto);
            let r = c.iter().filter(|c| c.is_mutating()).count();
            (c.len(), r, 0)
        } else {
            let r = seen
                .iter()
                .filter(|s| !s.throttled && s.operation.contains("Register"))
                .count();
            (seen.len(), r, seen.iter().filter(|s| s.throttled).count())
        };
        if let Some(h) = naive {
            h.abort();
        }
        drop(daemon);
        push(
            rows,
            Row {
                scenario: if tool == "lbmanager" {
                    "C: 100 ELBs × 10 instances, changed together (interleaved), AWS's throttling emulated"
                } else {
                    "C"
                },
                tool,
                calls: format!("{n} ({registers} Register, {throttled} throttled)"),
                time: if done == lbs.len() {
                    format!(
                        "{} = {:.2} × floor",
                        secs(took),
                        took.as_secs_f64() / floor.as_secs_f64()
                    )
                } else {
                    format!("{done} of 100 ELBs complete after its {} calls", keys.len())
                },
                notes: match tool {
                    "lbmanager" => format!(
                        "defaults; floor {} = (100 Registers − 20) / 4 per s (AWS's registration bucket)",
                        secs(floor)
                    ),
                    "naive baseline" => {
                        "one Register per event, each sent once (as the Go original): what is throttled is lost".into()
                    }
                    _ => "the pipeline without pacing (moto does not throttle)".into(),
                },
            },
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn scenario_d(rows: &mut Vec<Row>) {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    aws.create_elb("us-east-1", "probeLB").await;
    // moto's own latency for the change: a Register and a Deregister, timed directly.
    let mut own = Vec::new();
    let elb = aws.elb("us-east-1");
    for n in 0..100 {
        let i = Instance::builder().instance_id(inst(n)).build();
        let t = Instant::now();
        elb.register_instances_with_load_balancer()
            .load_balancer_name("probeLB")
            .instances(i.clone())
            .send()
            .await
            .unwrap();
        own.push(t.elapsed());
        let t = Instant::now();
        elb.deregister_instances_from_load_balancer()
            .load_balancer_name("probeLB")
            .instances(i)
            .send()
            .await
            .unwrap();
        own.push(t.elapsed());
    }
    own.sort();
    let daemon = Daemon::start(
        &etcd,
        &moto,
        &["--log-level", "info", "--aws-quota-share", "1000"],
    );
    daemon.wait_log("initial sync complete").await;
    let mut lat = Vec::new();
    let mut client = etcd.client().await;
    for n in 0..200 {
        let k = elb_key("webLB", 1);
        let t = Instant::now();
        let want = if n % 2 == 0 {
            client.put(k.as_str(), "", None).await.unwrap();
            1
        } else {
            client.delete(k.as_str(), None).await.unwrap();
            0
        };
        loop {
            if elb_count(&aws, "webLB").await == want {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let (o50, o99) = (percentile(&own, 0.5), percentile(&own, 0.99));
    push(rows, Row {
        scenario: "D: etcd put → change visible through the AWS API, 200 single changes",
        tool: "lbmanager",
        calls: String::new(),
        time: format!(
            "p50 {} / p99 {} over moto's own",
            ms(p50.saturating_sub(o50)),
            ms(p99.saturating_sub(o99))
        ),
        notes: format!(
            "raw p50 {} / p99 {}; moto's own Register/Deregister p50 {} / p99 {}; --aws-quota-share 1000 (the pipeline, not the pacing)",
            ms(p50),
            ms(p99),
            ms(o50),
            ms(o99)
        ),
    });
}

fn proc_stat(pid: u32) -> (u64, u64) {
    // (utime + stime in clock ticks, VmHWM in KiB)
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, hwm)
}

async fn scenario_e(rows: &mut Vec<Row>, idle: Duration) {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    etcd.put_many(route53_keys(&zone, 1000, 100).into_iter())
        .await;
    // Make AWS match (set-up, at a raised rate), then measure a restart.
    let mut daemon = Daemon::start(
        &etcd,
        &moto,
        &["--log-level", "info", "--aws-quota-share", "100"],
    );
    until(Instant::now(), || async {
        zone_complete(&aws, &zone, 1000, 100).await
    })
    .await;
    daemon.stop();
    moto.start_recording();
    let t = Instant::now();
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &moto.url, &["--log-level", "info"]);
    let pid = daemon.pid().unwrap();
    let mut read_at = None;
    let mut peak = 0;
    loop {
        let log = daemon.log();
        if read_at.is_none() && log.contains("read etcd") {
            read_at = Some(t.elapsed());
        }
        peak = peak.max(proc_stat(pid).1);
        if log.contains("initial sync complete") {
            break;
        }
        assert!(t.elapsed() < LONG);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = t.elapsed();
    let mutating = lbmanager_calls(&moto)
        .iter()
        .filter(|c| c.is_mutating())
        .count();
    let all = lbmanager_calls(&moto).len();
    let (ticks0, _) = proc_stat(pid);
    let rss0 = daemon.rss_kib().unwrap();
    tokio::time::sleep(idle).await;
    let (ticks1, hwm) = proc_stat(pid);
    let rss1 = daemon.rss_kib().unwrap();
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (ticks1 - ticks0) as f64 / hz / idle.as_secs_f64() * 100.0;
    push(
        rows,
        Row {
            scenario: "E: start-up with 100,000 keys in etcd (1,000 FQDNs × 100), AWS matching",
            tool: "lbmanager",
            calls: format!("{all} ({mutating} mutating)"),
            time: format!(
                "etcd read + desired state {}; initial sync complete {}",
                secs(read_at.unwrap()),
                secs(ready)
            ),
            notes: format!(
                "peak RSS {:.1} MiB; idle {}s: RSS {:.1} → {:.1} MiB, CPU {cpu:.2}%",
                peak.max(hwm) as f64 / 1024.0,
                idle.as_secs(),
                rss0 as f64 / 1024.0,
                rss1 as f64 / 1024.0
            ),
        },
    );
}

/// etcdctl's own full read of the prefix (keys only, output thrown away): the floor of scenario M.
fn etcdctl_full_read(etcd: &Etcd) -> Duration {
    let t = Instant::now();
    let ok = std::process::Command::new("etcdctl")
        .args(["--endpoints", &etcd.url, "get", "--prefix", "--keys-only"])
        .arg(format!("{P}/"))
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    t.elapsed()
}

/// The time of one keys-only page of `limit` keys of the prefix, starting at `from`.
async fn page_time(etcd: &Etcd, from: &str, limit: i64) -> Duration {
    let mut client = etcd.client().await;
    let end = format!("{P}0");
    let t = Instant::now();
    client
        .get(
            from,
            Some(
                etcd_client::GetOptions::new()
                    .with_range(end)
                    .with_keys_only()
                    .with_limit(limit),
            ),
        )
        .await
        .unwrap();
    t.elapsed()
}

/// The time of day of a log line (`Nov 25 23:58:14.796 …`).
fn log_time(line: &str) -> Duration {
    let hms = &line[7..19];
    let f: Vec<f64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    Duration::from_secs_f64(f[0] * 3600.0 + f[1] * 60.0 + f[2])
}

/// Polls until the log has `needle` `n` times (or more), sampling the peak RSS meanwhile.
async fn wait_sampling(
    daemon: &Daemon,
    needle: &str,
    n: usize,
    since: Instant,
    limit_secs: u64,
) -> (Duration, u64) {
    let pid = daemon.pid().unwrap();
    let mut peak = 0;
    loop {
        peak = peak.max(proc_stat(pid).1);
        if daemon.log().matches(needle).count() >= n {
            return (since.elapsed(), peak.max(proc_stat(pid).1));
        }
        assert!(
            since.elapsed() < Duration::from_secs(limit_secs),
            "no {needle:?}: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `lbs` Classic ELBs of 1,000 instances each: their keys in etcd and the ELBs in moto.
async fn big_tree(etcd: &Etcd, aws: &Aws, lbs: usize) {
    let keys =
        (0..lbs * 1000).map(|n| format!("{P}/elb/us-east-1/lb{:04}/multiple/i-{n:017x}", n / 1000));
    let t = Instant::now();
    etcd.put_many(keys).await;
    let names: Vec<String> = (0..lbs).map(|n| format!("lb{n:04}")).collect();
    for chunk in names.chunks(20) {
        futures::future::join_all(chunk.iter().map(|n| aws.create_elb("us-east-1", n))).await;
    }
    eprintln!(
        "{lbs} ELBs x 1,000: keys written and ELBs made in {}",
        secs(t.elapsed())
    );
}

/// The size of lbmanager's records: (records, bytes), read in pages.
async fn records_size(etcd: &Etcd) -> (usize, usize) {
    let client = etcd.client().await;
    let mut kv = client.kv_client().max_decoding_message_size(usize::MAX);
    let (mut n, mut bytes) = (0, 0);
    let mut from = b"/lbmanager-state/".to_vec();
    loop {
        let resp = kv
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range("/lbmanager-state0")
                        .with_limit(100),
                ),
            )
            .await
            .unwrap();
        n += resp.kvs().len();
        bytes += resp.kvs().iter().map(|kv| kv.value().len()).sum::<usize>();
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return (n, bytes),
        }
    }
}

/// Starts lbmanager on `etcd_url` and waits for its start-up: (read + desired state, initial
/// sync complete, peak RSS in KiB).
async fn start_up(
    daemon: &mut Daemon,
    etcd_url: &str,
    moto: &Moto,
    starts: usize,
    quota_share: &str,
) -> (Duration, Duration, u64) {
    let t = Instant::now();
    daemon.spawn(
        etcd_url,
        &moto.url,
        &["--log-level", "info", "--aws-quota-share", quota_share],
    );
    let (read, _) = wait_sampling(daemon, "read etcd", starts, t, 180).await;
    let (ready, peak) = wait_sampling(daemon, "initial sync complete", starts, t, 1800).await;
    let peak = peak.max(proc_stat(daemon.pid().unwrap()).1);
    (read, ready, peak)
}

/// R: 150 ELBs × 1,000 instances (150,000 members) synced for real, then a restart that reads
/// lbmanager's records back (~4.8 MiB, over one etcd answer's 4 MiB).
async fn scenario_r(rows: &mut Vec<Row>) {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    big_tree(&etcd, &aws, 150).await;
    let mut daemon = Daemon::unstarted();
    let (_, synced, first_peak) = start_up(&mut daemon, &etcd.url, &moto, 1, "1000").await;
    eventually("every status written", Duration::from_secs(120), || async {
        records_size(&etcd).await.0 >= 301
    })
    .await;
    let (records, bytes) = records_size(&etcd).await;
    assert_eq!(daemon.stop(), Some(0));
    let (read, ready, peak) = start_up(&mut daemon, &etcd.url, &moto, 2, "1000").await;
    push(
        rows,
        Row {
            scenario: "R: restart with 150,000 members (150 ELBs × 1,000) in step, records written",
            tool: "lbmanager",
            calls: String::new(),
            time: format!(
                "read + desired state {}; initial sync complete {}",
                secs(read),
                secs(ready)
            ),
            notes: format!(
                "peak RSS {:.0} MiB at the restart ({:.0} MiB at the first start, whose sync \
                 registered everything in {}); lbmanager's records: {records} keys, {:.1} MiB",
                peak as f64 / 1024.0,
                first_peak as f64 / 1024.0,
                secs(synced),
                bytes as f64 / 1048576.0
            ),
        },
    );
}

/// M: a million keys (1,000 ELBs × 1,000 members), the ELBs in moto: the first start registers
/// them all and writes lbmanager's records (~30 MiB); then a restart that reads them back, and a
/// relist, against etcdctl's own full read in the same run.
async fn scenario_m(rows: &mut Vec<Row>) {
    let etcd = Etcd::start().await;
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    big_tree(&etcd, &aws, 1000).await;
    let floor: Vec<Duration> = (0..3).map(|_| etcdctl_full_read(&etcd)).collect();
    let floor = *floor.iter().min().unwrap();
    // Where a paged read's time goes: a page at the start of the range and one at its end.
    let first = page_time(&etcd, &format!("{P}/"), 5000).await;
    let last = page_time(&etcd, &format!("{P}/elb/us-east-1/lb0995"), 5000).await;
    eprintln!(
        "M: etcdctl full read {}; a page of 5,000 keys: {} at the start, {} at the end",
        secs(floor),
        ms(first),
        ms(last)
    );
    let cut = TcpCut::start(etcd.port());
    let mut daemon = Daemon::unstarted();
    // Registering a million instances at once would swamp moto (a Register of 1,000 takes it
    // ~0.1 s, and it answers them one after another): the first start keeps to twice AWS's rate.
    let (first_read, synced, first_peak) = start_up(&mut daemon, &cut.url, &moto, 1, "2").await;
    eprintln!(
        "M: first start: read {}, synced {}",
        secs(first_read),
        secs(synced)
    );
    eventually("every status written", Duration::from_secs(600), || async {
        records_size(&etcd).await.0 >= 2001
    })
    .await;
    let (records, bytes) = records_size(&etcd).await;
    assert_eq!(daemon.stop(), Some(0));
    // The restart: the tree, lbmanager's records, AWS already in step.
    let (read, ready, peak) = start_up(&mut daemon, &cut.url, &moto, 2, "1000").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak = peak.max(proc_stat(daemon.pid().unwrap()).1);
    // A relist: lbmanager cut off from etcd while etcd moves on and compacts its history away.
    cut.cut();
    // Two writes: a watch resumes at the revision after the one it saw, which compacting at the
    // first write's revision would keep.
    let mut client = etcd.client().await;
    let mut rev = 0;
    for n in 0..2 {
        rev = client
            .put(
                format!("{P}/elb/us-east-1/lb0000/multiple/i-0fffffffffffffff{n}"),
                "",
                None,
            )
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    client.compact(rev, None).await.unwrap();
    let t = Instant::now();
    cut.restore();
    let (_, relist_peak) = wait_sampling(&daemon, "read etcd", 3, t, 180).await;
    // From the watcher's decision to relist to the desired state rebuilt (reconnecting to etcd
    // after the cut is not part of it): the log's own timestamps.
    let log = daemon.log();
    let at = |needle: &str| {
        let line = log.lines().rfind(|l| l.contains(needle)).unwrap();
        log_time(line)
    };
    let relist = at("read etcd") - at("relisting");
    drop(daemon);
    push(
        rows,
        Row {
            scenario: "M: restart with 1,000,000 keys (1,000 ELBs × 1,000) in step, records written, and a relist",
            tool: "lbmanager",
            calls: String::new(),
            time: format!(
                "read + desired state {} ({:.2}× etcdctl); initial sync complete {}; relist {} \
                 ({:.2}× etcdctl)",
                secs(read),
                read.as_secs_f64() / floor.as_secs_f64(),
                secs(ready),
                secs(relist),
                relist.as_secs_f64() / floor.as_secs_f64()
            ),
            notes: format!(
                "etcdctl get --prefix --keys-only {}; peak RSS {:.0} MiB at the restart, {:.0} MiB \
                 after the relist ({:.0} MiB at the first start, whose sync registered everything \
                 in {}); lbmanager's records: {records} keys, {:.1} MiB; a page of 5,000 keys: {} \
                 at the start of the range, {} at its end",
                secs(floor),
                peak as f64 / 1024.0,
                relist_peak as f64 / 1024.0,
                first_peak as f64 / 1024.0,
                secs(synced),
                bytes as f64 / 1048576.0,
                ms(first),
                ms(last)
            ),
        },
    );
}

/// Keeps a result row, and says on stderr that it was measured (the table is printed once, on
/// stdout, at the end).
fn push(rows: &mut Vec<Row>, r: Row) {
    eprintln!("measured: {} / {}: {}", r.scenario, r.tool, r.time);
    rows.push(r);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let rows = local.block_on(&rt, async move {
        let mut rows = Vec::new();
        let run = |s: &str| which == "all" || which == s;
        if run("A") {
            scenario_a(&mut rows).await;
        }
        if run("B1") || run("B2") || which == "B" {
            scenario_b(&mut rows, if which == "B" { "all" } else { &which }).await;
        }
        if run("C") {
            scenario_c(&mut rows).await;
        }
        if run("D") {
            scenario_d(&mut rows).await;
        }
        if run("E") {
            scenario_e(&mut rows, idle).await;
        }
        if run("R") {
            scenario_r(&mut rows).await;
        }
        if run("M") {
            scenario_m(&mut rows).await;
        }
        rows
    });
    println!("| scenario | tool | AWS calls | time | notes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.scenario, r.tool, r.calls, r.time, r.notes
        );
    }
}
