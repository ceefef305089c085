//! D: the latency from an etcd put to the change visible in AWS.

use std::time::Instant;

use aws_sdk_elasticloadbalancing::types::Instance;
use lbmanager_testkit::*;

use crate::common::*;

pub(crate) async fn scenario_d(rows: &mut Vec<Row>) {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    aws.create_elb("us-east-1", "probeLB").await;
    // moto's own latency for the change: a Register and a Deregister, timed directly.
    let mut own = Vec::new();
    let elb = aws.elb("us-east-1");
    for n in 0..100 {
        let i = Instance::builder().instance_id(inst(n)).build();
        let t = Instant::now();
        elb.register_instances_with_load_balancer()
            .load_balancer_name("probeLB")
            .instances(i.clone())
            .send()
            .await
            .unwrap();
        own.push(t.elapsed());
        let t = Instant::now();
        elb.deregister_instances_from_load_balancer()
            .load_balancer_name("probeLB")
            .instances(i)
            .send()
            .await
            .unwrap();
        own.push(t.elapsed());
    }
    own.sort();
    let daemon = Daemon::start(
        &etcd,
        &moto,
        &["--log-level", "info", "--aws-quota-share", "1000"],
    );
    daemon.wait_log("initial sync complete").await;
    let mut lat = Vec::new();
    let mut client = etcd.client().await;
    for n in 0..200 {
        let k = elb_member("webLB", 1);
        let t = Instant::now();
        let want = if n % 2 == 0 {
            client.put(k.as_str(), "", None).await.unwrap();
            1
        } else {
            client.delete(k.as_str(), None).await.unwrap();
            0
        };
        loop {
            if elb_count(&aws, "webLB").await == want {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let (o50, o99) = (percentile(&own, 0.5), percentile(&own, 0.99));
    push(rows, Row {
        scenario: "D: etcd put → change visible through the AWS API, 200 single changes",
        tool: "lbmanager",
        calls: String::new(),
        time: format!(
            "p50 {} / p99 {} over moto's own",
            ms(p50.saturating_sub(o50)),
            ms(p99.saturating_sub(o99))
        ),
        notes: format!(
            "raw p50 {} / p99 {}; moto's own Register/Deregister p50 {} / p99 {}; --aws-quota-share 1000 (the pipeline, not the pacing)",
            ms(p50),
            ms(p99),
            ms(o50),
            ms(o99)
        ),
    });
}
