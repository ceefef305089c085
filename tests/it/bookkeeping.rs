//! lbmanager's own records live outside the member tree (`/lbmanager-state/PREFIX/…`), so the
//! original's purge (`etcdctl del --prefix /lbManager/`) made while lbmanager is stopped still
//! empties the load balancers it managed.

use lbmanager_testkit::proxy;
use lbmanager_testkit::*;

fn key(id: &str) -> String {
    elb_key("web", "multiple", id)
}

#[tokio::test]
async fn a_purge_while_stopped_empties_the_load_balancers_at_the_next_start() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    etcd.put(&key(I1)).await;
    etcd.put(&key(I2)).await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("registered", DEADLINE, || async {
        aws.instances("us-east-1", "web").await == strings(&[I1, I2])
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));

    // The original's purge, with the trailing slash and without.
    etcd.ctl(&["del", "--prefix", "/lbManager/"]);
    etcd.ctl(&["del", "--prefix", "/lbManager"]);

    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    eventually(
        "emptied at start, as if it had been running",
        DEADLINE,
        || async { aws.instances("us-east-1", "web").await.is_empty() },
    )
    .await;
    eventually(
        "the record and the status go once the load balancer is emptied",
        DEADLINE,
        // (Only the heartbeat, lbmanager is running, and the installation's identity stay.)
        || async {
            etcd.keys("/lbmanager-state/").await
                == [
                    "/lbmanager-state/lbManager/daemon".to_string(),
                    "/lbmanager-state/lbManager/installation".to_string(),
                ]
                .into()
        },
    )
    .await;
    assert_eq!(daemon.stop(), Some(0));
}

/// `kill -9` right after the first Register of a new load balancer reached AWS: its record was
/// already in etcd, so keys deleted while lbmanager is down still empty it at the next start.
#[tokio::test]
async fn killed_right_after_the_first_register_the_load_balancer_is_still_emptied() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let proxy = proxy::FaultProxy::aws_rules(moto.port);
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    *proxy.kill_after_register.lock().unwrap() = daemon.pid();
    etcd.put(&key(I1)).await;
    assert_eq!(daemon.exit_code(DEADLINE).await, None, "killed by SIGKILL");
    assert_eq!(aws.instances("us-east-1", "web").await, strings(&[I1]));
    etcd.del(&key(I1)).await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("emptied at the next start", DEADLINE, || async {
        aws.instances("us-east-1", "web").await.is_empty()
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
}
