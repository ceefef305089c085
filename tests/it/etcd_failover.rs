//! A host's commands with one etcd member of three down. (A cluster's six ports are chosen before
//! its members start; the testkit's `free_port` hands none of them to a test running beside it.)

use lbmanager_testkit::*;

/// One of three etcd members down (found by the soak): a host's commands go to the members that
/// answer, as `--etcd-endpoints`' help promises, every time (etcdctl does), and a lease-backed
/// presence revokes its lease through them when told to stop.
#[tokio::test]
async fn host_commands_fail_over_between_etcd_members() {
    let mut cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    for down in [1, 2] {
        cluster.members[down].stop();
        // The two left elect a leader if it was the one stopped (etcdctl waits for that too).
        cluster.leader().await;
        for n in 0..6 {
            let key = format!("{P}/elb/us-east-1/web/multiple/i-{down}{n:016x}");
            let (code, _, err) =
                lbmanager_async(&["member", "add", &key, "--etcd-endpoints", &endpoints]).await;
            assert_eq!(code, Some(0), "member {down} down, try {n}: {err}");
            let (code, _, err) =
                lbmanager_async(&["member", "remove", &key, "--etcd-endpoints", &endpoints]).await;
            assert_eq!(code, Some(0), "member {down} down, try {n}: {err}");
        }
        cluster.members[down].launch();
        cluster.members[down].wait_ready().await;
    }
    // A presence that outlives a member: started with all three up, revoked with one down.
    let key = format!("{P}/elb/us-east-1/web/multiple/i-0000000000000beef");
    let presence = lbmanager_spawn(&[
        "member",
        "add",
        &key,
        "--lease-ttl",
        "5s",
        "--etcd-endpoints",
        &endpoints,
    ]);
    let etcd = Etcd::attach(&cluster.members[0].url);
    eventually("the presence wrote its key", DEADLINE, || async {
        etcd.keys(&key).await.contains(&key)
    })
    .await;
    for down in [1, 2] {
        cluster.members[down].stop();
    }
    cluster.members[1].launch();
    cluster.members[1].wait_ready().await;
    cluster.leader().await;
    let (code, err) = sigterm(presence).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        etcd.keys(&key).await.is_empty(),
        "the key went with the lease"
    );
}
