//! What `lbmanager status` prints: the rows (what etcd wants now against what the daemon
//! published) and the table or JSON, from the records of [`super`]. Pure, like its schema.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write;

use serde::Serialize;

use super::{is_zero, names, Heartbeat, LbStatus, MemberState};
use crate::key::{LbId, Member};

/// One line of `lbmanager status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub load_balancer: String,
    /// What etcd wants now.
    pub desired: Vec<String>,
    /// What AWS has, as lbmanager last published it (none: never synced).
    pub in_aws: Option<Vec<MemberState>>,
    pub in_step: bool,
    /// Seconds since the last sync that changed the status (see [`super::LastSync`]).
    pub last_change_age: Option<u64>,
    /// Why that sync ran (`etcd event`, `resync (drift)`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_change_cause: Option<String>,
    /// AWS is in step with every change of the keys up to this etcd revision (as published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    pub last_error: Option<String>,
    /// Refused members (as far as the status lists them) with AWS's reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, String>,
    /// Refused members the status does not list one by one.
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected_unlisted: usize,
    /// Route53: changes accepted and not yet on every Route53 name server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_pending: Vec<PendingRow>,
}

/// A Route53 change not yet `INSYNC`, as `lbmanager status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PendingRow {
    pub change: String,
    /// Seconds since Route53 accepted it.
    pub age_secs: u64,
}

/// The rows of `lbmanager status`: every load balancer etcd wants members for or lbmanager
/// published a status of. A load balancer is in step when its last sync succeeded and AWS (as
/// published, draining members aside) has exactly what etcd wants now.
pub fn rows<K: Borrow<LbId> + Ord, S: Borrow<LbStatus>>(
    desired: &BTreeMap<LbId, BTreeSet<Member>>,
    published: &BTreeMap<K, S>,
    now: u64,
) -> Vec<StatusRow> {
    let mut lbs: BTreeSet<&LbId> = desired.keys().collect();
    lbs.extend(published.keys().map(Borrow::borrow));
    lbs.into_iter()
        .map(|lb| {
            let want = desired.get(lb).cloned().unwrap_or_default();
            let status = published.get(lb).map(Borrow::borrow);
            let spelled: Vec<String> = want.iter().map(Member::to_string).collect();
            let in_step = status.is_some_and(|s| s.last_sync.ok && same(lb, &want, &spelled, s));
            StatusRow {
                load_balancer: lb.to_string(),
                desired: spelled,
                in_aws: status.map(|s| s.members.clone()),
                in_step,
                last_change_age: status.map(|s| now.saturating_sub(s.last_sync.at)),
                last_change_cause: status.map(|s| s.last_sync.cause.clone()),
                revision: status.map(|s| s.revision),
                last_error: status.and_then(|s| s.last_sync.error.clone()),
                rejected: status
                    .map(|s| {
                        s.rejected
                            .iter()
                            .map(|(m, r)| (m.to_string(), r.to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                rejected_unlisted: status.map_or(0, |s| s.rejected.more),
                dns_pending: status
                    .map(|s| {
                        s.dns_pending
                            .iter()
                            .map(|p| PendingRow {
                                change: p.id.clone(),
                                age_secs: now.saturating_sub(p.since),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Whether AWS (as `status` lists it, draining members aside) has what etcd wants (`want`, each
/// `spelled` as keys spell it), and nothing else of lbmanager's. By spelling first; [`names`]
/// only where spellings differ (a target key without a port names the target AWS reports with
/// it): a load balancer of 1,000 members is not 1,000,000 comparisons.
fn same(lb: &LbId, want: &BTreeSet<Member>, spelled: &[String], status: &LbStatus) -> bool {
    let routed: Vec<&MemberState> = status
        .members
        .iter()
        .filter(|m| m.health() != super::Health::Draining)
        .collect();
    let reported: HashSet<&str> = routed.iter().map(|m| m.member.as_str()).collect();
    let wanted: HashSet<&str> = spelled.iter().map(String::as_str).collect();
    want.iter().zip(spelled).all(|(w, s)| {
        reported.contains(s.as_str()) || routed.iter().any(|m| names(lb, w, &m.member))
    })
    // Members lbmanager did not add (shared) are not its to match.
    && routed.iter().filter(|m| !m.foreign).all(|m| {
        wanted.contains(m.member.as_str()) || want.iter().any(|w| names(lb, w, &m.member))
    })
}

/// The exit code of `status` once lbmanager is known to be alive: 0 all in step, 2 otherwise.
pub fn exit_code(rows: &[StatusRow]) -> u8 {
    if rows.iter().all(|r| r.in_step) {
        0
    } else {
        2
    }
}

/// Seconds as people say them: `42s`, `5m`, `3h`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s => format!("{}h ago", s / 3600),
    }
}

/// The running lbmanager, as its heartbeat shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonSeen {
    pub version: String,
    pub reported_secs_ago: u64,
    pub resync_interval_secs: u64,
    /// No heartbeat for more than [`super::STALE_AFTER_INTERVALS`] resync intervals.
    pub stale: bool,
}

impl DaemonSeen {
    pub fn new(beat: &Heartbeat, now: u64) -> Self {
        DaemonSeen {
            version: beat.version.clone(),
            reported_secs_ago: now.saturating_sub(beat.at),
            resync_interval_secs: beat.resync_interval_secs,
            stale: beat.stale(now).is_some(),
        }
    }
}

/// `lbmanager status --output json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// None: no lbmanager ever reported for this prefix.
    pub daemon: Option<DaemonSeen>,
    pub load_balancers: Vec<StatusRow>,
}

/// A table for a terminal, under a line about the running lbmanager.
pub fn render_table(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = match &report.daemon {
        None => writeln!(out, "no lbmanager has reported for this prefix"),
        Some(d) => writeln!(
            out,
            "{}",
            crate::escape::escape(&format!(
                "lbmanager {} reported {}{}; it reads every load balancer back every {}s, and \
             LAST CHANGE is the last sync that changed anything",
                d.version,
                age(d.reported_secs_ago),
                if d.stale {
                    " (too long: is it running?)"
                } else {
                    ""
                },
                d.resync_interval_secs
            ))
        ),
    };
    let rows = &report.load_balancers;
    let width = rows
        .iter()
        .map(|r| r.load_balancer.len())
        .max()
        .unwrap_or(0)
        .max("LOAD BALANCER".len());
    let _ = writeln!(
        out,
        "{:width$}  {:>7}  {:>6}  {:7}  {:>11}  NOTES",
        "LOAD BALANCER", "DESIRED", "IN AWS", "IN STEP", "LAST CHANGE"
    );
    for r in rows.iter() {
        let mut notes = Vec::new();
        if r.in_aws.is_none() {
            notes.push("never synced".to_string());
        }
        if let Some(e) = &r.last_error {
            notes.push(format!("error: {e}"));
        }
        for (member, reason) in &r.rejected {
            notes.push(format!("rejected {member}: {reason}"));
        }
        if r.rejected_unlisted > 0 {
            notes.push(format!("{} more rejected", r.rejected_unlisted));
        }
        for p in &r.dns_pending {
            notes.push(format!(
                "Route53 change {} PENDING since {}",
                p.change,
                age(p.age_secs)
            ));
        }
        let foreign: Vec<&str> = r
            .in_aws
            .iter()
            .flatten()
            .filter(|m| m.foreign)
            .map(|m| m.member.as_str())
            .collect();
        if !foreign.is_empty() {
            notes.push(format!("not lbmanager's: {}", foreign.join(",")));
        }
        // Route53 (`--route53-health-check`): each value's health as Route53's checkers report it.
        if r.load_balancer.starts_with("route53/") {
            let health: Vec<String> = r
                .in_aws
                .iter()
                .flatten()
                .filter_map(|m| Some(format!("{} {}", m.member, m.state.as_deref()?)))
                .collect();
            if !health.is_empty() {
                notes.push(format!("health: {}", health.join(", ")));
            }
        }
        let line = format!(
            "{:width$}  {:>7}  {:>6}  {:7}  {:>11}  {}",
            r.load_balancer,
            r.desired.len(),
            r.in_aws
                .as_ref()
                .map_or("-".to_string(), |m| m.len().to_string()),
            if r.in_step { "yes" } else { "NO" },
            r.last_change_age.map_or("never".to_string(), age),
            notes.join("; ")
        );
        let _ = writeln!(out, "{}", crate::escape::escape(line.trim_end()));
    }
    out
}
