//! What the running lbmanager publishes in etcd, and what the workload's commands make of it.
//!
//! The daemon writes one [`LbStatus`] per load balancer (at [`crate::layout::Layout::status`]) when
//! something in it changes, and a [`Heartbeat`] every resync interval. `lbmanager member … --wait`
//! and `lbmanager status` read them with etcd access only: the hosts that run containers need no
//! AWS credentials to know whether AWS has their member. Here: the record schema (what is
//! written, with its bounds) and the verdicts of `--wait` ([`judge`]); what `lbmanager status`
//! prints is [`table`]'s. Everything is pure and tested without etcd.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::key::{parse_target, LbId, Member, Target};
use crate::plan::{RecordSet, Registered};

pub mod table;

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
    /// As lbmanager spells it: `i-0abc`, `i-0abc:80`, `10.0.0.5:8080`, `192.0.2.1`.
    pub member: String,
    /// AWS's word for its health, where AWS has one and lbmanager read it: a target group's
    /// `initial`, `healthy`, `unhealthy`, `unused`, `draining`, …; a Classic ELB's `InService`,
    /// `OutOfService`, `Unknown`. None: registered, health not read (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `--ownership shared`: lbmanager did not add it (and will not remove it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign: bool,
}

/// The last sync of a load balancer that changed its status (a resync that finds everything as
/// it was rewrites nothing; the [`Heartbeat`] says that lbmanager is still at work).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Rejections {
    /// The bounded form of `rejected` (member → AWS's reason).
    pub fn of(rejected: &BTreeMap<String, String>) -> Self {
        let mut out = Rejections::default();
        for (member, reason) in rejected {
            if out.members.len() >= REJECTED_LISTED {
                out.more += 1;
                continue;
            }
            let reason = cut(reason);
            let index = match out.reasons.iter().position(|r| *r == reason) {
                Some(i) => i,
                None if out.reasons.len() < REASONS_KEPT => {
                    out.reasons.push(reason);
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

/// An ELB's or target group's members after a sync: what AWS reported (`actual`), with the
/// changes the sync made. A target deregistered from a target group drains (AWS's deregistration
/// delay, until a read says otherwise); a member whose health was not read this time keeps what
/// was published (`previous`); one just registered has no state yet.
pub fn elb_members(
    lb: &LbId,
    actual: &Registered,
    registered: &[Target],
    deregistered: &[Target],
    previous: Option<&LbStatus>,
    owned: Option<&BTreeSet<String>>,
) -> Vec<MemberState> {
    let before: std::collections::HashMap<&str, &str> = previous
        .map(|p| {
            p.members
                .iter()
                .filter_map(|m| Some((m.member.as_str(), m.state.as_deref()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut out: BTreeMap<Target, Option<String>> = actual
        .members
        .iter()
        .chain(&actual.draining)
        .map(|t| {
            let state = match actual.health.get(t) {
                Some(h) => Some(h.state.clone()),
                None => before.get(t.to_string().as_str()).map(|s| s.to_string()),
            };
            (t.clone(), state)
        })
        .collect();
    for t in deregistered {
        match lb {
            LbId::TargetGroup { .. } => {
                out.insert(t.clone(), Some(DRAINING.into()));
            }
            _ => {
                out.remove(t);
            }
        }
    }
    for t in registered {
        out.insert(t.or_port(actual.default_port), None);
    }
    out.into_iter()
        .map(|(t, state)| {
            let member = t.to_string();
            MemberState {
                // A target draining was lbmanager's until it deregistered it (or someone
                // else's on its way out): neither is left alone.
                foreign: owned.is_some_and(|o| !o.contains(&member))
                    && Health::of(state.as_deref()) != Health::Draining,
                member,
                state,
            }
        })
        .collect()
}

/// A Route53 name's members: the values of its record sets, as the key grammar spells IPs.
pub fn zone_members(
    sets: &[RecordSet],
    owned: Option<&BTreeSet<String>>,
    health: &std::collections::BTreeMap<std::net::IpAddr, String>,
    previous: Option<&LbStatus>,
) -> Vec<MemberState> {
    // Route53's spelling of a value, as lbmanager spells the member.
    let spelled = |v: &String| {
        v.parse::<std::net::IpAddr>()
            .map_or(v.clone(), |ip| ip.to_string())
    };
    let ips: BTreeSet<String> = sets
        .iter()
        .flat_map(|s| s.values.iter())
        .map(spelled)
        .collect();
    // `--route53-health-check`: Route53's word, as read now or (between resyncs) last.
    let state = |member: &str| {
        let checked = sets
            .iter()
            .any(|s| s.health_check.is_some() && s.values.iter().any(|v| spelled(v) == member));
        if !checked {
            return None;
        }
        member
            .parse()
            .ok()
            .and_then(|ip| health.get(&ip).cloned())
            .or_else(|| {
                let before = previous?.members.iter().find(|m| m.member == member)?;
                before.state.clone()
            })
            // Checked, its health not read yet.
            .or_else(|| Some(crate::health_check::UNKNOWN.to_string()))
    };
    ips.into_iter()
        .map(|member| MemberState {
            foreign: owned.is_some_and(|o| !o.contains(&member)),
            state: state(&member),
            member,
        })
        .collect()
}

/// Whether a member of `status` is not (yet) healthy: a registration not read back, health
/// checks under way or failing while the application starts (`initial`, `unhealthy`,
/// `OutOfService`, …), a target draining. Worth reading again while someone waits. A Route53
/// value has a health only with `--route53-health-check` (a value without a check: never).
pub fn settling(lb: &LbId, status: &LbStatus) -> bool {
    let route53 = matches!(lb, LbId::Route53 { .. });
    status.last_sync.ok
        && status
            .members
            .iter()
            .any(|m| m.health() != Health::Healthy && !(route53 && m.state.is_none()))
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

/// What `member add` or `member remove` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Registered (and not draining); `healthy`: AWS also reports it healthy, where AWS has
    /// health (a target group's `healthy`, a Classic ELB's `InService`).
    Present { healthy: bool },
    /// AWS no longer routes to it; `drained`: not even draining any more.
    Absent { drained: bool },
}

/// What the published status says about a wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet; the reason, when there is one worth saying at a timeout.
    Wait(Option<String>),
    Done,
    /// It will not happen without someone's help: the reason.
    Failed(String),
}

/// The change a wait is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The host's write or delete of the key, at this etcd revision.
    At(i64),
    /// The key was not there (its delete changed nothing). `barrier`: the revision of the
    /// waiting key the host wrote after it found it gone (0: none could be written); lbmanager
    /// publishes a status at that revision or later only once it is idle and in step with
    /// every change of the load balancer's keys before it, so that a sync in flight (which may
    /// have just registered the member) is not taken for the last word.
    NotThere { barrier: i64 },
}

impl Change {
    /// The revision a status must have reached, and after which a removal of the status counts.
    pub fn revision(self) -> i64 {
        match self {
            Change::At(r) => r,
            Change::NotThere { barrier } => barrier,
        }
    }
}

/// [`judge`] for a [`Change`].
pub fn judge_change(
    lb: &LbId,
    member: &Member,
    goal: Goal,
    change: Change,
    status: Option<&LbStatus>,
    deleted_after: bool,
) -> Verdict {
    match change {
        Change::At(revision) => judge(lb, member, goal, revision, status, deleted_after),
        Change::NotThere { barrier } => match status {
            Some(s) if s.revision < barrier => Verdict::Wait(Some(format!(
                "the key was not there; lbmanager has not caught up with etcd yet (AWS in step up \
                 to revision {}, etcd was at {barrier})",
                s.revision
            ))),
            // No status: one may be on its way (a sync that registered the member, its status
            // not landed yet), unless the load balancer is not managed at all (`deleted_after`:
            // its status went after the barrier, or it has no managed record).
            None if !deleted_after => Verdict::Wait(Some(
                "the key was not there; lbmanager has published no status for this load \
                 balancer yet"
                    .into(),
            )),
            _ => judge(lb, member, goal, 0, status, deleted_after),
        },
    }
}

/// Judges a wait for `member` of `lb` to reach `goal`, after the key change at etcd revision
/// `revision`, from the load balancer's published status (`None`: no status record).
/// `deleted_after`: the record was deleted after the change (lbmanager stopped managing the load
/// balancer, having emptied it). `revision` 0: the change changed nothing (a key deleted that
/// was not there).
pub fn judge(
    lb: &LbId,
    member: &Member,
    goal: Goal,
    revision: i64,
    status: Option<&LbStatus>,
    deleted_after: bool,
) -> Verdict {
    let Some(status) = status else {
        return match goal {
            // Not managed (any more): lbmanager routes nothing to it.
            Goal::Absent { .. } if deleted_after || revision == 0 => Verdict::Done,
            // A load balancer retired just before the add was seen comes back with it.
            _ => Verdict::Wait(Some(
                "lbmanager has published no status for this load balancer yet".into(),
            )),
        };
    };
    // Revision 0: in step with no change at all (a leader just elected whose first read of AWS
    // failed publishes what it knows, which is nothing): no verdict on any member.
    if status.revision < revision || status.revision == 0 {
        let why = match &status.last_sync.error {
            Some(e) if !status.last_sync.ok => format!("the last sync failed: {e}"),
            _ if status.revision == 0 => "lbmanager has not read AWS yet".to_string(),
            _ => format!(
                "lbmanager has not applied the change yet (AWS in step up to revision {}, the \
                 change is at {revision})",
                status.revision
            ),
        };
        return Verdict::Wait(Some(why));
    }
    // Route53 has the change, and some of its name servers may not: resolvers may still be
    // handed the record sets as they were.
    if let Some(pending) = status.dns_pending.iter().find(|p| p.revision >= revision) {
        return Verdict::Wait(Some(format!(
            "Route53 has accepted change {} and has not yet put it on all its name servers \
             (PENDING)",
            pending.id
        )));
    }
    let key_member = member.to_string();
    if status.members_more > 0 {
        // Cut to its counts (more members than a status lists, or etcd refused the whole one):
        // whether this member is among them cannot be told from it.
        return Verdict::Wait(Some(format!(
            "the status lists {} of {} members; waiting for one that tells",
            status.members.len(),
            status.members.len() + status.members_more
        )));
    }
    let found = status.find(lb, member);
    match goal {
        Goal::Present { healthy } => {
            // A target is refused as AWS names it (with the group's port).
            let refused = status.rejected.iter().find(|(m, _)| names(lb, member, m));
            let unlisted = status.rejected.more;
            if let Some((refused, reason)) = refused {
                return Verdict::Failed(format!("AWS rejected {refused}: {reason}"));
            }
            let Some(found) = found else {
                if unlisted > 0 {
                    return Verdict::Failed(format!(
                        "lbmanager has applied the change, and {key_member} is not among the \
                         members its status lists; AWS refused {unlisted} member(s) that it does \
                         not list one by one (lbmanager's log names them)"
                    ));
                }
                return Verdict::Failed(format!(
                    "lbmanager has applied the change, and {key_member} is not to be in {lb}: \
                     a newer key of the `single` class overrides it, it was deleted meanwhile, \
                     or it is of a kind the target group does not take (lbmanager's log says \
                     which)"
                ));
            };
            let health = found.health();
            if health == Health::Draining {
                return Verdict::Wait(Some(format!("{} is draining", found.member)));
            }
            // A Route53 value without a health check has no health: in DNS is all there is.
            if !healthy || matches!(lb, LbId::Route53 { .. }) && found.state.is_none() {
                return Verdict::Done;
            }
            match health {
                Health::Healthy => Verdict::Done,
                Health::NotRead => Verdict::Wait(Some(format!(
                    "{} is registered; its health is not read yet",
                    found.member
                ))),
                Health::Draining | Health::Other => Verdict::Wait(Some(format!(
                    "AWS reports {} {}",
                    found.member,
                    found.state.as_deref().unwrap_or_default()
                ))),
            }
        }
        Goal::Absent { drained } => match found {
            None => Verdict::Done,
            Some(found) if found.health() == Health::Draining => {
                if drained {
                    Verdict::Wait(Some(format!(
                        "{} is draining (for the target group's deregistration delay, 300 s \
                         unless set otherwise: --timeout must be longer)",
                        found.member
                    )))
                } else {
                    Verdict::Done
                }
            }
            // The key was not there: some other change removed it (a purge, say), which lbmanager
            // may not have applied yet. Wait for it rather than judge from an older status.
            Some(found) if revision == 0 => Verdict::Wait(Some(format!(
                "the key was not there, and AWS still has {} in {lb}: waiting for lbmanager to \
                 apply the change that removed it",
                found.member
            ))),
            Some(found) => Verdict::Failed(format!(
                "lbmanager has applied the change, and {} stays in {lb}: another key still \
                 names it, or lbmanager runs with --policy upsert-only",
                found.member
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_target;

    fn tg() -> LbId {
        LbId::TargetGroup {
            region: "us-east-1".into(),
            name: "web".into(),
        }
    }

    fn status(revision: i64, members: &[(&str, Option<&str>)]) -> LbStatus {
        LbStatus {
            load_balancer: tg().to_string(),
            revision,
            in_step: true,
            desired: members.len(),
            members: members
                .iter()
                .map(|(m, s)| MemberState {
                    member: m.to_string(),
                    state: s.map(str::to_string),
                    foreign: false,
                })
                .collect(),
            ttl: None,
            members_more: 0,
            last_sync: LastSync {
                at: 100,
                ok: true,
                cause: "etcd event".into(),
                error: None,
            },
            rejected: Rejections::default(),
            dns_pending: Vec::new(),
        }
    }

    fn target(s: &str) -> Member {
        Member::Target(Box::new(parse_target(s).unwrap()))
    }

    fn name() -> LbId {
        LbId::Route53 {
            zone: "Z1".into(),
            fqdn: "www.example.com".into(),
        }
    }

    fn pending(id: &str, revision: i64) -> PendingChange {
        PendingChange {
            id: id.into(),
            since: 100,
            revision,
        }
    }

    /// Route53 has accepted the change that carried the member, and resolvers may not get it
    /// yet: an add waits for INSYNC, and so does a removal (`--drain` counts the TTL from then).
    #[test]
    fn a_route53_wait_is_done_only_once_the_change_that_carried_it_is_insync() {
        let ip = Member::Ip("192.0.2.1".parse().unwrap());
        let add = Goal::Present { healthy: false };
        let mut s = status(10, &[("192.0.2.1", None)]);
        s.dns_pending = vec![pending("/change/C1", 10)];
        assert!(matches!(
            judge(&name(), &ip, add, 10, Some(&s), false),
            Verdict::Wait(Some(w)) if w.contains("/change/C1") && w.contains("PENDING")
        ));
        // A change pending from before the waiter's own does not hold it up.
        s.dns_pending = vec![pending("/change/C0", 9)];
        assert_eq!(judge(&name(), &ip, add, 10, Some(&s), false), Verdict::Done);
        s.dns_pending.clear();
        assert_eq!(judge(&name(), &ip, add, 10, Some(&s), false), Verdict::Done);
        let remove = Goal::Absent { drained: true };
        let mut gone = status(12, &[]);
        gone.dns_pending = vec![pending("/change/C2", 12)];
        assert!(matches!(
            judge(&name(), &ip, remove, 12, Some(&gone), false),
            Verdict::Wait(Some(w)) if w.contains("/change/C2")
        ));
        // A key deleted that was not there: any change still pending may be the one.
        assert!(matches!(
            judge(&name(), &ip, remove, 0, Some(&gone), false),
            Verdict::Wait(_)
        ));
        gone.dns_pending.clear();
        assert_eq!(
            judge(&name(), &ip, remove, 12, Some(&gone), false),
            Verdict::Done
        );
    }

    /// The 60-minute soak's remove_wait violation: `member remove --drain` of a key that was not
    /// there took a status from before a sync that had just registered the member (the sync
    /// failed after it, so its status kept the old members) as the last word. With a barrier,
    /// only a status raised to it (lbmanager idle and in step after it) decides.
    #[test]
    fn a_key_that_was_not_there_is_judged_from_a_status_past_the_barrier() {
        let m = target("i-0abc1234");
        let remove = Goal::Absent { drained: false };
        let before = status(9, &[]);
        let change = Change::NotThere { barrier: 12 };
        assert!(matches!(
            judge_change(&tg(), &m, remove, change, Some(&before), false),
            Verdict::Wait(Some(w)) if w.contains("caught up")
        ));
        let still = status(12, &[("i-0abc1234:80", None)]);
        assert!(matches!(
            judge_change(&tg(), &m, remove, change, Some(&still), false),
            Verdict::Wait(_)
        ));
        let gone = status(12, &[]);
        assert_eq!(
            judge_change(&tg(), &m, remove, change, Some(&gone), false),
            Verdict::Done
        );
        // Retired after the barrier (or not managed at all): nothing of it is left in AWS.
        assert_eq!(
            judge_change(&tg(), &m, remove, change, None, true),
            Verdict::Done
        );
        // No status yet, and managed: one may be on its way.
        assert!(matches!(
            judge_change(&tg(), &m, remove, change, None, false),
            Verdict::Wait(_)
        ));
    }

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

    #[test]
    fn an_add_is_done_once_the_status_covers_its_revision_and_has_the_member() {
        let add = Goal::Present { healthy: false };
        let m = target("i-0abc1234");
        let old = status(9, &[]);
        assert!(matches!(
            judge(&tg(), &m, add, 10, Some(&old), false),
            Verdict::Wait(Some(_))
        ));
        let new = status(10, &[("i-0abc1234:80", Some("initial"))]);
        assert_eq!(judge(&tg(), &m, add, 10, Some(&new), false), Verdict::Done);
        // --healthy waits for AWS's health check.
        let healthy = Goal::Present { healthy: true };
        assert!(matches!(
            judge(&tg(), &m, healthy, 10, Some(&new), false),
            Verdict::Wait(Some(w)) if w.contains("initial")
        ));
        let up = status(12, &[("i-0abc1234:80", Some("healthy"))]);
        assert_eq!(
            judge(&tg(), &m, healthy, 10, Some(&up), false),
            Verdict::Done
        );
        // A port the key names must match.
        assert!(matches!(
            judge(&tg(), &target("i-0abc1234:81"), add, 10, Some(&up), false),
            Verdict::Failed(_)
        ));
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
        let all: BTreeMap<String, String> = targets
            .iter()
            .map(|t| (t.clone(), message.clone()))
            .collect();
        let r = Rejections::of(&all);
        assert_eq!(r.reasons.len(), 1);
        assert_eq!(r.reasons[0].chars().count(), REASON_CHARS + 1);
        assert_eq!(r.members.len(), REJECTED_LISTED);
        assert_eq!(r.more, 200);
        assert_eq!(r.len(), 300);
        assert!(serde_json::to_string(&r).unwrap().len() < 5_000);
        // Many distinct reasons: the first ones are kept, the rest share the last.
        let varied: BTreeMap<String, String> = (0..50)
            .map(|n| (format!("i-{n:08x}"), format!("reason {n}")))
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
                member: format!("[2001:db8:ffff:ffff:ffff:ffff:ffff:{n:x}]:65535"),
                state: Some("unhealthy.FailedHealthChecks".into()),
                foreign: true,
            })
            .collect();
        s.last_sync.error = Some("x".repeat(100_000));
        s.last_sync.cause = "resync (drift)".into();
        let long = "r".repeat(10_000);
        s.rejected = Rejections::of(
            &(0..5_000)
                .map(|n| (format!("i-{n:017x}:65535"), format!("{long}{n}")))
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
    fn a_rejected_member_fails_the_add_with_aws_reason() {
        let mut s = status(10, &[]);
        // As AWS names it: with the group's port.
        s.rejected =
            Rejections::of(&[("i-0abc1234:80".into(), "InvalidTarget: not running".into())].into());
        let v = judge(
            &tg(),
            &target("i-0abc1234"),
            Goal::Present { healthy: false },
            10,
            Some(&s),
            false,
        );
        assert!(matches!(v, Verdict::Failed(r) if r.contains("not running")));
    }

    /// Found by the soak: the key was deleted by someone else (a purge) before `member remove`
    /// ran, and lbmanager had not applied that yet. A status that still lists the member is not
    /// a verdict then: the command waits for lbmanager to catch up.
    #[test]
    fn a_remove_of_a_key_already_gone_waits_for_lbmanager_to_catch_up() {
        let m = target("i-0abc1234");
        let stale = status(10, &[("i-0abc1234:80", Some("healthy"))]);
        for goal in [
            Goal::Absent { drained: false },
            Goal::Absent { drained: true },
        ] {
            assert!(matches!(
                judge(&tg(), &m, goal, 0, Some(&stale), false),
                Verdict::Wait(Some(w)) if w.contains("was not there")
            ));
            assert_eq!(
                judge(&tg(), &m, goal, 0, Some(&status(11, &[])), false),
                Verdict::Done
            );
        }
    }

    /// Found by the soak: a leader newly elected whose first read of AWS failed publishes a
    /// status that knows nothing (revision 0, no members); a `remove --wait` of a key already
    /// gone took it for "AWS no longer routes to it" while AWS still did.
    #[test]
    fn a_status_that_never_saw_aws_is_no_verdict() {
        let m = target("i-0abc1234");
        let mut blind = status(0, &[]);
        blind.in_step = false;
        blind.last_sync.ok = false;
        blind.last_sync.error = Some("DescribeTargetHealth failed: connection reset".into());
        for goal in [
            Goal::Absent { drained: false },
            Goal::Absent { drained: true },
            Goal::Present { healthy: false },
        ] {
            for revision in [0, 10] {
                assert!(
                    matches!(
                        judge(&tg(), &m, goal, revision, Some(&blind), false),
                        Verdict::Wait(Some(ref w)) if w.contains("connection reset")
                    ),
                    "{goal:?} at {revision}"
                );
            }
        }
    }

    #[test]
    fn a_remove_is_done_when_not_routed_and_drained_when_gone() {
        let m = target("i-0abc1234");
        let draining = status(10, &[("i-0abc1234:80", Some("draining"))]);
        let remove = Goal::Absent { drained: false };
        let drain = Goal::Absent { drained: true };
        assert_eq!(
            judge(&tg(), &m, remove, 10, Some(&draining), false),
            Verdict::Done
        );
        assert!(matches!(
            judge(&tg(), &m, drain, 10, Some(&draining), false),
            Verdict::Wait(_)
        ));
        let gone = status(10, &[]);
        assert_eq!(
            judge(&tg(), &m, drain, 10, Some(&gone), false),
            Verdict::Done
        );
        // Retired (status deleted after the change): gone too.
        assert_eq!(judge(&tg(), &m, drain, 10, None, true), Verdict::Done);
        // A key that was not there, and no status: nothing to wait for.
        assert_eq!(judge(&tg(), &m, drain, 0, None, false), Verdict::Done);
        // An add never gives up on a missing record: a retired load balancer comes back.
        let add = Goal::Present { healthy: false };
        assert!(matches!(
            judge(&tg(), &m, add, 10, None, true),
            Verdict::Wait(_)
        ));
        assert_eq!(
            judge(&tg(), &m, drain, 10, None, false),
            Verdict::Wait(Some(
                "lbmanager has published no status for this load balancer yet".into()
            ))
        );
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
        let api = LbId::TargetGroup {
            region: "us-east-1".into(),
            name: "api".into(),
        };
        let new = LbId::TargetGroup {
            region: "us-east-1".into(),
            name: "new".into(),
        };
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

    /// `--route53-health-check`: a value's health is Route53's word as read (at start-up and
    /// resyncs), or as last published between them; values without a check have none. The table
    /// shows it.
    #[test]
    fn route53_values_carry_their_health_checks_word() {
        let set = |ip: &str, check: Option<&str>| RecordSet {
            name: "www.example.com".into(),
            rtype: crate::plan::RecordType::A,
            ttl: 60,
            values: vec![ip.into()],
            set_id: Some(ip.into()),
            health_check: check.map(str::to_string),
        };
        let sets = [
            set("192.0.2.1", Some("hc-1")),
            set("192.0.2.2", Some("hc-2")),
            set("192.0.2.3", None),
            set("192.0.2.4", Some("hc-4")),
        ];
        let read: BTreeMap<std::net::IpAddr, String> =
            [("192.0.2.1".parse().unwrap(), "healthy".to_string())].into();
        let mut before = status(1, &[("192.0.2.2", Some("unhealthy"))]);
        let words = |members: &[MemberState]| -> Vec<Option<String>> {
            members.iter().map(|m| m.state.clone()).collect()
        };
        let members = zone_members(&sets, None, &read, Some(&before));
        assert_eq!(
            words(&members),
            [
                Some("healthy".into()),
                Some("unhealthy".into()),
                None,
                Some("unknown".into())
            ]
        );
        // `member add --wait --healthy`: a value without a check is done once in DNS; one with a
        // check once Route53 reports it healthy. Worth reading again meanwhile.
        let lb0 = LbId::Route53 {
            zone: "Z1".into(),
            fqdn: "www.example.com".into(),
        };
        let mut s = before.clone();
        s.members = members.clone();
        s.revision = 10;
        let healthy = Goal::Present { healthy: true };
        let ip = |v: &str| Member::Ip(v.parse().unwrap());
        assert_eq!(
            judge(&lb0, &ip("192.0.2.1"), healthy, 10, Some(&s), false),
            Verdict::Done
        );
        assert_eq!(
            judge(&lb0, &ip("192.0.2.3"), healthy, 10, Some(&s), false),
            Verdict::Done
        );
        for waits in ["192.0.2.2", "192.0.2.4"] {
            let v = judge(&lb0, &ip(waits), healthy, 10, Some(&s), false);
            assert!(matches!(v, Verdict::Wait(_)), "{waits}: {v:?}");
        }
        assert!(settling(&lb0, &s));
        s.members.retain(|m| {
            m.state.as_deref() != Some("unhealthy") && m.state.as_deref() != Some("unknown")
        });
        assert!(
            !settling(&lb0, &s),
            "no check, or healthy: nothing to wait for"
        );
        let lb = LbId::Route53 {
            zone: "Z1".into(),
            fqdn: "www.example.com".into(),
        };
        before.load_balancer = lb.to_string();
        before.members = members;
        let rows = table::rows(&BTreeMap::new(), &[(lb, before)].into(), 100);
        let report = table::StatusReport {
            daemon: None,
            load_balancers: rows,
        };
        let table = table::render_table(&report);
        assert!(
            table.contains("health: 192.0.2.1 healthy, 192.0.2.2 unhealthy"),
            "{table}"
        );
    }

    #[test]
    fn members_after_a_sync_keep_health_mark_draining_and_settle() {
        let t = |s: &str| parse_target(s).unwrap();
        let actual = Registered {
            members: [t("i-00000001:80"), t("i-00000002:80")].into(),
            default_port: Some(80),
            health: [(
                t("i-00000001:80"),
                crate::plan::Health {
                    state: "healthy".into(),
                },
            )]
            .into(),
            ..Registered::default()
        };
        let previous = status(9, &[("i-00000002:80", Some("unhealthy"))]);
        let members = elb_members(
            &tg(),
            &actual,
            &[t("i-00000003")],
            &[t("i-00000002:80")],
            Some(&previous),
            None,
        );
        let got: Vec<(&str, Option<&str>)> = members
            .iter()
            .map(|m| (m.member.as_str(), m.state.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("i-00000001:80", Some("healthy")),
                ("i-00000002:80", Some("draining")),
                ("i-00000003:80", None),
            ]
        );
        let mut s = status(10, &[]);
        s.members = members;
        assert!(settling(&tg(), &s));
        s.members.retain(|m| m.state.as_deref() == Some("healthy"));
        assert!(!settling(&tg(), &s));
        let elb = LbId::Elb {
            region: "us-east-1".into(),
            name: "web".into(),
        };
        assert!(
            elb_members(&elb, &actual, &[], &[t("i-00000002:80")], None, None)
                .iter()
                .all(|m| m.member != "i-00000002:80")
        );
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
