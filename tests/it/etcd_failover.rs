//! A host's commands with one etcd member of three down. (A cluster's six ports are chosen before
//! its members start; the testkit's `free_port` hands none of them to a test running beside it.)

use lbmanager::etcd::{self, EtcdOptions, Failover, PROBE};
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

/// The etcd leader is killed as 20 host commands start (every etcd upgrade does this): every
/// `member` command and every `status` rides out the election. `status` may say "not in step"
/// (2) while lbmanager follows the adds; it never fails for etcd (1).
#[tokio::test]
async fn host_commands_ride_out_an_etcd_leader_election() {
    let mut cluster = EtcdCluster::start(3).await;
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let endpoints = cluster.endpoints();
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&endpoints, &moto.url, &[]);
    daemon.wait_ready().await;
    for round in 0..2 {
        let key = |n: usize| elb_key("web", "multiple", &format!("i-{round}{n:016x}"));
        let mut commands = Vec::new();
        for n in 0..20 {
            let (what, key) = match n % 5 {
                0 | 1 => ("add", key(n)),
                2 => ("remove", key(n)),
                _ => ("status", String::new()),
            };
            let args: Vec<&str> = match what {
                "status" => vec!["status", "--etcd-endpoints", &endpoints],
                _ => vec!["member", what, &key, "--etcd-endpoints", &endpoints],
            };
            commands.push((what, lbmanager_spawn(&args)));
        }
        let leader = cluster.leader().await;
        cluster.members[leader].stop();
        for (what, child) in commands {
            let (code, err) = exited(child).await;
            match what {
                "status" => assert!(
                    matches!(code, Some(0 | 2)) && !err.contains("etcd:"),
                    "round {round}: status exited {code:?}: {err}"
                ),
                _ => assert_eq!(code, Some(0), "round {round}: member {what}: {err}"),
            }
        }
        cluster.members[leader].launch();
        cluster.members[leader].wait_ready().await;
    }
    daemon.stop();
}

/// A member goes away in the middle of a paged read of the prefix: the read goes on through
/// another member, at the revision it began at (keys written meanwhile are not in it). The read
/// is cut into three ranges (as a relist's is, see `etcd::Cuts`), the first read in two pages.
#[tokio::test]
async fn a_paged_read_resumes_on_another_member_at_its_revision() {
    let mut cluster = EtcdCluster::start(3).await;
    let etcd = Etcd::attach(&cluster.members[1].url);
    etcd.put_many((0..300).map(|n| format!("/read/k{n:03}")))
        .await;
    // The read starts on member 0, and may go on through any member.
    let urls = cluster.endpoints().split(',').map(String::from).collect();
    let member0 = EtcdOptions::plain(vec![cluster.members[0].url.clone()]);
    let client = etcd::connect(&member0).await.unwrap();
    let mut etcd = Failover::new(client, EtcdOptions::plain(urls), PROBE, DEADLINE);
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let (mut pages, mut keys) = (0, std::collections::BTreeSet::new());
    let cuts = etcd::Cuts::at(vec!["/read/k150".into(), "/read/k200".into()]);
    let read = etcd::read_prefix(&mut etcd, "/read", (100, &cuts, None), &log, &mut |page| {
        pages += 1;
        keys.extend(page.iter().map(|(k, _, _)| k.to_string()));
        if pages == 1 {
            // 50 keys are written after the read's revision; then the member the read is on
            // goes.
            for n in 300..350 {
                cluster.members[1].ctl(&["put", &format!("/read/k{n:03}"), ""]);
            }
            cluster.members[0].stop();
        }
    })
    .await
    .expect("the read goes on through another member");
    assert_eq!(read.keys, 300);
    assert_eq!(
        keys.len(),
        300,
        "the keys of the read's revision, each once"
    );
    assert!(keys.iter().all(|k| k.as_str() < "/read/k300"));
    assert_eq!(pages, 4, "ranges of 150, 50 and 100 keys, pages of 100");
    // The next read's cuts: every CUT_EVERY-th key (none in 300).
    assert!(read.cuts.is_empty());
}

/// No etcd member answers when a host command starts, and the cluster has no leader (two
/// members of three down, the relay to the third refusing connections): the command waits
/// within `--etcd-connect-timeout`, as it does for a member that goes away later. The relay
/// counts its tries; etcd comes back once it has tried a few times.
#[tokio::test]
async fn a_host_command_waits_for_etcd_that_is_away_when_it_starts() {
    let mut cluster = EtcdCluster::start(3).await;
    let relay = proxy::TcpCut::start(cluster.members[0].port());
    relay.cut();
    cluster.members[1].stop();
    cluster.members[2].stop();
    let key = elb_key("web", "multiple", I1);
    let command = lbmanager_spawn(&["member", "add", &key, "--etcd-endpoints", &relay.url]);
    eventually("the command tried a few times", DEADLINE, || async {
        relay.accepted() >= 6
    })
    .await;
    relay.restore();
    cluster.members[1].launch();
    cluster.members[2].launch();
    let (code, err) = exited(command).await;
    assert_eq!(code, Some(0), "{err}");
    let etcd = Etcd::attach(&cluster.members[0].url);
    assert!(etcd.keys(&key).await.contains(&key));
}
