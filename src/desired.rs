//! Desired state: which members each load balancer should have, as a pure function of the member
//! keys in etcd and their `mod_revision`s.
//!
//! Keeping this a function of (key, revision) pairs, and nothing else, is what makes a restart safe:
//! the same etcd tree always gives the same answer, whatever order the events arrived in.
//!
//! The `single` class follows the original lbManager: let S be the `single` key with the highest
//! revision. No S → the members are all `multiple` keys. Otherwise, if some `multiple` keys are newer
//! than S → the members are those; else the only member is S. Every key that does not count is
//! *superseded*; the caller deletes superseded keys from etcd (guarded by the revisions seen here),
//! so that etcd lists exactly what is in the load balancer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use compact_str::{format_compact, CompactString};

use crate::filter::Filters;
use crate::key::{self, Class, KeyError, LbId, Member};

/// Why a key under the prefix counts for nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// It does not follow the key grammar.
    #[error(transparent)]
    Malformed(#[from] KeyError),
    /// It is well formed, but names a load balancer the filters keep lbmanager away from (a
    /// policy, not a grammar error).
    #[error("load balancer {0} is outside --elb-filter/--zone-filter")]
    Filtered(String),
}

/// An etcd revision (`mod_revision` of a key, or a store revision).
pub type Revision = i64;

/// A member key: its class and revision. The member itself is read back from the key when
/// needed ([`key::member_of`]): with a million keys, holding each member parsed beside its key
/// cost about 100 MiB.
#[derive(Clone, Copy, Debug)]
struct Entry {
    class: Class,
    /// The relist that last saw the key (see [`DesiredState::begin_relist`]).
    epoch: u32,
    revision: Revision,
}

/// The keys of one load balancer, each as [`stored`] keeps it.
type Keys = BTreeMap<CompactString, Entry>;

/// A key of `lb` as kept, from the key without `PREFIX/`. A key that spells the load balancer's
/// path as its id does (`elb/REGION/NAME/…`) is kept as `s/MEMBER` or `m/MEMBER`:
/// inline, without an allocation, for an instance id, an IP or a short target (a million keys of
/// ~50 bytes each took ~60 MiB as strings). Any other is kept whole (without `PREFIX/`): a
/// Route53 key, whose path names a region the name's id does not keep. A key kept whole starts
/// with its kind (`route53/`), so the two forms never meet; and all of one load balancer's keys
/// have the same form, so they sort as the whole keys do.
fn stored(lb: &LbId, rest: &str) -> CompactString {
    if let Some(tail) = after_path(lb, rest) {
        if let Some(m) = tail.strip_prefix("single/") {
            return format_compact!("s/{m}");
        }
        if let Some(m) = tail.strip_prefix("multiple/") {
            return format_compact!("m/{m}");
        }
    }
    rest.into()
}

/// What follows `lb`'s path and its slash in `rest`, where `rest` spells the path as `lb`'s id
/// does (compared part by part: this runs for every key read).
fn after_path<'k>(lb: &LbId, rest: &'k str) -> Option<&'k str> {
    let (kind, region, name) = match lb {
        LbId::Elb { region, name } => ("elb/", region, name),
        LbId::TargetGroup { region, name } => ("elbv2/", region, name),
        LbId::Route53 { .. } => return None,
    };
    rest.strip_prefix(kind)?
        .strip_prefix(region.as_str())?
        .strip_prefix('/')?
        .strip_prefix(name.as_str())?
        .strip_prefix('/')
}

/// The key, without `PREFIX/`, that [`stored`] keeps as `kept` (`path`: `lb`'s, as its id
/// spells it).
fn unstored(path: &str, kept: &str) -> String {
    if let Some(m) = kept.strip_prefix("s/") {
        format!("{path}/single/{m}")
    } else if let Some(m) = kept.strip_prefix("m/") {
        format!("{path}/multiple/{m}")
    } else {
        kept.to_string()
    }
}

/// What the keys of one load balancer resolve to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    pub members: BTreeSet<Member>,
    /// The newest key that decided the outcome (the `single` winner, or the newest `multiple` key
    /// that overrode a `single`); `None` when no `single` key is involved.
    pub winner: Option<(String, Revision)>,
    /// When `multiple` keys overrode a `single` one: the newest `single` key, whose revision
    /// decided which `multiple` keys are newer (were it gone, the older ones would count again).
    pub threshold: Option<(String, Revision)>,
    /// Keys that no longer count, with the revision they had when this was computed.
    pub superseded: Vec<(String, Revision)>,
}

impl Resolution {
    /// Every key the decision rests on: the winner, and the threshold `single` key if any. Deleting
    /// superseded keys is guarded by all of them.
    pub fn decided_by(&self) -> Vec<(String, Revision)> {
        self.winner.iter().chain(&self.threshold).cloned().collect()
    }
}

/// How many ignored keys are remembered (as warned about, and in a [`Loaded`]): each is warned
/// about once; past this many, they are counted and not warned about one by one.
pub const MAX_WARNED: usize = 100_000;

/// Warns that `key` counts for nothing, and why (a key past [`key::MAX_KEY_BYTES`] by its
/// beginning only).
pub fn log_ignored(log: &slog::Logger, key: &str, why: &Ignored) {
    match why {
        Ignored::Malformed(KeyError::TooLong(_)) => {
            slog::warn!(log, "ignoring a key too long to read";
                "key" => crate::escape::clip(key, 120), "reason" => %why)
        }
        Ignored::Malformed(e) => {
            slog::warn!(log, "ignoring malformed key"; "key" => key, "reason" => %e)
        }
        Ignored::Filtered(_) => {
            slog::warn!(log, "ignoring a key outside the filters"; "key" => key, "reason" => %why)
        }
    }
}

/// The ignored keys already warned about, so that each is warned about once: remembered by a
/// 64-bit hash (a key may be a KiB; a collision only costs a warning), at most [`MAX_WARNED`].
#[derive(Debug, Default)]
pub struct Warned {
    seen: HashSet<u64>,
    /// Keys past the bound were met (said once).
    full: bool,
}

fn hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    kept(key).hash(&mut h);
    h.finish()
}

/// What is kept of an ignored key: all of it up to [`key::MAX_KEY_BYTES`], the beginning of a
/// longer one (which is warned about by its beginning and length).
pub fn kept(key: &str) -> &str {
    crate::escape::within(key, key::MAX_KEY_BYTES)
}

impl Warned {
    /// Whether to warn about `key` now: the first time it is seen, while fewer than
    /// [`MAX_WARNED`] are remembered. Past that, `on_full` is called (once until some are
    /// forgotten) and nothing more is warned about.
    pub fn first_time(&mut self, key: &str, on_full: impl FnOnce()) -> bool {
        let h = hash(key);
        if self.seen.contains(&h) {
            return false;
        }
        if self.seen.len() >= MAX_WARNED {
            if !std::mem::replace(&mut self.full, true) {
                on_full();
            }
            return false;
        }
        self.seen.insert(h)
    }

    /// `key` is gone (or counts now): warn again if it comes back malformed.
    pub fn forget(&mut self, key: &str) {
        if self.seen.remove(&hash(key)) {
            self.full = false;
        }
    }

    /// Keeps only `keys` (those a new read of the prefix still finds ignored).
    pub fn keep_only<'a>(&mut self, keys: impl Iterator<Item = &'a str>) {
        let keep: HashSet<u64> = keys.map(hash).collect();
        self.seen.retain(|h| keep.contains(h));
        self.full = false;
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A snapshot read into desired state.
#[derive(Debug)]
pub struct Loaded {
    pub desired: DesiredState,
    /// Keys that count for nothing, with the reason: the first [`MAX_WARNED`] of them.
    pub ignored: Vec<(String, Ignored)>,
    /// How many more keys count for nothing than `ignored` lists.
    pub ignored_more: usize,
    /// The waiting keys of `lbmanager member … --healthy/--drain` (see
    /// [`crate::layout::Layout::waiting`]), with their load balancer.
    pub waiting: Vec<(LbId, String)>,
}

impl Loaded {
    /// Nothing loaded yet: keys are added one at a time, as a read of the prefix brings them
    /// (so a million keys are never held twice, as a list and as the desired state).
    pub fn new(prefix: &str, filters: Filters) -> Self {
        Loaded {
            desired: DesiredState::with_filters(prefix, filters),
            ignored: Vec::new(),
            ignored_more: 0,
            waiting: Vec::new(),
        }
    }

    /// Adds one key of the prefix, written at `revision`.
    pub fn add(&mut self, key: &str, revision: Revision) {
        let mut desired = std::mem::replace(&mut self.desired, DesiredState::empty());
        self.add_into(&mut desired, key, revision);
        self.desired = desired;
    }

    /// Adds one key of the prefix into `desired` instead of its own desired state (a relist
    /// loads into the state in use, see [`DesiredState::begin_relist`]), keeping what else the
    /// key says here.
    pub fn add_into(&mut self, desired: &mut DesiredState, key: &str, revision: Revision) {
        let layout = crate::layout::Layout::new(&desired.prefix);
        if let Some(lb) = layout.parse_waiting(key) {
            self.waiting.push((lb, key.to_string()));
        } else if let Err(e) = desired.put(key, revision) {
            if self.ignored.len() < MAX_WARNED {
                self.ignored.push((kept(key).to_string(), e));
            } else {
                self.ignored_more += 1;
            }
        }
    }
}

/// The member keys of every load balancer that has any.
#[derive(Debug)]
pub struct DesiredState {
    prefix: String,
    filters: Filters,
    lbs: HashMap<LbId, Keys>,
    /// Counts relists: keys a relist did not see again are the ones it removes.
    epoch: u32,
}

impl DesiredState {
    pub fn new(prefix: &str) -> Self {
        Self::with_filters(prefix, Filters::default())
    }

    /// Desired state that takes only keys of load balancers `filters` allows.
    pub fn with_filters(prefix: &str, filters: Filters) -> Self {
        DesiredState {
            prefix: prefix.to_string(),
            filters,
            lbs: HashMap::new(),
            epoch: 0,
        }
    }

    /// A placeholder, for a moment.
    fn empty() -> Self {
        Self::new("")
    }

    /// A relist begins: the whole prefix is read again into this state, key by key, while it
    /// stays in use (a copy of a million keys beside it would double lbmanager's memory).
    /// [`DesiredState::end_relist`] then removes what the read did not see again.
    pub fn begin_relist(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// The relist read everything: removes the keys it did not see (deleted meanwhile).
    /// Returns how many.
    pub fn end_relist(&mut self) -> usize {
        let (epoch, mut removed) = (self.epoch, 0);
        self.lbs.retain(|_, keys| {
            let before = keys.len();
            keys.retain(|_, e| e.epoch == epoch);
            removed += before - keys.len();
            !keys.is_empty()
        });
        removed
    }

    /// Desired state from a whole snapshot of the prefix: also the load balancers recorded as
    /// managed (within the filters), and the keys that count for nothing, with the reason.
    pub fn from_keys(prefix: &str, filters: Filters, keys: &[(String, Revision)]) -> Loaded {
        let mut loaded = Loaded::new(prefix, filters);
        for (key, revision) in keys {
            loaded.add(key, *revision);
        }
        loaded
    }

    /// Whether the filters allow lbmanager to touch `lb`.
    pub fn allows(&self, lb: &LbId) -> bool {
        self.filters.allows(lb)
    }

    /// Records that `key` was written at `revision`. Returns the load balancer it belongs to,
    /// `Ok(None)` for keys that are not members by design, and why a key counts for nothing (malformed,
    /// or outside the filters: it changes nothing).
    pub fn put(&mut self, key: &str, revision: Revision) -> Result<Option<LbId>, Ignored> {
        let Some(parsed) = key::parse(&self.prefix, key)? else {
            return Ok(None);
        };
        if !self.filters.allows(&parsed.lb) {
            return Err(Ignored::Filtered(parsed.lb.to_string()));
        }
        let entry = Entry {
            class: parsed.class,
            epoch: self.epoch,
            revision,
        };
        let kept = stored(&parsed.lb, self.rest(key));
        match self.lbs.get_mut(&parsed.lb) {
            // A key seen again (a relist): updated where it is.
            Some(keys) => match keys.get_mut(&kept) {
                Some(e) => *e = entry,
                None => {
                    keys.insert(kept, entry);
                }
            },
            None => {
                self.lbs
                    .entry(parsed.lb.clone())
                    .or_default()
                    .insert(kept, entry);
            }
        }
        Ok(Some(parsed.lb))
    }

    /// Records that `key` was deleted; returns the load balancer it belonged to, if it was a member.
    pub fn delete(&mut self, key: &str) -> Option<LbId> {
        let lb = key::parse(&self.prefix, key).ok().flatten()?.lb;
        let kept = stored(&lb, self.rest(key));
        let keys = self.lbs.get_mut(&lb)?;
        keys.remove(&kept)?;
        if keys.is_empty() {
            self.lbs.remove(&lb);
        }
        Some(lb)
    }

    /// Every load balancer that has at least one member key.
    pub fn load_balancers(&self) -> impl Iterator<Item = &LbId> {
        self.lbs.keys()
    }

    /// The number of member keys held.
    pub fn key_count(&self) -> usize {
        self.lbs.values().map(Keys::len).sum()
    }

    /// Resolves the keys of `lb` (an unknown load balancer resolves to no members).
    /// The key of `lb` whose member AWS spells `spelled` (a target named without a port is
    /// spelled with its group's port), for log lines about that member.
    pub fn key_of(&self, lb: &LbId, spelled: &str) -> Option<String> {
        let entries = self.lbs.get(lb)?;
        let path = lb.to_string();
        entries
            .keys()
            .find(|k| {
                let Some(member) = key::member_of(lb, k) else {
                    return false;
                };
                let m = member.to_string();
                m == spelled
                    || matches!(member, Member::Target(_))
                        && spelled
                            .strip_prefix(m.as_str())
                            .is_some_and(|port| port.starts_with(':'))
            })
            .map(|k| format!("{}/{}", self.prefix, unstored(&path, k)))
    }

    /// A key without `PREFIX/` (a key [`key::parse`] accepted starts with it).
    fn rest<'k>(&self, key: &'k str) -> &'k str {
        &key[self.prefix.len() + 1..]
    }

    /// The newest revision among `lb`'s keys (0: it has none).
    pub fn newest(&self, lb: &LbId) -> Revision {
        self.lbs
            .get(lb)
            .and_then(|keys| keys.values().map(|e| e.revision).max())
            .unwrap_or(0)
    }

    pub fn resolve(&self, lb: &LbId) -> Resolution {
        self.lbs
            .get(lb)
            .map(|keys| resolve(&self.prefix, lb, keys))
            .unwrap_or_default()
    }
}

fn resolve(prefix: &str, lb: &LbId, keys: &Keys) -> Resolution {
    let member = |k: &str| key::member_of(lb, k);
    let path = lb.to_string();
    let full = |k: &str| format!("{prefix}/{}", unstored(&path, k));
    let single = keys
        .iter()
        .filter(|(_, e)| e.class == Class::Single)
        .max_by_key(|(k, e)| (e.revision, *k));
    let Some((single_key, single)) = single else {
        return Resolution {
            members: keys.keys().filter_map(|k| member(k)).collect(),
            ..Resolution::default()
        };
    };
    let newer: Vec<(&CompactString, &Entry)> = keys
        .iter()
        .filter(|(_, e)| e.class == Class::Multiple && e.revision > single.revision)
        .collect();
    let (members, winner) = if newer.is_empty() {
        (
            member(single_key).into_iter().collect(),
            (full(single_key), single.revision),
        )
    } else {
        let (k, e) = newer
            .iter()
            .max_by_key(|(k, e)| (e.revision, *k))
            .expect("newer is not empty");
        (
            newer.iter().filter_map(|(k, _)| member(k)).collect(),
            (full(k), e.revision),
        )
    };
    let counts = |k: &str, e: &Entry| {
        if newer.is_empty() {
            k == &**single_key
        } else {
            e.class == Class::Multiple && e.revision > single.revision
        }
    };
    let superseded = keys
        .iter()
        .filter(|(k, e)| !counts(k, e))
        .map(|(k, e)| (full(k), e.revision))
        .collect();
    Resolution {
        members,
        winner: Some(winner),
        threshold: (!newer.is_empty()).then(|| (full(single_key), single.revision)),
        superseded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: &str = "/lbManager/elb/us-east-1/web";

    fn lb() -> LbId {
        "elb/us-east-1/web".parse::<LbId>().unwrap()
    }

    fn key(class: &str, n: u32) -> String {
        format!("{LB}/{class}/i-{n:08x}")
    }

    fn inst(n: u32) -> Member {
        Member::Instance(format!("i-{n:08x}").into())
    }

    fn state(keys: &[(&str, u32, Revision)]) -> DesiredState {
        let mut s = DesiredState::new("/lbManager");
        for (class, n, rev) in keys {
            assert_eq!(s.put(&key(class, *n), *rev), Ok(Some(lb())));
        }
        s
    }

    /// A key is kept without an allocation where it spells its load balancer as the id does,
    /// and read back as it was written either way.
    #[test]
    fn keys_are_kept_small_and_read_back_whole() {
        for (path, rest, inline) in [
            (
                "elb/us-east-1/web",
                "elb/us-east-1/web/multiple/i-0123456789abcdef0",
                true,
            ),
            (
                "elb/us-east-1/web",
                "elb/us-east-1/web/single/i-0123abcd",
                true,
            ),
            (
                "elbv2/us-east-1/tg",
                "elbv2/us-east-1/tg/multiple/10.0.0.5:8080",
                true,
            ),
            (
                "route53/Z1/www.example.com",
                "route53/us-east-1/Z1/www.example.com/multiple/192.0.2.1",
                false,
            ),
        ] {
            let kept = stored(&path.parse().unwrap(), rest);
            assert_eq!(!kept.is_heap_allocated(), inline, "{rest} kept as {kept}");
            assert_eq!(unstored(path, &kept), rest);
        }
    }

    /// Deleting a key finds it however it is kept; a Route53 key too.
    #[test]
    fn a_key_is_deleted_as_it_was_put() {
        let mut s = state(&[("multiple", 1, 5), ("single", 1, 6)]);
        assert_eq!(s.delete(&key("single", 1)), Some(lb()));
        assert_eq!(s.key_count(), 1);
        let r53 = "/lbManager/route53/us-east-1/Z1/www.example.com/multiple/192.0.2.1";
        let name = s.put(r53, 7).unwrap().unwrap();
        assert_eq!(s.resolve(&name).members.len(), 1);
        assert_eq!(s.key_of(&name, "192.0.2.1").as_deref(), Some(r53));
        assert_eq!(s.delete(r53), Some(name));
        assert_eq!(
            s.key_of(&lb(), "i-00000001").as_deref(),
            Some(key("multiple", 1).as_str())
        );
    }

    #[test]
    fn a_relist_keeps_what_it_saw_again_and_removes_the_rest() {
        let mut s = state(&[("multiple", 1, 5), ("multiple", 2, 6)]);
        s.begin_relist();
        // Key 2 was deleted while the watch was away, key 3 written.
        assert_eq!(s.put(&key("multiple", 1), 5), Ok(Some(lb())));
        assert_eq!(s.put(&key("multiple", 3), 8), Ok(Some(lb())));
        assert_eq!(s.end_relist(), 1);
        assert_eq!(s.resolve(&lb()).members, BTreeSet::from([inst(1), inst(3)]));
        // A relist that sees nothing of a load balancer drops it.
        s.begin_relist();
        assert_eq!(s.end_relist(), 2);
        assert_eq!(s.load_balancers().count(), 0);
    }

    #[test]
    fn multiple_only_all_members() {
        let r = state(&[("multiple", 1, 5), ("multiple", 2, 6)]).resolve(&lb());
        assert_eq!(r.members, BTreeSet::from([inst(1), inst(2)]));
        assert_eq!(r.winner, None);
        assert!(r.superseded.is_empty());
    }

    #[test]
    fn newest_single_wins_over_older_keys() {
        let r = state(&[
            ("multiple", 1, 5),
            ("single", 2, 6),
            ("multiple", 3, 7),
            ("single", 4, 9),
        ])
        .resolve(&lb());
        assert_eq!(r.members, BTreeSet::from([inst(4)]));
        assert_eq!(r.winner, Some((key("single", 4), 9)));
        let mut sup: Vec<_> = r.superseded.iter().map(|(k, _)| k.clone()).collect();
        sup.sort();
        let mut want = vec![key("multiple", 1), key("single", 2), key("multiple", 3)];
        want.sort();
        assert_eq!(sup, want);
        assert!(r.superseded.contains(&(key("multiple", 3), 7)));
    }

    #[test]
    fn multiple_written_after_single_replaces_it() {
        let r = state(&[
            ("multiple", 1, 5),
            ("single", 2, 6),
            ("multiple", 3, 7),
            ("multiple", 4, 8),
        ])
        .resolve(&lb());
        assert_eq!(r.members, BTreeSet::from([inst(3), inst(4)]));
        assert_eq!(r.winner, Some((key("multiple", 4), 8)));
        let mut sup = r.superseded.clone();
        sup.sort();
        assert_eq!(sup, vec![(key("multiple", 1), 5), (key("single", 2), 6)]);
    }

    #[test]
    fn rollback_by_rewriting_old_key() {
        let mut s = state(&[("single", 1, 5), ("single", 2, 6)]);
        assert_eq!(s.resolve(&lb()).members, BTreeSet::from([inst(2)]));
        s.put(&key("single", 1), 10).unwrap();
        assert_eq!(s.resolve(&lb()).members, BTreeSet::from([inst(1)]));
    }

    #[test]
    fn deleting_the_single_winner_falls_back() {
        let mut s = state(&[("multiple", 1, 5), ("single", 2, 6)]);
        assert_eq!(s.delete(&key("single", 2)), Some(lb()));
        assert_eq!(s.resolve(&lb()).members, BTreeSet::from([inst(1)]));
    }

    #[test]
    fn order_of_events_does_not_matter() {
        let a = state(&[("multiple", 1, 5), ("single", 2, 6), ("multiple", 3, 7)]);
        let b = state(&[("multiple", 3, 7), ("single", 2, 6), ("multiple", 1, 5)]);
        assert_eq!(a.resolve(&lb()), b.resolve(&lb()));
    }

    #[test]
    fn last_key_deleted_forgets_the_lb() {
        let mut s = state(&[("multiple", 1, 5)]);
        assert_eq!(s.load_balancers().count(), 1);
        s.delete(&key("multiple", 1));
        assert_eq!(s.load_balancers().count(), 0);
        assert_eq!(s.resolve(&lb()), Resolution::default());
        assert_eq!(s.delete(&key("multiple", 1)), None);
    }

    #[test]
    fn warned_keys_are_remembered_once_and_bounded() {
        let mut w = Warned::default();
        let mut full = 0;
        assert!(w.first_time("/p/elb/bad", || full += 1));
        assert!(!w.first_time("/p/elb/bad", || full += 1));
        w.forget("/p/elb/bad");
        assert!(w.first_time("/p/elb/bad", || full += 1));
        for n in 0..MAX_WARNED + 10 {
            w.first_time(&format!("/p/elb/bad{n}"), || full += 1);
        }
        assert_eq!(w.len(), MAX_WARNED);
        assert_eq!(full, 1, "said once");
        // A key far past the bound is remembered by its beginning.
        let long = format!("/p/{}", "x".repeat(10 * key::MAX_KEY_BYTES));
        assert_eq!(kept(&long).len(), key::MAX_KEY_BYTES);
        w.keep_only(["/p/elb/bad"].into_iter());
        assert_eq!(w.len(), 1);
        assert!(w.first_time(&long, || full += 1));
        assert!(!w.first_time(&long, || full += 1));
    }

    #[test]
    fn malformed_and_reserved_keys_change_nothing() {
        let mut s = DesiredState::new("/lbManager");
        assert!(s
            .put("/lbManager/elb/us-east-1/web/multiple/bogus", 3)
            .is_err());
        assert_eq!(s.put("/lbManager/_state/x", 4), Ok(None));
        assert_eq!(s.key_count(), 0);
        assert_eq!(
            s.delete("/lbManager/elb/us-east-1/web/multiple/bogus"),
            None
        );
    }

    #[test]
    fn keys_outside_the_filters_are_refused() {
        let mut s = DesiredState::with_filters(
            "/lbManager",
            Filters {
                elb: vec!["us-east-1/other".into()],
                zones: vec![],
            },
        );
        assert_eq!(
            s.put(&key("multiple", 1), 3),
            Err(Ignored::Filtered("elb/us-east-1/web".into()))
        );
        assert_eq!(s.key_count(), 0);
    }

    #[test]
    fn same_member_in_two_keys_counts_once() {
        let mut s = DesiredState::new("/lbManager");
        let zone = "/lbManager/route53/us-east-1/Z1/www.example.com";
        s.put(&format!("{zone}/multiple/2001:db8::1"), 3).unwrap();
        s.put(&format!("{zone}/multiple/2001:DB8::1"), 4).unwrap();
        let lb = s.load_balancers().next().unwrap().clone();
        assert_eq!(s.resolve(&lb).members.len(), 1);
    }
}
