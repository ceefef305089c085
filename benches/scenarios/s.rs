//! S: a restart, and a resync, of N Classic ELBs in step (one instance each, lbmanager's records
//! written by a first start), at default pacing behind AWS's throttling emulated: how many
//! DescribeLoadBalancers, and how long to "initial sync complete". The binary under bench, and in the same run the one named by `BENCH_BEFORE_BIN`
//! (a release build of the commit before ELB reads were coalesced), when it is set.

use std::time::{Duration, Instant};

use lbmanager_testkit::throttle::{Rules, Throttler};
use lbmanager_testkit::*;

use crate::c::quota_floor;
use crate::common::*;

/// The resync interval of the runs.
const RESYNC: Duration = Duration::from_secs(30);

pub(crate) async fn scenario_s(rows: &mut Vec<Row>) {
    let before = std::env::var("BENCH_BEFORE_BIN").ok();
    for n in [300, 1_000] {
        let (etcd, moto) = (Etcd::start().await, Moto::start().await);
        let aws = Aws::new(&moto).await;
        let mut keys = Vec::new();
        for i in 0..n {
            let lb = format!("lb{i:04}");
            aws.create_elb("us-east-1", &lb).await;
            aws.register("us-east-1", &lb, &inst(i)).await;
            keys.push(elb_member(&lb, i));
        }
        put_all(&etcd, &keys).await;
        // A first start writes lbmanager's records (a managed record before each first change);
        // what is measured is a restart with them in place, by each binary.
        let mut first = Daemon::unstarted();
        first.spawn(&etcd.url, &moto.url, &["--log-level", "info"]);
        eventually("the first start's sync", LONG, || async {
            first.log().contains("initial sync complete")
        })
        .await;
        assert_eq!(first.stop(), Some(0));
        let floor = quota_floor(&[(n, Rules::default().elb_describe)]);
        let mut tools = vec![("lbmanager", None)];
        if let Some(bin) = &before {
            tools.push(("lbmanager before (one read per ELB)", Some(bin.clone())));
        }
        for (tool, bin) in tools {
            let proxy = Throttler::start(moto.port, Rules::default());
            let mut daemon = Daemon::unstarted();
            if let Some(bin) = &bin {
                // The testkit spawns `LBMANAGER_BIN` when it is set (the benchmark is one thread).
                std::env::set_var("LBMANAGER_BIN", bin);
            }
            let t = Instant::now();
            let interval = format!("{}s", RESYNC.as_secs());
            daemon.spawn(
                &etcd.url,
                &proxy.url,
                &["--log-level", "info", "--resync-interval", &interval],
            );
            std::env::remove_var("LBMANAGER_BIN");
            eventually("initial sync complete", LONG, || async {
                daemon.log().contains("initial sync complete")
            })
            .await;
            let started = t.elapsed();
            let describes = |proxy: &Throttler| {
                let seen = proxy.seen.lock().unwrap();
                seen.iter()
                    .filter(|s| s.operation.contains("DescribeLoadBalancers"))
                    .count()
            };
            let at_start = describes(&proxy);
            let throttled = proxy.throttled();
            // The resync ticks come every RESYNC from the actors' start (before "initial sync
            // complete"): the next RESYNC holds one (an actor still reading skips it).
            tokio::time::sleep(RESYNC).await;
            let resync = describes(&proxy) - at_start;
            drop(daemon);
            push(
                rows,
                Row {
                    scenario: if n == 300 {
                        "S: restart of 300 Classic ELBs in step, AWS's throttling emulated"
                    } else {
                        "S: restart of 1,000 Classic ELBs in step, AWS's throttling emulated"
                    },
                    tool,
                    calls: format!(
                        "{at_start} DescribeLoadBalancers at start ({throttled} throttled), \
                         {resync} in the next 30 s (one resync tick)"
                    ),
                    time: format!(
                        "{} to initial sync complete (floor of one read per ELB: {})",
                        secs(started),
                        secs(floor)
                    ),
                    notes: format!("goal: at most {} calls", n.div_ceil(400) + 2),
                },
            );
        }
    }
}
