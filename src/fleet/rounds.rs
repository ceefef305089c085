//! Rounds: a whole read (start-up, relist) makes every load balancer sync once; the round is over
//! when each has, and with `--once` that is the exit (0 when none failed).

use std::collections::HashSet;

use super::{Command, Fleet, Note, Round};
use crate::key::LbId;
use crate::sync::Cause;

impl Fleet {
    /// Every load balancer managed now syncs as (part of) a round of `cause`.
    pub(super) fn start_round(&mut self, cause: Cause) {
        let pending: HashSet<LbId> = self.lbs.keys().cloned().collect();
        let round = self.round.get_or_insert(Round {
            pending: HashSet::new(),
            total: 0,
            failed: 0,
            cause,
        });
        round.total += pending.len();
        round.pending.extend(pending);
        self.check_round();
    }

    /// `lb` synced (`failed` or not): it owes the round under way nothing more.
    pub(super) fn round_synced(&mut self, lb: &LbId, failed: bool) {
        if let Some(round) = self.round.as_mut() {
            if round.pending.remove(lb) && failed {
                round.failed += 1;
            }
        }
        self.check_round();
    }

    pub(super) fn check_round(&mut self) {
        if !self.round.as_ref().is_some_and(|s| s.pending.is_empty()) {
            return;
        }
        let round = self.round.take().expect("checked above");
        self.note(Note::RoundDone {
            cause: round.cause,
            total: round.total,
            failed: round.failed,
        });
        if self.config.once {
            self.config.once = false;
            self.out.push(Command::Exit(u8::from(round.failed > 0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use crate::filter::Filters;

    #[test]
    fn once_exits_when_every_load_balancer_synced_once_saying_whether_one_failed() {
        for failed in [false, true] {
            let (mut fleet, out) = started(true, &[A, B]);
            let ga = desire_of(&out, &lb("a")).unwrap().generation;
            let gb = desire_of(&out, &lb("b")).unwrap().generation;
            assert!(acts(fleet.synced(ok(&lb("a"), ga))).is_empty());
            let mut report = ok(&lb("b"), gb);
            report.failed = failed;
            let out = acts(fleet.synced(report));
            assert!(
                matches!(out[..], [Command::Exit(code)] if code == u8::from(failed)),
                "{out:?}"
            );
            // Once only.
            assert!(acts(fleet.synced(ok(&lb("a"), ga))).is_empty());
        }
    }

    /// A relist's round counts each load balancer once (a failure among them), however often
    /// it reports, and says so with its cause; a status-only report does not count.
    #[test]
    fn a_relist_round_counts_each_load_balancer_once() {
        let (mut fleet, out) = started(false, &[A, B]);
        let ga = desire_of(&out, &lb("a")).unwrap().generation;
        let gb = desire_of(&out, &lb("b")).unwrap().generation;
        fleet.synced(ok(&lb("a"), ga));
        fleet.synced(ok(&lb("b"), gb)); // the start-up round is over
        let keys = [(A.to_string(), 5), (B.to_string(), 6)];
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let out = fleet.snapshot(loaded, 2, 20, Cause::Relist);
        let (ga, gb) = (
            desire_of(&out, &lb("a")).unwrap().generation,
            desire_of(&out, &lb("b")).unwrap().generation,
        );
        let mut failed = ok(&lb("a"), ga);
        failed.failed = true;
        assert!(notes(&fleet.synced(failed)).is_empty());
        let mut status_only = ok(&lb("b"), gb);
        status_only.sync = false;
        assert!(notes(&fleet.synced(status_only)).is_empty());
        assert!(notes(&fleet.synced(ok(&lb("a"), ga))).is_empty());
        let out = fleet.synced(ok(&lb("b"), gb));
        assert_eq!(
            notes(&out),
            [&Note::RoundDone {
                cause: Cause::Relist,
                total: 2,
                failed: 1
            }]
        );
    }
}
