//! The status page in a real browser (Debian's chromium, headless; see the testkit's `browser`):
//! it loads, lists the load balancers, shows a member added to etcd without a reload, shows a
//! refused member with AWS's reason, and renders a hostile key as text. It also takes the README's
//! screenshots: into `target/screenshots/`, and into `tests/screenshots/` (committed) when
//! `LBMANAGER_SCREENSHOTS=1`.

use std::path::PathBuf;
use std::time::Instant;

use lbmanager_testkit::browser::Browser;
use lbmanager_testkit::proxy::FaultProxy;
use lbmanager_testkit::*;

const DEAD: &str = "i-0000000000000dead";

fn shot(name: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("target/screenshots").join(name)];
    if std::env::var_os("LBMANAGER_SCREENSHOTS").is_some() {
        paths.push(root.join("tests/screenshots").join(name));
    }
    paths
}

#[tokio::test]
async fn the_status_page_in_a_real_browser() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    let proxy = FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[DEAD]);
    for lb in ["webLB", "apiLB"] {
        aws.create_elb("us-east-1", lb).await;
    }
    let zone = aws.create_zone("example.com").await;
    etcd.put(&elb_key("webLB", "multiple", I1)).await;
    etcd.put(&elb_key("webLB", "multiple", I2)).await;
    etcd.put(&elb_key("webLB", "multiple", DEAD)).await;
    etcd.put(&elb_key("apiLB", "single", I1)).await;
    for ip in ["192.0.2.1", "192.0.2.2", "2001:db8::1"] {
        etcd.put(&r53_key(&zone, "www.example.com", ip)).await;
    }
    let hostile =
        format!("{P}/elb/us-east-1/<img src=x onerror=\"document.title='pwned'\">/multiple/{I2}");
    etcd.put(&hostile).await;
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &[]);
    daemon.wait_ready().await;
    let base = format!("http://127.0.0.1:{}", daemon.listen_port.unwrap());

    let mut browser = Browser::start(1280, 800);
    browser.open(&format!("{base}/"));
    assert_eq!(browser.eval("document.title"), "lbmanager");
    // It lists the load balancers, and the member AWS refuses with AWS's reason.
    browser.wait_for_text("the refusal", |text| text.contains(&format!("{DEAD}: ")));
    let text = browser.text();
    for lb in [
        "elb/us-east-1/webLB".to_string(),
        "elb/us-east-1/apiLB".to_string(),
        format!("route53/{zone}/www.example.com"),
    ] {
        assert!(text.contains(&lb), "{lb} missing: {text}");
    }
    assert!(text.contains("InvalidInstance"), "{text}");
    // The hostile key is text: no element made of it, nothing of it run.
    assert!(text.contains("<img src=x onerror="), "{text}");
    assert_eq!(browser.eval("document.images.length"), 0);
    assert_eq!(browser.eval("document.title"), "lbmanager");
    assert_eq!(browser.eval("document.scripts.length"), 1);
    for path in shot("status-page.png") {
        browser.screenshot(&path, 1280, 800);
    }

    // One load balancer's page, updated without a reload when a member is added to etcd.
    browser.open(&format!("{base}/lb/elb/us-east-1/webLB"));
    browser.eval("window.notReloaded = true");
    assert!(!browser.text().contains(I3));
    let added = Instant::now();
    etcd.put(&elb_key("webLB", "multiple", I3)).await;
    browser.wait_for_text("the new member", |text| text.contains(I3));
    // A figure, not an assertion (timings belong to the benchmarks): the page polls every second.
    eprintln!(
        "FIGURES: a member added to etcd showed on the open page after {} ms",
        added.elapsed().as_millis()
    );
    assert_eq!(
        browser.eval("window.notReloaded"),
        true,
        "the page reloaded"
    );
    assert_eq!(browser.eval("document.body.dataset.live"), "ok");
    for path in shot("status-page-lb.png") {
        browser.screenshot(&path, 1280, 800);
    }

    // Readable on a phone.
    browser.open(&format!("{base}/"));
    for path in shot("status-page-phone.png") {
        browser.screenshot(&path, 390, 844);
    }
    let overflow = browser.eval("document.documentElement.scrollWidth <= window.innerWidth");
    assert_eq!(overflow, true, "the page is wider than a phone");
}
