//! What the running lbmanager publishes in etcd, and what the workload's commands make of it.
//!
//! The daemon writes one [`LbStatus`] per load balancer (at [`crate::layout::Layout::status`]) when
//! something in it changes, and a [`Heartbeat`] every resync interval. `lbmanager member … --wait`
//! and `lbmanager status` read them with etcd access only: the hosts that run containers need no
//! AWS credentials to know whether AWS has their member. Here: the record schema (what is
//! written, with its bounds); the daemon-side builders of a status's members are [`build`]'s,
//! the verdicts of `--wait` [`judge`]'s, and what `lbmanager status` prints [`table`]'s.
//! Everything is pure and tested without etcd.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::key::{parse_target, LbId, Member};

pub mod build;
pub mod judge;
pub mod table;
#[cfg(test)]
mod testing;

pub use build::{elb_members, settling, zone_members, zone_ttl};
pub use judge::{judge, judge_change, Change, Goal, Verdict};

/// AWS's word for a target on its way out of a target group.
pub const DRAINING: &str = "draining";

/// What AWS's word for a member's health (see [`MemberState::state`]) means to lbmanager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Registered; its health is not read (yet).
    NotRead,
    /// `healthy` (target group), `InService` (Classic ELB): receives traffic.
    Healthy,
    /// On its way out of a target group: serves the connections it has until they end.
    Draining,
    /// Any other word (`initial`, `unhealthy`, `OutOfService`, …): health checks under way
    /// or failing.
    Other,
}

impl Health {
    pub fn of(state: Option<&str>) -> Health {
        match state {
            None => Health::NotRead,
            Some("healthy" | "InService") => Health::Healthy,
            Some(DRAINING) => Health::Draining,
            Some(_) => Health::Other,
        }
    }
}

/// A member as AWS last reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// As lbmanager spells it: `i-0abc`, `i-0abc:80`, `10.0.0.5:8080`, `192.0.2.1` (inline up to
    /// 24 bytes: a million of them make no allocation).
    pub member: CompactString,
    /// AWS's word for its health, where AWS has one and lbmanager read it: a target group's
    /// `initial`, `healthy`, `unhealthy`, `unused`, `draining`, …; a Classic ELB's `InService`,
    /// `OutOfService`, `Unknown`. None: registered, health not read (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CompactString>,
    /// `--ownership shared`: lbmanager did not add it (and will not remove it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign: bool,
}

/// The last sync of a load balancer that changed its status (a resync that finds everything as
/// it was rewrites nothing; the [`Heartbeat`] says that lbmanager is still at work).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    /// Why it ran (`etcd event`, `resync (drift)`, …).
    pub cause: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the running lbmanager knows of one load balancer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbStatus {
    pub load_balancer: String,
    /// AWS is in step with every change of this load balancer's keys up to this etcd revision.
    pub revision: i64,
    /// No change of the keys waits for a sync (as of this record).
    pub in_step: bool,
    /// How many members etcd wants.
    pub desired: usize,
    /// The members as last read from AWS (and changed by lbmanager since), draining ones
    /// included.
    pub members: Vec<MemberState>,
    /// Route53: the TTL of the record sets, which a client may keep an old answer for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// Members past [`MEMBERS_LISTED`], not listed in `members`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub members_more: usize,
    pub last_sync: LastSync,
    /// Wanted members AWS refuses, with AWS's reasons.
    #[serde(default, skip_serializing_if = "Rejections::is_empty")]
    pub rejected: Rejections,
    /// Route53: the changes of this name that Route53 accepted and has not yet put on every one
    /// of its name servers (`PENDING`), oldest first, at most [`PENDING_LISTED`]. Until they are
    /// `INSYNC`, resolvers may still get the record sets as they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_pending: Vec<PendingChange>,
}

/// A Route53 change accepted and not yet `INSYNC` (see [`LbStatus::dns_pending`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// Route53's id of the change (`/change/C2682N5HXP0BZ4`), cut to [`CHANGE_ID_CHARS`].
    pub id: String,
    /// When Route53 accepted it, in seconds since the Unix epoch.
    pub since: u64,
    /// The etcd revision whose changes it carries (and every earlier one's).
    pub revision: i64,
}

pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The most members a status lists: AWS's maximum per Classic ELB and per target group (1,000),
/// and Route53's per record set (400), with room for targets still draining.
pub const MEMBERS_LISTED: usize = 1_200;
/// The most refused members a status lists (the rest are counted).
pub const REJECTED_LISTED: usize = 100;
/// The most distinct reasons a status keeps (a refused member whose reason is past them is
/// listed with the last one kept).
pub const REASONS_KEPT: usize = 10;
/// The longest reason or error kept, in characters (AWS's messages name every refused target:
/// 300 of them make a message of 8 KB).
pub const REASON_CHARS: usize = 300;
/// The most pending Route53 changes a status lists: the newest are kept (a wait judged against
/// a newer change than its own waits a little longer, never less).
pub const PENDING_LISTED: usize = 10;
/// The longest change id kept, in characters (Route53's are about 20).
pub const CHANGE_ID_CHARS: usize = 64;
/// The largest status record, in bytes, that the bounds above allow (members of 60 bytes or less
/// with their state, every bound met): what etcd is asked to store for one load balancer.
pub const STATUS_MAX_BYTES: usize = 192 * 1024;

/// `s` cut to [`REASON_CHARS`] characters (with `…` where it was cut).
pub fn cut(s: &str) -> String {
    match s.char_indices().nth(REASON_CHARS) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// The members AWS refuses, bounded by construction: each distinct reason once (cut to
/// [`REASON_CHARS`], at most [`REASONS_KEPT`]), at most [`REJECTED_LISTED`] members listed with
/// their reason, and the count of the others. AWS's own message names every refused target, so
/// a reason kept per member would grow with the square of their number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejections {
    pub reasons: Vec<String>,
    /// Member (as AWS names it) → index of its reason in `reasons`.
    pub members: BTreeMap<String, usize>,
    /// Refused members not listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
    /// Which of `reasons` are lbmanager's own limits (a member left out past AWS's quota, not
    /// refused by AWS): by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<usize>,
}

impl Rejections {
    /// The bounded form of `rejected`.
    pub fn of(rejected: &crate::plan::Rejected) -> Self {
        let mut out = Rejections::default();
        for (member, reason) in rejected {
            if out.members.len() >= REJECTED_LISTED {
                out.more += 1;
                continue;
            }
            let limit = reason.is_over_limit();
            let reason = cut(&reason.to_string());
            let index = match out.reasons.iter().position(|r| *r == reason) {
                Some(i) => i,
                None if out.reasons.len() < REASONS_KEPT => {
                    out.reasons.push(reason);
                    if limit {
                        out.limits.push(out.reasons.len() - 1);
                    }
                    out.reasons.len() - 1
                }
                // Past the reasons kept: listed without one (another's would name other members).
                None => usize::MAX,
            };
            out.members.insert(member.clone(), index);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.more == 0
    }

    /// Refused members, listed or not.
    pub fn len(&self) -> usize {
        self.members.len() + self.more
    }

    /// Whether lbmanager left `member` out past a limit (rather than AWS refusing it).
    pub fn by_limit(&self, member: &str) -> bool {
        self.members
            .get(member)
            .is_some_and(|i| self.limits.contains(i))
    }

    /// The listed members with their reason.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(m, &i)| {
            (
                m.as_str(),
                self.reasons
                    .get(i)
                    .map_or("(reason not kept)", String::as_str),
            )
        })
    }
}

impl MemberState {
    pub fn health(&self) -> Health {
        Health::of(self.state.as_deref())
    }
}

impl LbStatus {
    /// Within the bounds of the README's "Limits" (members past [`MEMBERS_LISTED`] counted, the
    /// error cut to [`REASON_CHARS`]); whether anything was cut.
    pub fn bounded(mut self) -> (Self, bool) {
        let mut cut_any = false;
        if self.members.len() > MEMBERS_LISTED {
            self.members_more += self.members.len() - MEMBERS_LISTED;
            self.members.truncate(MEMBERS_LISTED);
            cut_any = true;
        }
        if let Some(e) = &mut self.last_sync.error {
            let short = cut(e);
            cut_any |= short.len() < e.len();
            *e = short;
        }
        cut_any |= self.rejected.more > 0;
        if self.dns_pending.len() > PENDING_LISTED {
            let drop = self.dns_pending.len() - PENDING_LISTED;
            self.dns_pending.drain(..drop);
            cut_any = true;
        }
        for p in &mut self.dns_pending {
            if let Some((end, _)) = p.id.char_indices().nth(CHANGE_ID_CHARS) {
                p.id.truncate(end);
                cut_any = true;
            }
        }
        (self, cut_any)
    }

    /// The smallest record that still says what matters (revision, in step, counts, the last
    /// sync): written instead when etcd refuses the whole one for its size (an etcd run with a
    /// `--max-request-bytes` below [`STATUS_MAX_BYTES`]).
    pub fn minimal(&self) -> LbStatus {
        LbStatus {
            members: Vec::new(),
            members_more: self.members.len() + self.members_more,
            rejected: Rejections {
                more: self.rejected.len(),
                ..Rejections::default()
            },
            ..self.clone()
        }
    }

    /// The same in everything but the time and cause of the sync: a resync that changed nothing
    /// is not worth an etcd write (so `last_sync` is the last sync that changed the record).
    pub fn same_as(&self, other: &LbStatus) -> bool {
        let mut a = self.clone();
        a.last_sync.at = other.last_sync.at;
        a.last_sync.cause.clone_from(&other.last_sync.cause);
        &a == other
    }

    /// The state of the reported member that `member` (as a key names it) is, if AWS has it.
    fn find(&self, lb: &LbId, member: &Member) -> Option<&MemberState> {
        self.members.iter().find(|m| names(lb, member, &m.member))
    }
}

/// Whether `reported` (as the status spells it) is `member` (as a key names it): a target key
/// without a port names the target on the group's port, which AWS reports.
pub fn names(lb: &LbId, member: &Member, reported: &str) -> bool {
    match (lb, member) {
        (LbId::TargetGroup { .. }, Member::Target(t)) => match parse_target(reported) {
            Ok(r) => r.id == t.id && (t.port.is_none() || t.port == r.port),
            Err(_) => false,
        },
        _ => member.to_string() == reported,
    }
}

/// The running lbmanager's sign of life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The daemon's resync interval: a heartbeat older than a few of them means no lbmanager runs.
    pub resync_interval_secs: u64,
    pub version: String,
}

/// How many resync intervals without a heartbeat mean that no lbmanager is running.
pub const STALE_AFTER_INTERVALS: u64 = 3;

impl Heartbeat {
    /// How long ago it was written, if that is longer than [`STALE_AFTER_INTERVALS`] intervals.
    pub fn stale(&self, now: u64) -> Option<u64> {
        let age = now.saturating_sub(self.at);
        (age > STALE_AFTER_INTERVALS * self.resync_interval_secs.max(1)).then_some(age)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::plan::{Refusal, Rejected};
    use std::collections::BTreeSet;

    /// A status lists the newest pending changes, ids cut to their bound.
    #[test]
    fn pending_changes_are_bounded_keeping_the_newest() {
        let mut s = status(30, &[]);
        s.dns_pending = (0..25)
            .map(|n| pending(&format!("/change/C{n}"), n))
            .collect();
        s.dns_pending[24].id = "x".repeat(500);
        let (s, cut) = s.bounded();
        assert!(cut);
        assert_eq!(s.dns_pending.len(), PENDING_LISTED);
        assert_eq!(s.dns_pending[0].id, "/change/C15");
        assert_eq!(s.dns_pending[9].id.chars().count(), CHANGE_ID_CHARS);
    }

    /// AWS's refusal of 300 targets names all of them in one message: the record keeps that
    /// message once, cut, lists 100 members and counts the rest.
    #[test]
    fn refusals_are_kept_once_per_reason_cut_and_capped() {
        let targets: Vec<String> = (0..300).map(|n| format!("i-{n:017x}:80")).collect();
        let message = format!(
            "InvalidTarget: The following targets are not in a running state and cannot be \
             registered: {}",
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let all: Rejected = targets
            .iter()
            .map(|t| (t.clone(), Refusal::Aws(message.clone())))
            .collect();
        let r = Rejections::of(&all);
        assert_eq!(r.reasons.len(), 1);
        assert_eq!(r.reasons[0].chars().count(), REASON_CHARS + 1);
        assert_eq!(r.members.len(), REJECTED_LISTED);
        assert_eq!(r.more, 200);
        assert_eq!(r.len(), 300);
        assert!(serde_json::to_string(&r).unwrap().len() < 5_000);
        // Many distinct reasons: the first ones are kept, the rest share the last.
        let varied: Rejected = (0..50)
            .map(|n| (format!("i-{n:08x}"), Refusal::Aws(format!("reason {n}"))))
            .collect();
        let r = Rejections::of(&varied);
        assert_eq!(r.reasons.len(), REASONS_KEPT);
        assert_eq!(
            r.iter()
                .filter(|(_, why)| *why == "(reason not kept)")
                .count(),
            40
        );
    }

    /// The largest status the bounds allow fits [`STATUS_MAX_BYTES`], far below etcd's request
    /// limit (1.5 MiB); `minimal` is small whatever the status held.
    #[test]
    fn the_largest_status_fits_its_bound() {
        let mut s = status(10, &[]);
        s.members = (0..5_000)
            .map(|n| MemberState {
                member: format!("[2001:db8:ffff:ffff:ffff:ffff:ffff:{n:x}]:65535").into(),
                state: Some("unhealthy.FailedHealthChecks".into()),
                foreign: true,
            })
            .collect();
        s.last_sync.error = Some("x".repeat(100_000));
        s.last_sync.cause = "resync (drift)".into();
        let long = "r".repeat(10_000);
        s.rejected = Rejections::of(
            &(0..5_000)
                .map(|n| {
                    (
                        format!("i-{n:017x}:65535"),
                        Refusal::Aws(format!("{long}{n}")),
                    )
                })
                .collect(),
        );
        let (s, cut_any) = s.bounded();
        assert!(cut_any);
        assert_eq!(s.members.len(), MEMBERS_LISTED);
        assert_eq!(s.members_more, 5_000 - MEMBERS_LISTED);
        let bytes = serde_json::to_string(&s).unwrap().len();
        assert!(bytes <= STATUS_MAX_BYTES, "{bytes}");
        let small = serde_json::to_string(&s.minimal()).unwrap().len();
        assert!(small < 1_000, "{small}");
    }

    #[test]
    fn a_resync_that_changed_nothing_is_the_same_status() {
        let a = status(10, &[("i-0abc1234:80", Some("healthy"))]);
        let mut b = a.clone();
        b.last_sync.at = 500;
        b.last_sync.cause = "resync (drift)".into();
        assert!(a.same_as(&b));
        b.members[0].state = Some("unhealthy".into());
        assert!(!a.same_as(&b));
    }

    #[test]
    fn status_rows_tell_in_step_drifted_and_never_synced() {
        let web = tg();
        let api = "elbv2/us-east-1/api".parse::<LbId>().unwrap();
        let new = "elbv2/us-east-1/new".parse::<LbId>().unwrap();
        let mut desired = BTreeMap::new();
        desired.insert(web.clone(), BTreeSet::from([target("i-0abc1234")]));
        desired.insert(api.clone(), BTreeSet::from([target("i-00000001")]));
        desired.insert(new.clone(), BTreeSet::from([target("i-00000002")]));
        let mut published = BTreeMap::new();
        published.insert(
            web.clone(),
            status(10, &[("i-0abc1234:80", Some("healthy"))]),
        );
        let mut drifted = status(10, &[("i-00000009:80", Some("healthy"))]);
        drifted.load_balancer = api.to_string();
        published.insert(api.clone(), drifted);
        let rows = table::rows(&desired, &published, 160);
        let by = |lb: &LbId| {
            rows.iter()
                .find(|r| r.load_balancer == lb.to_string())
                .unwrap()
        };
        assert!(by(&web).in_step);
        assert!(!by(&api).in_step);
        assert!(!by(&new).in_step && by(&new).in_aws.is_none());
        assert_eq!(table::exit_code(&rows), 2);
        let report = table::StatusReport {
            daemon: None,
            load_balancers: rows,
        };
        let table = table::render_table(&report);
        assert!(table.contains("never synced"), "{table}");
        assert!(table.contains("60s ago"), "{table}");
    }

    #[test]
    fn a_heartbeat_is_stale_after_three_intervals() {
        let hb = Heartbeat {
            at: 1000,
            resync_interval_secs: 10,
            version: "x".into(),
        };
        assert_eq!(hb.stale(1030), None);
        assert_eq!(hb.stale(1031), Some(31));
    }
}
