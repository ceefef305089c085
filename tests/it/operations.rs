//! Running it: --dry-run, --once, JSON logs, lease-backed presence.

use std::time::Duration;

use lbmanager_testkit::*;

fn key(class: &str, id: &str) -> String {
    elb_key("webLB", class, id)
}

#[tokio::test]
async fn dry_run_changes_nothing_and_says_what_it_would_do() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let zone = aws.create_zone("example.com").await;
    etcd.put(&key("multiple", I1)).await;
    etcd.put(&key("single", I2)).await;
    etcd.put(&r53_key(&zone, "www.example.com", "192.0.2.1"))
        .await;
    moto.start_recording();
    let daemon = Daemon::start(&etcd, &moto, &["--dry-run"]);
    daemon.wait_ready().await;
    let log = daemon.log();
    assert!(log.contains("would register instances"), "{log}");
    assert!(log.contains("would change record set"), "{log}");
    assert!(log.contains("would delete superseded keys"), "{log}");
    let ours: Vec<_> = moto
        .recorded()
        .into_iter()
        .filter(|c| c.by_lbmanager())
        .collect();
    assert!(!ours.is_empty(), "it read AWS");
    assert!(ours.iter().all(|c| !c.is_mutating()), "{ours:#?}");
    assert!(aws.instances("us-east-1", "webLB").await.is_empty());
    assert!(aws.records(&zone, "www.example.com").await.is_empty());
    // etcd is left alone too: the superseded key stays, no managed record is written.
    assert_eq!(etcd.keys(&format!("{P}/elb/")).await.len(), 2);
    assert!(etcd
        .keys("/lbmanager-state/lbManager/managed/")
        .await
        .is_empty());
}

#[tokio::test]
async fn once_syncs_and_exits_0_when_converged_1_otherwise() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&key("multiple", I1)).await;
    let mut daemon = Daemon::start(&etcd, &moto, &["--once"]);
    assert_eq!(daemon.exit_code(DEADLINE).await, Some(0));
    assert_eq!(aws.instances("us-east-1", "webLB").await, strings(&[I1]));

    // A load balancer that does not exist: not converged.
    etcd.put(&format!("{P}/elb/us-east-1/ghostLB/multiple/{I2}"))
        .await;
    let mut daemon = Daemon::start(&etcd, &moto, &["--once"]);
    assert_eq!(daemon.exit_code(DEADLINE).await, Some(1));
    assert!(daemon.log().contains("ghostLB"));
}

#[tokio::test]
async fn json_logs_one_object_a_line() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let daemon = Daemon::start(&etcd, &moto, &["--log-format", "json"]);
    daemon.wait_ready().await;
    etcd.put(&key("multiple", I1)).await;
    daemon.wait_log("registered instances").await;
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let change = lines
        .iter()
        .find(|v| v["msg"] == "registered instances")
        .expect("the change line");
    assert_eq!(change["lb"], "elb/us-east-1/webLB");
    assert_eq!(change["added"], I1);
    assert_eq!(change["cause"], "etcd event");
    assert!(change["level"].is_string() && change["ts"].is_string());
}

/// A member written under a lease that is not kept alive leaves the load balancer when the lease
/// expires (its host died without running ExecStop).
#[tokio::test]
async fn member_under_an_expired_lease_leaves_the_load_balancer() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    let mut client = etcd.client().await;
    let lease = client.lease_grant(3, None).await.unwrap().id();
    client
        .put(
            key("multiple", I1),
            "",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    etcd.put(&key("multiple", I2)).await;
    eventually("both registered", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;
    // Nobody keeps the lease alive: etcd deletes the key after ~3 s.
    eventually(
        "the leased member left",
        Duration::from_secs(20),
        || async { aws.instances("us-east-1", "webLB").await == strings(&[I2]) },
    )
    .await;
    assert!(etcd.keys(&format!("{P}/elb/")).await.len() == 1);
    assert!(
        daemon.log().contains("cause: lease expiry"),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn plan_shows_drift_with_exit_2_and_in_step_with_exit_0() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let zone = aws.create_zone("example.com").await;
    etcd.put(&key("multiple", I1)).await;
    etcd.put(&r53_key(&zone, "www.example.com", "192.0.2.1"))
        .await;
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--etcd-endpoints",
            &etcd.url,
            "--aws-endpoint-url",
            &moto.url,
        ];
        args.extend_from_slice(extra);
        lbmanager(&args)
    };
    moto.start_recording();
    let (code, table, _) = plan(&[]);
    assert_eq!(code, Some(2), "{table}");
    assert!(
        table.contains("elb/us-east-1/webLB") && table.contains(&format!("register {I1}")),
        "{table}"
    );
    assert!(table.contains("CREATE A 192.0.2.1"), "{table}");
    assert!(
        moto.recorded().iter().all(|c| !c.is_mutating()),
        "plan changes nothing"
    );

    let (code, _, err) = lbmanager(&[
        "run",
        "--once",
        "--etcd-endpoints",
        &etcd.url,
        "--aws-endpoint-url",
        &moto.url,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, table, _) = plan(&[]);
    assert_eq!(code, Some(0), "{table}");
    assert_eq!(table.matches("in step").count(), 2, "{table}");

    // Drift by hand, seen in JSON.
    aws.register("us-east-1", "webLB", I2).await;
    let (code, json, _) = plan(&["--output", "json"]);
    assert_eq!(code, Some(2));
    let plans: Vec<serde_json::Value> = serde_json::from_str(&json).expect("JSON");
    let elb = plans
        .iter()
        .find(|p| p["load_balancer"] == "elb/us-east-1/webLB")
        .unwrap();
    assert_eq!(elb["changes"][0], format!("deregister {I2}"));
    assert_eq!(elb["desired"][0], I1);

    // A load balancer that cannot be read: exit 1.
    etcd.put(&format!("{P}/elb/us-east-1/ghostLB/multiple/{I1}"))
        .await;
    let (code, table, _) = plan(&[]);
    assert_eq!(code, Some(1), "{table}");
    assert!(table.contains("error:"), "{table}");
}

#[tokio::test]
async fn metrics_move_with_syncs_and_readyz_waits_for_the_first_sync() {
    use lbmanager_testkit::proxy::FaultProxy;
    use std::sync::atomic::Ordering;
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&key("multiple", I1)).await;
    // The first sync is slow (1.5 s a call), so /readyz can be seen saying no.
    let proxy = FaultProxy::start(moto.port, 0, 9);
    proxy.delay_ms.store(1500, Ordering::SeqCst);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &["--listen", &listen]);
    eventually("/healthz answers", DEADLINE, || async {
        http_get(port, "/healthz").map(|r| r.0) == Some(200)
    })
    .await;
    assert_eq!(http_get(port, "/readyz").unwrap().0, 503);
    proxy.delay_ms.store(0, Ordering::SeqCst);
    eventually("/readyz says ready", DEADLINE, || async {
        http_get(port, "/readyz").map(|r| r.0) == Some(200)
    })
    .await;

    let (status, text) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    // Prometheus/OpenMetrics text: comments, samples `name{labels} value`, `# EOF` last.
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("a sample");
        assert!(series.starts_with("lbmanager_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    let register = "lbmanager_aws_calls_total{service=\"elb\",\
        operation=\"RegisterInstancesWithLoadBalancer\",result=\"ok\"}";
    let syncs = "lbmanager_syncs_total{kind=\"elb\",result=\"ok\"}";
    assert_eq!(sample(&text, register), Some(1.0), "{text}");
    let syncs_before = sample(&text, syncs).unwrap();
    assert!(sample(&text, "lbmanager_last_full_sync_timestamp_seconds").unwrap() > 1e9);
    assert!(sample(&text, "lbmanager_etcd_watch_revision").is_some());

    etcd.put(&key("multiple", I2)).await;
    eventually(
        "the counters moved with the next sync",
        DEADLINE,
        || async {
            let text = http_get(port, "/metrics").unwrap().1;
            sample(&text, register) == Some(2.0)
                && sample(&text, syncs).unwrap_or(0.0) > syncs_before
                && sample(
                    &text,
                    "lbmanager_members{load_balancer=\"elb/us-east-1/webLB\"}",
                ) == Some(2.0)
        },
    )
    .await;
    assert!(text.contains("lbmanager_sync_duration_seconds_bucket"));
    assert_eq!(daemon.stop(), Some(0));
}
