//! `--ownership shared`: other writers feed the same load balancers (an Auto Scaling group, a
//! hand-registered canary, another tool's record values) and lbmanager removes only what it
//! added, through adds, removes, resyncs and a `kill -9` with deletes made while it was stopped.
//! With the default (`exclusive`) they are removed, as the original did.

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use lbmanager_testkit::*;

const I1: &str = "i-00000000000000d01";
const I2: &str = "i-00000000000000d02";
const CANARY: &str = "i-0000000000000ca01";
const OWNED: &str = "/lbmanager-state/lbManager/owned/";

fn key(id: &str) -> String {
    elb_key("web", "multiple", id)
}

#[tokio::test]
async fn shared_keeps_what_it_did_not_add_through_changes_resyncs_and_kill_9() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    // Registered by hand, not through etcd.
    aws.register("us-east-1", "web", CANARY).await;
    etcd.put(&key(I1)).await;
    let flags = ["--ownership", "shared", "--resync-interval", "1s"];
    let mut daemon = Daemon::start(&etcd, &moto, &flags);
    let has = |ids: &'static [&'static str]| {
        let aws = &aws;
        move || async move { aws.instances("us-east-1", "web").await == strings(ids) }
    };
    eventually("added beside the canary", DEADLINE, has(&[I1, CANARY])).await;
    // Recorded as lbmanager's: the one it added, not the canary.
    assert_eq!(
        etcd.keys(OWNED).await,
        [format!("{OWNED}elb/us-east-1/web/{I1}")].into()
    );
    etcd.put(&key(I2)).await;
    eventually("another added", DEADLINE, has(&[I1, I2, CANARY])).await;
    etcd.del(&key(I1)).await;
    eventually(
        "its own removed, the canary kept",
        DEADLINE,
        has(&[I2, CANARY]),
    )
    .await;
    // Resyncs (every second here) leave the canary alone too.
    let seen = daemon
        .log()
        .matches("leaving instances lbmanager did not add")
        .count();
    daemon
        .wait_log_count("leaving instances lbmanager did not add", seen + 3)
        .await;
    assert_eq!(
        aws.instances("us-east-1", "web").await,
        strings(&[I2, CANARY])
    );

    // The log, `status` and `plan` say which member is not lbmanager's; all in step.
    assert!(daemon
        .log()
        .contains("leaving members lbmanager did not add"));
    let (code, out, err) = lbmanager_async(&["status", "--etcd-endpoints", &etcd.url]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("not lbmanager's: {CANARY}")), "{out}");
    let (code, out, err) = lbmanager_async(&[
        "plan",
        "--ownership",
        "shared",
        "--etcd-endpoints",
        &etcd.url,
        "--aws-endpoint-url",
        &moto.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("not lbmanager's, left alone: {CANARY}")),
        "{out}"
    );

    // kill -9, and the last key deleted while lbmanager is away: at the next start lbmanager
    // still knows I2 is its own (the record), and the canary is not.
    daemon.kill9();
    etcd.del(&key(I2)).await;
    let daemon = Daemon::start(&etcd, &moto, &flags);
    eventually("only the canary left", DEADLINE, has(&[CANARY])).await;
    eventually("no record left", DEADLINE, || async {
        etcd.keys(OWNED).await.is_empty()
    })
    .await;
    daemon.wait_ready().await;
    assert_eq!(aws.instances("us-east-1", "web").await, strings(&[CANARY]));
}

#[tokio::test]
async fn exclusive_removes_what_etcd_does_not_list() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    aws.register("us-east-1", "web", CANARY).await;
    etcd.put(&key(I1)).await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("etcd's members only", DEADLINE, || async {
        aws.instances("us-east-1", "web").await == strings(&[I1])
    })
    .await;
    daemon.wait_ready().await;
    assert!(
        etcd.keys(OWNED).await.is_empty(),
        "no records in exclusive mode"
    );
}

/// Puts `www.example.com A` with `values` into `zone`, as another tool would.
async fn put_record(aws: &Aws, zone: &str, values: &[&str]) {
    let set = ResourceRecordSet::builder()
        .name("www.example.com.")
        .r#type(RrType::A)
        .ttl(60)
        .set_resource_records(Some(
            values
                .iter()
                .map(|v| ResourceRecord::builder().value(*v).build().unwrap())
                .collect(),
        ))
        .build()
        .unwrap();
    aws.route53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("a record set written by another tool");
}

#[tokio::test]
async fn a_shared_record_set_keeps_the_values_of_others() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    put_record(&aws, &zone, &["192.0.2.99"]).await;
    let r53 = |ip: &str| r53_key(&zone, "www.example.com", ip);
    etcd.put(&r53("192.0.2.1")).await;
    let flags = ["--ownership", "shared"];
    let mut daemon = Daemon::start(&etcd, &moto, &flags);
    let values = || async {
        aws.records(&zone, "www.example.com")
            .await
            .get("A")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    eventually("ours beside theirs", DEADLINE, || async {
        values().await == strings(&["192.0.2.1", "192.0.2.99"])
    })
    .await;
    // The other tool adds a value between two changes of ours (lbmanager reads afresh).
    put_record(&aws, &zone, &["192.0.2.1", "192.0.2.77", "192.0.2.99"]).await;
    etcd.put(&r53("192.0.2.2")).await;
    eventually("another of ours", DEADLINE, || async {
        values().await == strings(&["192.0.2.1", "192.0.2.2", "192.0.2.77", "192.0.2.99"])
    })
    .await;
    // A value of theirs that etcd wants too stays theirs: its key going removes nothing.
    etcd.put(&r53("192.0.2.99")).await;
    etcd.put(&r53("192.0.2.3")).await;
    eventually("a third of ours", DEADLINE, || async {
        values().await.contains(&"192.0.2.3".to_string())
    })
    .await;
    etcd.del(&r53("192.0.2.99")).await;
    etcd.del(&r53("192.0.2.3")).await;
    eventually("ours gone, theirs kept", DEADLINE, || async {
        values().await == strings(&["192.0.2.1", "192.0.2.2", "192.0.2.77", "192.0.2.99"])
    })
    .await;
    put_record(&aws, &zone, &["192.0.2.1", "192.0.2.2", "192.0.2.99"]).await;
    etcd.del(&r53("192.0.2.1")).await;
    eventually("ours removed, theirs kept", DEADLINE, || async {
        values().await == strings(&["192.0.2.2", "192.0.2.99"])
    })
    .await;
    daemon
        .wait_log("leaving members lbmanager did not add")
        .await;
    assert!(
        daemon.log().contains("kept: 192.0.2.99"),
        "{}",
        daemon.log()
    );
    // kill -9, our last value deleted meanwhile: the record set keeps theirs, not deleted.
    daemon.kill9();
    etcd.del(&r53("192.0.2.2")).await;
    let _daemon = Daemon::start(&etcd, &moto, &flags);
    eventually("theirs alone", DEADLINE, || async {
        values().await == strings(&["192.0.2.99"])
    })
    .await;
    eventually("no record left", DEADLINE, || async {
        etcd.keys(OWNED).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn an_exclusive_record_set_is_etcd_s_alone() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    put_record(&aws, &zone, &["192.0.2.99"]).await;
    etcd.put(&r53_key(&zone, "www.example.com", "192.0.2.1"))
        .await;
    let _daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("etcd's value only", DEADLINE, || async {
        aws.records(&zone, "www.example.com")
            .await
            .get("A")
            .map(|(_, v)| v.clone())
            == Some(strings(&["192.0.2.1"]))
    })
    .await;
}
