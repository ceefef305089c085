//! The built binary against a real etcd and moto: keys in, AWS state out, read back through the
//! AWS API.

use lbmanager_testkit::*;

#[tokio::test]
async fn elb_members_added_and_removed() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;

    etcd.put(&elb_key_in("us-east-1", "webLB", "multiple", I1))
        .await;
    etcd.put(&elb_key_in("us-east-1", "webLB", "multiple", I2))
        .await;
    eventually("both instances registered", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;

    etcd.del(&elb_key_in("us-east-1", "webLB", "multiple", I1))
        .await;
    eventually("one instance left", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I2])
    })
    .await;
    assert!(daemon.log().contains("deregistered instances"));
    assert!(daemon.log().contains(I1));
}

#[tokio::test]
async fn single_switch_rollback_and_superseded_keys_deleted() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    let k1 = elb_key_in("us-east-1", "webLB", "multiple", I1);
    let k2 = elb_key_in("us-east-1", "webLB", "multiple", I2);
    let s3 = elb_key_in("us-east-1", "webLB", "single", I3);
    etcd.put(&k1).await;
    etcd.put(&k2).await;
    eventually("two members", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;

    // The single switch: I3 alone, and the superseded keys gone from etcd.
    etcd.put(&s3).await;
    eventually("single member only", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I3])
    })
    .await;
    eventually("superseded keys deleted", DEADLINE, || async {
        etcd.keys(&format!("{P}/elb/")).await == [s3.clone()].into()
    })
    .await;

    // Rollback: the old key again. The single goes, etcd lists exactly the load balancer.
    etcd.put(&k1).await;
    eventually("rolled back", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    eventually("single key deleted", DEADLINE, || async {
        etcd.keys(&format!("{P}/elb/")).await == [k1.clone()].into()
    })
    .await;
    assert!(daemon.log().contains("deleted superseded keys"));
}

#[tokio::test]
async fn route53_a_and_aaaa_and_last_member_removed() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    let daemon = Daemon::start(&etcd, &moto, &["--route53-ttl", "30"]);
    daemon.wait_ready().await;
    let key = |ip: &str| r53_key(&zone, "WWW.example.com.", ip);
    for ip in ["192.0.2.10", "192.0.2.11", "2001:db8::10"] {
        etcd.put(&key(ip)).await;
    }
    eventually("A and AAAA record sets", DEADLINE, || async {
        let r = aws.records(&zone, "www.example.com").await;
        r.get("A") == Some(&(30, strings(&["192.0.2.10", "192.0.2.11"])))
            && r.get("AAAA") == Some(&(30, strings(&["2001:db8::10"])))
    })
    .await;

    etcd.del(&key("192.0.2.10")).await;
    eventually("A record set updated", DEADLINE, || async {
        let r = aws.records(&zone, "www.example.com").await;
        r.get("A") == Some(&(30, strings(&["192.0.2.11"])))
    })
    .await;

    etcd.del(&key("192.0.2.11")).await;
    etcd.del(&key("2001:db8::10")).await;
    eventually("both record sets deleted", DEADLINE, || async {
        aws.records(&zone, "www.example.com").await.is_empty()
    })
    .await;
    assert!(daemon.log().contains("action: DELETE"));
}

#[tokio::test]
async fn two_regions_and_two_zones_at_once() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "east").await;
    aws.create_elb("eu-west-1", "west").await;
    let z1 = aws.create_zone("example.com").await;
    let z2 = aws.create_zone("example.org").await;
    // Some keys exist before the start, some come after.
    etcd.put(&elb_key_in("us-east-1", "east", "multiple", I1))
        .await;
    etcd.put(&r53_key(&z1, "a.example.com", "192.0.2.1")).await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    etcd.put(&elb_key_in("eu-west-1", "west", "multiple", I2))
        .await;
    etcd.put(&format!(
        "{P}/route53/eu-west-1/{z2}/b.example.org/multiple/2001:db8::2"
    ))
    .await;
    eventually("both ELBs and both zones", DEADLINE, || async {
        aws.instances("us-east-1", "east").await == strings(&[I1])
            && aws.instances("eu-west-1", "west").await == strings(&[I2])
            && aws
                .records(&z1, "a.example.com")
                .await
                .get("A")
                .map(|r| r.1.clone())
                == Some(strings(&["192.0.2.1"]))
            && aws
                .records(&z2, "b.example.org")
                .await
                .get("AAAA")
                .map(|r| r.1.clone())
                == Some(strings(&["2001:db8::2"]))
    })
    .await;
    // Each ELB lives in its own region only.
    assert!(aws
        .elb("eu-west-1")
        .describe_load_balancers()
        .load_balancer_names("east")
        .send()
        .await
        .is_err());
    drop(daemon);
}

#[tokio::test]
async fn malformed_key_warned_once_while_others_converge() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let bad = format!("{P}/elb/us-east-1/webLB/multiple/not-an-instance");
    etcd.put(&bad).await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    daemon.wait_ready().await;
    // The same bad key written again, another bad key, and a reserved key that is no member.
    etcd.put(&bad).await;
    etcd.put(&format!("{P}/nosuchkind/x")).await;
    etcd.put(&format!("{P}/_state/whatever")).await;
    etcd.put(&elb_key_in("us-east-1", "webLB", "multiple", I1))
        .await;
    eventually("valid member registered", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    daemon.wait_log("nosuchkind").await;
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ignoring malformed key"))
        .collect();
    assert_eq!(
        warnings.iter().filter(|l| l.contains(&bad)).count(),
        1,
        "{warnings:#?}"
    );
    assert!(warnings.iter().any(|l| l.contains("invalid instance id")));
    assert!(
        !log.contains("_state/whatever"),
        "a reserved key is not a malformed key"
    );
}

#[tokio::test]
async fn missing_elb_is_logged_and_others_converge() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "realLB").await;
    etcd.put(&elb_key_in("us-east-1", "ghostLB", "multiple", I1))
        .await;
    etcd.put(&elb_key_in("us-east-1", "realLB", "multiple", I2))
        .await;
    let daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("the real ELB converges", DEADLINE, || async {
        aws.instances("us-east-1", "realLB").await == strings(&[I2])
    })
    .await;
    daemon.wait_log("sync failed, will retry").await;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("sync failed"))
        .expect("a sync failure line");
    assert!(line.contains("ghostLB"), "{line}");
    assert!(line.contains("LoadBalancerNotFound"), "{line}");
    daemon.wait_ready().await;
    assert!(log.contains("failed: 1") || daemon.log().contains("failed: 1"));
    // And it keeps working for the real one.
    etcd.put(&elb_key_in("us-east-1", "realLB", "multiple", I3))
        .await;
    eventually("later change converges", DEADLINE, || async {
        aws.instances("us-east-1", "realLB").await == strings(&[I3, I2])
    })
    .await;
}

/// The original lbManager's credential names still work (moto checks none, but the SDK signs
/// nothing without credentials, so nothing would converge without them).
#[tokio::test]
async fn original_credential_names_are_accepted() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&elb_key_in("us-east-1", "webLB", "multiple", I1))
        .await;
    let mut daemon = Daemon::unstarted();
    daemon.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), None),
        ("AWS_SECRET_ACCESS_KEY".into(), None),
        ("AWS_ACCESS_KEY".into(), Some(AWS_KEY_ID.into())),
        ("AWS_SECRET_KEY".into(), Some(AWS_SECRET.into())),
        ("HOME".into(), Some("/nonexistent".into())),
    ];
    daemon.spawn(&etcd.url, &moto.url, &[]);
    eventually(
        "registered with the legacy credentials",
        DEADLINE,
        || async { aws.instances("us-east-1", "webLB").await == strings(&[I1]) },
    )
    .await;
    assert!(!daemon.log().contains(AWS_SECRET));
}

/// `--route53-health-check`, against moto behind a proxy that keeps `CallerReference` as Route53
/// does (moto ignores it): the names of the scope become multivalue answers, each value with a
/// check of its IP (one check, though the first creation's answer is lost); a value removed takes
/// its check with it; a restart makes no second check; a value added again gets a new one; a
/// restart without the flag makes the name one simple record set again and deletes the checks.
/// A name outside the scope is one simple record set throughout; `plan` is in step after each
/// sync; `status` shows each value's health.
#[tokio::test]
async fn route53_multivalue_answers_with_health_checks_through_their_life() {
    use lbmanager_testkit::route53::Route53Proxy;
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    // Each change PENDING for 2 s, as Route53's take a while to reach every name server.
    let proxy = Route53Proxy::start(moto.port, std::time::Duration::from_secs(2));
    let key = |fqdn: &str, ip: &str| r53_key(&zone, fqdn, ip);
    for ip in ["192.0.2.1", "192.0.2.2"] {
        etcd.put(&key("www.example.com", ip)).await;
    }
    etcd.put(&key("plain.example.com", "192.0.2.9")).await;
    let rule = format!("route53/{zone}/www.example.com=HTTP:8080/health");
    let flags = [
        "--route53-health-check",
        rule.as_str(),
        "--resync-interval",
        "3s",
    ];
    proxy.lose_creations(1);
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &flags);
    let with_checks = |n: usize| {
        let aws = &aws;
        let zone = &zone;
        async move {
            let sets = aws.multivalue(zone, "www.example.com").await;
            let checks = aws.health_checks().await;
            sets.len() == n
                && checks.len() == n
                && sets.iter().all(|(id, values, check)| {
                    values == std::slice::from_ref(id) && checks.contains_key(check)
                })
                && aws.records(zone, "www.example.com").await.is_empty()
        }
    };
    eventually("two multivalue answers with their checks", DEADLINE, || {
        with_checks(2)
    })
    .await;
    assert_eq!(
        proxy.checks_created(),
        2,
        "the lost answer made no second check"
    );
    for (reference, what) in aws.health_checks().await.values() {
        assert!(
            reference.starts_with("lbm-") && reference.len() <= 64,
            "{reference}"
        );
        assert!(
            what.starts_with("HTTP 192.0.2.") && what.ends_with(":8080 /health www.example.com"),
            "{what}"
        );
    }
    let plain = || async {
        aws.records(&zone, "plain.example.com")
            .await
            .get("A")
            .cloned()
            == Some((60, strings(&["192.0.2.9"])))
            && aws.multivalue(&zone, "plain.example.com").await.is_empty()
    };
    assert!(plain().await);
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--etcd-endpoints",
            &etcd.url,
            "--aws-endpoint-url",
            &proxy.url,
        ];
        args.extend_from_slice(extra);
        lbmanager(&args)
    };
    let (code, table, err) = plan(&flags[..2]);
    assert_eq!(code, Some(0), "in step after the sync: {table} {err}");
    // Health as Route53 reports it (moto: every check healthy), read at a resync.
    eventually("status shows the values' health", DEADLINE, || async {
        let (_, json, _) =
            lbmanager_async(&["status", "--etcd-endpoints", &etcd.url, "--output", "json"]).await;
        json.matches("\"healthy\"").count() >= 2
    })
    .await;

    // A value goes, and its check after it, once the change that removed the value is INSYNC.
    etcd.del(&key("www.example.com", "192.0.2.2")).await;
    eventually("one answer, one check", DEADLINE, || with_checks(1)).await;
    let removal = proxy.changes().pop().unwrap();
    let insync = removal
        .insync_told
        .expect("a check deleted before its removal was INSYNC");
    assert_eq!(proxy.deletions().len(), 1);
    assert!(proxy.deletions()[0] >= insync, "deleted while PENDING");

    // A restart with the flag: no second check.
    daemon.stop();
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &flags);
    daemon.wait_ready().await;
    assert!(with_checks(1).await);
    assert_eq!(proxy.checks_created(), 2);

    // The value again, by a host that waits until Route53 reports it healthy: a check of its
    // own again (the old one's reference is spent).
    let again = key("www.example.com", "192.0.2.2");
    let (code, _, err) = lbmanager_async(&[
        "member",
        "add",
        &again,
        "--wait",
        "--healthy",
        "--timeout",
        "30s",
        "--etcd-endpoints",
        &etcd.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(with_checks(2).await);
    assert_eq!(proxy.checks_created(), 3);

    // Restarted without the flag: one simple record set, no check left.
    daemon.stop();
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    eventually("a simple record set again, no check", DEADLINE, || async {
        aws.records(&zone, "www.example.com")
            .await
            .get("A")
            .cloned()
            == Some((60, strings(&["192.0.2.1", "192.0.2.2"])))
            && aws.multivalue(&zone, "www.example.com").await.is_empty()
            && aws.health_checks().await.is_empty()
    })
    .await;
    assert!(plain().await);
    let (code, table, err) = plan(&[]);
    assert_eq!(code, Some(0), "in step without the flag: {table} {err}");
    daemon.stop();
}
