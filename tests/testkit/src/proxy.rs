//! Proxies the fault tests put between lbmanager and its servers.
//!
//! - [`FaultProxy`]: an HTTP/1.1 proxy to moto that fails a share of requests the way AWS does
//!   (500, 503, 400 Throttling, 400 PriorRequestNotComplete), drops connections (before or after
//!   forwarding, so some changes are applied but their answer is lost) and adds latency.
//!   It also answers as real AWS does where moto is lenient: a Register call naming an instance in
//!   its `invalid` set (a terminated host) fails whole, with 400 `InvalidInstance` (Classic ELB) or
//!   `InvalidTarget` (ELBv2) and AWS's own message, and registers nothing.
//! - [`TcpCut`]: a plain TCP forwarder (to etcd) that can cut every connection and refuse new ones,
//!   to take lbmanager away from an etcd that keeps running.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the fault proxy did, by kind.
#[derive(Default, Debug)]
pub struct FaultCounts {
    pub forwarded: AtomicUsize,
    pub error_500: AtomicUsize,
    pub error_503: AtomicUsize,
    pub throttling: AtomicUsize,
    pub prior_request: AtomicUsize,
    pub dropped_before: AtomicUsize,
    pub dropped_after: AtomicUsize,
    pub delayed: AtomicUsize,
    /// Requests received (before any fault or delay).
    pub received: AtomicUsize,
    /// When each request arrived.
    pub arrivals: Mutex<Vec<std::time::Instant>>,
}

impl FaultCounts {
    pub fn injected(&self) -> usize {
        [
            &self.error_500,
            &self.error_503,
            &self.throttling,
            &self.prior_request,
            &self.dropped_before,
            &self.dropped_after,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }

    pub fn total(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
            + self.error_500.load(Ordering::SeqCst)
            + self.error_503.load(Ordering::SeqCst)
            + self.throttling.load(Ordering::SeqCst)
            + self.prior_request.load(Ordering::SeqCst)
            + self.dropped_before.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub struct FaultProxy {
    pub url: String,
    pub counts: Arc<FaultCounts>,
    /// Share of requests that fail, in percent (0 turns faults off).
    pub fail_percent: Arc<AtomicU64>,
    /// A delay added to every request, in milliseconds.
    pub delay_ms: Arc<AtomicU64>,
    /// Instance ids AWS refuses to register (terminated hosts).
    pub invalid: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Register calls refused because of `invalid`.
    pub refused: Arc<AtomicUsize>,
    /// Register and Deregister calls forwarded (the changes made through this proxy).
    pub mutating: Arc<AtomicUsize>,
    /// A process to kill with SIGKILL right after the next Register has been forwarded (its
    /// answer is never sent): a crash at the worst moment.
    pub kill_after_register: Arc<Mutex<Option<u32>>>,
}

/// A Register call's member ids (Classic `Instances.member.N.InstanceId`, v2
/// `Targets.member.N.Id`), or None for any other call.
fn register_ids(request: &[u8]) -> Option<(bool, Vec<String>)> {
    let text = String::from_utf8_lossy(request);
    let body = text.split_once("\r\n\r\n")?.1;
    let v2 = if body.contains("Action=RegisterTargets") {
        true
    } else if body.contains("Action=RegisterInstancesWithLoadBalancer") {
        false
    } else {
        return None;
    };
    let ids = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| k.ends_with(".InstanceId") || k.ends_with(".Id"))
        .map(|(_, v)| v.replace("%3A", ":").replace("%2D", "-"))
        .collect();
    Some((v2, ids))
}

/// AWS's answer to a Register call naming instances that are not running: the whole call fails.
fn invalid_member_response(v2: bool, bad: &[String]) -> Vec<u8> {
    let (code, message) = if v2 {
        let list: Vec<String> = bad.iter().map(|id| format!("'{id}'")).collect();
        (
            "InvalidTarget",
            format!(
                "The following targets are not in a running state and cannot be registered: {}",
                list.join(", ")
            ),
        )
    } else {
        // Classic ELB names one instance at a time.
        (
            "InvalidInstance",
            format!("EC2 instance {} is not in running state.", bad[0]),
        )
    };
    let body = format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>{message}</Message></Error><RequestId>aws-rules</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A tiny xorshift generator: no dependency, reproducible for a seed (not 0).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Reads one HTTP/1.1 message (head and Content-Length body) from `r`; None at EOF.
pub(crate) fn read_message(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    head.extend(body);
    Some(head)
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>\
         <RequestId>fault-proxy</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl FaultProxy {
    pub fn start(upstream_port: u16, fail_percent: u64, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = FaultProxy {
            url: format!("http://{}", listener.local_addr().unwrap()),
            counts: Arc::default(),
            fail_percent: Arc::new(AtomicU64::new(fail_percent)),
            delay_ms: Arc::default(),
            invalid: Arc::default(),
            refused: Arc::default(),
            mutating: Arc::default(),
            kill_after_register: Arc::default(),
        };
        let shared = proxy.clone();
        thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                let mut rng =
                    Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((n as u64 + 1) * 7919));
                thread::spawn(move || serve(client, upstream_port, &shared, &mut rng));
            }
        });
        proxy
    }

    /// A proxy that injects no faults: it only answers as real AWS does (see `invalid`).
    pub fn aws_rules(upstream_port: u16) -> FaultProxy {
        FaultProxy::start(upstream_port, 0, 1)
    }

    /// Makes AWS refuse these instance ids from now on (terminated hosts).
    pub fn set_invalid(&self, ids: &[&str]) {
        *self.invalid.lock().unwrap() = ids.iter().map(|s| s.to_string()).collect();
    }
}

/// Serves one connection: each request is refused as AWS would, failed, delayed or forwarded, as
/// the proxy's settings say at the time.
fn serve(client: TcpStream, upstream: u16, proxy: &FaultProxy, rng: &mut Rng) {
    let FaultProxy {
        counts,
        fail_percent: percent,
        delay_ms: delay,
        invalid,
        refused,
        mutating,
        kill_after_register,
        ..
    } = proxy;
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut writer = client;
    while let Some(request) = read_message(&mut reader) {
        if let Some((v2, ids)) = register_ids(&request) {
            let bad: Vec<String> = {
                let invalid = invalid.lock().unwrap();
                ids.into_iter().filter(|id| invalid.contains(id)).collect()
            };
            if !bad.is_empty() {
                refused.fetch_add(1, Ordering::SeqCst);
                if writer
                    .write_all(&invalid_member_response(v2, &bad))
                    .is_err()
                {
                    return;
                }
                continue;
            }
        }
        counts.received.fetch_add(1, Ordering::SeqCst);
        counts
            .arrivals
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
        let fail = rng.below(100) < percent.load(Ordering::SeqCst);
        if rng.below(10) == 0 {
            counts.delayed.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(rng.below(300)));
        }
        let injected = if fail {
            match rng.below(6) {
                0 => Some((
                    &counts.error_500,
                    error_response("500 Internal Server Error", "InternalFailure"),
                )),
                1 => Some((
                    &counts.error_503,
                    error_response("503 Service Unavailable", "ServiceUnavailable"),
                )),
                2 => Some((
                    &counts.throttling,
                    error_response("400 Bad Request", "Throttling"),
                )),
                3 => Some((
                    &counts.prior_request,
                    error_response("400 Bad Request", "PriorRequestNotComplete"),
                )),
                4 => {
                    counts.dropped_before.fetch_add(1, Ordering::SeqCst);
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
                _ => None, // drop after forwarding, below
            }
        } else {
            None
        };
        if let Some((counter, response)) = injected {
            counter.fetch_add(1, Ordering::SeqCst);
            if writer.write_all(&response).is_err() {
                return;
            }
            continue;
        }
        let text = String::from_utf8_lossy(&request);
        if ["Action=Register", "Action=Deregister"]
            .iter()
            .any(|a| text.contains(a))
        {
            mutating.fetch_add(1, Ordering::SeqCst);
        }
        let Some(response) = forward(upstream, &request) else {
            return;
        };
        if text.contains("Action=Register") {
            if let Some(pid) = kill_after_register.lock().unwrap().take() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                return;
            }
        }
        counts.forwarded.fetch_add(1, Ordering::SeqCst);
        if fail {
            // The change reached moto, but its answer is lost.
            counts.dropped_after.fetch_add(1, Ordering::SeqCst);
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

pub(crate) fn forward(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    let upstream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    upstream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut w = upstream.try_clone().ok()?;
    w.write_all(request).ok()?;
    read_message(&mut BufReader::new(upstream))
}

/// A TCP forwarder that can be cut off, or stalled (as a relay process under SIGSTOP: its
/// connections stay open and carry nothing until it resumes).
pub struct TcpCut {
    pub url: String,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
}

impl TcpCut {
    pub fn start(upstream_port: u16) -> TcpCut {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accepted: Arc<AtomicUsize> = Arc::default();
        let (cut2, conns2, stalled2) = (cut.clone(), conns.clone(), stalled.clone());
        let accepted2 = accepted.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                wait_while(&stalled2);
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut list = conns2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                pipe(
                    client.try_clone().unwrap(),
                    upstream.try_clone().unwrap(),
                    stalled2.clone(),
                );
                pipe(upstream, client, stalled2.clone());
            }
        });
        TcpCut {
            url,
            cut,
            stalled,
            conns,
            accepted,
        }
    }

    /// How many connections were made to the relay so far (carried or refused).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Carries nothing (connections stay open, bytes wait) until `resume`.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn wait_while(stalled: &AtomicBool) {
    while stalled.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, stalled: Arc<AtomicBool>) {
    thread::spawn(move || {
        // 256 KiB a read: a million keys (~100 MiB) pass it in M, on the cores etcd and lbmanager use.
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            wait_while(&stalled);
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Read while running, held while stalled.
            wait_while(&stalled);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
