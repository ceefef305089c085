//! C: 100 ELBs × 10 instances changed together, AWS's throttling emulated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbmanager_testkit::throttle::{Rules, Throttler};
use lbmanager_testkit::*;

use crate::common::*;

/// The least time AWS's buckets allow for `draws` (how many calls draw from each bucket, and the
/// bucket): for each bucket, what its burst does not cover, at its refill rate; the largest.
pub(crate) fn quota_floor(draws: &[(usize, (f64, f64))]) -> Duration {
    let secs = draws
        .iter()
        .map(|&(n, (capacity, refill))| ((n as f64 - capacity) / refill).max(0.0))
        .fold(0.0, f64::max);
    Duration::from_secs_f64(secs)
}

pub(crate) async fn scenario_c(rows: &mut Vec<Row>) {
    let lbs: Vec<String> = (0..100).map(|i| format!("lb{i:03}")).collect();
    // Interleaved: every ELB gets its 10 instances over the whole burst.
    let keys: Vec<String> = (0..10)
        .flat_map(|n| lbs.iter().map(move |lb| elb_member(lb, n)))
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
