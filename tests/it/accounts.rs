//! `--assume-role`: load balancers and hosted zones of another account, reached through STS
//! AssumeRole. moto keeps each account's resources apart: what lbmanager changes through the role
//! shows in account 111111111111 and nowhere in the default account (123456789012).

use lbmanager_testkit::*;

const ROLE: &str = "arn:aws:iam::111111111111:role/lbmanager";
const I1: &str = "i-00000000000000e01";
const I2: &str = "i-00000000000000e02";

#[tokio::test]
async fn load_balancers_and_zones_of_another_account_through_an_assumed_role() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let other = Aws::assuming(&moto, ROLE).await;
    let default = Aws::new(&moto).await;
    other.create_elb("us-east-1", "acctLB").await;
    // A load balancer of the same name in the default account: it must stay untouched.
    default.create_elb("us-east-1", "acctLB").await;
    default.create_elb("us-east-1", "homeLB").await;
    let zone = other.create_zone("example.org").await;
    let elb = |lb: &str, id: &str| format!("{P}/elb/us-east-1/{lb}/multiple/{id}");
    etcd.put(&elb("acctLB", I1)).await;
    etcd.put(&elb("homeLB", I2)).await;
    etcd.put(&r53_key(&zone, "www.example.org", "192.0.2.5"))
        .await;
    let rules = format!("elb/us-east-1/acctLB={ROLE}");
    let zone_rule = format!("route53/{zone}={ROLE}#lbmanager-external-id");
    let daemon = Daemon::start(
        &etcd,
        &moto,
        &["--assume-role", &rules, "--assume-role", &zone_rule],
    );
    daemon.wait_ready().await;
    assert_eq!(other.instances("us-east-1", "acctLB").await, strings(&[I1]));
    assert_eq!(
        other.records(&zone, "www.example.org").await["A"].1,
        strings(&["192.0.2.5"])
    );
    // The default account: its own load balancer in step, the namesake untouched.
    assert_eq!(
        default.instances("us-east-1", "homeLB").await,
        strings(&[I2])
    );
    assert!(default.instances("us-east-1", "acctLB").await.is_empty());

    // Changes follow through the role.
    etcd.put(&elb("acctLB", I2)).await;
    etcd.del(&elb("acctLB", I1)).await;
    eventually("the other account's ELB in step", DEADLINE, || async {
        other.instances("us-east-1", "acctLB").await == strings(&[I2])
    })
    .await;
    assert!(default.instances("us-east-1", "acctLB").await.is_empty());
    assert!(daemon
        .log()
        .contains("assuming a role for some load balancers"));
    assert!(
        !daemon.log().contains("lbmanager-external-id"),
        "the external id is not logged"
    );
}

#[test]
fn a_bad_assume_role_rule_exits_2_saying_why() {
    let (code, _, err) = lbmanager(&["run", "--assume-role", "elb/us-east-1/web"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("expected SCOPE=ROLE_ARN"), "{err}");
}
