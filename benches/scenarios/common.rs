//! What the scenarios share: the result row, the naive baseline, timing and /proc helpers.

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
use lbmanager_testkit::*;

pub(crate) const LONG: Duration = Duration::from_secs(900);

pub(crate) struct Row {
    pub scenario: &'static str,
    pub tool: &'static str,
    pub calls: String,
    pub time: String,
    pub notes: String,
}

pub(crate) fn inst(n: usize) -> String {
    format!("i-{n:08x}")
}

/// The key of the `n`th instance of Classic ELB `lb`.
pub(crate) fn elb_member(lb: &str, n: usize) -> String {
    format!("{P}/elb/us-east-1/{lb}/multiple/{}", inst(n))
}

/// Writes keys back-to-back from one client over one connection.
pub(crate) async fn put_all(etcd: &Etcd, keys: &[String]) {
    let mut client = etcd.client().await;
    for k in keys {
        client.put(k.as_str(), "", None).await.unwrap();
    }
}

pub(crate) fn lbmanager_calls(moto: &Moto) -> Vec<RecordedCall> {
    moto.recorded()
        .into_iter()
        .filter(|c| c.by_lbmanager())
        .collect()
}

pub(crate) fn is_r53_change(c: &RecordedCall) -> bool {
    c.method == "POST" && c.url.contains("/rrset")
}

/// The naive baseline: one AWS call (Route53: the original's List + UPSERT) per etcd event,
/// existing keys first. Returns the number of AWS calls it made.
pub(crate) async fn baseline(etcd: &Etcd, aws: &Aws, calls: Arc<AtomicUsize>) {
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

pub(crate) async fn naive_event(
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
pub(crate) async fn until<F, Fut>(since: Instant, done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually("convergence", LONG, done).await;
    since.elapsed()
}

pub(crate) async fn elb_count(aws: &Aws, lb: &str) -> usize {
    aws.instances("us-east-1", lb).await.len()
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The most calls in any one-second window.
pub(crate) fn peak_per_second(arrivals: &[Instant]) -> usize {
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

pub(crate) async fn run_baseline(etcd_url: &str, moto_url: &str, calls: Arc<AtomicUsize>) {
    let etcd = Etcd::attach(etcd_url);
    let aws = Aws::at(moto_url).await;
    baseline(&etcd, &aws, calls).await;
}

/// The baseline making each call once (as the Go original did: no retries).
pub(crate) async fn run_baseline_once(etcd_url: &str, url: &str, calls: Arc<AtomicUsize>) {
    let etcd = Etcd::attach(etcd_url);
    let aws = Aws::without_retries(url).await;
    baseline(&etcd, &aws, calls).await;
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn proc_stat(pid: u32) -> (u64, u64) {
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

/// etcdctl's own full read of the prefix (keys only, output thrown away): the floor of scenario M.
pub(crate) fn etcdctl_full_read(etcd: &Etcd) -> Duration {
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
pub(crate) async fn page_time(etcd: &Etcd, from: &str, limit: i64) -> Duration {
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
pub(crate) fn log_time(line: &str) -> Duration {
    let hms = &line[7..19];
    let f: Vec<f64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    Duration::from_secs_f64(f[0] * 3600.0 + f[1] * 60.0 + f[2])
}

/// Polls until the log has `needle` `n` times (or more), sampling the peak RSS meanwhile. The log
/// is read as it grows, each byte once: a first start of a million members logs tens of MiB, and
/// reading it whole every 20 ms took a core of the two from the run being measured.
pub(crate) async fn wait_sampling(
    daemon: &Daemon,
    needle: &str,
    n: usize,
    since: Instant,
    limit_secs: u64,
) -> (Duration, u64) {
    use std::io::Read;
    let pid = daemon.pid().unwrap();
    let mut peak = 0;
    let mut log = std::fs::File::open(daemon.log_path()).unwrap();
    let (mut seen, mut carry) = (0, String::new());
    loop {
        peak = peak.max(proc_stat(pid).1);
        let mut added = Vec::new();
        log.read_to_end(&mut added).unwrap();
        // A match may span what was read before and what is new: the end of the text read before
        // (shorter than the needle, so never a whole match) is kept in front of the new.
        let text = carry + &String::from_utf8_lossy(&added);
        seen += text.matches(needle).count();
        let mut keep = text.len().saturating_sub(needle.len() - 1);
        while !text.is_char_boundary(keep) {
            keep += 1;
        }
        carry = text[keep..].to_string();
        if seen >= n {
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

/// Keeps a result row, and says on stderr that it was measured (the table is printed once, on
/// stdout, at the end).
pub(crate) fn push(rows: &mut Vec<Row>, r: Row) {
    eprintln!("measured: {} / {}: {}", r.scenario, r.tool, r.time);
    rows.push(r);
}
