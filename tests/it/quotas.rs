//! AWS's throttling, which moto does not do: a proxy in front of moto keeps AWS's published token
//! buckets and answers `Throttling` when one is empty (`testkit::throttle`). Its own test comes
//! first, so that "no call was throttled" below means something.

use std::time::Duration;

use lbmanager_testkit::throttle::{Rules, Throttler};
use lbmanager_testkit::*;

fn member_key(lb: &str, n: usize) -> String {
    elb_key(lb, "multiple", &format!("i-{n:017x}"))
}

/// Waits until every ELB of `lbs` has `n` members.
async fn until_every_elb_has(aws: &Aws, lbs: &[String], n: usize) {
    eventually(
        &format!("every ELB has {n} members"),
        Duration::from_secs(120),
        || async {
            for lb in lbs {
                if aws.instances("us-east-1", lb).await.len() != n {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

fn throttling_code<E: aws_sdk_route53::error::ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("none").to_string()
}

#[tokio::test]
async fn the_emulator_throttles_like_aws() {
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "lb").await;
    let zone = aws.create_zone("example.com").await;
    let proxy = Throttler::start(moto.port, Rules::default());
    let direct = Aws::without_retries(&proxy.url).await;

    // Classic ELB registration: a bucket of 20, refilled 4 a second.
    let (mut ok, mut codes, t) = (0, Vec::new(), std::time::Instant::now());
    for n in 0..30 {
        let r = direct
            .elb("us-east-1")
            .register_instances_with_load_balancer()
            .load_balancer_name("lb")
            .instances(
                aws_sdk_elasticloadbalancing::types::Instance::builder()
                    .instance_id(format!("i-{n:017x}"))
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => ok += 1,
            Err(e) => codes.push(throttling_code(&e)),
        }
    }
    // ...and 4 more a second while the loop runs (a loaded machine runs it slower).
    let most = 21 + (t.elapsed().as_secs_f64() * 4.0).ceil() as usize;
    assert!(
        (20..=most).contains(&ok),
        "{ok} of 30 registrations passed, 20 to {most} expected"
    );
    assert!(codes.iter().all(|c| c == "Throttling"), "{codes:?}");
    // Describe calls have their own bucket (40), but the account bucket (40) is drawn by every
    // call: about 20 are left after the registrations that passed (a throttled call takes none).
    let (mut described, t) = (0, std::time::Instant::now());
    for _ in 0..30 {
        if direct
            .elb("us-east-1")
            .describe_load_balancers()
            .send()
            .await
            .is_ok()
        {
            described += 1;
        }
    }
    // ...and 10 more a second while the loop runs (the registrations' loop refilled some too).
    let left = 40 - ok;
    let most = left + 3 + (t.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (left..=most).contains(&described),
        "{described} of 30 Describes, {left} to {most} expected"
    );
    // Another region has its own buckets.
    assert!(direct
        .elb("eu-west-1")
        .describe_load_balancers()
        .send()
        .await
        .is_ok());

    // Route53: 50 requests at once, per account.
    let (mut listed, t) = (0, std::time::Instant::now());
    for _ in 0..60 {
        match direct
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(&zone)
            .send()
            .await
        {
            Ok(_) => listed += 1,
            Err(e) => assert_eq!(throttling_code(&e), "Throttling"),
        }
    }
    // ...and 10 more a second while the loop runs.
    let most = 50 + (t.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        (50..=most).contains(&listed),
        "{listed} of 60 List calls, 50 to {most} expected"
    );

    // Change throughput: a bucket of 3 changes here; two CREATEs take 2, the next two are refused.
    let tight = Throttler::start(
        moto.port,
        Rules {
            route53_changes: (3.0, 0.01),
            ..Rules::default()
        },
    );
    let direct = Aws::without_retries(&tight.url).await;
    let create = |names: [&str; 2]| {
        use aws_sdk_route53::types::*;
        let changes = names.map(|n| {
            Change::builder()
                .action(ChangeAction::Create)
                .resource_record_set(
                    ResourceRecordSet::builder()
                        .name(format!("{n}.example.com."))
                        .r#type(RrType::A)
                        .ttl(60)
                        .resource_records(
                            ResourceRecord::builder()
                                .value("192.0.2.1")
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap()
        });
        direct
            .route53
            .change_resource_record_sets()
            .hosted_zone_id(&zone)
            .change_batch(
                ChangeBatch::builder()
                    .set_changes(Some(changes.to_vec()))
                    .build()
                    .unwrap(),
            )
            .send()
    };
    create(["a", "b"]).await.expect("2 of 3 change tokens");
    let refused = create(["c", "d"]).await.expect_err("1 token left");
    assert_eq!(throttling_code(&refused), "Throttling");
    assert_eq!(tight.throttled(), 1);
}

/// At the defaults lbmanager stays within AWS's buckets: a workload that needs more calls than
/// the bursts hold (so the refill pacing is what keeps it out of trouble) is never throttled.
#[tokio::test]
async fn at_the_defaults_no_call_is_throttled() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs: Vec<String> = (0..30).map(|i| format!("lb{i:02}")).collect();
    for lb in &lbs {
        aws.create_elb("us-east-1", lb).await;
    }
    let zone = aws.create_zone("example.com").await;
    let proxy = Throttler::start(moto.port, Rules::default());
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;

    // Interleaved, as hosts come up: every ELB gets its members over the whole burst.
    let mut keys: Vec<String> = (0..4)
        .flat_map(|n| lbs.iter().map(move |lb| member_key(lb, n)))
        .collect();
    for f in 0..20 {
        for ip in 0..50 {
            keys.push(r53_key(
                &zone,
                &format!("h{f}.example.com"),
                &format!("10.0.{f}.{ip}"),
            ));
        }
    }
    let mut client = etcd.client().await;
    for k in &keys {
        client.put(k.as_str(), "", None).await.unwrap();
    }
    // Then half of every ELB's members leave.
    for lb in &lbs {
        for n in 0..2 {
            client.delete(member_key(lb, n), None).await.unwrap();
        }
    }
    until_every_elb_has(&aws, &lbs, 2).await;
    eventually(
        "every name has its 50 values",
        Duration::from_secs(60),
        || async {
            for f in 0..20 {
                let records = aws.records(&zone, &format!("h{f}.example.com")).await;
                if records.get("A").is_none_or(|r| r.1.len() != 50) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let registrations = proxy.passed_of("Register");
    assert!(
        registrations > 20,
        "{registrations} registration calls: more than the bucket's 20, or this proves nothing"
    );
    assert_eq!(proxy.throttled(), 0, "{}", daemon.log());
}

/// When AWS allows less than lbmanager expects (other tools of the account spend the quota, or
/// lower limits), lbmanager is throttled, backs off, and still converges.
#[tokio::test]
async fn throttled_by_a_tighter_aws_lbmanager_backs_off_and_converges() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let lbs: Vec<String> = (0..10).map(|i| format!("lb{i:02}")).collect();
    for lb in &lbs {
        aws.create_elb("us-east-1", lb).await;
    }
    // A fifth of AWS's figures: registrations 4 at once and 0.8 a second.
    let proxy = Throttler::start(moto.port, Rules::default().scaled(0.2));
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    let keys: Vec<String> = (0..3)
        .flat_map(|n| lbs.iter().map(move |lb| member_key(lb, n)))
        .collect();
    let mut client = etcd.client().await;
    for k in &keys {
        client.put(k.as_str(), "", None).await.unwrap();
    }
    until_every_elb_has(&aws, &lbs, 3).await;
    let throttled = proxy.throttled();
    assert!(
        throttled > 0,
        "the tighter AWS never throttled: this proves nothing"
    );
    assert!(daemon.log().contains("Throttled"), "{}", daemon.log());
    // Backoff, not a tight loop: far fewer refused calls than the time allowed would hold.
    let passed = proxy.passed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        throttled < 100,
        "{throttled} throttled calls ({passed} passed): no backoff?"
    );
}
