//! High availability: two lbmanagers on one etcd, one leader.

use std::time::{Duration, Instant};

use lbmanager_testkit::proxy::{self, TcpCut};
use lbmanager_testkit::*;

fn key(id: &str) -> String {
    elb_key("webLB", "multiple", id)
}

/// Two `--ha` instances with a 3 s lease: the first leads and has synced, the second waits.
async fn leader_and_standby(etcd: &Etcd, moto: &Moto) -> (Daemon, Daemon) {
    let ha = ["--ha", "--ha-lease-ttl", "3s"];
    let a = Daemon::start(etcd, moto, &ha);
    a.wait_log("elected leader").await;
    a.wait_ready().await;
    let b = Daemon::start(etcd, moto, &ha);
    b.wait_log("campaigning for leadership").await;
    (a, b)
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over_after_kill_9() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let (mut a, b) = leader_and_standby(&etcd, &moto).await;

    moto.start_recording();
    etcd.put(&key(I1)).await;
    eventually("registered by the leader", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    let registers = moto
        .recorded()
        .iter()
        .filter(|c| c.body.contains("Action=RegisterInstancesWithLoadBalancer"))
        .count();
    assert_eq!(registers, 1, "one instance acted");
    assert!(
        !b.log().contains("read etcd"),
        "the standby neither read nor synced"
    );

    a.kill9();
    let killed = Instant::now();
    etcd.put(&key(I2)).await;
    eventually(
        "the standby took over and converged",
        Duration::from_secs(15),
        || async { aws.instances("us-east-1", "webLB").await == strings(&[I1, I2]) },
    )
    .await;
    assert!(b.log().contains("elected leader"));
    eprintln!(
        "FIGURES ha: lease_ttl=3s change converged {:?} after the leader's kill -9",
        killed.elapsed()
    );
}

/// A leader cut off from etcd stops before its lease can expire, so the standby never acts while
/// it still might.
#[tokio::test]
async fn a_leader_cut_off_from_etcd_stops_before_a_standby_starts() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let ha = ["--ha", "--ha-lease-ttl", "4s"];
    let cut = TcpCut::start(etcd.port());
    let mut a = Daemon::unstarted();
    a.spawn(&cut.url, &moto.url, &ha);
    a.wait_log("elected leader").await;
    let b = Daemon::start(&etcd, &moto, &ha);
    b.wait_log("campaigning for leadership").await;

    cut.cut();
    assert_eq!(a.exit_code(Duration::from_secs(10)).await, Some(1));
    assert!(a
        .log()
        .contains("the leadership lease was not confirmed in time"));
    assert!(
        !b.log().contains("elected leader"),
        "the standby waited for the lease to expire"
    );
    b.wait_log("elected leader").await;
    etcd.put(&key(I1)).await;
    eventually("the new leader acts", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
}

/// The original's purge also deletes the election keys: a standby's campaign then returns. The old
/// leader sees its own key go and stops at once, so only one instance acts afterwards.
#[tokio::test]
async fn a_purge_while_two_run_leaves_one_leader() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let (mut a, mut b) = leader_and_standby(&etcd, &moto).await;

    etcd.ctl(&["del", "--prefix", "/lbManager/"]);
    assert_eq!(
        a.exit_code(DEADLINE).await,
        Some(1),
        "the old leader stopped"
    );
    assert!(a.log().contains("leadership key was deleted"));
    b.wait_log("elected leader").await;
    etcd.put(&key(I1)).await;
    eventually("the new leader converged", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    assert!(b.is_running());
}

/// An ordinary etcd leader election must not end the lbmanager leader: with the default lease
/// TTL, the etcd leader of a 3-member cluster is killed with -9 and restarted three times while
/// members change. The same lbmanager leads at the end, AWS equals etcd, and only it ever changed
/// AWS (each instance reaches AWS through a proxy of its own that counts its changes).
#[tokio::test]
async fn the_leader_survives_etcd_leader_elections() {
    let mut cluster = EtcdCluster::start(3).await;
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let (pa, pb) = (
        proxy::FaultProxy::aws_rules(moto.port),
        proxy::FaultProxy::aws_rules(moto.port),
    );
    let endpoints = cluster.endpoints();
    let mut a = Daemon::unstarted();
    a.spawn(&endpoints, &pa.url, &["--ha"]);
    a.wait_log("elected leader").await;
    a.wait_ready().await;
    let mut b = Daemon::unstarted();
    b.spawn(&endpoints, &pb.url, &["--ha"]);
    b.wait_log("campaigning for leadership").await;

    let ids: Vec<String> = (1..=6).map(|n| format!("i-{n:017x}")).collect();
    for round in 0..3 {
        let leader = cluster.leader().await;
        cluster.members[leader].stop();
        // A change while etcd elects a new leader.
        let client = cluster.client().await;
        eventually("a write during the election", DEADLINE, || {
            let mut client = client.clone();
            let k = key(&ids[round]);
            async move { client.put(k, "", None).await.is_ok() }
        })
        .await;
        cluster.members[leader].launch();
        cluster.members[leader].wait_ready().await;
        eventually("a write after the restart", DEADLINE, || {
            let mut client = client.clone();
            let k = key(&ids[round + 3]);
            async move { client.put(k, "", None).await.is_ok() }
        })
        .await;
    }
    let want: Vec<String> = {
        let mut w = ids.clone();
        w.sort();
        w
    };
    eventually("AWS equals etcd", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == want
    })
    .await;
    assert!(a.is_running() && b.is_running());
    assert_eq!(
        a.log().matches("elected leader").count(),
        1,
        "the same leader throughout"
    );
    assert!(!b.log().contains("elected leader"), "the standby never led");
    let (ma, mb) = (
        pa.mutating.load(std::sync::atomic::Ordering::SeqCst),
        pb.mutating.load(std::sync::atomic::Ordering::SeqCst),
    );
    assert!(
        ma > 0 && mb == 0,
        "changes by the leader {ma}, by the standby {mb}"
    );
}

/// A leader paused (SIGSTOP: a frozen VM, a live migration) while its etcd path is stalled too:
/// the standby is elected and applies two changes. When the old leader resumes, its overdue
/// resync must not undo them: it sends no change at all (counted by a proxy of its own in front of
/// moto), and stops.
#[tokio::test]
async fn a_paused_leader_sends_no_change_after_it_resumes() {
    const I3: &str = "i-0aaaaaaaaaaaaaaa3";
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&key(I1)).await;
    etcd.put(&key(I2)).await;
    let ha = ["--ha", "--ha-lease-ttl", "4s", "--resync-interval", "2s"];
    let relay = TcpCut::start(etcd.port());
    let (to_aws_a, to_aws_b) = (
        proxy::FaultProxy::start(moto.port, 0, 1),
        proxy::FaultProxy::start(moto.port, 0, 2),
    );
    let mut a = Daemon::unstarted();
    a.spawn(&relay.url, &to_aws_a.url, &ha);
    a.wait_ready().await;
    let mut b = Daemon::unstarted();
    b.spawn(&etcd.url, &to_aws_b.url, &ha);
    b.wait_log("campaigning for leadership").await;
    eventually("the leader converged", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;

    relay.stall();
    a.signal("STOP");
    let paused = Instant::now();
    b.wait_log("elected leader").await;
    b.wait_ready().await;
    etcd.del(&key(I1)).await;
    etcd.put(&key(I3)).await;
    eventually("the new leader applied both changes", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I3, I2])
    })
    .await;
    // Past two of the old leader's resync intervals: its resync is overdue when it resumes.
    eventually("the old leader's resync is overdue", DEADLINE, || async {
        paused.elapsed() > Duration::from_secs(4)
    })
    .await;
    let sent_before = to_aws_a.mutating.load(std::sync::atomic::Ordering::SeqCst);
    // It resumes with its etcd path still stalled (the revoke of its lease hangs), its AWS path
    // open.
    a.signal("CONT");
    assert_eq!(a.exit_code(DEADLINE).await, Some(1), "the old leader stops");
    relay.resume();
    let sent_after = to_aws_a.mutating.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        sent_after,
        sent_before,
        "the old leader sent changes after it resumed:\n{}",
        a.log()
    );
    assert_eq!(
        aws.instances("us-east-1", "webLB").await,
        strings(&[I3, I2]),
        "the new leader's changes stand"
    );
    assert!(a
        .log()
        .contains("the leadership lease was not confirmed in time"));
}

/// Found by the soak: with `--ha`, an etcd that is not up yet ended `run` at once ("cannot take
/// part in the leader election", exit 1) where without `--ha` lbmanager waits for it within
/// `--etcd-connect-timeout`. It waits with `--ha` too, and leads once etcd is there.
#[tokio::test]
async fn a_leader_to_be_waits_for_etcd_within_the_connect_timeout() {
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let mut etcd = Etcd::unstarted();
    let mut a = Daemon::unstarted();
    a.spawn(
        &etcd.url,
        &moto.url,
        &[
            "--ha",
            "--ha-lease-ttl",
            "4s",
            "--etcd-connect-timeout",
            "30s",
        ],
    );
    a.wait_log("etcd not reachable yet for the leader election")
        .await;
    assert!(a.is_running(), "{}", a.log());
    etcd.launch();
    etcd.wait_ready().await;
    a.wait_log("elected leader").await;
    etcd.put(&key(I1)).await;
    eventually("the leader acts", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
}
