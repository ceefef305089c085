//! The verdicts of `lbmanager member add|remove --wait`: from the status the daemon published,
//! whether AWS has (or no longer has) the member, is still moving, or refused it.

use super::{names, Health, LbStatus, MemberState};
use crate::key::{LbId, Member};

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
    if let Some(why) = not_telling(status, revision) {
        return Verdict::Wait(Some(why));
    }
    let found = status.find(lb, member);
    match goal {
        Goal::Present { healthy } => present(lb, member, healthy, status, found),
        Goal::Absent { drained } => absent(lb, drained, revision, found),
    }
}

/// Why `status` cannot tell yet whether the change at `revision` is in AWS, if it cannot.
fn not_telling(status: &LbStatus, revision: i64) -> Option<String> {
    // Revision 0: in step with no change at all (a leader just elected whose first read of AWS
    // failed publishes what it knows, which is nothing): no verdict on any member.
    if status.revision < revision || status.revision == 0 {
        return Some(match &status.last_sync.error {
            Some(e) if !status.last_sync.ok => format!("the last sync failed: {e}"),
            _ if status.revision == 0 => "lbmanager has not read AWS yet".to_string(),
            _ => format!(
                "lbmanager has not applied the change yet (AWS in step up to revision {}, the \
                 change is at {revision})",
                status.revision
            ),
        });
    }
    // Route53 has the change, and some of its name servers may not: resolvers may still be
    // handed the record sets as they were.
    if let Some(pending) = status.dns_pending.iter().find(|p| p.revision >= revision) {
        return Some(format!(
            "Route53 has accepted change {} and has not yet put it on all its name servers \
             (PENDING)",
            pending.id
        ));
    }
    // Cut to its counts (more members than a status lists, or etcd refused the whole one):
    // whether this member is among them cannot be told from it.
    (status.members_more > 0).then(|| {
        format!(
            "the status lists {} of {} members; waiting for one that tells",
            status.members.len(),
            status.members.len() + status.members_more
        )
    })
}

/// [`judge`] of an add, from a status that tells: `found` is the member's state in it.
fn present(
    lb: &LbId,
    member: &Member,
    healthy: bool,
    status: &LbStatus,
    found: Option<&MemberState>,
) -> Verdict {
    // A target is refused as AWS names it (with the group's port).
    if let Some((refused, reason)) = status.rejected.iter().find(|(m, _)| names(lb, member, m)) {
        return Verdict::Failed(format!("AWS rejected {refused}: {reason}"));
    }
    let Some(found) = found else {
        let unlisted = status.rejected.more;
        return Verdict::Failed(if unlisted > 0 {
            format!(
                "lbmanager has applied the change, and {member} is not among the members its \
                 status lists; AWS refused {unlisted} member(s) that it does not list one by \
                 one (lbmanager's log names them)"
            )
        } else {
            format!(
                "lbmanager has applied the change, and {member} is not to be in {lb}: a newer \
                 key of the `single` class overrides it, it was deleted meanwhile, or it is of a \
                 kind the target group does not take (lbmanager's log says which)"
            )
        });
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

/// [`judge`] of a removal, from a status that tells: `found` is the member's state in it.
fn absent(lb: &LbId, drained: bool, revision: i64, found: Option<&MemberState>) -> Verdict {
    match found {
        None => Verdict::Done,
        Some(found) if found.health() == Health::Draining => match drained {
            true => Verdict::Wait(Some(format!(
                "{} is draining (for the target group's deregistration delay, 300 s unless set \
                 otherwise: --timeout must be longer)",
                found.member
            ))),
            false => Verdict::Done,
        },
        // The key was not there: some other change removed it (a purge, say), which lbmanager
        // may not have applied yet. Wait for it rather than judge from an older status.
        Some(found) if revision == 0 => Verdict::Wait(Some(format!(
            "the key was not there, and AWS still has {} in {lb}: waiting for lbmanager to apply \
             the change that removed it",
            found.member
        ))),
        Some(found) => Verdict::Failed(format!(
            "lbmanager has applied the change, and {} stays in {lb}: another key still names it, \
             or lbmanager runs with --policy upsert-only",
            found.member
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use crate::plan::Refusal;

    const ADD: Goal = Goal::Present { healthy: false };
    const HEALTHY: Goal = Goal::Present { healthy: true };
    const REMOVE: Goal = Goal::Absent { drained: false };
    const DRAIN: Goal = Goal::Absent { drained: true };

    /// The reason of a wait; panics at any other verdict.
    fn reason(verdict: Verdict) -> String {
        match verdict {
            Verdict::Wait(Some(why)) => why,
            other => panic!("not a wait with a reason: {other:?}"),
        }
    }

    /// Route53 has accepted the change that carried the member, and resolvers may not get it
    /// yet: an add waits for INSYNC, and so does a removal (`--drain` counts the TTL from then).
    #[test]
    fn a_route53_wait_is_done_only_once_the_change_that_carried_it_is_insync() {
        let ip = Member::Ip("192.0.2.1".parse().unwrap());
        let of = |goal, rev, s: &LbStatus| judge(&name(), &ip, goal, rev, Some(s), false);
        let mut s = status(10, &[("192.0.2.1", None)]);
        s.dns_pending = vec![pending("/change/C1", 10)];
        let why = reason(of(ADD, 10, &s));
        assert!(why.contains("/change/C1"), "{why}");
        assert!(why.contains("PENDING"), "{why}");
        // A change pending from before the waiter's own does not hold it up.
        s.dns_pending = vec![pending("/change/C0", 9)];
        assert_eq!(of(ADD, 10, &s), Verdict::Done);
        s.dns_pending.clear();
        assert_eq!(of(ADD, 10, &s), Verdict::Done);
        let mut gone = status(12, &[]);
        gone.dns_pending = vec![pending("/change/C2", 12)];
        assert!(reason(of(DRAIN, 12, &gone)).contains("/change/C2"));
        // A key deleted that was not there: any change still pending may be the one.
        assert!(matches!(of(DRAIN, 0, &gone), Verdict::Wait(_)));
        gone.dns_pending.clear();
        assert_eq!(of(DRAIN, 12, &gone), Verdict::Done);
    }

    /// The 60-minute soak's remove_wait violation: `member remove --drain` of a key that was not
    /// there took a status from before a sync that had just registered the member (the sync
    /// failed after it, so its status kept the old members) as the last word. With a barrier,
    /// only a status raised to it (lbmanager idle and in step after it) decides.
    #[test]
    fn a_key_that_was_not_there_is_judged_from_a_status_past_the_barrier() {
        let m = target("i-0abc1234");
        let change = Change::NotThere { barrier: 12 };
        let of = |s: Option<&LbStatus>, gone| judge_change(&tg(), &m, REMOVE, change, s, gone);
        assert!(reason(of(Some(&status(9, &[])), false)).contains("caught up"));
        let still = status(12, &[("i-0abc1234:80", None)]);
        assert!(matches!(of(Some(&still), false), Verdict::Wait(_)));
        assert_eq!(of(Some(&status(12, &[])), false), Verdict::Done);
        // Retired after the barrier (or not managed at all): nothing of it is left in AWS.
        assert_eq!(of(None, true), Verdict::Done);
        // No status yet, and managed: one may be on its way.
        assert!(matches!(of(None, false), Verdict::Wait(_)));
    }

    #[test]
    fn an_add_is_done_once_the_status_covers_its_revision_and_has_the_member() {
        let m = target("i-0abc1234");
        let of = |goal, s: &LbStatus| judge(&tg(), &m, goal, 10, Some(s), false);
        assert!(matches!(of(ADD, &status(9, &[])), Verdict::Wait(Some(_))));
        let new = status(10, &[("i-0abc1234:80", Some("initial"))]);
        assert_eq!(of(ADD, &new), Verdict::Done);
        // --healthy waits for AWS's health check.
        assert!(reason(of(HEALTHY, &new)).contains("initial"));
        let up = status(12, &[("i-0abc1234:80", Some("healthy"))]);
        assert_eq!(of(HEALTHY, &up), Verdict::Done);
        // A port the key names must match.
        let other_port = judge(&tg(), &target("i-0abc1234:81"), ADD, 10, Some(&up), false);
        assert!(matches!(other_port, Verdict::Failed(_)));
    }

    #[test]
    fn a_rejected_member_fails_the_add_with_aws_reason() {
        let mut s = status(10, &[]);
        // As AWS names it: with the group's port.
        let refusal = Refusal::Aws("InvalidTarget: not running".into());
        s.rejected = Rejections::of(&[("i-0abc1234:80".into(), refusal)].into());
        let v = judge(&tg(), &target("i-0abc1234"), ADD, 10, Some(&s), false);
        assert!(matches!(v, Verdict::Failed(r) if r.contains("not running")));
    }

    /// Found by the soak: the key was deleted by someone else (a purge) before `member remove`
    /// ran, and lbmanager had not applied that yet. A status that still lists the member is not
    /// a verdict then: the command waits for lbmanager to catch up.
    #[test]
    fn a_remove_of_a_key_already_gone_waits_for_lbmanager_to_catch_up() {
        let m = target("i-0abc1234");
        let of = |goal, s: &LbStatus| judge(&tg(), &m, goal, 0, Some(s), false);
        let stale = status(10, &[("i-0abc1234:80", Some("healthy"))]);
        for goal in [REMOVE, DRAIN] {
            assert!(reason(of(goal, &stale)).contains("was not there"));
            assert_eq!(of(goal, &status(11, &[])), Verdict::Done);
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
        for goal in [REMOVE, DRAIN, ADD] {
            for revision in [0, 10] {
                let why = reason(judge(&tg(), &m, goal, revision, Some(&blind), false));
                assert!(why.contains("connection reset"), "{goal:?} at {revision}");
            }
        }
    }

    #[test]
    fn a_remove_is_done_when_not_routed_and_drained_when_gone() {
        let m = target("i-0abc1234");
        let of = |goal, rev, s: Option<&LbStatus>, gone| judge(&tg(), &m, goal, rev, s, gone);
        let draining = status(10, &[("i-0abc1234:80", Some("draining"))]);
        assert_eq!(of(REMOVE, 10, Some(&draining), false), Verdict::Done);
        let v = of(DRAIN, 10, Some(&draining), false);
        assert!(matches!(v, Verdict::Wait(_)));
        assert_eq!(of(DRAIN, 10, Some(&status(10, &[])), false), Verdict::Done);
        // Retired (status deleted after the change): gone too.
        assert_eq!(of(DRAIN, 10, None, true), Verdict::Done);
        // A key that was not there, and no status: nothing to wait for.
        assert_eq!(of(DRAIN, 0, None, false), Verdict::Done);
        // An add never gives up on a missing record: a retired load balancer comes back.
        assert!(matches!(of(ADD, 10, None, true), Verdict::Wait(_)));
        let none_yet = "lbmanager has published no status for this load balancer yet";
        assert_eq!(reason(of(DRAIN, 10, None, false)), none_yet);
    }
}
