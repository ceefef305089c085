//! Frugal with AWS calls: counted through moto's recorder and a timestamping proxy. Only counts
//! are asserted here; timings belong to the benchmarks (BENCHMARKS.md).

use std::time::Duration;

use lbmanager_testkit::proxy::FaultProxy;
use lbmanager_testkit::*;

/// Writes keys back-to-back over one connection.
async fn put_all(etcd: &Etcd, keys: &[String]) {
    let mut client = etcd.client().await;
    for k in keys {
        client.put(k.as_str(), "", None).await.unwrap();
    }
}

fn calls(moto: &Moto, pred: impl Fn(&RecordedCall) -> bool) -> usize {
    moto.recorded()
        .iter()
        .filter(|c| c.by_lbmanager() && pred(c))
        .count()
}

#[tokio::test]
async fn many_instances_one_at_a_time_take_few_calls() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    moto.start_recording();
    let keys: Vec<String> = (0..300)
        .map(|i| format!("{P}/elb/us-east-1/webLB/multiple/i-{i:08x}"))
        .collect();
    put_all(&etcd, &keys).await;
    eventually("300 registered", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await.len() == 300
    })
    .await;
    let describes = calls(&moto, |c| c.body.contains("Action=DescribeLoadBalancers"));
    let registers = calls(&moto, |c| c.body.contains("Action=RegisterInstances"));
    let all = calls(&moto, |_| true);
    // One sync is a Describe and at most a Register and a Deregister.
    assert!(
        registers <= describes,
        "{registers} registers, {describes} describes"
    );
    assert!(all <= 3 * describes);
    // Syncs go out as fast as AWS's registration bucket allows (20 at once, then 4 a second), and
    // what arrives meanwhile is merged: 300 changes written in a fraction of a second take about
    // 15-20 syncs (each a Describe and a Register).
    assert!(
        all * 5 <= 300,
        "{all} calls for 300 changes (the original made 300)"
    );
}

#[tokio::test]
async fn route53_members_at_start_go_out_in_few_batches() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    // 2,000 members over 20 FQDNs: 100 each; a CREATE of 100 values counts 100 against the
    // 1,000-record limit, so 10 FQDNs fit in one call.
    let mut keys = Vec::new();
    for f in 0..20 {
        for i in 0..100 {
            let ip = format!("10.{f}.{}.{}", i / 250, i % 250);
            keys.push(r53_key(&zone, &format!("h{f}.example.com"), &ip));
        }
    }
    put_all(&etcd, &keys).await;
    moto.start_recording();
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    for f in 0..20 {
        let records = aws.records(&zone, &format!("h{f}.example.com")).await;
        assert_eq!(records["A"].1.len(), 100);
    }
    let changes = calls(&moto, |c| c.method == "POST" && c.url.contains("/rrset"));
    let reads = calls(&moto, |c| c.method == "GET" && c.url.contains("/rrset"));
    assert!(
        changes <= 4,
        "{changes} ChangeResourceRecordSets calls for 20 FQDNs"
    );
    assert!(
        reads <= 4,
        "{reads} ListResourceRecordSets calls for 20 FQDNs"
    );
}

#[tokio::test]
async fn route53_calls_never_exceed_the_configured_share_of_the_quotas() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    let proxy = FaultProxy::start(moto.port, 0, 3);
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &["--aws-quota-share", "0.1"]);
    daemon.wait_ready().await;
    let mut keys = Vec::new();
    for round in 0..5 {
        for f in 0..10 {
            keys.push(r53_key(
                &zone,
                &format!("h{f}.example.com"),
                &format!("192.0.2.{round}"),
            ));
        }
    }
    let mut client = etcd.client().await;
    for k in &keys {
        client.put(k.as_str(), "", None).await.unwrap();
    }
    eventually("all converged", Duration::from_secs(60), || async {
        let mut ok = true;
        for f in 0..10 {
            ok &= aws
                .records(&zone, &format!("h{f}.example.com"))
                .await
                .get("A")
                .is_some_and(|r| r.1.len() == 5);
        }
        ok
    })
    .await;
    let arrivals = proxy.counts.arrivals.lock().unwrap().clone();
    assert!(arrivals.len() >= 5, "{} calls", arrivals.len());
    // A tenth of Route53's quotas: buckets of 5, refilled 0.95 a second. In any one-second
    // window: at most the burst and one refill.
    for (i, t) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(in_window <= 6, "{in_window} calls within one second");
    }
}

/// A zone of 12,000 record sets (other tools'): lbmanager reads its 10 names one by one (at most
/// two ListResourceRecordSets each at start-up), never the whole zone (40 pages), at start-up
/// and at the resyncs after it; GetHostedZone's count tells it the zone's size.
#[tokio::test]
async fn names_of_a_large_zone_are_read_by_name_not_the_whole_zone() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    aws.fill_zone(&zone, "example.com", 12_000).await;
    let keys: Vec<String> = (0..10)
        .map(|f| r53_key(&zone, &format!("h{f}.example.com"), &format!("192.0.2.{f}")))
        .collect();
    put_all(&etcd, &keys).await;
    moto.start_recording();
    let daemon = Daemon::start(&etcd, &moto, &["--resync-interval", "2s"]);
    daemon.wait_ready().await;
    let whole = |c: &RecordedCall| {
        c.method == "GET" && c.url.contains("/rrset") && !c.url.contains("name=")
    };
    let by_name =
        |c: &RecordedCall| c.method == "GET" && c.url.contains("/rrset") && c.url.contains("name=");
    assert_eq!(calls(&moto, whole), 0, "a whole-zone read at start-up");
    let at_start = calls(&moto, by_name);
    assert!(
        at_start <= 20,
        "{at_start} name-targeted reads for 10 names"
    );
    // Two resyncs (2 s apart) read the names again.
    eventually("two resyncs of the names", DEADLINE, || async {
        calls(&moto, by_name) >= at_start + 20
    })
    .await;
    assert_eq!(calls(&moto, whole), 0, "a whole-zone read at a resync");
    for f in 0..10 {
        let records = aws.records(&zone, &format!("h{f}.example.com")).await;
        assert_eq!(records["A"].1, [format!("192.0.2.{f}")]);
    }
}

/// 300 Classic ELBs and 30 target groups, one member each, in step: lbmanager reads the ELBs of a
/// region together, by the page (400 a call) or by name (20 a call), whichever takes fewer calls,
/// at a restart and at each resync: at most ⌈N/400⌉ + 2 DescribeLoadBalancers for N ELBs, not
/// one per ELB (issue 33). The target groups are described together too; their members are read
/// one DescribeTargetHealth per group (AWS has no other way).
#[tokio::test]
async fn elbs_of_a_region_are_read_together_at_a_restart_and_at_each_resync() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let vpc = moto.default_vpc();
    let mut keys = Vec::new();
    for i in 0..300 {
        let (lb, id) = (format!("lb{i:03}"), format!("i-{i:08x}"));
        aws.create_elb("us-east-1", &lb).await;
        aws.register("us-east-1", &lb, &id).await;
        keys.push(elb_key(&lb, "multiple", &id));
    }
    for i in 0..30 {
        let (tg, id) = (format!("tg{i:02}"), format!("i-{i:08x}"));
        let arn = aws.create_target_group(&tg, "instance", 80, &vpc).await;
        aws.elbv2("us-east-1")
            .register_targets()
            .target_group_arn(arn)
            .targets(
                aws_sdk_elasticloadbalancingv2::types::TargetDescription::builder()
                    .id(&id)
                    .port(80)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        keys.push(tg_key(&tg, "multiple", &format!("{id}:80")));
    }
    put_all(&etcd, &keys).await;
    // The first start writes a record of each load balancer before its first change, which
    // spreads their first reads over the writes; a restart (records in place) is what is counted.
    let mut daemon = Daemon::start(&etcd, &moto, &["--resync-interval", "3s"]);
    daemon.wait_ready().await;
    assert_eq!(daemon.stop(), Some(0));
    moto.start_recording();
    daemon.spawn(&etcd.url, &moto.url, &["--resync-interval", "3s"]);
    daemon.wait_ready().await;
    let describes = || calls(&moto, |c| c.body.contains("Action=DescribeLoadBalancers"));
    let groups = || calls(&moto, |c| c.body.contains("Action=DescribeTargetGroups"));
    let healths = || calls(&moto, |c| c.body.contains("Action=DescribeTargetHealth"));
    let at_start = describes();
    // A region read of 2 pages (a first page of 200, then 400), at most ⌈300/400⌉ + 2 = 3
    // (BENCHMARKS.md, S).
    assert!(
        (1..=3).contains(&at_start),
        "{at_start} DescribeLoadBalancers for 300 ELBs"
    );
    assert!(
        groups() <= 3,
        "{} DescribeTargetGroups for 30 groups",
        groups()
    );
    assert_eq!(calls(&moto, |c| c.is_mutating()), 0, "in step: no change");
    // The resyncs: each reads every ELB again (drift is found), in as few calls.
    let at_start_health = healths();
    eventually("two resyncs", DEADLINE, || async {
        healths() >= at_start_health + 60
    })
    .await;
    let (describes, rounds) = (
        describes() - at_start,
        (healths() - at_start_health).div_ceil(30),
    );
    // The ELBs' resync ticks are not the target groups': one more may have begun.
    assert!(
        describes >= 2 && describes <= 5 * (rounds + 1),
        "{describes} DescribeLoadBalancers over {rounds} resyncs of 300 ELBs"
    );
    assert!(groups() <= 3, "the groups are described once: {}", groups());
    eprintln!(
        "start: {at_start} DescribeLoadBalancers, {} DescribeTargetGroups; \
         {describes} DescribeLoadBalancers over {rounds} resyncs",
        groups()
    );
}
