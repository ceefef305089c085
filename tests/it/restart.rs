//! Restart safety: lbmanager reads the whole tree at start, so changes made while it was down
//! converge, and a restart with etcd already matching AWS changes nothing in AWS.

use lbmanager_testkit::*;

/// How long the 150,000-member test waits for a sync that moto paces.
const SLOW_MOTO: std::time::Duration = std::time::Duration::from_secs(120);

fn key(id: &str) -> String {
    elb_key("webLB", "multiple", id)
}

#[tokio::test]
async fn changes_made_while_stopped_converge_at_start() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let zone = aws.create_zone("example.com").await;
    let rkey = |ip: &str| r53_key(&zone, "www.example.com", ip);
    etcd.put(&key(I1)).await;
    etcd.put(&key(I2)).await;
    etcd.put(&rkey("192.0.2.1")).await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("first convergence", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
            && !aws.records(&zone, "www.example.com").await.is_empty()
    })
    .await;
    assert_eq!(daemon.stop(), Some(0), "SIGTERM exits 0");

    etcd.del(&key(I1)).await;
    etcd.put(&key(I3)).await;
    etcd.put(&rkey("192.0.2.2")).await;
    etcd.del(&rkey("192.0.2.1")).await;

    daemon.spawn(&etcd.url, &moto.url, &[]);
    eventually("converged after the restart", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I3, I2])
            && aws
                .records(&zone, "www.example.com")
                .await
                .get("A")
                .map(|r| r.1.clone())
                == Some(strings(&["192.0.2.2"]))
    })
    .await;
}

#[tokio::test]
async fn restart_when_converged_makes_zero_mutating_calls() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let zone = aws.create_zone("example.com").await;
    for id in [I1, I2] {
        etcd.put(&key(id)).await;
    }
    for ip in ["192.0.2.1", "2001:db8::1"] {
        etcd.put(&r53_key(&zone, "www.example.com", ip)).await;
    }
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    eventually("converged", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
            && aws.records(&zone, "www.example.com").await.len() == 2
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));

    moto.start_recording();
    daemon.spawn(&etcd.url, &moto.url, &[]);
    daemon.wait_ready().await;
    let calls = moto.recorded();
    let ours: Vec<_> = calls.iter().filter(|c| c.by_lbmanager()).collect();
    // It did look (so this test can fail): one Describe and one record-set read.
    assert!(
        ours.iter()
            .any(|c| c.body.contains("Action=DescribeLoadBalancers")),
        "{calls:#?}"
    );
    assert!(
        ours.iter()
            .any(|c| c.method == "GET" && c.url.contains("/rrset")),
        "{calls:#?}"
    );
    let mutating: Vec<_> = ours.iter().filter(|c| c.is_mutating()).collect();
    assert!(
        mutating.is_empty(),
        "mutating calls on a converged restart: {mutating:#?}"
    );
    // No duplicate registrations either (moto would store a re-registered instance twice).
    assert_eq!(
        aws.instances("us-east-1", "webLB").await,
        strings(&[I1, I2])
    );
    let log = daemon.log();
    assert!(
        !log.contains(AWS_SECRET) && !log.contains(AWS_KEY_ID),
        "a credential in the log"
    );
}

#[tokio::test]
async fn unreachable_etcd_at_start_is_a_clear_error() {
    let moto = Moto::start().await;
    let mut etcd = Etcd::start().await;
    etcd.stop();
    let mut daemon = Daemon::start(&etcd, &moto, &["--etcd-connect-timeout", "2s"]);
    let code = daemon.exit_code(std::time::Duration::from_secs(20)).await;
    assert_eq!(code, Some(1));
    let log = daemon.log();
    assert!(log.contains("cannot read from etcd, giving up"), "{log}");
    assert!(
        log.contains(&etcd.url),
        "the error names the endpoint: {log}"
    );
}

/// With several endpoints, a dead one does not stop lbmanager: requests go to the live one.
#[tokio::test]
async fn a_dead_endpoint_among_several_is_failed_over() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&key(I1)).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&format!("{dead},{}", etcd.url), &moto.url, &[]);
    eventually("converged", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    etcd.put(&key(I2)).await;
    eventually("watch events arrive", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;
}

/// The largest installation the README's limits name: 150 Classic ELBs of 1,000 instances (AWS's
/// maximum per ELB), synced for real, so that lbmanager's own records (a status of ~30 KiB per
/// load balancer, ~4.7 MiB in all) are over what one etcd answer may carry to the client (4 MiB).
/// A restart reads them back (in pages) and completes; `status` and `plan` exit 0.
#[tokio::test]
async fn one_hundred_fifty_thousand_members_restart() {
    const LBS: usize = 150;
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let name = |n: usize| format!("big{n:03}");
    for chunk in (0..LBS).collect::<Vec<_>>().chunks(10) {
        futures::future::join_all(chunk.iter().map(|&n| {
            let aws = &aws;
            let name = name(n);
            async move { aws.create_elb("us-east-1", &name).await }
        }))
        .await;
    }
    etcd.put_many((0..LBS * 1000).map(|n| {
        format!(
            "/lbManager/elb/us-east-1/{}/multiple/i-{n:017x}",
            name(n / 1000)
        )
    }))
    .await;
    let flags = ["--aws-quota-share", "100"];
    let mut daemon = Daemon::start(&etcd, &moto, &flags);
    // Moto, not lbmanager, sets the pace of 150,000 registrations on 2 cores (its Register
    // answers take up to 15 s there): a bound for the test, not a speed target (BENCHMARKS.md, R).
    daemon.wait_ready_within(SLOW_MOTO).await;
    // (A Register of 1,000 instances can time out on a loaded machine: retried, it lands.)
    eventually("every ELB full", DEADLINE, || async {
        for n in [0, LBS / 2, LBS - 1] {
            if aws.instances("us-east-1", &name(n)).await.len() != 1000 {
                return false;
            }
        }
        true
    })
    .await;
    let statuses = || async { etcd.keys("/lbmanager-state/lbManager/status/").await.len() };
    eventually("every status written", DEADLINE, || async {
        statuses().await == LBS
    })
    .await;
    let mut client = etcd.client().await;
    let records = client
        .get(
            "/lbmanager-state/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert!(records.count() as usize > LBS);
    assert_eq!(daemon.stop(), Some(0));

    let restarted = std::time::Instant::now();
    daemon.spawn(&etcd.url, &moto.url, &flags);
    daemon.wait_ready_within(SLOW_MOTO).await;
    let took = restarted.elapsed();
    let peak = daemon.peak_rss_kib().unwrap_or(0);
    let log = daemon.log();
    assert!(!log.contains("too large"), "{log}");
    assert!(!log.contains("giving up"), "{log}");
    let endpoints = [
        "--etcd-endpoints",
        &etcd.url,
        "--aws-endpoint-url",
        &moto.url,
    ];
    let status_args = [&["status"][..], &endpoints[..2]].concat();
    eventually("status: all in step", DEADLINE, || async {
        lbmanager_async(&status_args).await.0 == Some(0)
    })
    .await;
    let (code, out, err) = lbmanager_async(&status_args).await;
    assert_eq!(code, Some(0), "status: {err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("elb/")).count(),
        LBS,
        "{out}"
    );
    let (code, out, err) = lbmanager_async(&[&["plan"][..], &endpoints[..]].concat()).await;
    assert_eq!(code, Some(0), "plan: {out}{err}");
    assert_eq!(daemon.stop(), Some(0));
    eprintln!(
        "FIGURES restart-150k: 150 ELBs x 1,000 instances, restart to initial sync {took:?}, \
         peak RSS {} MiB",
        peak / 1024
    );
}

/// The keys of lbmanager's records written since etcd revision `since`, and etcd's revision now.
async fn written_since(etcd: &Etcd, since: i64) -> (Vec<String>, i64) {
    let state = etcd.range("/lbmanager-state/").await;
    let now = state.header().unwrap().revision();
    let keys = state
        .kvs()
        .iter()
        .filter(|kv| kv.mod_revision() > since)
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    (keys, now)
}

/// The records written since etcd revision `since` by a `what` (a restart, a failover) of 200
/// load balancers in step: at most 2, said with its figure. Returns etcd's revision now.
async fn at_most_two_written(etcd: &Etcd, since: i64, what: &str) -> i64 {
    let (written, now) = written_since(etcd, since).await;
    let n = written.len();
    eprintln!("FIGURES {what} of 200 load balancers in step: {n} records written");
    assert!(n <= 2, "a {what} wrote {n}: {written:?}");
    now
}

/// 100 ELBs and 100 FQDNs in step: a restart, and a failover to a standby (`--ha`), each write
/// at most 2 of lbmanager's records (its heartbeat, and one more at most), whatever the number
/// of load balancers. Each load balancer's actor starts from the status its predecessor
/// published, and writes it again only when what it says changed.
#[tokio::test]
async fn a_restart_or_a_failover_in_step_rewrites_no_status() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    let mut keys = Vec::new();
    for n in 0..100 {
        let lb = format!("lb{n:03}");
        aws.create_elb("us-east-1", &lb).await;
        keys.push(elb_key(&lb, "multiple", I1));
        keys.push(r53_key(&zone, &format!("h{n:03}.example.com"), "192.0.2.1"));
    }
    etcd.put_many(keys.into_iter()).await;
    let in_step = || async {
        lbmanager_async(&["status", "--etcd-endpoints", &etcd.url])
            .await
            .0
            == Some(0)
    };
    let ha = ["--ha", "--ha-lease-ttl", "3s"];
    let mut a = Daemon::start(&etcd, &moto, &ha);
    a.wait_ready().await;
    eventually("all in step", SLOW_MOTO, in_step).await;
    assert_eq!(a.stop(), Some(0));
    let (_, before) = written_since(&etcd, 0).await;

    a.spawn(&etcd.url, &moto.url, &ha);
    a.wait_ready().await;
    eventually("all in step after the restart", SLOW_MOTO, in_step).await;
    let before = at_most_two_written(&etcd, before, "restart").await;

    let mut b = Daemon::start(&etcd, &moto, &ha);
    assert_eq!(
        a.stop(),
        Some(0),
        "the leader stops; the standby takes over"
    );
    b.wait_ready().await;
    eventually("all in step after the failover", SLOW_MOTO, in_step).await;
    at_most_two_written(&etcd, before, "failover").await;
    b.stop();
}
