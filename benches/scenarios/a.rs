//! A: 1,000 instances added one key at a time to one ELB.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lbmanager_testkit::*;

use crate::common::*;

pub(crate) async fn scenario_a(rows: &mut Vec<Row>) {
    let keys: Vec<String> = (0..1000).map(|i| elb_member("webLB", i)).collect();
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
