//! High availability: two lbmanagers on one etcd, one leader.

use std::time::{Duration, Instant};

use lbmanager_testkit::proxy::TcpCut;
use lbmanager_testkit::*;

const I1: &str = "i-0123456789abcdef0";
const I2: &str = "i-0fedcba9876543210";

fn key(id: &str) -> String {
    format!("/lbManager/elb/us-east-1/webLB/multiple/{id}")
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over_after_kill_9() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let ha = ["--ha", "--ha-lease-ttl", "3s"];
    let mut a = Daemon::start(&etcd, &moto, &ha);
    a.wait_log("elected leader").await;
    a.wait_log("initial sync complete").await;
    let b = Daemon::start(&etcd, &moto, &ha);
    b.wait_log("campaigning for leadership").await;

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
    let ha = ["--ha", "--ha-lease-ttl", "3s"];
    let mut a = Daemon::start(&etcd, &moto, &ha);
    a.wait_log("elected leader").await;
    a.wait_log("initial sync complete").await;
    let mut b = Daemon::start(&etcd, &moto, &ha);
    b.wait_log("campaigning for leadership").await;

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
