//! Telling the workload: `lbmanager member add|remove --wait` and `lbmanager status`, run as a
//! container host runs them (etcd access only), against real etcd and moto with the daemon
//! running. "AWS already shows it" is checked with one read right after the command exits, never
//! by polling.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lbmanager_testkit::proxy::{FaultProxy, TcpCut};
use lbmanager_testkit::*;

const I1: &str = "i-00000000000000b01";
const I2: &str = "i-00000000000000b02";
const DEAD: &str = "i-0000000000000dead";

/// `lbmanager member ACTION KEY FLAGS… --etcd-endpoints URL`.
async fn member(action: &str, key: &str, etcd: &Etcd, flags: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["member", action, key, "--etcd-endpoints", &etcd.url];
    args.extend(flags);
    let (code, _, stderr) = lbmanager_async(&args).await;
    (code, stderr)
}

async fn status(etcd: &Etcd, flags: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["status", "--etcd-endpoints", &etcd.url];
    args.extend(flags);
    lbmanager_async(&args).await
}

#[tokio::test]
async fn the_instant_add_and_remove_wait_return_aws_has_followed() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let tg = aws
        .create_target_group("web-tg", "instance", 80, &moto.default_vpc())
        .await;
    let zone = aws.create_zone("example.com").await;
    etcd.put(&format!("{P}/elb/us-east-1/web/multiple/{I2}"))
        .await;
    let daemon = Daemon::start(&etcd, &moto, &["--route53-ttl", "1"]);
    daemon.wait_ready().await;

    // Classic ELB.
    let key = format!("{P}/elb/us-east-1/web/multiple/{I1}");
    let (code, err) = member("add", &key, &etcd, &["--wait"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(aws.instances("us-east-1", "web").await, strings(&[I1, I2]));
    let (code, err) = member("remove", &key, &etcd, &["--wait"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(aws.instances("us-east-1", "web").await, strings(&[I2]));

    // A target group: registered, then healthy (moto reports every target healthy, read back by
    // the settling read); removed and drained (moto does not drain: gone at the next read).
    let key = format!("{P}/elbv2/us-east-1/web-tg/multiple/{I1}");
    let (code, err) = member("add", &key, &etcd, &["--wait", "--healthy"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("healthy"), "{err}");
    assert_eq!(aws.targets(&tg).await, strings(&[&format!("{I1}:80")]));
    let (code, err) = member("remove", &key, &etcd, &["--drain"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(aws.targets(&tg).await.is_empty());

    // A Route53 name; --drain waits out the record's TTL (1 s here) after the value is gone.
    let key = r53_key(&zone, "www.example.com", "192.0.2.7");
    let (code, err) = member("add", &key, &etcd, &["--wait"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        aws.records(&zone, "www.example.com").await["A"].1,
        strings(&["192.0.2.7"])
    );
    let (code, err) = member("remove", &key, &etcd, &["--wait", "--drain"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("TTL (1s)"), "{err}");
    assert!(aws.records(&zone, "www.example.com").await.is_empty());

    // Adding a key that is there already returns as soon as lbmanager has seen it again, without
    // a call to AWS (the members did not change).
    let key = format!("{P}/elb/us-east-1/web/multiple/{I2}");
    let (code, err) = member("add", &key, &etcd, &["--wait", "--timeout", "10s"]).await;
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn with_no_daemon_add_wait_times_out_saying_why_and_the_key_is_written() {
    let etcd = Etcd::start().await;
    let key = format!("{P}/elb/us-east-1/web/multiple/{I1}");
    let started = Instant::now();
    let (code, err) = member("add", &key, &etcd, &["--wait", "--timeout", "3s"]).await;
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("timed out after 3s"), "{err}");
    assert!(
        err.contains("no lbmanager has ever reported for the prefix /lbManager"),
        "{err}"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(etcd.keys(&format!("{P}/")).await.contains(&key));

    // A key that is not a member key is refused before anything is written.
    let bad = format!("{P}/elb/us-east-1/web/sometimes/{I1}");
    let (code, err) = member("add", &bad, &etcd, &["--wait"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a valid member key"), "{err}");
    assert!(!etcd.keys(&format!("{P}/")).await.contains(&bad));
}

#[tokio::test]
async fn a_member_aws_rejects_fails_add_wait_at_once_with_aws_reason() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    aws.create_elb("us-east-1", "web").await;
    etcd.put(&format!("{P}/elb/us-east-1/web/multiple/{I1}"))
        .await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    let key = format!("{P}/elb/us-east-1/web/multiple/{DEAD}");
    let started = Instant::now();
    let (code, err) = member("add", &key, &etcd, &["--wait", "--timeout", "60s"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("AWS rejected {DEAD}")), "{err}");
    assert!(err.contains("InvalidInstance"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed at once, not at the timeout"
    );
    // Written again, it is tried again (the instance might run again) and refused again.
    let (code, err) = member("add", &key, &etcd, &["--wait", "--timeout", "60s"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("InvalidInstance"), "{err}");
    // Running again: the next add succeeds.
    proxy.set_invalid(&[]);
    let (code, err) = member("add", &key, &etcd, &["--wait", "--timeout", "60s"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        aws.instances("us-east-1", "web").await,
        strings(&[I1, DEAD])
    );

    // A target group names the refused target with its port: still AWS's reason.
    let tg = aws
        .create_target_group("web-tg", "instance", 80, &moto.default_vpc())
        .await;
    proxy.set_invalid(&[DEAD]);
    let key = format!("{P}/elbv2/us-east-1/web-tg/multiple/{DEAD}");
    let (code, err) = member("add", &key, &etcd, &["--wait", "--timeout", "60s"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("AWS rejected {DEAD}:80")), "{err}");
    assert!(err.contains("InvalidTarget"), "{err}");
    assert!(aws.targets(&tg).await.is_empty());
}

#[tokio::test]
async fn sigterm_while_waiting_stops_the_wait() {
    let etcd = Etcd::start().await;
    let key = format!("{P}/elb/us-east-1/web/multiple/{I1}");
    let child = lbmanager_spawn(&[
        "member",
        "add",
        &key,
        "--wait",
        "--etcd-endpoints",
        &etcd.url,
    ]);
    eventually("the key written", DEADLINE, || async {
        etcd.keys(&format!("{P}/")).await.contains(&key)
    })
    .await;
    let started = Instant::now();
    let (code, err) = sigterm(child).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("SIGTERM received while waiting"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not at the 60 s timeout"
    );
}

/// Two hosts wait on one member's health: the one that stops waiting first takes away only its
/// own waiting key, and lbmanager keeps reading the health back for the other.
#[tokio::test]
async fn each_waiting_command_has_its_own_waiting_key() {
    let etcd = Etcd::start().await;
    let key = tg_key("web-tg", "multiple", I1);
    let waiting = format!("{P}/_waiting/elbv2/us-east-1/web-tg/");
    let wait = |timeout: &str| {
        let args = [
            "member",
            "add",
            &key,
            "--wait",
            "--healthy",
            "--timeout",
            timeout,
        ];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--etcd-endpoints", &etcd.url]);
        lbmanager_spawn(&args)
    };
    // No lbmanager runs: both wait until their timeout.
    let long = wait("60s");
    eventually("the first host waits", DEADLINE, || async {
        etcd.keys(&waiting).await.len() == 1
    })
    .await;
    let short = wait("2s");
    let (code, err) = exited(short).await;
    assert_eq!(code, Some(1), "the second host timed out: {err}");
    assert_eq!(
        etcd.keys(&waiting).await.len(),
        1,
        "the first host still waits, and says so"
    );
    let (code, err) = sigterm(long).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        etcd.keys(&waiting).await.is_empty(),
        "each took its own away"
    );
}

#[tokio::test]
async fn lease_backed_presence_holds_the_key_until_sigterm() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    let key = format!("{P}/elb/us-east-1/web/multiple/{I1}");
    let child = lbmanager_spawn(&[
        "member",
        "add",
        &key,
        "--wait",
        "--lease-ttl",
        "3s",
        "--etcd-endpoints",
        &etcd.url,
    ]);
    eventually("registered", DEADLINE, || async {
        aws.instances("us-east-1", "web").await == strings(&[I1])
    })
    .await;
    // Kept alive: no change to the key (its expiry would be a delete) for longer than the lease.
    let mut watch = etcd
        .client()
        .await
        .watch(key.as_str(), None)
        .await
        .expect("a watch");
    let change = async {
        while let Some(Ok(resp)) = watch.next().await {
            if !resp.events().is_empty() {
                return Some(resp);
            }
        }
        None
    };
    let changed = tokio::time::timeout(Duration::from_secs(5), change).await;
    assert!(changed.is_err(), "the key changed: {changed:?}");
    assert!(etcd.keys(&format!("{P}/")).await.contains(&key));
    let (code, err) = sigterm(child).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("SIGTERM received, deleting"), "{err}");
    assert!(!etcd.keys(&format!("{P}/")).await.contains(&key));
    eventually("deregistered", DEADLINE, || async {
        aws.instances("us-east-1", "web").await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn status_on_never_synced_converged_and_drifted_trees() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    etcd.put(&format!("{P}/elb/us-east-1/web/multiple/{I1}"))
        .await;

    // Never synced: no lbmanager has run.
    let (code, out, err) = status(&etcd, &[]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("elb/us-east-1/web") && out.contains("never synced"),
        "{out}"
    );
    assert!(err.contains("no lbmanager has ever reported"), "{err}");

    // Converged.
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    let (code, out, err) = status(&etcd, &[]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("yes"), "{out}");
    let (code, json, _) = status(&etcd, &["--output", "json"]).await;
    assert_eq!(code, Some(0));
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(report["daemon"]["stale"], false);
    let rows = &report["load_balancers"];
    assert_eq!(rows[0]["load_balancer"], "elb/us-east-1/web");
    assert_eq!(rows[0]["in_step"], true);
    assert_eq!(rows[0]["in_aws"][0]["member"], I1);

    // Drifted: a load balancer that does not exist in AWS, and a member AWS rejects.
    etcd.put(&format!("{P}/elb/us-east-1/gone/multiple/{I1}"))
        .await;
    etcd.put(&format!("{P}/elb/us-east-1/web/multiple/{DEAD}"))
        .await;
    daemon.wait_log("AWS rejected a member").await;
    daemon.wait_log("sync failed").await;
    let (code, out, err) = status(&etcd, &[]).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("LoadBalancerNotFound"), "{out}");
    assert!(out.contains(&format!("rejected {DEAD}")), "{out}");
    let (code, json, _) = status(&etcd, &["--output", "json"]).await;
    assert_eq!(code, Some(2));
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let web = report["load_balancers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["load_balancer"] == "elb/us-east-1/web")
        .unwrap();
    assert_eq!(web["in_step"], false);
    assert!(web["rejected"][DEAD]
        .as_str()
        .unwrap()
        .contains("InvalidInstance"));

    // lbmanager gone for longer than three resync intervals (its heartbeat made old): exit 1.
    assert_eq!(daemon.stop(), Some(0));
    let beat = "/lbmanager-state/lbManager/daemon";
    let old = r#"{"at":1000,"resync_interval_secs":300,"version":"0"}"#;
    etcd.ctl(&["put", beat, old]);
    let (code, out, err) = status(&etcd, &[]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("is it running?"), "{err}");
    assert!(out.contains("too long"), "{out}");
}

/// The etcd member a host's command talks to goes away while the command waits (the soak found
/// it: `tcp connect error`, exit 1, with two members up): the command goes on through a member
/// that answers and ends as it would have. Three relays to one etcd stand for three members;
/// the one the command connected to is cut (its connections reset, new ones refused).
#[tokio::test]
async fn a_wait_goes_on_through_another_member_when_its_own_goes_away() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let relays: Vec<TcpCut> = (0..3).map(|_| TcpCut::start(etcd.port())).collect();
    let endpoints = relays
        .iter()
        .map(|r| r.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let key = format!("{P}/elb/us-east-1/web/multiple/{I1}");
    for (action, written) in [("add", true), ("remove", false)] {
        // No daemon yet: the command waits, connected to one member.
        let before: Vec<usize> = relays.iter().map(TcpCut::accepted).collect();
        let args = [
            "member",
            action,
            &key,
            "--wait",
            "--timeout",
            "60s",
            "--etcd-endpoints",
            &endpoints,
        ];
        let command = lbmanager_async(&args);
        let meanwhile = async {
            eventually("the command changed the key", DEADLINE, || async {
                etcd.keys(&key).await.contains(&key) == written
            })
            .await;
            let used: Vec<usize> = (0..3)
                .filter(|&i| relays[i].accepted() > before[i])
                .collect();
            assert_eq!(used.len(), 1, "one member: {used:?}");
            relays[used[0]].cut();
            let daemon = Daemon::start(&etcd, &moto, &[]);
            daemon.wait_ready().await;
            (used[0], daemon)
        };
        let ((code, _, err), (used, mut daemon)) = tokio::join!(command, meanwhile);
        assert_eq!(code, Some(0), "{action}: {err}");
        let want: Vec<String> = match written {
            true => strings(&[I1]),
            false => vec![],
        };
        assert_eq!(aws.instances("us-east-1", "web").await, want);
        daemon.stop();
        relays[used].restore();
    }
}

/// Route53 accepts a change long before resolvers can get it (moto does not: the proxy keeps
/// each change `PENDING` for 4 s, with an id of its own, as Route53 does): `member add --wait`
/// exits only once GetChange has said `INSYNC`; `member remove --drain` waits for the removal's
/// `INSYNC`, then the TTL; `lbmanager status` shows a change still pending.
#[tokio::test]
async fn route53_waits_are_for_insync_and_drain_counts_the_ttl_from_it() {
    use lbmanager_testkit::route53::Route53Proxy;
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    let proxy = Route53Proxy::start(moto.port, Duration::from_secs(4));
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &["--route53-ttl", "1"]);
    daemon.wait_ready().await;

    let key = r53_key(&zone, "www.example.com", "192.0.2.7");
    let (code, err) = member("add", &key, &etcd, &["--wait"]).await;
    let exited = Instant::now();
    assert_eq!(code, Some(0), "{err}");
    let changes = proxy.changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let insync = changes[0]
        .insync_told
        .expect("--wait exited before Route53 said INSYNC");
    assert!(insync <= exited);

    // A change made meanwhile shows in `status` while it is pending.
    etcd.put(&r53_key(&zone, "api.example.com", "192.0.2.8"))
        .await;
    eventually("status shows the pending change", DEADLINE, || async {
        let (_, out, _) = status(&etcd, &[]).await;
        out.contains("Route53 change /change/CPROXY000002 PENDING since")
    })
    .await;

    let (code, err) = member("remove", &key, &etcd, &["--wait", "--drain"]).await;
    let exited = Instant::now();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("TTL (1s)"), "{err}");
    let removal = proxy.changes().pop().unwrap();
    assert_eq!(removal.id, "/change/CPROXY000003", "{removal:?}");
    let insync = removal
        .insync_told
        .expect("--drain exited before the removal was INSYNC");
    assert!(
        exited >= insync + Duration::from_secs(1),
        "the TTL is waited out from INSYNC on"
    );
    drop(daemon);
}

/// `member remove --wait` of a key someone else already deleted (a `del --prefix`, a `single`
/// key that superseded it) waits for lbmanager to be in step past a barrier of its own, then
/// says AWS no longer routes to the member; on a load balancer where nothing changes it does not
/// hang either.
#[tokio::test]
async fn a_remove_wait_of_a_key_already_gone_ends_once_lbmanager_is_past_its_barrier() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    let (k1, k2) = (
        format!("{P}/elb/us-east-1/web/multiple/{I1}"),
        format!("{P}/elb/us-east-1/web/multiple/{I2}"),
    );
    for key in [&k1, &k2] {
        let (code, err) = member("add", key, &etcd, &["--wait"]).await;
        assert_eq!(code, Some(0), "{err}");
    }
    etcd.del(&k1).await;
    let (code, err) = member("remove", &k1, &etcd, &["--wait", "--timeout", "20s"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("was not there"), "{err}");
    assert_eq!(aws.instances("us-east-1", "web").await, strings(&[I2]));
    // Again, with nothing left to change: the idle load balancer passes the barrier at once.
    let (code, err) = member("remove", &k1, &etcd, &["--wait", "--timeout", "20s"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("no longer routes"), "{err}");
}
