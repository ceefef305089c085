//! `lbmanager explain KEY`: where one member key (or one load balancer) stands and why, in plain
//! sentences, from what etcd holds: the keys, and the status the running lbmanager published.
//! Pure: the facts in (read by `commands::explain`), the explanation out.

use serde::Serialize;

use crate::desired::Resolution;
use crate::key::{self, Class, LbId, Member, MemberKey};
use crate::status::table::{DaemonSeen, StatusRow};
use crate::status::{judge, Goal, Health, LbStatus, Verdict};

/// What etcd holds about the key and its load balancer.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    /// The key's `mod_revision` when it is in etcd.
    pub written: Option<i64>,
    /// How the load balancer's keys resolve (which count, which are superseded).
    pub resolution: Option<Resolution>,
    /// `--elb-filter` / `--zone-filter` given to `explain` leave the load balancer out.
    pub filtered: bool,
    /// The load balancer's status as the running lbmanager last published it.
    pub status: Option<&'a LbStatus>,
    /// The status record is there but does not parse: why (another version of lbmanager wrote
    /// it, or someone else did).
    pub status_unreadable: Option<String>,
    /// lbmanager has a managed record for the load balancer.
    pub managed: bool,
    /// The running lbmanager, as its heartbeat shows it (none: no lbmanager ever reported).
    pub daemon: Option<DaemonSeen>,
    /// The load balancer's row of `lbmanager status` (for a load balancer explained as a whole).
    pub row: Option<StatusRow>,
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// The answer of `explain`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `single` or `multiple`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The etcd revision the key was written at; none: not in etcd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<i64>,
    /// What lbmanager should make of it: the member in AWS (true) or not (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wanted_in_aws: Option<bool>,
    /// The member (or the load balancer) is where its key says: exit 0.
    pub as_its_key_says: bool,
    pub sentences: Vec<String>,
}

/// What `subject` is: a member key, or a load balancer (`elb/REGION/NAME`, …).
pub enum Subject {
    Key(MemberKey),
    LoadBalancer(LbId),
    /// Neither: why.
    Not(String),
}

/// Reads `subject` as `explain` takes it.
pub fn subject(prefix: &str, subject: &str) -> Subject {
    if let Ok(lb) = subject.trim_matches('/').parse::<LbId>() {
        return Subject::LoadBalancer(lb);
    }
    match key::parse(prefix, subject) {
        Ok(Some(k)) => Subject::Key(k),
        Ok(None) if subject.starts_with(&format!("{prefix}/")) => Subject::Not(format!(
            "{subject} is one of lbmanager's own keys (its first part under {prefix}/ starts \
             with `_`), not a member key"
        )),
        Ok(None) => Subject::Not(format!(
            "{subject} is not under the prefix {prefix}/, nor a load balancer \
             (elb/REGION/NAME, elbv2/REGION/NAME, route53/ZONE/FQDN): lbmanager does not read it"
        )),
        Err(e) => Subject::Not(format!(
            "{subject} is not a member key: {e}; lbmanager ignores it (and warns about it once)"
        )),
    }
}

/// How long before `now` `at` was, as people say it.
fn ago(now: u64, at: u64) -> String {
    crate::status::table::age(now.saturating_sub(at))
}

/// What is known of the running lbmanager, in a sentence when it matters.
fn daemon(facts: &Facts, out: &mut Vec<String>) -> bool {
    match &facts.daemon {
        None => {
            out.push("No lbmanager has ever reported for this prefix: is one running?".into());
            false
        }
        Some(d) if d.stale => {
            out.push(format!(
                "lbmanager last reported {}s ago (every {}s when running): is it running? What \
                 follows is what it published then.",
                d.reported_secs_ago, d.resync_interval_secs
            ));
            false
        }
        Some(_) => true,
    }
}

/// Explains a member key.
pub fn member(key: &str, parsed: &MemberKey, facts: &Facts) -> Explanation {
    let MemberKey { lb, class, member } = parsed;
    let mut out = vec![format!(
        "The key names {member} of {lb} ({}).",
        match class {
            Class::Single => "single: only the newest single key of a load balancer counts",
            Class::Multiple => "multiple: every such key counts",
        }
    )];
    let alive = daemon(facts, &mut out);
    let wanted = wanted(key, parsed, facts, &mut out);
    if facts.filtered {
        out.push(format!(
            "The --elb-filter/--zone-filter given here leave {lb} out: an lbmanager run with them \
             does not touch it."
        ));
    }
    let verdict = facts.status.map(|status| {
        aws_side(lb, member, status, facts, &mut out);
        let goal = match wanted {
            true => Goal::Present { healthy: false },
            false => Goal::Absent { drained: false },
        };
        // A superseded key is out from the change that superseded it, not from its own write.
        let decided = facts
            .resolution
            .as_ref()
            .and_then(|r| r.decided_by().into_iter().map(|(_, at)| at).max());
        let revision = match (wanted, facts.written) {
            (false, Some(written)) => decided.unwrap_or(written).max(written),
            (_, written) => written.unwrap_or(0),
        };
        judge(lb, member, goal, revision, Some(status), false)
    });
    let ok = match verdict {
        Some(Verdict::Done) => {
            out.push(match wanted {
                true => "So it is where its key says: AWS has it.".to_string(),
                false => "So AWS does not have it, as etcd says.".to_string(),
            });
            true
        }
        Some(Verdict::Wait(why)) => {
            out.push(format!(
                "Not there yet{}.",
                why.map(|w| format!(": {w}")).unwrap_or_default()
            ));
            false
        }
        Some(Verdict::Failed(why)) => {
            out.push(format!("It will not get there by itself: {why}."));
            false
        }
        None if facts.managed || facts.status_unreadable.is_some() => {
            out.push(no_status(lb, facts));
            false
        }
        None => {
            out.push(format!(
                "lbmanager has no record of {lb}: it has never synced it{}.",
                if wanted {
                    ""
                } else {
                    " (so it put nothing there)"
                }
            ));
            !wanted
        }
    };
    if ok && facts.filtered {
        out.push(
            "But the filters given here leave it out, so it does not count as in step.".into(),
        );
    } else if ok && !alive {
        out.push("But no lbmanager is running to keep it so.".into());
    }
    Explanation {
        subject: key.to_string(),
        load_balancer: Some(lb.to_string()),
        member: Some(member.to_string()),
        class: Some(class.to_string()),
        written: facts.written,
        wanted_in_aws: Some(wanted),
        as_its_key_says: ok && alive && !facts.filtered,
        sentences: out,
    }
}

/// Whether etcd wants the member in AWS, said in sentences: the key there or not, and whether
/// another key supersedes it.
fn wanted(key: &str, parsed: &MemberKey, facts: &Facts, out: &mut Vec<String>) -> bool {
    let Some(written) = facts.written else {
        out.push(format!(
            "The key is not in etcd: lbmanager takes {} out of {} (unless another key names it).",
            parsed.member, parsed.lb
        ));
        return facts
            .resolution
            .as_ref()
            .is_some_and(|r| r.members.contains(&parsed.member));
    };
    out.push(format!(
        "The key is in etcd, written at revision {written}."
    ));
    let Some(resolution) = &facts.resolution else {
        return true;
    };
    if resolution.members.contains(&parsed.member) {
        return true;
    }
    let superseded = resolution.superseded.iter().any(|(k, _)| k == key);
    match (&resolution.winner, &resolution.threshold) {
        (Some((winner, at)), None) if superseded => out.push(format!(
            "It is superseded: the newest single key, {winner} (revision {at}), decides the \
             load balancer's one member; lbmanager deletes the older keys."
        )),
        (Some((winner, at)), Some((single, _))) if superseded => out.push(format!(
            "It is superseded: multiple keys newer than the single key {single} count instead \
             (the newest: {winner}, revision {at})."
        )),
        _ => out.push("It does not count: another key of the load balancer decides.".into()),
    }
    false
}

/// What the published status says of the member in AWS.
fn aws_side(lb: &LbId, member: &Member, status: &LbStatus, facts: &Facts, out: &mut Vec<String>) {
    out.push(format!(
        "lbmanager's status of {lb}: AWS in step with etcd up to revision {}, last changed {} ({}){}.",
        status.revision,
        ago(facts.now, status.last_sync.at),
        status.last_sync.cause,
        match &status.last_sync.error {
            Some(e) if !status.last_sync.ok => format!("; the last sync failed: {e}"),
            _ => String::new(),
        }
    ));
    let spelled = member.to_string();
    match status
        .members
        .iter()
        .find(|m| crate::status::names(lb, member, &m.member))
    {
        Some(m) => out.push(format!(
            "AWS has it{}{}.",
            match (m.health(), m.state.as_deref()) {
                (Health::NotRead, _) => ", its health not read".to_string(),
                (Health::Draining, _) => ": draining (on its way out)".to_string(),
                (_, Some(state)) => format!(", AWS reports it {state}"),
                (_, None) => String::new(),
            },
            if m.foreign {
                " (added by another tool: --ownership shared)"
            } else {
                ""
            }
        )),
        None => out.push(format!("AWS does not have {spelled}, as last read.")),
    }
    if let Some((m, why)) = status
        .rejected
        .iter()
        .find(|(m, _)| crate::status::names(lb, member, m))
    {
        out.push(refused("it", status.rejected.by_limit(m), why));
    }
    let foreign = status.members.iter().filter(|m| m.foreign).count();
    if foreign > 0 {
        out.push(format!(
            "{foreign} member(s) of {lb} are another tool's (--ownership shared): lbmanager \
             leaves them."
        ));
    }
    if matches!(lb, LbId::Route53 { .. }) {
        match status.dns_pending.first() {
            Some(p) => out.push(format!(
                "Route53 change {} is PENDING since {}: some resolvers may not answer with it yet.",
                p.id,
                ago(facts.now, p.since)
            )),
            None => out.push("Route53 has every change of the name INSYNC.".into()),
        }
    }
}

/// A member left out: by AWS, or by lbmanager past one of AWS's limits.
fn refused(who: &str, by_limit: bool, why: &str) -> String {
    match by_limit {
        true => format!("lbmanager leaves {who} out, past a limit: {why}"),
        false => format!("AWS refuses {who}: {why}"),
    }
}

/// Why there is no status to go by: none published yet, or one that can't be read.
fn no_status(lb: &LbId, facts: &Facts) -> String {
    match &facts.status_unreadable {
        Some(why) => format!(
            "lbmanager's status record of {lb} cannot be read ({why}): it was written by another \
             version of lbmanager, or not by lbmanager."
        ),
        None => format!("lbmanager manages {lb} but has published no status for it yet."),
    }
}

/// Explains a load balancer as a whole.
pub fn load_balancer(lb: &LbId, facts: &Facts) -> Explanation {
    let mut out = Vec::new();
    let alive = daemon(facts, &mut out);
    if facts.filtered {
        out.push(format!(
            "The --elb-filter/--zone-filter given here leave {lb} out: an lbmanager run with them \
             does not touch it."
        ));
    }
    let wanted = facts.resolution.as_ref().map_or(0, |r| r.members.len());
    out.push(format!("etcd wants {wanted} member(s) in {lb}."));
    let in_step = match (&facts.row, facts.status) {
        (Some(row), Some(status)) => {
            aws_summary(row, status, facts, &mut out);
            row.in_step
        }
        _ if facts.managed || facts.status_unreadable.is_some() => {
            out.push(no_status(lb, facts));
            false
        }
        _ => {
            out.push("lbmanager has no record of it: it has never synced it.".into());
            wanted == 0
        }
    };
    out.push(match in_step {
        true => "So AWS is where etcd says.".into(),
        false => "So AWS is not (yet) where etcd says.".into(),
    });
    Explanation {
        subject: lb.to_string(),
        load_balancer: Some(lb.to_string()),
        member: None,
        class: None,
        written: None,
        wanted_in_aws: None,
        as_its_key_says: in_step && alive && !facts.filtered,
        sentences: out,
    }
}

fn aws_summary(row: &StatusRow, status: &LbStatus, facts: &Facts, out: &mut Vec<String>) {
    out.push(format!(
        "AWS has {} member(s) as last read; AWS in step with etcd up to revision {}, last changed \
         {} ({}).",
        status.members.len() + status.members_more,
        status.revision,
        ago(facts.now, status.last_sync.at),
        status.last_sync.cause
    ));
    if let Some(e) = &row.last_error {
        out.push(format!("The last sync failed: {e}"));
    }
    for (m, why) in status.rejected.iter() {
        out.push(refused(m, status.rejected.by_limit(m), why));
    }
    if row.rejected_unlisted > 0 {
        out.push(format!("And {} more refused.", row.rejected_unlisted));
    }
    for p in &row.dns_pending {
        out.push(format!(
            "Route53 change {} is PENDING for {}s.",
            p.change, p.age_secs
        ));
    }
}

/// The explanation as text, one sentence a line (values from etcd and AWS escaped).
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    for line in &e.sentences {
        s.push_str(&crate::escape::escape(line));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{LastSync, MemberState, Rejections};

    const P: &str = "/lbManager";

    fn key(rest: &str) -> (String, MemberKey) {
        let k = format!("{P}/{rest}");
        match subject(P, &k) {
            Subject::Key(parsed) => (k, parsed),
            _ => panic!("{k} is a member key"),
        }
    }

    fn alive() -> Option<DaemonSeen> {
        Some(DaemonSeen {
            version: "0.1.0".into(),
            reported_secs_ago: 3,
            resync_interval_secs: 300,
            stale: false,
        })
    }

    fn status(revision: i64, members: &[&str]) -> LbStatus {
        LbStatus {
            load_balancer: "elb/us-east-1/webLB".into(),
            revision,
            in_step: true,
            desired: members.len(),
            members: members
                .iter()
                .map(|m| MemberState {
                    member: (*m).into(),
                    state: Some("InService".into()),
                    foreign: false,
                })
                .collect(),
            last_sync: LastSync {
                at: 100,
                ok: true,
                cause: "etcd event".into(),
                error: None,
            },
            ..LbStatus::default()
        }
    }

    fn resolution(members: &[&MemberKey]) -> Resolution {
        Resolution {
            members: members.iter().map(|k| k.member.clone()).collect(),
            winner: None,
            threshold: None,
            superseded: Vec::new(),
        }
    }

    /// What etcd holds of a member key written at revision 9 and counting, with `status`
    /// published by a live lbmanager, at `now`.
    fn facts<'a>(parsed: &MemberKey, status: &'a LbStatus, now: u64) -> Facts<'a> {
        Facts {
            written: Some(9),
            resolution: Some(resolution(&[parsed])),
            status: Some(status),
            managed: true,
            daemon: alive(),
            now,
            ..Facts::default()
        }
    }

    #[test]
    fn a_member_in_aws_is_where_its_key_says() {
        let (k, parsed) = key("elb/us-east-1/webLB/multiple/i-0123456789abcdef0");
        let s = status(10, &["i-0123456789abcdef0"]);
        let facts = facts(&parsed, &s, 130);
        let e = member(&k, &parsed, &facts);
        assert!(e.as_its_key_says, "{e:#?}");
        let text = render(&e);
        assert!(
            text.contains("The key is in etcd, written at revision 9."),
            "{text}"
        );
        assert!(
            text.contains("AWS has it, AWS reports it InService."),
            "{text}"
        );
        assert!(text.contains("last changed 30s ago (etcd event)"), "{text}");
    }

    /// A status record that does not parse is said so, not taken for no status.
    #[test]
    fn an_unreadable_status_is_said_to_be_so() {
        let (k, parsed) = key("elb/us-east-1/webLB/multiple/i-0123456789abcdef0");
        let facts = Facts {
            written: Some(9),
            resolution: Some(resolution(&[&parsed])),
            status_unreadable: Some("expected value at line 1 column 1".into()),
            managed: true,
            daemon: alive(),
            now: 103,
            ..Facts::default()
        };
        for e in [
            member(&k, &parsed, &facts),
            load_balancer(&parsed.lb, &facts),
        ] {
            assert!(!e.as_its_key_says);
            let text = render(&e);
            assert!(
                text.contains(
                    "status record of elb/us-east-1/webLB cannot be read (expected value"
                ),
                "{text}"
            );
            assert!(!text.contains("no status"), "{text}");
        }
    }

    /// A member left out past the limit of members is said to be left out by lbmanager, not
    /// refused by AWS.
    #[test]
    fn a_member_past_a_limit_is_said_to_be_left_out_by_lbmanager() {
        let (k, parsed) = key("elb/us-east-1/webLB/multiple/i-0123456789abcdef0");
        let mut s = status(10, &[]);
        let mut rejected = crate::plan::Rejected::new();
        rejected.insert(
            "i-0123456789abcdef0".into(),
            crate::plan::Refusal::OverLimit(crate::plan::Limit::ElbMembers),
        );
        rejected.insert(
            "i-0123456789abcdef1".into(),
            crate::plan::Refusal::Aws("InvalidInstance".into()),
        );
        s.rejected = Rejections::of(&rejected);
        let facts = facts(&parsed, &s, 103);
        let text = render(&member(&k, &parsed, &facts));
        assert!(
            text.contains("lbmanager leaves it out, past a limit: over the limit of 1000"),
            "{text}"
        );
        assert!(!text.contains("AWS refuses it"), "{text}");
        // The status round-trips which reasons are limits.
        let json = serde_json::to_string(&s).unwrap();
        let back: LbStatus = serde_json::from_str(&json).unwrap();
        assert!(back.rejected.by_limit("i-0123456789abcdef0"));
        assert!(!back.rejected.by_limit("i-0123456789abcdef1"));
    }

    #[test]
    fn a_refused_member_says_aws_s_reason() {
        let (k, parsed) = key("elb/us-east-1/webLB/multiple/i-0000000000000dead");
        let mut s = status(10, &[]);
        let mut rejected = crate::plan::Rejected::new();
        rejected.insert(
            "i-0000000000000dead".into(),
            crate::plan::Refusal::Aws("InvalidInstance: not running".into()),
        );
        s.rejected = Rejections::of(&rejected);
        let facts = facts(&parsed, &s, 0);
        let e = member(&k, &parsed, &facts);
        assert!(!e.as_its_key_says);
        let text = render(&e);
        assert!(
            text.contains("AWS refuses it: InvalidInstance: not running"),
            "{text}"
        );
        assert!(text.contains("It will not get there by itself"), "{text}");
    }

    #[test]
    fn a_superseded_single_key_names_the_winner() {
        let (old, parsed) = key("elb/us-east-1/webLB/single/i-0123456789abcdef0");
        let (new, winner) = key("elb/us-east-1/webLB/single/i-0fedcba9876543210");
        let s = status(12, &["i-0fedcba9876543210"]);
        let facts = Facts {
            written: Some(5),
            resolution: Some(Resolution {
                winner: Some((new.clone(), 11)),
                superseded: vec![(old.clone(), 5)],
                ..resolution(&[&winner])
            }),
            status: Some(&s),
            managed: true,
            daemon: alive(),
            ..Facts::default()
        };
        let e = member(&old, &parsed, &facts);
        assert_eq!(e.wanted_in_aws, Some(false));
        assert!(e.as_its_key_says, "superseded and not in AWS: {e:#?}");
        assert!(render(&e).contains(&format!("the newest single key, {new} (revision 11)")));
    }

    #[test]
    fn not_a_member_key_says_why() {
        let Subject::Not(why) = subject(P, &format!("{P}/elb/us-east-1/we_b/multiple/i-1")) else {
            panic!("not a member key")
        };
        assert!(why.contains("invalid ELB name"), "{why}");
        assert!(matches!(
            subject(P, "elb/us-east-1/webLB"),
            Subject::LoadBalancer(_)
        ));
    }

    #[test]
    fn sentences_are_escaped_for_a_terminal() {
        let e = Explanation {
            subject: "x".into(),
            load_balancer: None,
            member: None,
            class: None,
            written: None,
            wanted_in_aws: None,
            as_its_key_says: false,
            sentences: vec!["AWS said \u{1b}[31mred".into()],
        };
        assert!(!render(&e).contains('\u{1b}'));
    }
}
