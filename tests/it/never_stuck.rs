//! Never stuck, never silent: the faults production brings every week, each of which once froze a
//! load balancer or the watch without a word. Real etcd and moto; where real AWS refuses what moto
//! accepts (a terminated instance), a proxy answers as AWS does.

use std::time::Duration;

use lbmanager_testkit::proxy::FaultProxy;
use lbmanager_testkit::*;

const GOOD1: &str = "i-00000000000000a01";
const GOOD2: &str = "i-00000000000000a02";
const GOOD3: &str = "i-00000000000000a03";
const DEAD: &str = "i-0000000000000dead";

/// The member keys of `lbs` load balancers of 1,000 members each, named NAME0000, NAME0001, …
fn tree(name: &str, lbs: u64) -> impl Iterator<Item = String> + '_ {
    (0..lbs * 1000).map(move |n| {
        elb_key(
            &format!("{name}{:04}", n / 1000),
            "multiple",
            &format!("i-{n:017x}"),
        )
    })
}

fn tg_member(tg: &str, id: &str) -> String {
    tg_key(tg, "multiple", id)
}

/// A terminated host's key stays in etcd; AWS refuses it. The other members are still
/// registered and deregistered around it, it is warned about once with its key, counted, shown by
/// `plan`, and a load balancer whose only wanted member is refused is not emptied.
#[tokio::test]
async fn a_rejected_instance_does_not_freeze_its_elb() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    aws.create_elb("us-east-1", "web").await;
    aws.create_elb("us-east-1", "solo").await;
    etcd.put(&elb_key("web", "multiple", GOOD1)).await;
    etcd.put(&elb_key("web", "multiple", GOOD2)).await;
    etcd.put(&elb_key("solo", "single", GOOD1)).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &["--listen", &listen]);
    daemon.wait_ready().await;
    assert_eq!(
        aws.instances("us-east-1", "web").await,
        strings(&[GOOD1, GOOD2])
    );

    // The terminated host's key arrives; another member leaves, a third arrives.
    etcd.put(&elb_key("web", "multiple", DEAD)).await;
    etcd.del(&elb_key("web", "multiple", GOOD2)).await;
    etcd.put(&elb_key("web", "multiple", GOOD3)).await;
    eventually("web has every member AWS accepts", DEADLINE, || async {
        aws.instances("us-east-1", "web").await == strings(&[GOOD1, GOOD3])
    })
    .await;
    daemon.wait_log("AWS rejected a member").await;
    let log = daemon.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("AWS rejected a member"))
        .collect();
    assert_eq!(warned.len(), 1, "warned once: {warned:?}");
    assert!(
        warned[0].contains(&elb_key("web", "multiple", DEAD)),
        "{}",
        warned[0]
    );
    assert!(warned[0].contains("InvalidInstance"), "{}", warned[0]);
    eventually("the rejection is counted", DEADLINE, || async {
        http_get(port, "/metrics").is_some_and(|(_, text)| {
            sample(
                &text,
                "lbmanager_rejected_members{load_balancer=\"elb/us-east-1/web\"}",
            ) == Some(1.0)
        })
    })
    .await;

    // A `single` switch to a refused instance does not empty the load balancer.
    etcd.put(&elb_key("solo", "single", DEAD)).await;
    daemon
        .wait_log("not deregistering the last instances")
        .await;
    assert_eq!(aws.instances("us-east-1", "solo").await, strings(&[GOOD1]));

    // `plan` shows the refusals the daemon recorded.
    eventually("plan shows the rejection", DEADLINE, || async {
        let (code, out, _) = lbmanager(&[
            "plan",
            "--etcd-endpoints",
            &etcd.url,
            "--aws-endpoint-url",
            &proxy.url,
        ]);
        code == Some(2)
            && out.lines().any(|l| {
                l.contains("elb/us-east-1/web")
                    && l.contains(&format!("rejected by AWS: {DEAD}"))
                    && l.contains("not in running state")
            })
    })
    .await;

    // Once its key is gone, nothing is left of it.
    etcd.del(&elb_key("web", "multiple", DEAD)).await;
    daemon.wait_log("member no longer rejected").await;
    assert_eq!(
        aws.instances("us-east-1", "web").await,
        strings(&[GOOD1, GOOD3])
    );
    let refused = proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        refused <= 3,
        "refused calls are not repeated per event: {refused}"
    );
    daemon.stop();
}

/// The same for a target group: AWS's `InvalidTarget` lists every bad target at once.
#[tokio::test]
async fn a_rejected_target_does_not_freeze_its_target_group() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    const DEAD2: &str = "i-0000000000000dea2";
    proxy.set_invalid(&[DEAD, DEAD2]);
    let vpc = moto.default_vpc();
    let arn = aws.create_target_group("tg", "instance", 80, &vpc).await;
    etcd.put(&tg_member("tg", GOOD1)).await;
    etcd.put(&tg_member("tg", GOOD2)).await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    let t = |id: &str| format!("{id}:80");
    eventually("tg converged", DEADLINE, || async {
        aws.targets(&arn).await == vec![t(GOOD1), t(GOOD2)]
    })
    .await;
    etcd.put(&tg_member("tg", DEAD)).await;
    etcd.put(&tg_member("tg", DEAD2)).await;
    etcd.del(&tg_member("tg", GOOD2)).await;
    etcd.put(&tg_member("tg", GOOD3)).await;
    eventually("tg has every target AWS accepts", DEADLINE, || async {
        aws.targets(&arn).await == vec![t(GOOD1), t(GOOD3)]
    })
    .await;
    daemon.wait_log_count("AWS rejected a member", 2).await;
    let log = daemon.log();
    assert!(log.contains(&tg_member("tg", DEAD)) && log.contains("InvalidTarget"));
    daemon.stop();
}

/// 300 keys of instances AWS refuses, in one target group: AWS's `InvalidTarget` names all 300
/// in one message. lbmanager's records stay within their documented bound (the status keeps the
/// message once, cut, and lists 100 of the refused), etcd refuses no write, the warnings are
/// bounded too, and another target group is unaffected.
#[tokio::test]
async fn three_hundred_refused_targets_make_no_record_etcd_refuses() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    let dead: Vec<String> = (0..300)
        .map(|n| format!("i-{:017x}", 0xdead0000u64 + n))
        .collect();
    proxy.set_invalid(&dead.iter().map(String::as_str).collect::<Vec<_>>());
    let vpc = moto.default_vpc();
    let flood = aws
        .create_target_group("floodTG", "instance", 80, &vpc)
        .await;
    let calm = aws
        .create_target_group("calmTG", "instance", 80, &vpc)
        .await;
    etcd.put(&tg_member("floodTG", GOOD1)).await;
    etcd.put(&tg_member("calmTG", GOOD1)).await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    etcd.put_many(dead.iter().map(|id| tg_member("floodTG", id)))
        .await;
    etcd.put(&tg_member("floodTG", GOOD2)).await;
    let t = |id: &str| format!("{id}:80");
    eventually("floodTG has every target AWS accepts", DEADLINE, || async {
        aws.targets(&flood).await == vec![t(GOOD1), t(GOOD2)]
    })
    .await;
    let status_key = "/lbmanager-state/lbManager/status/elbv2/us-east-1/floodTG";
    let status = || async {
        let mut client = etcd.client().await;
        let resp = client.get(status_key, None).await.unwrap();
        resp.kvs()
            .first()
            .map(|kv| serde_json::from_slice::<serde_json::Value>(kv.value()).unwrap())
    };
    eventually("the status lists the refusals", DEADLINE, || async {
        status().await.is_some_and(|s| {
            s["rejected"]["members"].as_object().map(|m| m.len()) == Some(100)
                && s["rejected"]["more"] == 200
        })
    })
    .await;
    let s = status().await.unwrap();
    assert_eq!(s["rejected"]["reasons"].as_array().unwrap().len(), 1, "{s}");
    // Another target group goes on as before.
    etcd.put(&tg_member("calmTG", GOOD3)).await;
    eventually("calmTG converged", DEADLINE, || async {
        aws.targets(&calm).await == vec![t(GOOD1), t(GOOD3)]
    })
    .await;
    // Every record is within the README's bound.
    let records = etcd.range("/lbmanager-state/").await;
    for kv in records.kvs() {
        assert!(
            kv.value().len() <= 192 * 1024,
            "{} is {} bytes",
            kv.key_str().unwrap(),
            kv.value().len()
        );
    }
    assert_eq!(daemon.stop(), Some(0));
    let log = daemon.log();
    assert!(
        !log.contains("request is too large"),
        "etcd refused a write"
    );
    assert!(!log.contains("writing a record failed"), "a write failed");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    // Each refusal is said once: named (at most 100 a report), or counted in a report's "more
    // than are named" line. How many reports there are depends on how much of the flood the
    // first sync saw (all 300 at once, or some of them and the rest a sync later).
    let named: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("AWS rejected a member"))
        .filter_map(|l| l.split("member: ").nth(1)?.split(',').next())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = named.iter().copied().collect();
    assert_eq!(distinct.len(), named.len(), "a refusal warned twice");
    let more: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("AWS rejected more members than are named"))
        .filter_map(|l| {
            l.split("not_named: ")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        named.len() + more.iter().sum::<usize>(),
        300,
        "{} named, {more:?} more",
        named.len()
    );
    assert!(
        named.len() <= 100 * (more.len() + 1),
        "{} named in {} reports",
        named.len(),
        more.len() + 1
    );
}

/// One revision that deletes 40,000 keys is one watch response over gRPC's default 4 MiB. It is
/// delivered (and, were it not, the watch would relist rather than loop), so a later change still
/// reaches AWS.
#[tokio::test]
async fn a_delete_of_forty_thousand_keys_in_one_revision_does_not_wedge_the_watch() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    // 40 load balancers of 1,000 members that do not exist in AWS (their syncs fail, and stop
    // failing once their keys are gone).
    etcd.put_many(tree("gone", 40)).await;
    let daemon = Daemon::start(&etcd, &moto, &["--aws-quota-share", "100"]);
    daemon.wait_ready().await;
    let out = etcd.ctl(&["del", "--prefix", &format!("{P}/elb/us-east-1/gone")]);
    assert_eq!(out.trim(), "40000");
    etcd.put(&elb_key("web", "multiple", GOOD1)).await;
    eventually(
        "a change after the big delete reaches AWS",
        DEADLINE,
        || async { aws.instances("us-east-1", "web").await == strings(&[GOOD1]) },
    )
    .await;
    eventually(
        "the emptied load balancers are retired",
        DEADLINE,
        || async { daemon.log().matches("no longer managed").count() >= 40 },
    )
    .await;
}

/// The member lbmanager talks to loses its quorum: `/readyz` says 503 (the watch fails instead
/// of going quiet), and work resumes by itself when the quorum is back.
#[tokio::test]
async fn a_member_without_a_leader_is_not_ready_and_work_resumes_with_the_quorum() {
    let mut cluster = EtcdCluster::start(3).await;
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::unstarted();
    let url = cluster.members[0].url.clone();
    daemon.spawn(&url, &moto.url, &["--listen", &listen]);
    eventually("ready", DEADLINE, || async {
        http_get(port, "/readyz").map(|r| r.0) == Some(200)
    })
    .await;
    cluster.members[1].stop();
    cluster.members[2].stop();
    eventually(
        "not ready while the member has no leader",
        DEADLINE,
        || async { http_get(port, "/readyz").map(|r| r.0) == Some(503) },
    )
    .await;
    daemon.wait_log("no leader").await;
    cluster.members[1].launch();
    cluster.members[2].launch();
    cluster.members[0].wait_ready().await;
    cluster.members[0]
        .put(&elb_key("web", "multiple", GOOD1))
        .await;
    eventually(
        "the change after the quorum came back reaches AWS",
        DEADLINE,
        || async { aws.instances("us-east-1", "web").await == strings(&[GOOD1]) },
    )
    .await;
    eventually("ready again", DEADLINE, || async {
        http_get(port, "/readyz").map(|r| r.0) == Some(200)
    })
    .await;
    daemon.stop();
}

/// etcd restored from a snapshot goes back to the snapshot's revision: lbmanager notices the
/// store revision below what it has seen and relists, so changes written after the restore arrive
/// and AWS ends equal to the restored tree.
#[tokio::test]
async fn changes_after_a_snapshot_restore_reach_aws() {
    let (mut etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    etcd.put(&elb_key("web", "multiple", GOOD1)).await;
    let snapshot = etcd.dir.path().join("snapshot.db");
    etcd.snapshot_save(&snapshot);
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    for id in [GOOD2, "i-00000000000000b01", "i-00000000000000b02"] {
        etcd.put(&elb_key("web", "multiple", id)).await;
    }
    for id in ["i-00000000000000b01", "i-00000000000000b02"] {
        etcd.del(&elb_key("web", "multiple", id)).await;
    }
    eventually("in step before the restore", DEADLINE, || async {
        aws.instances("us-east-1", "web").await == strings(&[GOOD1, GOOD2])
    })
    .await;
    etcd.restore(&snapshot).await;
    etcd.put(&elb_key("web", "multiple", GOOD3)).await;
    eventually(
        "AWS equals the restored tree plus the new key",
        DEADLINE,
        || async { aws.instances("us-east-1", "web").await == strings(&[GOOD1, GOOD3]) },
    )
    .await;
    daemon.wait_log("revision went backwards").await;
}

/// A tree of 1,000,000 keys (1,000 load balancers × 1,000 members) takes longer to read than any
/// one request may: lbmanager reads it page by page, says how far it got, starts and works.
#[tokio::test]
async fn starts_with_a_million_keys() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "lb0000").await;
    etcd.put_many(tree("lb", 1000)).await;
    let daemon = Daemon::start(
        &etcd,
        &moto,
        &["--aws-quota-share", "100", "--etcd-connect-timeout", "5s"],
    );
    eventually(
        "the whole tree is read",
        Duration::from_secs(300),
        || async { daemon.log().contains("keys: 1000000") },
    )
    .await;
    eventually(
        "lb0000 has its 1,000 members",
        Duration::from_secs(300),
        || async { aws.instances("us-east-1", "lb0000").await.len() == 1000 },
    )
    .await;
    etcd.del(&elb_key("lb0000", "multiple", &format!("i-{:017x}", 0)))
        .await;
    eventually("a change is applied", Duration::from_secs(120), || async {
        aws.instances("us-east-1", "lb0000").await.len() == 999
    })
    .await;
}
