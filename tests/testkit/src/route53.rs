//! A proxy in front of moto that answers Route53's change status as Route53 does: moto answers
//! every ChangeResourceRecordSets `INSYNC` at once with the same id each time, and its GetChange
//! is always `INSYNC`; Route53 gives each change its own id, answers `PENDING`, and turns `INSYNC`
//! once every one of its name servers has the change (usually within a minute). Here each change
//! gets an id of its own and stays `PENDING` for `hold`.
//!
//! moto's CreateHealthCheck ignores `CallerReference` (the same reference twice makes two checks);
//! Route53 answers a reference it has seen with the check it made (same settings), and refuses
//! one of a check since deleted (`HealthCheckAlreadyExists`, 409). The proxy keeps the
//! references and answers as Route53 does; it can also drop the answer of a creation moto made
//! (a lost answer). Every other request goes to moto as it is.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::proxy::{forward, read_message};

/// One change the proxy handed out.
#[derive(Clone, Debug)]
pub struct ProxiedChange {
    pub id: String,
    /// When moto accepted it (and the proxy answered `PENDING`).
    pub made: Instant,
    /// When GetChange first answered `INSYNC` for it.
    pub insync_told: Option<Instant>,
    /// GetChange requests for it.
    pub polls: usize,
}

#[derive(Clone)]
pub struct Route53Proxy {
    pub url: String,
    changes: Arc<Mutex<Vec<ProxiedChange>>>,
    hold: Duration,
    checks: Arc<Mutex<Checks>>,
}

/// The health checks made through the proxy.
#[derive(Default)]
struct Checks {
    /// By reference: the check's id and moto's answer to its creation.
    made: std::collections::HashMap<String, (String, Vec<u8>)>,
    /// References of checks deleted since.
    deleted: std::collections::HashSet<String>,
    /// Creations whose answer is dropped after moto made the check.
    lose: usize,
    /// Creations moto made.
    created: usize,
    /// When each deletion was answered.
    deletions: Vec<Instant>,
}

impl Route53Proxy {
    pub fn start(upstream_port: u16, hold: Duration) -> Route53Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Route53Proxy {
            url: format!("http://{}", listener.local_addr().unwrap()),
            changes: Arc::default(),
            hold,
            checks: Arc::default(),
        };
        let shared = proxy.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let shared = shared.clone();
                thread::spawn(move || shared.serve(client, upstream_port));
            }
        });
        proxy
    }

    /// Drops the answers of the next `n` CreateHealthCheck requests after moto made their check.
    pub fn lose_creations(&self, n: usize) {
        self.checks.lock().unwrap().lose = n;
    }

    /// When each health check was deleted through the proxy.
    pub fn deletions(&self) -> Vec<Instant> {
        self.checks.lock().unwrap().deletions.clone()
    }

    /// How many health checks moto made through the proxy.
    pub fn checks_created(&self) -> usize {
        self.checks.lock().unwrap().created
    }

    /// The changes made through the proxy, in order.
    pub fn changes(&self) -> Vec<ProxiedChange> {
        self.changes.lock().unwrap().clone()
    }

    fn serve(&self, client: TcpStream, upstream: u16) {
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut writer = client;
        while let Some(request) = read_message(&mut reader) {
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let response = if let Some(id) = get_change(&line) {
                self.status_of(&id)
            } else if line.starts_with("POST ") && line.contains("/healthcheck ") {
                match self.create_check(&request, upstream) {
                    Some(response) => response,
                    None => return,
                }
            } else if line.starts_with("DELETE ") && line.contains("/healthcheck/") {
                let Some(response) = forward(upstream, &request) else {
                    return;
                };
                self.deleted(&line, &response);
                response
            } else {
                let Some(response) = forward(upstream, &request) else {
                    return;
                };
                if line.starts_with("POST ") && line.contains("/rrset") {
                    self.pending(response)
                } else {
                    response
                }
            };
            if writer.write_all(&response).is_err() {
                return;
            }
        }
    }

    /// CreateHealthCheck as Route53 answers it (None: the answer is dropped).
    fn create_check(&self, request: &[u8], upstream: u16) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(request).to_string();
        let reference = between(&text, "<CallerReference>", "</CallerReference>")?.to_string();
        {
            let checks = self.checks.lock().unwrap();
            if checks.deleted.contains(&reference) {
                let body = "<?xml version=\"1.0\"?><ErrorResponse><Error><Type>Sender</Type>\
                    <Code>HealthCheckAlreadyExists</Code><Message>A health check with the same \
                    caller reference existed and was deleted</Message></Error>\
                    <RequestId>route53-proxy</RequestId></ErrorResponse>";
                return Some(with_body(
                    "HTTP/1.1 409 Conflict\r\nContent-Type: text/xml",
                    body,
                ));
            }
            if let Some((_, answer)) = checks.made.get(&reference) {
                return Some(answer.clone());
            }
        }
        let response = forward(upstream, request)?;
        let answer = String::from_utf8_lossy(&response).to_string();
        let mut checks = self.checks.lock().unwrap();
        if let Some(id) = between(&answer, "<Id>", "</Id>") {
            checks.created += 1;
            checks
                .made
                .insert(reference, (id.to_string(), response.clone()));
            if checks.lose > 0 {
                checks.lose -= 1;
                return None;
            }
        }
        Some(response)
    }

    /// A check deleted: its reference is spent.
    fn deleted(&self, line: &str, response: &[u8]) {
        let head = String::from_utf8_lossy(response);
        let status = head.split(' ').nth(1).unwrap_or_default();
        if !status.starts_with('2') {
            return;
        }
        let Some(id) = line.split(' ').nth(1).and_then(|p| p.rsplit('/').next()) else {
            return;
        };
        let mut checks = self.checks.lock().unwrap();
        checks.deletions.push(Instant::now());
        let spent: Vec<String> = checks
            .made
            .iter()
            .filter(|(_, (made, _))| made == id)
            .map(|(r, _)| r.clone())
            .collect();
        for reference in spent {
            checks.made.remove(&reference);
            checks.deleted.insert(reference);
        }
    }

    /// moto's answer to a change, with an id of its own and `PENDING`.
    fn pending(&self, response: Vec<u8>) -> Vec<u8> {
        let text = String::from_utf8_lossy(&response).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return response;
        };
        if !head.contains(" 200 ") {
            return response;
        }
        let mut changes = self.changes.lock().unwrap();
        let id = format!("/change/CPROXY{:06}", changes.len() + 1);
        changes.push(ProxiedChange {
            id: id.clone(),
            made: Instant::now(),
            insync_told: None,
            polls: 0,
        });
        let body = replace_between(body, "<Id>", "</Id>", &id);
        let body = replace_between(&body, "<Status>", "</Status>", "PENDING");
        with_body(head, &body)
    }

    /// GetChange for a change of the proxy's: `PENDING` until `hold` has passed.
    fn status_of(&self, id: &str) -> Vec<u8> {
        let mut changes = self.changes.lock().unwrap();
        let Some(change) = changes.iter_mut().find(|c| c.id.ends_with(id)) else {
            let body = "<?xml version=\"1.0\"?><ErrorResponse><Error><Type>Sender</Type>\
                <Code>NoSuchChange</Code><Message>no such change</Message></Error>\
                <RequestId>route53-proxy</RequestId></ErrorResponse>";
            return with_body("HTTP/1.1 404 Not Found\r\nContent-Type: text/xml", body);
        };
        change.polls += 1;
        let status = if change.made.elapsed() >= self.hold {
            change.insync_told.get_or_insert_with(Instant::now);
            "INSYNC"
        } else {
            "PENDING"
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <GetChangeResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\">\
             <ChangeInfo><Id>{}</Id><Status>{status}</Status>\
             <SubmittedAt>2026-01-01T00:00:00.000Z</SubmittedAt></ChangeInfo>\
             </GetChangeResponse>",
            change.id
        );
        with_body("HTTP/1.1 200 OK\r\nContent-Type: text/xml", &body)
    }
}

/// The change id of a GetChange request line (`GET /2013-04-01/change/C123 HTTP/1.1`).
fn get_change(line: &str) -> Option<String> {
    let path = line.strip_prefix("GET ")?.split(' ').next()?;
    let path = path
        .split('?')
        .next()?
        .replace("%2F", "/")
        .replace("%2f", "/");
    path.contains("/change/")
        .then(|| path.rsplit('/').next().map(str::to_string))
        .flatten()
}

/// The text between the first `open` and the `close` after it.
fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let from = text.find(open)? + open.len();
    let to = text[from..].find(close)? + from;
    Some(&text[from..to])
}

fn replace_between(text: &str, open: &str, close: &str, with: &str) -> String {
    match text.find(open).and_then(|start| {
        let from = start + open.len();
        text[from..].find(close).map(|end| (from, from + end))
    }) {
        Some((from, to)) => format!("{}{with}{}", &text[..from], &text[to..]),
        None => text.to_string(),
    }
}

/// A response with `head`'s status line and headers (its Content-Length set anew) and `body`.
fn with_body(head: &str, body: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length:") || lower.starts_with("transfer-encoding:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_answer_gets_its_own_id_and_pending() {
        let body = "<ChangeResourceRecordSetsResponse><ChangeInfo><Id>/change/C2682N5HXP0BZ4</Id>\
                    <Status>INSYNC</Status></ChangeInfo></ChangeResourceRecordSetsResponse>";
        let b = replace_between(body, "<Id>", "</Id>", "/change/CPROXY000001");
        let b = replace_between(&b, "<Status>", "</Status>", "PENDING");
        assert!(b.contains("<Id>/change/CPROXY000001</Id><Status>PENDING</Status>"));
        assert_eq!(
            get_change("GET /2013-04-01/change/CPROXY000001 HTTP/1.1").as_deref(),
            Some("CPROXY000001")
        );
        let r = with_body("HTTP/1.1 200 OK\r\nContent-Length: 3", "abcd");
        assert!(String::from_utf8(r)
            .unwrap()
            .ends_with("Content-Length: 4\r\n\r\nabcd"));
    }
}
