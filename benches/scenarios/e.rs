//! E: start-up with 100,000 keys in etcd, AWS matching; idle cost.

use std::time::{Duration, Instant};

use lbmanager_testkit::*;

use crate::b::{route53_keys, zone_complete};
use crate::common::*;

pub(crate) async fn scenario_e(rows: &mut Vec<Row>, idle: Duration) {
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
