//! Two installations of lbmanager with the same prefix, on two etcd clusters, in one AWS account:
//! each has its own identity, and never takes the other's health checks for its own.

use lbmanager_testkit::*;

/// Each installation records its identity (from its etcd cluster's id) at its first start, and
/// marks its checks with it, in their reference and their tags. A check of another installation
/// (here one of an installation from before identities were recorded, made long ago and used by
/// no record set) is never deleted, as that installation's own sweep would delete it.
#[tokio::test]
async fn two_installations_with_one_prefix_keep_to_their_own_checks() {
    let (one, two, moto) = (
        Etcd::start().await,
        Etcd::start().await,
        Moto::start().await,
    );
    let aws = Aws::new(&moto).await;
    let zone = aws.create_zone("example.com").await;
    // Another installation's check of a name neither manages, 20 minutes old.
    let legacy = lbmanager::health_check::installation_before_records(P);
    let made = (lbmanager::health_check::now_millis() - 20 * 60 * 1000) * 1000;
    let reference = lbmanager::health_check::Reference::of(&legacy, &zone, made);
    let other = aws
        .route53
        .create_health_check()
        .caller_reference(&reference)
        .health_check_config(
            aws_sdk_route53::types::HealthCheckConfig::builder()
                .r#type(aws_sdk_route53::types::HealthCheckType::Http)
                .ip_address("192.0.2.99")
                .port(8080)
                .resource_path("/health")
                .fully_qualified_domain_name("x.example.com")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .health_check()
        .unwrap()
        .id()
        .to_string();
    let rule = format!("route53/{zone}/*=HTTP:8080/health");
    let flags = ["--route53-health-check", rule.as_str()];
    one.put(&r53_key(&zone, "a.example.com", "192.0.2.1")).await;
    two.put(&r53_key(&zone, "b.example.com", "192.0.2.2")).await;
    let a = Daemon::start(&one, &moto, &flags);
    let b = Daemon::start(&two, &moto, &flags);
    a.wait_ready().await;
    b.wait_ready().await;
    eventually("each name with its check", DEADLINE, || async {
        aws.multivalue(&zone, "a.example.com").await.len() == 1
            && aws.multivalue(&zone, "b.example.com").await.len() == 1
    })
    .await;

    let key = "/lbmanager-state/lbManager/installation";
    let id = |etcd: &Etcd| {
        etcd.ctl(&["get", "--print-value-only", key])
            .trim()
            .to_string()
    };
    let (id_a, id_b) = (id(&one), id(&two));
    assert_eq!(id_a.len(), 8, "{id_a:?}");
    assert_ne!(id_a, id_b, "two clusters, two installations");
    let checks = aws.health_checks().await;
    assert!(
        checks.contains_key(&other),
        "the other installation's check is kept: {checks:?}"
    );
    for (fqdn, mark) in [("a.example.com", &id_a), ("b.example.com", &id_b)] {
        let (check, (reference, _)) = checks
            .iter()
            .find(|(_, (_, what))| what.ends_with(fqdn))
            .unwrap_or_else(|| panic!("{fqdn}'s check: {checks:?}"));
        assert!(
            reference.starts_with(&format!("lbm-{mark}-")),
            "{reference}"
        );
        let tags = aws
            .route53
            .list_tags_for_resource()
            .resource_type(aws_sdk_route53::types::TagResourceType::Healthcheck)
            .resource_id(check)
            .send()
            .await
            .unwrap();
        let tags = tags.resource_tag_set().unwrap().tags();
        assert!(
            tags.iter()
                .any(|t| t.key() == Some("lbmanager-installation") && t.value() == Some(mark)),
            "{tags:?}"
        );
    }
    drop((a, b));
}
