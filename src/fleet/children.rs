//! The children: an actor per load balancer, started with what the fleet keeps, sent each new
//! desire, restarted ever more slowly while it keeps dying, and retired once its keys are gone
//! and AWS is emptied of lbmanager's members; their reports (refusals, statuses) said and
//! published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::{Child, Command, Fleet, Note, Report, Restarts};
use crate::desired::Revision;
use crate::key::LbId;
use crate::plan::{Refusal, Rejected};
use crate::status::LbStatus;
use crate::sync::Cause;

impl Fleet {
    /// A load balancer's report after a sync attempt.
    pub fn synced(&mut self, report: Report) -> Vec<Command> {
        let lb = &report.lb;
        if report.sync {
            self.round_synced(lb, report.failed);
        }
        if let Some(rejected) = report.rejected {
            self.rejections(lb, rejected);
        }
        if let Some(status) = report.status {
            // What the actor, restarted after a panic, starts from.
            self.published.insert(lb.clone(), status.clone());
            self.publish(lb, Some(status));
        }
        if report.sync && !report.failed {
            if let Some(child) = self.lbs.get_mut(lb) {
                child.restarts = Restarts::default();
            }
        }
        // A load balancer whose keys are all gone, once emptied, is no longer ours to touch.
        let retire = !report.failed
            && !report.settling
            && self
                .lbs
                .get(lb)
                .is_some_and(|c| c.generation == report.generation && c.members.is_empty())
            && self.desired.resolve(lb).members.is_empty();
        if retire {
            self.retire(lb);
        }
        self.take()
    }

    /// `lb`'s managed record has landed: it gets its latest desire.
    pub fn record_landed(&mut self, lb: &LbId) -> Vec<Command> {
        self.awaiting_record.remove(lb);
        if let Some(child) = self.lbs.get(lb) {
            self.out.push(Command::Desire {
                lb: lb.clone(),
                desire: child.desire(),
            });
        }
        self.take()
    }

    /// `lb`'s actor recorded its members as these (`--ownership shared`).
    pub fn owned_changed(&mut self, lb: LbId, members: BTreeSet<String>) {
        self.owned.insert(lb, members);
    }

    /// These actors were found dead (a panic ends an actor): each is restarted with the state the
    /// fleet keeps, after a delay that grows while it keeps dying.
    pub fn stopped(&mut self, now: Instant, lbs: &[LbId], zones: &[String]) -> Vec<Command> {
        for zone in zones {
            let restarts = self.zone_restarts.entry(zone.clone()).or_default();
            let Some(next) = restarts.take(now) else {
                continue;
            };
            self.out.push(Command::Note(Note::ZoneRestarted {
                zone: zone.clone(),
                restarts: restarts.count,
                next,
            }));
            let lbs = self
                .lbs
                .keys()
                .filter(|lb| lb.zone() == Some(zone.as_str()))
                .cloned()
                .collect();
            self.out.push(Command::RestartZone {
                zone: zone.clone(),
                lbs,
            });
        }
        if self.stopping {
            // No new syncs once the shutdown began: a dead load balancer stays dead (whatever it
            // had to do is done at the next start). Dead zones are still replaced above, so that
            // the load balancers waiting on them are told their sync is over.
            return self.take();
        }
        for lb in lbs {
            let Some(child) = self.lbs.get_mut(lb) else {
                continue;
            };
            let Some(next) = child.restarts.take(now) else {
                continue;
            };
            child.cause = Cause::Restart;
            self.out.push(Command::Note(Note::LbRestarted {
                lb: lb.clone(),
                restarts: child.restarts.count,
                next,
            }));
            let (desire, barrier) = (child.desire(), child.barrier);
            self.spawn(lb);
            if !self.awaiting_record.contains(lb) {
                self.out.push(Command::Desire {
                    lb: lb.clone(),
                    desire,
                });
            }
            if barrier > 0 {
                self.out.push(Command::Barrier {
                    lb: lb.clone(),
                    revision: barrier,
                });
            }
        }
        self.take()
    }

    /// What a (re)started actor starts from, with `--ownership shared`.
    pub(super) fn owned_of(&self, lb: &LbId) -> Option<BTreeSet<String>> {
        self.config
            .shared
            .then(|| self.owned.get(lb).cloned().unwrap_or_default())
    }

    /// Sends `lb` its desired members if they changed (or always, with `force`); starts its actor
    /// if it has none yet. `revision`: of the etcd change that makes it reconcile (the read's,
    /// for a full sync).
    pub(super) fn reconcile(&mut self, lb: &LbId, cause: Cause, force: bool, revision: Revision) {
        let resolution = self.desired.resolve(lb);
        if !resolution.superseded.is_empty() {
            let decided_by = resolution.decided_by();
            self.delete_superseded(decided_by, resolution.superseded);
        }
        let mut members = Arc::new(resolution.members);
        if let Some(child) = self.lbs.get(lb) {
            if child.members == members {
                if !force && child.revision >= revision {
                    return;
                }
                // The same set again (a relist of a big tree sends every one): share the one
                // the actor holds instead of a second copy.
                members = child.members.clone();
            }
        } else if members.is_empty() && !self.recorded.contains(lb) {
            // A load balancer without keys is never touched (unless lbmanager managed it before).
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        if !self.lbs.contains_key(lb) {
            if self.recorded.insert(lb.clone()) && self.record(lb, true) {
                self.awaiting_record.insert(lb.clone());
                self.out.push(Command::AwaitRecord { lb: lb.clone() });
            }
            self.spawn(lb);
            self.lbs.insert(
                lb.clone(),
                Child {
                    members: members.clone(),
                    generation,
                    revision,
                    cause,
                    rejected: Arc::default(),
                    restarts: Restarts::default(),
                    barrier: 0,
                },
            );
        }
        self.note(Note::Members {
            lb: lb.clone(),
            count: members.len(),
        });
        let child = self.lbs.get_mut(lb).expect("inserted above");
        child.members = members;
        child.generation = generation;
        child.revision = child.revision.max(revision);
        child.cause = cause;
        if !self.awaiting_record.contains(lb) {
            let desire = child.desire();
            self.out.push(Command::Desire {
                lb: lb.clone(),
                desire,
            });
        }
    }

    /// Writes the record (or its removal); whether one is written (none in a dry run).
    pub(super) fn record(&mut self, lb: &LbId, managed: bool) -> bool {
        if self.config.dry_run {
            return false;
        }
        self.out.push(Command::Record {
            lb: lb.clone(),
            managed,
        });
        true
    }

    /// Writes (or deletes) a status (none in a dry run).
    pub(super) fn publish(&mut self, lb: &LbId, status: Option<Arc<LbStatus>>) {
        if !self.config.dry_run {
            self.out.push(Command::Publish {
                lb: lb.clone(),
                status,
            });
        }
    }

    /// Starts `lb`'s actor from what was last published for it. That status is current when no
    /// key of `lb` was written after it, and no host waits on `lb` (a waiting key is a barrier,
    /// which a status must reach; a key deleted after it, etcd cannot tell: such a delete
    /// that changes what the status says makes it written anyway).
    fn spawn(&mut self, lb: &LbId) {
        let published = self.published.get(lb).cloned();
        let watched = self.waiting.contains_key(lb);
        let newest = self.desired.newest(lb);
        let current = !watched && published.as_ref().is_some_and(|p| p.revision >= newest);
        self.out.push(Command::Spawn {
            lb: lb.clone(),
            owned: self.owned_of(lb),
            published,
            current,
            watched,
        });
    }

    /// `lb` has no keys left and AWS is emptied of lbmanager's members: no longer managed.
    pub(super) fn retire(&mut self, lb: &LbId) {
        let Some(child) = self.lbs.remove(lb) else {
            return;
        };
        self.note(Note::Retired { lb: lb.clone() });
        self.out.push(Command::Retire { lb: lb.clone() });
        self.published.remove(lb);
        if self.recorded.remove(lb) {
            self.record(lb, false);
        }
        if !child.rejected.is_empty() {
            self.rejections(lb, Arc::default());
        }
        self.publish(lb, None);
        // The zone actor (and its cache) goes when its last managed name does.
        if let Some(zone) = lb.zone() {
            if !self.lbs.keys().any(|lb| lb.zone() == Some(zone)) {
                self.zone_restarts.remove(zone);
                self.out.push(Command::DropZone {
                    zone: zone.to_string(),
                });
            }
        }
    }

    /// A load balancer's refused members changed: warn about each new refusal (or new reason),
    /// with its key, once; count them. (The load balancer's status carries them to etcd.)
    pub(super) fn rejections(&mut self, lb: &LbId, rejected: Arc<Rejected>) {
        let before = self
            .lbs
            .get(lb)
            .map(|c| c.rejected.clone())
            .unwrap_or_default();
        // One line per new refusal, up to a bound: AWS names every refused target in each
        // one's reason, so the lines (cut) and their number are kept small.
        let fresh: Vec<(&String, &Refusal)> = rejected
            .iter()
            .filter(|(member, reason)| before.get(*member) != Some(*reason))
            .collect();
        let mut notes = Vec::new();
        for (member, refusal) in fresh.iter().take(crate::status::REJECTED_LISTED) {
            notes.push(Note::Rejected {
                lb: lb.clone(),
                member: member.to_string(),
                key: self.desired.key_of(lb, member),
                refusal: (*refusal).clone(),
            });
        }
        if fresh.len() > crate::status::REJECTED_LISTED {
            let unnamed = &fresh[crate::status::REJECTED_LISTED..];
            notes.push(Note::RejectedUnnamed {
                lb: lb.clone(),
                not_named: unnamed.len(),
                over_limit: unnamed.iter().filter(|(_, r)| r.is_over_limit()).count(),
            });
        }
        for member in before.keys().filter(|m| !rejected.contains_key(*m)) {
            notes.push(Note::NoLongerRejected {
                lb: lb.clone(),
                member: member.clone(),
            });
        }
        notes.push(Note::RejectedCount {
            lb: lb.clone(),
            count: rejected.len(),
        });
        for note in notes {
            self.note(note);
        }
        if let Some(child) = self.lbs.get_mut(lb) {
            child.rejected = rejected;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    #[test]
    fn a_new_load_balancer_gets_no_desire_until_its_record_has_landed() {
        let mut fleet = fleet(false);
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &[]);
        assert!(acts(fleet.snapshot(loaded, 0, 10, Cause::Startup)).is_empty());
        let out = acts(fleet.changes(change(vec![put(A, 11)])));
        assert!(matches!(&out[0], Command::Record { managed: true, .. }));
        assert!(matches!(&out[1], Command::AwaitRecord { .. }));
        assert!(matches!(&out[2], Command::Spawn { watched: false, .. }));
        assert!(desire_of(&out, &lb("a")).is_none());
        // A second key meanwhile: still nothing sent; then the latest once the record landed.
        assert!(desire_of(&acts(fleet.changes(change(vec![put(A2, 12)]))), &lb("a")).is_none());
        let desire = desire_of(&acts(fleet.record_landed(&lb("a"))), &lb("a")).unwrap();
        assert_eq!((desire.members.len(), desire.revision), (2, 12));
    }

    /// Each actor starts from the status last published for its load balancer; that status is
    /// current (not written again if a sync says the same) only if no key came after it and no
    /// host waits.
    #[test]
    fn an_actor_starts_from_its_last_status_current_while_no_key_came_after_it() {
        let status = |revision| {
            let status = LbStatus {
                revision,
                ..Default::default()
            };
            Arc::new(status)
        };
        let spawned = |out: &[Command]| -> Vec<(LbId, Option<i64>, bool)> {
            out.iter()
                .filter_map(|c| match c {
                    Command::Spawn {
                        lb,
                        published,
                        current,
                        ..
                    } => Some((lb.clone(), published.as_ref().map(|p| p.revision), *current)),
                    _ => None,
                })
                .collect()
        };
        // Keys at revision 5; a's status at 7 (current), b's at 4 (a key came after it).
        let keys = [(A.to_string(), 5), (B.to_string(), 5)];
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let mut fleet = fleet(false)
            .with_records([lb("a"), lb("b")].into())
            .with_published([(lb("a"), status(7)), (lb("b"), status(4))].into());
        let out = fleet.snapshot(loaded, 2, 10, Cause::Startup);
        let mut seen = spawned(&out);
        seen.sort();
        assert_eq!(seen, [(lb("a"), Some(7), true), (lb("b"), Some(4), false)]);
        // A host waits on a: restarted after a panic, its status is not current any more.
        let waiting =
            fleet
                .config
                .layout
                .waiting(&lb("a"), &Member::Instance("i-0000000a".into()), 1);
        fleet.changes(change(vec![put(&waiting, 11)]));
        let out = fleet.stopped(Instant::now(), &[lb("a")], &[]);
        assert_eq!(spawned(&out), [(lb("a"), Some(7), false)]);
    }

    #[test]
    fn a_dead_actor_is_restarted_ever_more_slowly_and_a_good_sync_resets_that() {
        let (mut fleet, out) = started(false, &[A]);
        let generation = desire_of(&out, &lb("a")).unwrap().generation;
        let t0 = Instant::now();
        let restarted = |out: &[Command]| {
            out.iter()
                .any(|c| matches!(c, Command::Spawn { lb: l, .. } if *l == lb("a")))
        };
        // What the fleet does when a's actor is found dead `ms` after t0.
        let dead_at = |fleet: &mut Fleet, ms: u64| {
            acts(fleet.stopped(t0 + Duration::from_millis(ms), &[lb("a")], &[]))
        };
        let out = dead_at(&mut fleet, 0);
        assert!(restarted(&out));
        let desire = desire_of(&out, &lb("a")).unwrap();
        assert_eq!(desire.generation, generation);
        assert_eq!(desire.cause, Cause::Restart);
        // Dead again at once: the next restart waits 1 s, the one after 2 s.
        assert!(dead_at(&mut fleet, 0).is_empty());
        assert!(dead_at(&mut fleet, 900).is_empty());
        assert!(restarted(&dead_at(&mut fleet, 1_000)));
        assert!(dead_at(&mut fleet, 2_900).is_empty());
        assert!(restarted(&dead_at(&mut fleet, 3_000)));
        // A good sync: the next death is restarted at once.
        acts(fleet.synced(ok(&lb("a"), generation)));
        assert!(restarted(&dead_at(&mut fleet, 3_000)));
        // Shutting down: the dead stay dead.
        fleet.shutdown();
        assert!(dead_at(&mut fleet, 600_000).is_empty());
    }

    #[test]
    fn a_dead_zone_actor_is_restarted_and_handed_to_its_names() {
        let (mut fleet, _) = started(false, &[WWW, A]);
        let out = acts(fleet.stopped(Instant::now(), &[], &["Z1".into()]));
        match &out[..] {
            [Command::RestartZone { zone, lbs }] => {
                assert_eq!(zone, "Z1");
                assert_eq!(lbs.len(), 1);
                assert_eq!(lbs[0].zone(), Some("Z1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_load_balancer_is_retired_when_its_keys_are_gone_and_aws_is_emptied() {
        let (mut fleet, _) = started(false, &[A, WWW]);
        let out = acts(fleet.changes(change(vec![delete(A, 30)])));
        let emptied = desire_of(&out, &lb("a")).unwrap();
        assert!(emptied.members.is_empty());
        // A failed sync, a settling one, or one of an older desire retires nothing.
        let mut failed = ok(&lb("a"), emptied.generation);
        failed.failed = true;
        assert!(acts(fleet.synced(failed)).is_empty());
        let mut settling = ok(&lb("a"), emptied.generation);
        settling.settling = true;
        assert!(acts(fleet.synced(settling)).is_empty());
        assert!(acts(fleet.synced(ok(&lb("a"), emptied.generation - 1))).is_empty());
        let out = acts(fleet.synced(ok(&lb("a"), emptied.generation)));
        assert!(matches!(&out[0], Command::Retire { .. }));
        assert!(matches!(&out[1], Command::Record { managed: false, .. }));
        assert!(matches!(&out[2], Command::Publish { status: None, .. }));
        assert_eq!(fleet.managed(), 1);
        // The zone's last name: its actor goes too.
        let www = lb_of(WWW);
        let emptied = desire_of(&acts(fleet.changes(change(vec![delete(WWW, 31)]))), &www).unwrap();
        let out = acts(fleet.synced(ok(&www, emptied.generation)));
        assert!(matches!(out.last(), Some(Command::DropZone { zone }) if zone == "Z1"));
        assert_eq!(fleet.managed(), 0);
    }

    /// A restart is said with its count and how long the next one waits at least.
    #[test]
    fn a_restart_is_noted_with_its_count() {
        let (mut fleet, _) = started(false, &[A]);
        let out = fleet.stopped(Instant::now(), &[lb("a")], &[]);
        assert_eq!(
            notes(&out),
            [&Note::LbRestarted {
                lb: lb("a"),
                restarts: 1,
                next: Duration::from_secs(1)
            }]
        );
    }

    /// A refusal is said once, with the member's key; its end too; the count follows both.
    #[test]
    fn refusals_are_noted_once_with_their_key() {
        let (mut fleet, out) = started(false, &[A]);
        let generation = desire_of(&out, &lb("a")).unwrap().generation;
        let refusal = Refusal::Aws("InvalidInstance".into());
        let refused: Rejected = [("i-0000000a".to_string(), refusal.clone())].into();
        let report = |rejected: &Rejected| Report {
            rejected: Some(Arc::new(rejected.clone())),
            ..ok(&lb("a"), generation)
        };
        fleet.synced(ok(&lb("a"), generation)); // the start-up round's end
        let out = fleet.synced(report(&refused));
        assert_eq!(
            notes(&out),
            [
                &Note::Rejected {
                    lb: lb("a"),
                    member: "i-0000000a".into(),
                    key: Some(A.into()),
                    refusal,
                },
                &Note::RejectedCount {
                    lb: lb("a"),
                    count: 1
                },
            ]
        );
        // The same refusal again: only the count.
        let out = fleet.synced(report(&refused));
        assert!(!notes(&out)
            .iter()
            .any(|n| matches!(n, Note::Rejected { .. })));
        let out = fleet.synced(report(&Rejected::new()));
        assert!(notes(&out).contains(&&Note::NoLongerRejected {
            lb: lb("a"),
            member: "i-0000000a".into()
        }));
        assert!(notes(&out).contains(&&Note::RejectedCount {
            lb: lb("a"),
            count: 0
        }));
    }
}
