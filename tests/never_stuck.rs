//! Never stuck, never silent: the faults production brings every week, each of which once froze a
//! load balancer or the watch without a word. Real etcd and moto; where real AWS refuses what moto
//! accepts (a terminated instance), a proxy answers as AWS does.

mod common;

use common::proxy::FaultProxy;
use common::*;

const P: &str = "/lbManager";
const GOOD1: &str = "i-00000000000000a01";
const GOOD2: &str = "i-00000000000000a02";
const GOOD3: &str = "i-00000000000000a03";
const DEAD: &str = "i-0000000000000dead";

fn elb_key(lb: &str, class: &str, id: &str) -> String {
    format!("{P}/elb/us-east-1/{lb}/{class}/{id}")
}

fn tg_key(tg: &str, id: &str) -> String {
    format!("{P}/elbv2/us-east-1/{tg}/multiple/{id}")
}

/// A terminated host's key stays in etcd; AWS refuses it. The other members are still
/// registered and deregistered around it, it is warned about once with its key, counted, shown by
/// `plan`, and a load balancer whose only wanted member is refused is not emptied.
#[tokio::test]
async fn a_rejected_instance_does_not_freeze_its_elb() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    aws.create_elb("us-east-1", "web").await;
    aws.create_elb("us-east-1", "solo").await;
    etcd.put(&elb_key("web", "multiple", GOOD1)).await;
    etcd.put(&elb_key("web", "multiple", GOOD2)).await;
    etcd.put(&elb_key("solo", "single", GOOD1)).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &["--listen", &listen]);
    daemon.wait_log("initial sync complete").await;
    assert_eq!(
        aws.instances("us-east-1", "web").await,
        strings(&[GOOD1, GOOD2])
    );

    // The terminated host's key arrives; another member leaves, a third arrives.
    etcd.put(&elb_key("web", "multiple", DEAD)).await;
    etcd.del(&elb_key("web", "multiple", GOOD2)).await;
    etcd.put(&elb_key("web", "multiple", GOOD3)).await;
    eventually("web has every member AWS accepts", DEADLINE, || async {
        aws.instances("us-east-1", "web").await == strings(&[GOOD1, GOOD3])
    })
    .await;
    daemon.wait_log("AWS rejected a member").await;
    let log = daemon.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("AWS rejected a member"))
        .collect();
    assert_eq!(warned.len(), 1, "warned once: {warned:?}");
    assert!(
        warned[0].contains(&elb_key("web", "multiple", DEAD)),
        "{}",
        warned[0]
    );
    assert!(warned[0].contains("InvalidInstance"), "{}", warned[0]);
    eventually("the rejection is counted", DEADLINE, || async {
        http_get(port, "/metrics").is_some_and(|(_, text)| {
            sample(
                &text,
                "lbmanager_rejected_members{load_balancer=\"elb/us-east-1/web\"}",
            ) == Some(1.0)
        })
    })
    .await;

    // A `single` switch to a refused instance does not empty the load balancer.
    etcd.put(&elb_key("solo", "single", DEAD)).await;
    daemon
        .wait_log("not deregistering the last instances")
        .await;
    assert_eq!(aws.instances("us-east-1", "solo").await, strings(&[GOOD1]));

    // `plan` shows the refusals the daemon recorded.
    eventually("plan shows the rejection", DEADLINE, || async {
        let (code, out, _) = lbmanager(&[
            "plan",
            "--etcd-endpoints",
            &etcd.url,
            "--aws-endpoint-url",
            &proxy.url,
        ]);
        code == Some(2)
            && out.lines().any(|l| {
                l.contains("elb/us-east-1/web")
                    && l.contains(&format!("rejected by AWS: {DEAD}"))
                    && l.contains("not in running state")
            })
    })
    .await;

    // Once its key is gone, nothing is left of it.
    etcd.del(&elb_key("web", "multiple", DEAD)).await;
    daemon.wait_log("member no longer rejected").await;
    assert_eq!(
        aws.instances("us-east-1", "web").await,
        strings(&[GOOD1, GOOD3])
    );
    let refused = proxy.refused.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        refused <= 3,
        "refused calls are not repeated per event: {refused}"
    );
    daemon.stop();
}

/// The same for a target group: AWS's `InvalidTarget` lists every bad target at once.
#[tokio::test]
async fn a_rejected_target_does_not_freeze_its_target_group() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    const DEAD2: &str = "i-0000000000000dea2";
    proxy.set_invalid(&[DEAD, DEAD2]);
    let vpc = moto.default_vpc();
    let arn = aws.create_target_group("tg", "instance", 80, &vpc).await;
    etcd.put(&tg_key("tg", GOOD1)).await;
    etcd.put(&tg_key("tg", GOOD2)).await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_log("initial sync complete").await;
    let t = |id: &str| format!("{id}:80");
    eventually("tg converged", DEADLINE, || async {
        aws.targets(&arn).await == vec![t(GOOD1), t(GOOD2)]
    })
    .await;
    etcd.put(&tg_key("tg", DEAD)).await;
    etcd.put(&tg_key("tg", DEAD2)).await;
    etcd.del(&tg_key("tg", GOOD2)).await;
    etcd.put(&tg_key("tg", GOOD3)).await;
    eventually("tg has every target AWS accepts", DEADLINE, || async {
        aws.targets(&arn).await == vec![t(GOOD1), t(GOOD3)]
    })
    .await;
    daemon.wait_log_count("AWS rejected a member", 2).await;
    let log = daemon.log();
    assert!(log.contains(&tg_key("tg", DEAD)) && log.contains("InvalidTarget"));
    daemon.stop();
}
