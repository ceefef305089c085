//! The live status page on `--listen` (issue 32), over HTTP: what it lists, that it escapes what
//! etcd and AWS say, its headers, that it is read-only, and that a view costs no AWS call. The
//! browser test (a real chromium) is in `browser.rs`.

use lbmanager_testkit::proxy::FaultProxy;
use lbmanager_testkit::*;

const DEAD: &str = "i-0000000000000dead";

/// `METHOD path` on 127.0.0.1:`port`: (status, head, body).
fn request(port: u16, method: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (status, head.to_lowercase(), body.to_string())
}

#[tokio::test]
async fn the_page_shows_every_load_balancer_and_escapes_what_etcd_and_aws_say() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    aws.create_elb("us-east-1", "webLB").await;
    let zone = aws.create_zone("example.com").await;
    etcd.put(&elb_key("webLB", "multiple", I1)).await;
    etcd.put(&elb_key("webLB", "multiple", DEAD)).await;
    etcd.put(&r53_key(&zone, "www.example.com", "192.0.2.1"))
        .await;
    let hostile = format!("{P}/elb/us-east-1/<script>alert(1)</script>/multiple/{I2}");
    etcd.put(&hostile).await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    let port = daemon.listen_port.unwrap();
    eventually("the refusal on the page", DEADLINE, || async {
        let (_, _, body) = request(port, "GET", "/");
        body.contains("refused members")
    })
    .await;

    let (code, head, body) = request(port, "GET", "/");
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(body.contains("elb/us-east-1/webLB"), "{body}");
    assert!(
        body.contains(&format!("route53/{zone}/www.example.com")),
        "{body}"
    );
    // The member AWS refuses, with AWS's reason.
    assert!(body.contains(&format!("{DEAD}: ")), "{body}");
    assert!(body.contains("InvalidInstance"), "{body}");
    // The hostile key is listed as text, never as markup.
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(!body.contains("<script>alert"), "{body}");
    // No inline script: the page's one script is its own file.
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(body.contains("<script src=\"/static/live.js\""), "{body}");
    // No secret on the page.
    assert!(!body.contains(AWS_SECRET) && !body.contains(AWS_KEY_ID));

    // One load balancer's page: each member, wanted and in AWS.
    let (code, _, one) = request(port, "GET", "/lb/elb/us-east-1/webLB");
    assert_eq!(code, 200);
    assert!(one.contains(I1) && one.contains(DEAD), "{one}");
    assert!(one.contains("refused: "), "{one}");
    assert_eq!(request(port, "GET", "/lb/elb/us-east-1/nope").0, 404);

    // /status.json is what `lbmanager status --output json` prints.
    let (code, head, json) = request(port, "GET", "/status.json");
    assert_eq!(code, 200);
    assert!(head.contains("application/json"), "{head}");
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    let (_, cli, _) =
        lbmanager_async(&["status", "--etcd-endpoints", &etcd.url, "--output", "json"]).await;
    let cli: serde_json::Value = serde_json::from_str(&cli).unwrap();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["load_balancers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["load_balancer"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), names(&cli));
    assert_eq!(
        page["load_balancers"][0]["rejected"],
        cli["load_balancers"][0]["rejected"]
    );

    // Read-only: nothing but GET and HEAD (a probe's or `curl -I`'s: the head, no body).
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let (code, head, _) = request(port, method, "/");
        assert_eq!(code, 405, "{method} / answered {code}");
        assert!(head.contains("allow: get, head"), "{head}");
    }
    for path in ["/", "/readyz", "/status.json"] {
        let (code, head, body) = request(port, "HEAD", path);
        assert_eq!(code, 200, "HEAD {path} answered {code}");
        assert!(body.is_empty(), "HEAD {path} sent a body: {body}");
        assert!(head.contains("content-security-policy"), "{head}");
    }

    // A view makes no AWS call and no etcd read: the page is built from what the daemon has in
    // hand (etcd counts the ranges it serves).
    let etcd_port: u16 = etcd.url.rsplit(':').next().unwrap().parse().unwrap();
    let ranges = || {
        let text = http_get(etcd_port, "/metrics").unwrap().1;
        sample(&text, "etcd_mvcc_range_total").unwrap()
    };
    let ranges_before = ranges();
    moto.start_recording();
    for _ in 0..20 {
        request(port, "GET", "/");
        request(port, "GET", "/?fragment=1");
        request(port, "GET", "/status.json");
    }
    let calls = moto.recorded();
    assert!(
        calls.iter().all(|c| !c.by_lbmanager()),
        "AWS calls while the page was viewed: {calls:#?}"
    );
    assert_eq!(
        ranges(),
        ranges_before,
        "etcd reads while the page was viewed"
    );
}

/// With `--ha` the leader's page lists the election's instances (a standby that joins or goes
/// shows within seconds, with no reload of the daemon) and the AWS quota buckets it paces itself by.
#[tokio::test]
async fn the_leaders_page_lists_the_instances_and_the_quota_buckets() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&elb_key("webLB", "multiple", I1)).await;
    let ha = ["--ha", "--ha-lease-ttl", "3s"];
    let a = Daemon::start(&etcd, &moto, &ha);
    a.wait_ready().await;
    let port = a.listen_port.unwrap();
    let page = || request(port, "GET", "/?fragment=1").2;
    let (code, _, body) = request(port, "GET", "/");
    assert_eq!(code, 200);
    assert!(body.contains("leader (--ha), no standby"), "{body}");
    let me = format!("pid {} lease ", a.pid().unwrap());
    assert!(body.contains(&me), "{body}");
    assert!(body.contains("(this page)"), "{body}");
    // The buckets of the scopes called so far: Route53's, and Classic ELB's in us-east-1.
    assert!(body.contains("AWS quota buckets"), "{body}");
    assert!(body.contains("Route53 · default credentials"), "{body}");
    assert!(
        body.contains("Classic ELB us-east-1 · default credentials"),
        "{body}"
    );

    let mut b = Daemon::start(&etcd, &moto, &ha);
    b.wait_log("campaigning for leadership").await;
    let standby = format!("pid {} lease ", b.pid().unwrap());
    eventually("the standby on the leader's page", DEADLINE, || async {
        let body = page();
        body.contains("leader (--ha) of 2 instances") && body.contains(&standby)
    })
    .await;
    let body = page();
    let (first, second) = (body.find(&me).unwrap(), body.find(&standby).unwrap());
    assert!(first < second, "the leader first: {body}");
    assert!(body.contains("host "), "{body}");

    b.stop();
    eventually(
        "the stopped standby gone from the page",
        DEADLINE,
        || async {
            let body = page();
            body.contains("no standby") && !body.contains(&standby)
        },
    )
    .await;
}
