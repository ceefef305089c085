//! B1/B2: 10,000 Route53 members over 100 FQDNs, at start and while running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_route53::types::RrType;
use lbmanager_testkit::throttle::{self, Rules, Throttler};
use lbmanager_testkit::*;

use crate::common::*;

/// 10,000 members over 100 FQDNs (100 each) in one zone.
pub(crate) fn route53_keys(zone: &str, fqdns: usize, per: usize) -> Vec<String> {
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

pub(crate) async fn zone_complete(aws: &Aws, zone: &str, fqdns: usize, per: usize) -> bool {
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

pub(crate) async fn scenario_b(rows: &mut Vec<Row>, which: &str) {
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
