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
