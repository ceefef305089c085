//! What etcd wants: a whole read (start-up, relist) or the watch's changes applied to the desired
//! state, the keys that count for nothing said once, the waiting keys of hosts, and superseded
//! keys deleted once while their delete is under way.

use std::collections::{HashMap, HashSet};

use super::{Command, EtcdChanges, Fleet, KeyChange, Note, IGNORED_SHOWN};
use crate::desired::{DesiredState, Ignored, Loaded, Revision};
use crate::key::LbId;
use crate::sync::Cause;

impl Fleet {
    /// A whole read of the prefix (start-up): the desired state becomes what it says, and every
    /// load balancer that has keys, or is recorded as managed, syncs as one round.
    pub fn snapshot(
        &mut self,
        mut loaded: Loaded,
        keys: usize,
        revision: Revision,
        cause: Cause,
    ) -> Vec<Command> {
        self.desired = std::mem::replace(
            &mut loaded.desired,
            DesiredState::new(self.config.layout.prefix()),
        );
        self.apply_loaded(loaded, keys, revision, cause);
        self.take()
    }

    /// A relist begins: its keys follow in pages.
    pub fn relist_started(&mut self) {
        if self.stopping {
            return;
        }
        self.desired.begin_relist();
        self.relisting = Some(Loaded::new(
            self.config.layout.prefix(),
            self.config.filters.clone(),
        ));
    }

    /// (key, mod_revision) of a page of the relist.
    pub fn relist_page(&mut self, page: &[(String, Revision)]) {
        if self.stopping {
            return;
        }
        if let Some(loaded) = self.relisting.as_mut() {
            for (key, revision) in page {
                loaded.add_into(&mut self.desired, key, *revision);
            }
        }
    }

    /// The relist read everything (keys it did not bring were deleted meanwhile): every load
    /// balancer syncs, as one round; nothing believed before is trusted.
    pub fn relisted(&mut self, revision: Revision, keys: usize) -> Vec<Command> {
        if self.stopping {
            return Vec::new();
        }
        let removed = self.desired.end_relist();
        if let Some(loaded) = self.relisting.take() {
            self.note(Note::Relisted { keys, removed });
            self.apply_loaded(loaded, keys, revision, Cause::Relist);
        }
        self.take()
    }

    /// Applies etcd's changes to the desired state and reconciles the load balancers they touch.
    pub fn changes(&mut self, msg: EtcdChanges) -> Vec<Command> {
        if self.stopping {
            return Vec::new();
        }
        // Each touched load balancer with its cause: a leased key's delete is a lease expiry.
        let mut touched: HashMap<LbId, (Cause, Revision)> = HashMap::new();
        let mut barriers = Vec::new();
        for change in msg.changes {
            if let Some(lb) = self.config.layout.parse_waiting(change.key()) {
                if let KeyChange::Put { revision, .. } = &change {
                    barriers.push((lb.clone(), *revision));
                }
                let put = matches!(change, KeyChange::Put { .. });
                self.waiter(lb, change.key(), put);
                continue;
            }
            match change {
                KeyChange::Put { key, revision } => match self.desired.put(&key, revision) {
                    Ok(Some(lb)) => {
                        self.forget_ignored(&key);
                        let entry = touched.entry(lb).or_insert((Cause::EtcdEvent, revision));
                        entry.1 = entry.1.max(revision);
                    }
                    Ok(None) => {}
                    Err(e) => self.warn_once(&key, &e),
                },
                KeyChange::Delete {
                    key,
                    leased,
                    revision,
                } => {
                    self.forget_ignored(&key);
                    if let Some(lb) = self.desired.delete(&key) {
                        let cause = if leased {
                            Cause::LeaseExpiry
                        } else {
                            Cause::EtcdEvent
                        };
                        let before = touched.get(&lb).map_or(0, |t| t.1);
                        touched.insert(lb, (cause, before.max(revision)));
                    }
                }
            }
        }
        for (lb, (cause, revision)) in touched {
            self.reconcile(&lb, cause, false, revision);
        }
        // After the desires: a barrier is passed only once what came before it is applied.
        for (lb, revision) in barriers {
            if let Some(child) = self.lbs.get_mut(&lb) {
                child.barrier = child.barrier.max(revision);
                self.out.push(Command::Barrier { lb, revision });
            }
        }
        self.take()
    }

    /// The delete of these superseded keys is over (done, or failed: retried at the next change).
    pub fn superseded_done(&mut self, keys: &[(String, Revision)]) {
        for (k, _) in keys {
            self.deleting.remove(k);
        }
    }

    /// `key` counts again (fixed) or is gone: warned about again if it comes back bad, and no
    /// longer listed as counting for nothing.
    fn forget_ignored(&mut self, key: &str) {
        self.warned.forget(key);
        let key = crate::desired::kept(key);
        self.ignored.retain(|(k, _)| k != key);
    }

    pub(super) fn warn_once(&mut self, key: &str, why: &Ignored) {
        let out = &mut self.out;
        let on_full = || {
            out.push(Command::Note(Note::IgnoredPastRemembered {
                not_listed: None,
            }))
        };
        if self.warned.first_time(key, on_full) {
            if self.ignored.len() == IGNORED_SHOWN {
                self.ignored.pop_front();
            }
            let key = crate::desired::kept(key);
            self.ignored.retain(|(k, _)| k != key);
            self.ignored.push_back((key.to_string(), why.to_string()));
            self.note(Note::KeyIgnored {
                key: key.to_string(),
                why: why.clone(),
            });
        }
    }

    /// The desired state holds a whole read of the prefix now (`loaded` has what else the read
    /// found): syncs every load balancer that has keys now or had them before (all of them,
    /// changed or not: after a relist nothing that was believed before is trusted), as one
    /// [`Round`].
    pub(super) fn apply_loaded(
        &mut self,
        loaded: Loaded,
        keys: usize,
        revision: Revision,
        cause: Cause,
    ) {
        // Who waits on AWS's progress, as the read saw it (deletes missed meanwhile included).
        let mut waiting: HashMap<LbId, HashSet<String>> = HashMap::new();
        for (lb, key) in loaded.waiting {
            waiting.entry(lb).or_default().insert(key);
        }
        for lb in self.lbs.keys() {
            let (was, is) = (self.waiting.contains_key(lb), waiting.contains_key(lb));
            if was != is {
                self.out.push(Command::Watched {
                    lb: lb.clone(),
                    watched: is,
                });
            }
        }
        self.waiting = waiting;
        self.warned
            .keep_only(loaded.ignored.iter().map(|(k, _)| k.as_str()));
        let still: std::collections::HashSet<&str> = loaded
            .ignored
            .iter()
            .map(|(k, _)| crate::desired::kept(k))
            .collect();
        self.ignored.retain(|(k, _)| still.contains(k.as_str()));
        for (key, e) in &loaded.ignored {
            self.warn_once(key, e);
        }
        if loaded.ignored_more > 0 {
            self.note(Note::IgnoredPastRemembered {
                not_listed: Some(loaded.ignored_more),
            });
        }
        let mut touched: HashSet<LbId> = self.desired.load_balancers().cloned().collect();
        touched.extend(self.lbs.keys().cloned());
        // Recorded as managed but without keys: their keys were deleted while lbmanager was away.
        touched.extend(self.recorded.iter().cloned());
        for lb in touched {
            self.reconcile(&lb, cause, true, revision);
        }
        self.note(Note::ReadEtcd {
            keys,
            load_balancers: self.lbs.len(),
            revision,
            cause,
        });
        self.start_round(cause);
    }

    /// A waiting key came (`put`) or went: tells the load balancer whether anyone waits on it.
    pub(super) fn waiter(&mut self, lb: LbId, key: &str, put: bool) {
        let keys = self.waiting.entry(lb.clone()).or_default();
        if put {
            keys.insert(key.to_string());
        } else {
            keys.remove(key);
        }
        let watched = !keys.is_empty();
        if !watched {
            self.waiting.remove(&lb);
        }
        if self.lbs.contains_key(&lb) {
            self.out.push(Command::Watched { lb, watched });
        }
    }

    /// Deletes keys that no longer count, guarded by every key the decision rests on.
    pub(super) fn delete_superseded(
        &mut self,
        decided_by: Vec<(String, Revision)>,
        superseded: Vec<(String, Revision)>,
    ) {
        let todo: Vec<(String, Revision)> = superseded
            .into_iter()
            .filter(|(k, _)| !self.deleting.contains(k))
            .collect();
        if todo.is_empty() {
            return;
        }
        let winner = decided_by
            .first()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        if self.config.dry_run {
            let keys = todo.into_iter().map(|(k, _)| k).collect();
            self.note(Note::WouldDeleteSuperseded { winner, keys });
            return;
        }
        self.deleting.extend(todo.iter().map(|(k, _)| k.clone()));
        self.out.push(Command::DeleteSuperseded {
            decided_by,
            superseded: todo,
            winner,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;

    /// Whether `out` asks for superseded keys to be deleted.
    fn deletes_superseded(out: &[Command]) -> bool {
        out.iter()
            .any(|c| matches!(c, Command::DeleteSuperseded { .. }))
    }

    #[test]
    fn superseded_keys_are_deleted_once_while_under_way() {
        let (mut fleet, out) = started(false, &[A, A2]);
        assert!(!deletes_superseded(&out));
        let out = acts(fleet.changes(change(vec![put(A_SINGLE, 20)])));
        let superseded = out
            .iter()
            .find_map(|c| match c {
                Command::DeleteSuperseded {
                    superseded, winner, ..
                } => Some((superseded.clone(), winner.clone())),
                _ => None,
            })
            .expect("a delete");
        assert_eq!(superseded.1, A_SINGLE);
        assert_eq!(superseded.0.len(), 2);
        assert_eq!(desire_of(&out, &lb("a")).unwrap().members.len(), 1);
        // Another change while the delete is under way: not asked again.
        let again = acts(fleet.changes(change(vec![put(B, 21)])));
        assert!(!deletes_superseded(&again));
        // Done (say it failed): the next change of that load balancer asks again.
        fleet.superseded_done(&superseded.0);
        let again = acts(fleet.changes(change(vec![put(A_SINGLE, 22)])));
        assert!(deletes_superseded(&again));
    }

    #[test]
    fn waiters_are_told_to_their_load_balancer_and_to_a_new_one() {
        let (mut fleet, _) = started(false, &[A]);
        let layout = Layout::new("/lbManager");
        let member = Member::Instance("i-0000000a".into());
        let waiting = layout.waiting(&lb("a"), &member, 1);
        let out = acts(fleet.changes(change(vec![put(&waiting, 40)])));
        assert!(matches!(
            &out[..],
            [
                Command::Watched { watched: true, .. },
                Command::Barrier { revision: 40, .. }
            ]
        ));
        let out = acts(fleet.changes(change(vec![delete(&waiting, 41)])));
        assert!(matches!(
            &out[..],
            [Command::Watched { watched: false, .. }]
        ));
        // Someone waits on a load balancer before its first key: it starts watched.
        let waiting = layout.waiting(&lb("b"), &Member::Instance("i-0000000b".into()), 1);
        assert!(acts(fleet.changes(change(vec![put(&waiting, 42)]))).is_empty());
        let out = acts(fleet.changes(change(vec![put(B, 43)])));
        assert!(out
            .iter()
            .any(|c| matches!(c, Command::Spawn { watched: true, .. })));
    }

    /// The 60-minute soak's remove_wait violation (a key that was not there): a host's barrier
    /// reaches the load balancer after the desires of the changes before it, so the load
    /// balancer raises its status to it only once those are applied.
    #[test]
    fn a_barrier_comes_after_the_desires_of_the_changes_before_it() {
        let (mut fleet, _) = started(false, &[A]);
        let waiting =
            Layout::new("/lbManager").waiting(&lb("a"), &Member::Instance("i-0000000a".into()), 1);
        let barrier_last = |out: &[Command]| {
            let desire = out.iter().position(|c| matches!(c, Command::Desire { .. }));
            let barrier = out
                .iter()
                .position(|c| matches!(c, Command::Barrier { revision: 50, .. }));
            desire.unwrap() < barrier.unwrap()
        };
        let out = acts(fleet.changes(change(vec![put(&waiting, 50), delete(A, 51)])));
        assert!(barrier_last(&out), "{out:?}");
        // An actor restarted after a panic is handed the barrier again, after its desire.
        let out = acts(fleet.stopped(Instant::now(), &[lb("a")], &[]));
        assert!(barrier_last(&out), "{out:?}");
    }

    /// What is said of a start: the read, then the round once every load balancer has synced;
    /// a key that counts for nothing, once while it stays.
    #[test]
    fn a_start_notes_the_read_the_ignored_keys_once_and_the_round() {
        const BAD: &str = "/lbManager/elb/us-east-1/a/multiple/not-an-instance";
        let mut fleet = fleet(false);
        let keys = [(A.to_string(), 5), (BAD.to_string(), 6)];
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let out = fleet.snapshot(loaded, 2, 10, Cause::Startup);
        let said = notes(&out);
        assert!(
            matches!(said[0], Note::KeyIgnored { key, .. } if key == BAD),
            "{said:?}"
        );
        assert!(said.contains(&&Note::ReadEtcd {
            keys: 2,
            load_balancers: 1,
            revision: 10,
            cause: Cause::Startup
        }));
        assert!(!said.iter().any(|n| matches!(n, Note::RoundDone { .. })));
        let landed = fleet.record_landed(&lb("a"));
        let generation = desire_of(&landed, &lb("a")).unwrap().generation;
        let out = fleet.synced(ok(&lb("a"), generation));
        assert_eq!(
            notes(&out),
            [&Note::RoundDone {
                cause: Cause::Startup,
                total: 1,
                failed: 0
            }]
        );
        // The same key in the next read: not said again.
        let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
        let out = fleet.snapshot(loaded, 2, 11, Cause::Relist);
        assert!(!notes(&out)
            .iter()
            .any(|n| matches!(n, Note::KeyIgnored { .. })));
    }
}
