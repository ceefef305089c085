//! ALB/NLB target groups (ELBv2) under the same key tree, against moto.

use lbmanager_testkit::*;

#[tokio::test]
async fn instance_and_ip_target_groups_with_ports_single_switch_and_removal() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let vpc = moto.default_vpc();
    let inst = aws
        .create_target_group("inst-tg", "instance", 80, &vpc)
        .await;
    let ip = aws.create_target_group("ip-tg", "ip", 8080, &vpc).await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    etcd.put(&tg_key("inst-tg", "multiple", I1)).await;
    etcd.put(&tg_key("inst-tg", "multiple", &format!("{I2}:8081")))
        .await;
    etcd.put(&tg_key("ip-tg", "multiple", "10.0.0.5")).await;
    etcd.put(&tg_key("ip-tg", "multiple", "10.0.0.6:9000"))
        .await;
    // An IP in an instance group: warned about, not registered.
    etcd.put(&tg_key("inst-tg", "multiple", "10.0.0.9")).await;
    eventually(
        "both groups converged, default ports applied",
        DEADLINE,
        || async {
            aws.targets(&inst).await == strings(&[&format!("{I1}:80"), &format!("{I2}:8081")])
                && aws.targets(&ip).await == strings(&["10.0.0.5:8080", "10.0.0.6:9000"])
        },
    )
    .await;
    daemon
        .wait_log("ignoring a target of a kind the target group does not take")
        .await;

    // single switch: I3 alone, superseded keys gone from etcd.
    etcd.put(&tg_key("inst-tg", "single", I3)).await;
    eventually("single target only", DEADLINE, || async {
        aws.targets(&inst).await == strings(&[&format!("{I3}:80")])
    })
    .await;
    eventually("superseded keys deleted", DEADLINE, || async {
        etcd.keys(&format!("{P}/elbv2/us-east-1/inst-tg/")).await
            == [tg_key("inst-tg", "single", I3)].into()
    })
    .await;

    // Removal.
    etcd.del(&tg_key("ip-tg", "multiple", "10.0.0.5")).await;
    eventually("target removed", DEADLINE, || async {
        aws.targets(&ip).await == strings(&["10.0.0.6:9000"])
    })
    .await;
    assert!(daemon.log().contains("deregistered targets"));
}

#[tokio::test]
async fn restart_when_converged_makes_no_mutating_call() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let vpc = moto.default_vpc();
    let arn = aws
        .create_target_group("web-tg", "instance", 80, &vpc)
        .await;
    etcd.put(&tg_key("web-tg", "multiple", I1)).await;
    etcd.put(&tg_key("web-tg", "multiple", &format!("{I2}:8080")))
        .await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("converged", DEADLINE, || async {
        aws.targets(&arn).await == strings(&[&format!("{I1}:80"), &format!("{I2}:8080")])
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
    moto.start_recording();
    daemon.spawn(&etcd.url, &moto.url, &[]);
    daemon.wait_ready().await;
    let ours: Vec<_> = moto
        .recorded()
        .into_iter()
        .filter(|c| c.by_lbmanager())
        .collect();
    assert!(
        ours.iter()
            .any(|c| c.body.contains("Action=DescribeTargetHealth")),
        "{ours:#?}"
    );
    let mutating: Vec<_> = ours.iter().filter(|c| c.is_mutating()).collect();
    assert!(mutating.is_empty(), "{mutating:#?}");
}

#[tokio::test]
async fn unknown_target_group_is_logged_and_others_converge() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let vpc = moto.default_vpc();
    let arn = aws.create_target_group("real-tg", "ip", 80, &vpc).await;
    etcd.put(&tg_key("ghost-tg", "multiple", "10.0.0.1")).await;
    etcd.put(&tg_key("real-tg", "multiple", "10.0.0.2")).await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("the real group converges", DEADLINE, || async {
        aws.targets(&arn).await == strings(&["10.0.0.2:80"])
    })
    .await;
    daemon.wait_log("sync failed, will retry").await;
    let log = daemon.log();
    let line = log.lines().find(|l| l.contains("sync failed")).unwrap();
    assert!(
        line.contains("ghost-tg") && line.contains("TargetGroupNotFound"),
        "{line}"
    );
}

#[tokio::test]
async fn classic_elb_target_group_and_route53_in_one_burst() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let vpc = moto.default_vpc();
    aws.create_elb("us-east-1", "classic").await;
    let arn = aws
        .create_target_group("alb-tg", "instance", 80, &vpc)
        .await;
    let zone = aws.create_zone("example.com").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    let mut client = etcd.client().await;
    for (i, id) in [I1, I2, I3].iter().enumerate() {
        for k in [
            format!("{P}/elb/us-east-1/classic/multiple/{id}"),
            tg_key("alb-tg", "multiple", &format!("{id}:{}", 8080 + i)),
            r53_key(&zone, "www.example.com", &format!("192.0.2.{i}")),
        ] {
            client.put(k, "", None).await.unwrap();
        }
    }
    eventually("all three kinds converged", DEADLINE, || async {
        aws.instances("us-east-1", "classic").await == strings(&[I1, I3, I2])
            && aws.targets(&arn).await
                == strings(&[
                    &format!("{I1}:8080"),
                    &format!("{I3}:8082"),
                    &format!("{I2}:8081"),
                ])
            && aws
                .records(&zone, "www.example.com")
                .await
                .get("A")
                .map(|r| r.1.clone())
                == Some(strings(&["192.0.2.0", "192.0.2.1", "192.0.2.2"]))
    })
    .await;
}
