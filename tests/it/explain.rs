//! `lbmanager explain KEY`: where a member key or a load balancer stands and why, from etcd
//! alone, against a running lbmanager (issue 32).

use lbmanager_testkit::proxy::FaultProxy;
use lbmanager_testkit::*;

const DEAD: &str = "i-0000000000000dead";

async fn explain(etcd: &Etcd, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["explain", "--etcd-endpoints", &etcd.url];
    all.extend_from_slice(args);
    lbmanager_async(&all).await
}

#[tokio::test]
async fn explain_says_where_a_key_stands_and_why() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    aws.create_elb("us-east-1", "webLB").await;
    let (good, dead) = (
        elb_key("webLB", "multiple", I1),
        elb_key("webLB", "multiple", DEAD),
    );
    etcd.put(&good).await;
    etcd.put(&dead).await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    eventually("the refusal published", DEADLINE, || async {
        explain(&etcd, &[&dead]).await.1.contains("AWS refuses it")
    })
    .await;

    let (code, out, err) = explain(&etcd, &[&good]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("The key names {I1} of elb/us-east-1/webLB")),
        "{out}"
    );
    assert!(
        out.contains("The key is in etcd, written at revision"),
        "{out}"
    );
    assert!(out.contains("AWS has it"), "{out}");

    let (code, out, _) = explain(&etcd, &[&dead]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("AWS refuses it: ") && out.contains("InvalidInstance"),
        "{out}"
    );

    // A key that is not there: AWS must not have its member, and does not.
    let (code, out, _) = explain(&etcd, &[&elb_key("webLB", "multiple", I3)]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("The key is not in etcd"), "{out}");

    // The load balancer as a whole: not in step while AWS refuses a member.
    let (code, out, _) = explain(&etcd, &["elb/us-east-1/webLB"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("etcd wants 2 member(s) in elb/us-east-1/webLB."),
        "{out}"
    );
    assert!(out.contains(&format!("AWS refuses {DEAD}")), "{out}");

    // Filters that leave it out.
    let (code, out, _) = explain(&etcd, &[&good, "--elb-filter", "us-east-1/other"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("leave elb/us-east-1/webLB out"), "{out}");

    // JSON for scripts.
    let (code, json, _) = explain(&etcd, &[&good, "--output", "json"]).await;
    assert_eq!(code, Some(0));
    let e: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(e["as_its_key_says"], true);
    assert_eq!(e["member"], I1);
    assert_eq!(e["wanted_in_aws"], true);

    // Not a member key: why, exit 2.
    let bad = format!("{P}/elb/us-east-1/web_LB/multiple/{I1}");
    let (code, _, err) = explain(&etcd, &[&bad]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid ELB name"), "{err}");
}
