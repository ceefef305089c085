//! Nothing lost under faults: each test injects a fault for real (a failing AWS, a restarting or
//! compacted etcd, a killed lbmanager, drift by hand) and checks that AWS ends equal to etcd.
//! The figures each test prints (`FIGURES …`) are the ones in the README's reliability section.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbmanager_testkit::proxy::{FaultProxy, Rng, TcpCut};
use lbmanager_testkit::*;

fn key(lb: &str, id: &str) -> String {
    elb_key(lb, "multiple", id)
}

fn inst(n: u64) -> String {
    format!("i-{n:08x}")
}

/// The ELB members etcd asks for: every `multiple` key, by load balancer.
async fn wanted(etcd: &Etcd, lbs: &[String]) -> BTreeMap<String, Vec<String>> {
    let keys = etcd.keys(&format!("{P}/elb/")).await;
    lbs.iter()
        .map(|lb| {
            let prefix = format!("{P}/elb/us-east-1/{lb}/multiple/");
            let ids: Vec<String> = keys
                .iter()
                .filter(|k| matches!(lbmanager::key::parse(P, k), Ok(Some(_))))
                .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
                .collect();
            (lb.clone(), ids)
        })
        .collect()
}

async fn actual(aws: &Aws, lbs: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for lb in lbs {
        out.insert(lb.clone(), aws.instances("us-east-1", lb).await);
    }
    out
}

/// Waits until AWS equals etcd for `lbs`; returns how long it took.
async fn converge(etcd: &Etcd, aws: &Aws, lbs: &[String], timeout: Duration) -> Duration {
    let start = Instant::now();
    eventually("AWS equals etcd", timeout, || async {
        wanted(etcd, lbs).await == actual(aws, lbs).await
    })
    .await;
    start.elapsed()
}

/// Counts members that differ between etcd and AWS (0 when converged).
async fn mismatch(etcd: &Etcd, aws: &Aws, lbs: &[String]) -> usize {
    let (w, a) = (wanted(etcd, lbs).await, actual(aws, lbs).await);
    lbs.iter()
        .map(|lb| {
            let w: BTreeSet<_> = w[lb].iter().collect();
            let a: BTreeSet<_> = a[lb].iter().collect();
            w.symmetric_difference(&a).count()
        })
        .sum()
}

async fn create_elbs(aws: &Aws, n: usize) -> Vec<String> {
    let mut lbs = Vec::new();
    for i in 0..n {
        let name = format!("lb{i:02}");
        aws.create_elb("us-east-1", &name).await;
        lbs.push(name);
    }
    lbs
}

/// Applies `n` random changes (puts and deletes of members, 30 possible members per load
/// balancer) over one etcd connection, retrying each until etcd takes it (polling every 50 ms
/// while etcd is down, for DEADLINE at most). `done` counts the changes applied.
async fn burst(etcd_url: &str, lbs: &[String], n: usize, seed: u64, done: Arc<AtomicUsize>) {
    let mut rng = Rng(seed);
    let mut client = None;
    for _ in 0..n {
        let lb = &lbs[rng.below(lbs.len() as u64) as usize];
        let k = key(lb, &inst(rng.below(30)));
        let delete = rng.below(3) == 0;
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd took no change for {DEADLINE:?}"
            );
            if client.is_none() {
                client = etcd_client::Client::connect([etcd_url], None).await.ok();
            }
            let Some(c) = client.as_mut() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let res = if delete {
                c.delete(k.as_str(), None).await.map(|_| ())
            } else {
                c.put(k.as_str(), "", None).await.map(|_| ())
            };
            match res {
                Ok(()) => {
                    done.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn aws_failing_30_percent_still_converges_exactly() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 20).await;
    let proxy = FaultProxy::start(moto.port, 30, 42);
    let mut daemon = Daemon::unstarted();
    // The rate limit is raised: this test is about faults, not pacing.
    daemon.spawn(
        &etcd.url,
        &proxy.url,
        &["--aws-timeout", "5s", "--aws-quota-share", "5"],
    );
    daemon.wait_ready().await;
    burst(&etcd.url, &lbs, 1000, 7, Arc::default()).await;
    let took = converge(&etcd, &aws, &lbs, Duration::from_secs(180)).await;
    let c = &proxy.counts;
    assert!(c.injected() >= 20, "faults were injected: {c:?}");
    assert_eq!(mismatch(&etcd, &aws, &lbs).await, 0);
    // No duplicate registrations in moto, though some answers were lost after the change.
    for (lb, ids) in actual(&aws, &lbs).await {
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{lb} has a duplicate: {ids:?}");
    }
    eprintln!(
        "FIGURES aws-faults: changes=1000 lbs=20 requests={} injected={} (500={} 503={} throttling={} \
         prior-request={} dropped-before={} dropped-after-apply={}) delayed={} converged_after_burst={:?} mismatch=0",
        c.total(),
        c.injected(),
        c.error_500.load(Ordering::SeqCst),
        c.error_503.load(Ordering::SeqCst),
        c.throttling.load(Ordering::SeqCst),
        c.prior_request.load(Ordering::SeqCst),
        c.dropped_before.load(Ordering::SeqCst),
        c.dropped_after.load(Ordering::SeqCst),
        c.delayed.load(Ordering::SeqCst),
        took,
    );
}

#[tokio::test]
async fn etcd_restarted_ten_times_during_a_burst() {
    let (mut etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 5).await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    let url = etcd.url.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (lbs, done) = (lbs.clone(), done.clone());
        async move { burst(&url, &lbs, 1000, 11, done).await }
    });
    for round in 1..=10 {
        // Restart whenever another 80 changes went through: the outages fall inside the burst.
        eventually("the burst goes on", DEADLINE, || async {
            done.load(Ordering::SeqCst) >= round * 80
        })
        .await;
        etcd.restart().await;
    }
    writer.await.unwrap();
    let took = converge(&etcd, &aws, &lbs, Duration::from_secs(120)).await;
    assert_eq!(mismatch(&etcd, &aws, &lbs).await, 0);
    let reconnects = daemon
        .log()
        .matches("etcd watch broken, will reconnect")
        .count();
    assert!(
        reconnects >= 10,
        "the watch broke and came back ({reconnects} reconnects)"
    );
    eprintln!(
        "FIGURES etcd-restarts: restarts=10 changes=1000 lbs=5 watch_reconnects={reconnects} \
         converged_after_burst={took:?} mismatch=0"
    );
}

#[tokio::test]
async fn compaction_while_cut_off_is_recovered_by_a_relist() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 2).await;
    for i in 0..4 {
        etcd.put(&key(&lbs[0], &inst(i))).await;
        etcd.put(&key(&lbs[1], &inst(i))).await;
    }
    let cut = TcpCut::start(etcd.port());
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&cut.url, &moto.url, &[]);
    converge(&etcd, &aws, &lbs, DEADLINE).await;

    cut.cut();
    // Meanwhile: deletes (which a relist must still see) and adds, then history compacted away.
    for i in 0..3 {
        etcd.del(&key(&lbs[0], &inst(i))).await;
    }
    etcd.put(&key(&lbs[1], &inst(9))).await;
    for i in 0..20 {
        etcd.put(&format!("{P}/_churn/{i}")).await;
    }
    let rev = etcd
        .client()
        .await
        .status()
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.client().await.compact(rev, None).await.unwrap();
    // While etcd is away AWS is left as it is.
    assert_eq!(aws.instances("us-east-1", &lbs[0]).await.len(), 4);
    cut.restore();

    converge(&etcd, &aws, &lbs, DEADLINE).await;
    assert_eq!(aws.instances("us-east-1", &lbs[0]).await, vec![inst(3)]);
    assert!(daemon.log().contains("relisting"), "{}", daemon.log());
    eprintln!("FIGURES compaction: deletes_during_gap=3 adds_during_gap=1 relist=yes mismatch=0");
}

#[tokio::test]
async fn killed_with_sigkill_ten_times_during_a_burst() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 5).await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    let url = etcd.url.clone();
    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (lbs, done) = (lbs.clone(), done.clone());
        async move { burst(&url, &lbs, 1000, 23, done).await }
    });
    for round in 1..=10 {
        daemon.wait_log_count("read etcd", round).await;
        // Kill it mid-work: once another 80 changes were written since it started.
        let seen = done.load(Ordering::SeqCst);
        eventually("the burst goes on", DEADLINE, || async {
            done.load(Ordering::SeqCst) >= (seen + 80).min(1000)
        })
        .await;
        daemon.kill9();
        daemon.spawn(&etcd.url, &moto.url, &[]);
    }
    writer.await.unwrap();
    let took = converge(&etcd, &aws, &lbs, Duration::from_secs(60)).await;
    assert_eq!(mismatch(&etcd, &aws, &lbs).await, 0);
    for (lb, ids) in actual(&aws, &lbs).await {
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{lb} has a duplicate: {ids:?}");
    }
    eprintln!(
        "FIGURES sigkill: kills=10 changes=1000 lbs=5 converged_after_burst={took:?} mismatch=0"
    );
}

#[tokio::test]
async fn drift_made_by_hand_is_corrected_within_one_resync_interval() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 1).await;
    let zone = aws.create_zone("example.com").await;
    etcd.put(&key(&lbs[0], &inst(1))).await;
    etcd.put(&r53_key(&zone, "www.example.com", "192.0.2.1"))
        .await;
    let daemon = Daemon::start(&etcd, &moto, &["--resync-interval", "2s"]);
    converge(&etcd, &aws, &lbs, DEADLINE).await;

    // By hand: an extra instance registered, and the record set changed.
    aws.register("us-east-1", &lbs[0], &inst(7)).await;
    aws.route53
        .change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            aws_sdk_route53::types::ChangeBatch::builder()
                .changes(
                    aws_sdk_route53::types::Change::builder()
                        .action(aws_sdk_route53::types::ChangeAction::Upsert)
                        .resource_record_set(
                            aws_sdk_route53::types::ResourceRecordSet::builder()
                                .name("www.example.com.")
                                .r#type(aws_sdk_route53::types::RrType::A)
                                .ttl(60)
                                .resource_records(
                                    aws_sdk_route53::types::ResourceRecord::builder()
                                        .value("198.51.100.9")
                                        .build()
                                        .unwrap(),
                                )
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let start = Instant::now();
    eventually(
        "drift corrected",
        std::time::Duration::from_secs(10),
        || async {
            aws.instances("us-east-1", &lbs[0]).await == vec![inst(1)]
                && aws
                    .records(&zone, "www.example.com")
                    .await
                    .get("A")
                    .map(|r| r.1.clone())
                    == Some(strings(&["192.0.2.1"]))
        },
    )
    .await;
    assert!(daemon.log().contains("resync (drift)"));
    eprintln!(
        "FIGURES drift: resync_interval=2s corrected_after={:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn keys_deleted_while_stopped_are_applied_at_start() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 2).await;
    let zone = aws.create_zone("example.com").await;
    let rkey = r53_key(&zone, "www.example.com", "192.0.2.1");
    etcd.put(&key(&lbs[0], &inst(1))).await;
    etcd.put(&key(&lbs[0], &inst(2))).await;
    etcd.put(&key(&lbs[1], &inst(3))).await;
    etcd.put(&rkey).await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    converge(&etcd, &aws, &lbs, DEADLINE).await;
    eventually("record set written", DEADLINE, || async {
        !aws.records(&zone, "www.example.com").await.is_empty()
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));

    // Every key of lb00 and of the FQDN goes while lbmanager is away.
    etcd.del(&key(&lbs[0], &inst(1))).await;
    etcd.del(&key(&lbs[0], &inst(2))).await;
    etcd.del(&rkey).await;
    daemon.spawn(&etcd.url, &moto.url, &[]);
    eventually(
        "lb00 emptied and the record set deleted",
        DEADLINE,
        || async {
            aws.instances("us-east-1", &lbs[0]).await.is_empty()
                && aws.records(&zone, "www.example.com").await.is_empty()
        },
    )
    .await;
    assert_eq!(aws.instances("us-east-1", &lbs[1]).await, vec![inst(3)]);
    eventually(
        "their managed records are gone, lb01's stays",
        DEADLINE,
        || async {
            etcd.keys("/lbmanager-state/lbManager/managed/").await
                == ["/lbmanager-state/lbManager/managed/elb/us-east-1/lb01".to_string()].into()
        },
    )
    .await;
}

#[tokio::test]
async fn filters_and_upsert_only_leave_the_rest_alone() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 2).await;
    // Registered by someone else: upsert-only must keep it.
    aws.register("us-east-1", "lb00", &inst(99)).await;
    etcd.put(&key("lb00", &inst(1))).await;
    etcd.put(&key("lb01", &inst(2))).await;
    let daemon = Daemon::start(
        &etcd,
        &moto,
        &["--elb-filter", "us-east-1/lb00", "--policy", "upsert-only"],
    );
    eventually("lb00 gained its member", DEADLINE, || async {
        aws.instances("us-east-1", "lb00").await == vec![inst(1), inst(99)]
    })
    .await;
    etcd.del(&key("lb00", &inst(1))).await;
    daemon.wait_log("outside --elb-filter").await;
    daemon.wait_ready().await;
    etcd.put(&key("lb00", &inst(3))).await;
    eventually("lb00 gained another member", DEADLINE, || async {
        aws.instances("us-east-1", "lb00").await == vec![inst(1), inst(3), inst(99)]
    })
    .await;
    // lb01 is outside the filter: never touched.
    assert!(aws.instances("us-east-1", &lbs[1]).await.is_empty());
    assert!(!daemon.log().contains("deregistered"));
}

#[tokio::test]
async fn sigterm_finishes_the_call_in_flight_and_exits_0() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 1).await;
    let proxy = FaultProxy::start(moto.port, 0, 1);
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    proxy.delay_ms.store(1500, Ordering::SeqCst);
    let before = proxy.counts.received.load(Ordering::SeqCst);
    etcd.put(&key(&lbs[0], &inst(1))).await;
    eventually("a sync is in flight", DEADLINE, || async {
        proxy.counts.received.load(Ordering::SeqCst) > before
    })
    .await;
    let start = Instant::now();
    assert_eq!(daemon.stop(), Some(0));
    // The sync in flight (a slow Describe, then its Register) was finished, not cut.
    assert_eq!(aws.instances("us-east-1", &lbs[0]).await, vec![inst(1)]);
    assert!(daemon.log().contains("stopped cleanly"));
    eprintln!(
        "FIGURES sigterm: exit=0 after {:?} with a 1.5s call in flight",
        start.elapsed()
    );
}

/// Writes 10,000 random malformed keys (twice) while valid keys change: lbmanager stays up, warns
/// once about each bad key, keeps its memory bounded and converges the valid ones.
#[tokio::test]
async fn flood_of_bad_keys() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs = create_elbs(&aws, 3).await;
    let mut daemon = Daemon::start(&etcd, &moto, &["--log-level", "info"]);
    daemon.wait_ready().await;
    let mut rng = Rng(99);
    let alphabet: Vec<char> = "abcXYZ019-_.:*/ %i".chars().collect();
    let mut bad = BTreeSet::new();
    while bad.len() < 10_000 {
        let tail: String = (0..rng.below(40) + 1)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        let k = match rng.below(5) {
            0 => format!("{P}/elb/us-east-1/lb00/multiple/{tail}"),
            1 => r53_key("Z1", &tail, "1.2.3.4"),
            2 => format!("{P}/elb/{tail}"),
            3 => format!("{P}/nokind{tail}"),
            _ => format!("{P}/elb/us-east-1/lb00/{tail}/i-00000001"),
        };
        if !k.contains(", key: ") && lbmanager::key::parse(P, &k).is_err() {
            bad.insert(k);
        }
    }
    let mut client = etcd.client().await;
    let rss_start = daemon.rss_kib().unwrap();
    for round in 0..2 {
        for (i, k) in bad.iter().enumerate() {
            client.put(k.as_str(), "", None).await.unwrap();
            if i % 1000 == 0 {
                let lb = &lbs[(i / 1000) % lbs.len()];
                client
                    .put(key(lb, &inst((round * 10 + i / 1000) as u64)), "", None)
                    .await
                    .unwrap();
            }
        }
    }
    converge(&etcd, &aws, &lbs, DEADLINE).await;
    let log = daemon.log();
    eventually("every bad key warned about", DEADLINE, || async {
        daemon.log().matches("ignoring malformed key").count() >= bad.len()
    })
    .await;
    let mut warned: BTreeMap<String, usize> = BTreeMap::new();
    for line in daemon
        .log()
        .lines()
        .filter(|l| l.contains("ignoring malformed key"))
    {
        let (_, k) = line
            .rsplit_once(", key: ")
            .expect("the warning names the key");
        *warned.entry(k.to_string()).or_default() += 1;
    }
    assert_eq!(warned.len(), bad.len(), "every bad key warned about");
    assert!(warned.values().all(|n| *n == 1), "each exactly once");
    assert!(daemon.is_running());
    let rss_end = daemon.rss_kib().unwrap();
    assert!(rss_end < 128 * 1024, "RSS {rss_end} KiB after the flood");
    drop(log);
    eprintln!(
        "FIGURES bad-keys: bad_keys=10000 writes=20000 warnings={} rss_kib_before={rss_start} rss_kib_after={rss_end}",
        warned.values().sum::<usize>()
    );
}
