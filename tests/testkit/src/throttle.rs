//! A proxy in front of moto that throttles the way AWS does (moto never throttles).
//!
//! It keeps AWS's published token buckets (see the project's notes on AWS quotas) and answers
//! HTTP 400 `Throttling`, "Rate exceeded", in each API's own error format when a bucket a call
//! draws from is empty; a throttled call takes no token. Written apart from lbmanager's own
//! pacing (no code shared) so that the two can disagree.
//!
//! - Elastic Load Balancing, per account (access key), region and API version (Classic, v2): an
//!   account bucket drawn by every call, plus the bucket of the call's category: registration
//!   (Register*/Deregister*), describe (Describe*), other mutating calls.
//! - Route53, per account: an account bucket and a bucket per operation, drawn by every request;
//!   a change-throughput bucket drawn by each change of a ChangeResourceRecordSets call: 1 for a
//!   CREATE or a DELETE, 2 for an UPSERT (Route53's "tokens consumed per operation").

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use crate::proxy::{forward, read_message};

/// A bucket: capacity, refill per second.
pub type Spec = (f64, f64);

/// The buckets the emulator keeps.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub elb_account: Spec,
    pub elb_registration: Spec,
    pub elb_describe: Spec,
    pub elb_other: Spec,
    pub route53_account: Spec,
    pub route53_operation: Spec,
    pub route53_changes: Spec,
}

impl Default for Rules {
    /// AWS's published figures (2026).
    fn default() -> Self {
        Rules {
            elb_account: (40.0, 10.0),
            elb_registration: (20.0, 4.0),
            elb_describe: (40.0, 10.0),
            elb_other: (20.0, 3.0),
            route53_account: (50.0, 10.0),
            route53_operation: (50.0, 10.0),
            route53_changes: (1500.0, 100.0),
        }
    }
}

impl Rules {
    /// Every bucket times `f` (capacity at least 1): tighter than AWS for `f` below 1.
    pub fn scaled(self, f: f64) -> Rules {
        let s = |(c, r): Spec| ((c * f).max(1.0), r * f);
        Rules {
            elb_account: s(self.elb_account),
            elb_registration: s(self.elb_registration),
            elb_describe: s(self.elb_describe),
            elb_other: s(self.elb_other),
            route53_account: s(self.route53_account),
            route53_operation: s(self.route53_operation),
            route53_changes: s(self.route53_changes),
        }
    }
}

/// One call the emulator saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// `elb:RegisterInstancesWithLoadBalancer`, `route53:ChangeResourceRecordSets`, …
    pub operation: String,
    /// Change tokens drawn (Route53 changes only).
    pub records: f64,
    pub throttled: bool,
}

struct Level {
    tokens: f64,
    at: Instant,
}

pub struct Throttler {
    pub url: String,
    pub throttled: Arc<AtomicUsize>,
    pub passed: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

/// What a request draws: its operation, its buckets (name, spec, tokens), how to answer a throttle.
struct Draw {
    operation: String,
    buckets: Vec<(String, Spec, f64)>,
    records: f64,
    route53: bool,
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The access key and region of a SigV4 `Authorization` header.
fn credential(head: &str) -> (String, String) {
    let auth = header(head, "authorization").unwrap_or_default();
    let scope = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_default();
    let mut parts = scope.split('/');
    let key = parts.next().unwrap_or_default().to_string();
    let region = parts.nth(1).unwrap_or_default().to_string();
    (key, region)
}

/// Change tokens of a ChangeResourceRecordSets body: 1 a CREATE or DELETE, 2 an UPSERT.
fn records_changed(body: &str) -> f64 {
    body.split("<Change>")
        .skip(1)
        .map(|change| {
            if change.contains("<Action>UPSERT</Action>") {
                2.0
            } else {
                1.0
            }
        })
        .sum()
}

fn classify(request: &[u8], rules: &Rules) -> Draw {
    let text = String::from_utf8_lossy(request);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (key, region) = credential(head);
    let request_line = head.lines().next().unwrap_or_default();
    if request_line.contains("/2013-04-01/") {
        let change = request_line.starts_with("POST") && request_line.contains("/rrset");
        let operation = if change {
            "ChangeResourceRecordSets"
        } else if request_line.contains("/rrset") {
            "ListResourceRecordSets"
        } else {
            "Other"
        };
        let mut buckets = vec![
            (format!("r53/{key}/account"), rules.route53_account, 1.0),
            (
                format!("r53/{key}/op/{operation}"),
                rules.route53_operation,
                1.0,
            ),
        ];
        let records = if change { records_changed(body) } else { 0.0 };
        if change {
            buckets.push((format!("r53/{key}/changes"), rules.route53_changes, records));
        }
        return Draw {
            operation: format!("route53:{operation}"),
            buckets,
            records,
            route53: true,
        };
    }
    let action = body
        .split('&')
        .find_map(|p| p.strip_prefix("Action="))
        .unwrap_or("Unknown")
        .to_string();
    let version = if body.contains("Version=2015-12-01") {
        "v2"
    } else {
        "v1"
    };
    let scope = format!("elb{version}/{key}/{region}");
    let (category, spec) = if action.starts_with("Register") || action.starts_with("Deregister") {
        ("registration", rules.elb_registration)
    } else if action.starts_with("Describe") {
        ("describe", rules.elb_describe)
    } else {
        ("other", rules.elb_other)
    };
    Draw {
        operation: format!("elb{version}:{action}"),
        buckets: vec![
            (format!("{scope}/account"), rules.elb_account, 1.0),
            (format!("{scope}/{category}"), spec, 1.0),
        ],
        records: 0.0,
        route53: false,
    }
}

/// Takes the tokens from every bucket if all have them; false (nothing taken) otherwise.
fn admit(levels: &Mutex<HashMap<String, Level>>, draw: &Draw) -> bool {
    let mut levels = levels.lock().unwrap();
    let now = Instant::now();
    let mut ok = true;
    for (name, (capacity, refill), n) in &draw.buckets {
        let level = levels.entry(name.clone()).or_insert(Level {
            tokens: *capacity,
            at: now,
        });
        level.tokens =
            (level.tokens + now.duration_since(level.at).as_secs_f64() * refill).min(*capacity);
        level.at = now;
        ok &= level.tokens >= n.min(*capacity);
    }
    if ok {
        for (name, (capacity, _), n) in &draw.buckets {
            levels.get_mut(name).unwrap().tokens -= n.min(*capacity);
        }
    }
    ok
}

fn throttling(route53: bool) -> Vec<u8> {
    let ns = if route53 {
        "https://route53.amazonaws.com/doc/2013-04-01/"
    } else {
        "http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/"
    };
    let body = format!(
        "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"{ns}\"><Error><Type>Sender</Type>\
         <Code>Throttling</Code><Message>Rate exceeded</Message></Error>\
         <RequestId>throttle-emulator</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Throttler {
    pub fn start(upstream_port: u16, rules: Rules) -> Throttler {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let throttled = Arc::new(AtomicUsize::new(0));
        let passed = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let levels: Arc<Mutex<HashMap<String, Level>>> = Arc::default();
        let (t, p, s) = (throttled.clone(), passed.clone(), seen.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (t, p, s, l) = (t.clone(), p.clone(), s.clone(), levels.clone());
                thread::spawn(move || serve(client, upstream_port, &rules, &l, &t, &p, &s));
            }
        });
        Throttler {
            url,
            throttled,
            passed,
            seen,
        }
    }

    pub fn throttled(&self) -> usize {
        self.throttled.load(Ordering::SeqCst)
    }

    /// The calls that went through, of operations containing `op`.
    pub fn passed_of(&self, op: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| !s.throttled && s.operation.contains(op))
            .count()
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    rules: &Rules,
    levels: &Mutex<HashMap<String, Level>>,
    throttled: &AtomicUsize,
    passed: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut writer = client;
    while let Some(request) = read_message(&mut reader) {
        let draw = classify(&request, rules);
        let ok = admit(levels, &draw);
        seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            operation: draw.operation.clone(),
            records: draw.records,
            throttled: !ok,
        });
        let response = if ok {
            passed.fetch_add(1, Ordering::SeqCst);
            let Some(response) = forward(upstream, &request) else {
                return;
            };
            response
        } else {
            throttled.fetch_add(1, Ordering::SeqCst);
            throttling(draw.route53)
        };
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_count_twice() {
        let body = "<ChangeBatch><Changes><Change><Action>UPSERT</Action><ResourceRecordSet>\
            <ResourceRecords><ResourceRecord><Value>192.0.2.1</Value></ResourceRecord>\
            <ResourceRecord><Value>192.0.2.2</Value></ResourceRecord></ResourceRecords>\
            </ResourceRecordSet></Change><Change><Action>CREATE</Action><ResourceRecordSet>\
            <ResourceRecords><ResourceRecord><Value>192.0.2.3</Value></ResourceRecord>\
            </ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch>";
        assert_eq!(records_changed(body), 3.0);
    }
}
