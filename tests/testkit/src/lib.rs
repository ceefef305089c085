//! The harness of lbmanager's integration tests and benchmark: a real etcd and a real moto, each on
//! free loopback ports with its own temporary directory, the built `lbmanager` binary between
//! them, the test's own AWS clients, and proxies that answer as real AWS does where moto is
//! lenient (and inject faults). Everything started here is stopped when its handle is dropped.
//!
//! A library of its own (a dev-dependency), so each test uses what it needs and nothing is
//! compiled into the release binary.

pub mod aws;
pub mod daemon;
pub mod etcd;
pub mod moto;
pub mod proxy;
pub mod route53;
pub mod throttle;

use std::future::Future;
use std::net::TcpListener;
use std::process::Child;
use std::time::{Duration, Instant};

pub use aws::Aws;
pub use daemon::{
    lbmanager, lbmanager_async, lbmanager_spawn, sigterm, Daemon, AWS_KEY_ID, AWS_SECRET,
};
pub use etcd::{Etcd, EtcdCluster};
pub use moto::{Moto, RecordedCall};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `["a", "b"]` as owned strings.
pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `GET path` on 127.0.0.1:`port`: (status, body); None while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// The value of the sample `series` (name and labels as printed) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
