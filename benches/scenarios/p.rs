//! P: the status page of a large installation: 150 Classic ELBs × 1,000 members (150,000) in
//! step, its views timed from the client's side (the daemon's answer, over loopback), and their
//! sizes. Target (issue 32): the first view paged, no answer over 1 MiB, under 200 ms.

use std::time::{Duration, Instant};

use lbmanager_testkit::*;

use crate::common::*;
use crate::scale::{big_tree, records_size, start_up};

/// (time, bytes) of `GET path`: the best and the median of `n`.
fn timed(port: u16, path: &str, n: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = http_get(port, path).expect("an answer");
        times.push(t.elapsed());
        assert_eq!(status, 200, "{path}");
        bytes = body.len();
    }
    times.sort();
    (times[0], times[n / 2], bytes)
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / 1048576.0),
        b => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

pub(crate) async fn scenario_p(rows: &mut Vec<Row>) {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    big_tree(&etcd, &aws, 150).await;
    let mut daemon = Daemon::unstarted();
    start_up(&mut daemon, &etcd.url, &moto, 1, "1000").await;
    eventually("every status written", Duration::from_secs(120), || async {
        records_size(&etcd).await.0 >= 301
    })
    .await;
    let port = daemon.listen_port.unwrap();
    for (path, what) in [
        ("/", "first view (/): 150 load balancers"),
        ("/?fragment=1", "the update live.js fetches each second"),
        (
            "/lb/elb/us-east-1/lb0000",
            "one load balancer's page: 1,000 members",
        ),
        (
            "/status.json",
            "/status.json (every member, for scripts: not paged)",
        ),
    ] {
        let (best, median, bytes) = timed(port, path, 21);
        push(
            rows,
            Row {
                scenario: if path == "/" {
                    "P: the status page with 150,000 members (150 ELBs × 1,000) in step"
                } else {
                    "P"
                },
                tool: "lbmanager",
                calls: String::new(),
                time: format!("median {}, best {} (21 views)", ms(median), ms(best)),
                notes: format!("{what}: {}", size(bytes)),
            },
        );
    }
}
