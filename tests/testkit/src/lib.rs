//! The harness of lbmanager's integration tests and benchmark: a real etcd and a real moto, each on
//! free loopback ports with its own temporary directory, the built `lbmanager` binary between
//! them, the test's own AWS clients, and proxies that answer as real AWS does where moto is
//! lenient (and inject faults). Everything started here is stopped when its handle is dropped.
//!
//! A library of its own (a dev-dependency), so each test uses what it needs and nothing is
//! compiled into the release binary.

pub mod aws;
pub mod browser;
pub mod daemon;
pub mod etcd;
pub mod keys;
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
    exited, lbmanager, lbmanager_async, lbmanager_spawn, sigterm, Daemon, AWS_KEY_ID, AWS_SECRET,
};
pub use etcd::{Etcd, EtcdCluster};
pub use keys::{elb_key, elb_key_in, r53_key, tg_key, I1, I2, I3, P};
pub use moto::{Moto, RecordedCall};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A loopback port that is free now and that no other caller in this process has been given.
///
/// Every integration test runs in one binary, tests side by side, and a server is started on its
/// port some time after the port is chosen (an etcd cluster's six ports before any member
/// starts). So ports come from below the kernel's ephemeral range (32768 and up on Linux), which
/// `bind(0)` and outgoing connections never take, and none is handed out twice: the only way to
/// lose a port between choosing and binding is to another process doing the same.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    // A start that differs per process, so two test processes rarely probe the same ports.
    let start = (std::process::id() as u64 * 7919 % SPAN as u64) as u16;
    for i in 0..SPAN {
        let port = FIRST + (start + i) % SPAN;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
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
