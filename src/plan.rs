//! Planning: desired × actual → the changes that make AWS match. Pure, so it is tested without AWS
//! and re-run freely (a plan made from a fresh read is always safe to apply).

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::key::{Member, Target, TargetId};

/// What lbmanager may do to AWS (`--policy`, as external-dns has it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Make AWS match etcd: add and remove.
    #[default]
    Sync,
    /// Only add: never deregister an instance, never remove a value or delete a record set.
    UpsertOnly,
}

/// What one ELB sync does (a Classic ELB or a target group): one Register call with all missing
/// members, one Deregister call with all extra ones (register first, so a `single` switch never
/// leaves the load balancer empty). Members are in the provider's spelling: an instance id, or a
/// target as `id:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElbChanges {
    pub register: Vec<Target>,
    pub deregister: Vec<Target>,
    /// Targets of a kind the target group does not take (an IP in an `instance` group): left out.
    pub mismatched: Vec<Target>,
    /// Wanted members past [`MAX_ELB_MEMBERS`]: left out (see [`within`]).
    pub over_limit: Vec<Target>,
}

/// AWS's maximum of registered instances per Classic ELB and of targets per target group (ALB).
pub const MAX_ELB_MEMBERS: usize = 1_000;
/// Route53's maximum of values in one record set.
pub const MAX_RECORD_VALUES: usize = 400;
/// lbmanager's maximum of values of an FQDN published as multivalue answers
/// (`--route53-health-check`), A and AAAA together: the switch from one simple record set (a
/// DELETE of up to 250 values and 250 CREATEs), or a change of every value's check (250 UPSERTs,
/// counted twice), fits in one change batch of Route53's 1,000 records and 32,000 characters.
/// Route53 answers with eight values at most anyway.
pub const MAX_MULTIVALUE_VALUES: usize = 250;

/// One of AWS's limits that lbmanager keeps to by leaving members out (README, Limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`MAX_ELB_MEMBERS`] members per load balancer.
    ElbMembers,
    /// [`MAX_RECORD_VALUES`] values per record set.
    RecordValues,
    /// [`MAX_MULTIVALUE_VALUES`] multivalue answers per name.
    MultivalueAnswers,
}

impl Limit {
    pub fn max(self) -> usize {
        match self {
            Limit::ElbMembers => MAX_ELB_MEMBERS,
            Limit::RecordValues => MAX_RECORD_VALUES,
            Limit::MultivalueAnswers => MAX_MULTIVALUE_VALUES,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::ElbMembers => "members per load balancer",
            Limit::RecordValues => "values per record set",
            Limit::MultivalueAnswers => "multivalue answers per name",
        }
    }
}

/// Why a wanted member is not in AWS. Its text (`Display`) is the reason a log line, a status
/// record and `member --wait` give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// AWS refused it: its error message. Tried again at each resync, not at each change.
    Aws(String),
    /// lbmanager left it out, past AWS's limit: it goes in as soon as there is room.
    OverLimit(Limit),
}

impl Refusal {
    pub fn is_over_limit(&self) -> bool {
        matches!(self, Refusal::OverLimit(_))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Aws(message) => f.write_str(message),
            Refusal::OverLimit(limit) => write!(
                f,
                "over the limit of {max} {what} (AWS's): not added while {max} others are \
                 wanted; lbmanager's README, Limits",
                max = limit.max(),
                what = limit.what()
            ),
        }
    }
}

/// `want` within `max`: the members `kept` says AWS has already stay first (a newcomer never
/// displaces one), then the others in order; returns what fits and what is left out.
pub fn within<T: Ord + Clone>(
    want: BTreeSet<T>,
    kept: impl Fn(&T) -> bool,
    max: usize,
) -> (BTreeSet<T>, Vec<T>) {
    if want.len() <= max {
        return (want, Vec::new());
    }
    let (mut fit, others): (BTreeSet<T>, BTreeSet<T>) = want.into_iter().partition(|m| kept(m));
    let mut over = Vec::new();
    if fit.len() > max {
        over.extend(fit.iter().skip(max).cloned());
        fit = fit.into_iter().take(max).collect();
    }
    for m in others {
        if fit.len() < max {
            fit.insert(m);
        } else {
            over.push(m);
        }
    }
    (fit, over)
}

/// Members as a log line spells them: `i-1,i-2` or `i-1:80,10.0.0.5:8080`.
pub fn spell(members: &[Target]) -> String {
    members
        .iter()
        .map(Target::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl ElbChanges {
    pub fn is_empty(&self) -> bool {
        self.register.is_empty() && self.deregister.is_empty()
    }
}

/// Wanted members left out of AWS, with why, by member (as AWS names it).
pub type Rejected = std::collections::BTreeMap<String, Refusal>;

/// Which targets a target group takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Instance,
    Ip,
}

/// What AWS says is registered with an ELB or a target group. Members are typed as the key grammar
/// has them: a Classic ELB's are instances without a port, a target group's carry their port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registered {
    /// Registered members, draining ones excluded.
    pub members: BTreeSet<Target>,
    /// Targets on their way out (target groups only).
    pub draining: BTreeSet<Target>,
    /// The port of a target that names none (target groups only).
    pub default_port: Option<u16>,
    /// The kind of target the group takes (target groups only).
    pub kind: Option<TargetKind>,
    /// AWS's word for each member's health, where it was read (draining members too).
    pub health: std::collections::BTreeMap<Target, Health>,
}

/// A member's health as AWS reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// AWS's own word: `initial`, `healthy`, `draining`, … (target groups), `InService`,
    /// `OutOfService`, `Unknown` (Classic ELB).
    pub state: String,
}

/// Plans an ELB or a target group from its desired members and what AWS reports.
///
/// A draining target is on its way out: if etcd wants it, it is registered again; if not, it is
/// left alone (it is not deregistered twice).
pub fn plan_elb(desired: &BTreeSet<Member>, actual: &Registered, policy: Policy) -> ElbChanges {
    let mut mismatched = Vec::new();
    let want: BTreeSet<Target> = desired
        .iter()
        .filter_map(|m| match m {
            Member::Instance(id) => Some(Target::instance(id.clone())),
            Member::Target(t) => {
                let fits = !matches!(
                    (&t.id, actual.kind),
                    (TargetId::Instance(_), Some(TargetKind::Ip))
                        | (TargetId::Ip(_), Some(TargetKind::Instance))
                );
                if !fits {
                    mismatched.push((**t).clone());
                    return None;
                }
                Some(t.or_port(actual.default_port))
            }
            Member::Ip(_) => None,
        })
        .collect();
    let (want, over_limit) = within(want, |t| actual.members.contains(t), MAX_ELB_MEMBERS);
    ElbChanges {
        register: want
            .iter()
            .filter(|id| !actual.members.contains(*id))
            .cloned()
            .collect(),
        deregister: actual
            .members
            .iter()
            .filter(|id| policy == Policy::Sync && !want.contains(*id))
            .cloned()
            .collect(),
        mismatched,
        over_limit,
    }
}

/// The values of `desired` that [`plan_fqdn`] leaves out for [`MAX_RECORD_VALUES`] (per record
/// type), or [`plan_multivalue`] for [`MAX_MULTIVALUE_VALUES`] (`multivalue`), those `kept` says
/// Route53 has staying first, as it does.
pub fn values_over_limit(
    desired: &BTreeSet<IpAddr>,
    kept: impl Fn(&IpAddr) -> bool,
    multivalue: bool,
) -> Vec<IpAddr> {
    if multivalue {
        return within(desired.clone(), kept, MAX_MULTIVALUE_VALUES).1;
    }
    [RecordType::A, RecordType::Aaaa]
        .into_iter()
        .flat_map(|rtype| {
            let want: BTreeSet<IpAddr> = desired
                .iter()
                .filter(|ip| RecordType::of(ip) == rtype)
                .copied()
                .collect();
            within(want, &kept, MAX_RECORD_VALUES).1
        })
        .collect()
}

/// The two record types lbmanager manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    A,
    Aaaa,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
        }
    }

    fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::Aaaa,
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A simple (no routing policy, no alias) record set, or a multivalue answer record set of
/// lbmanager's (see [`RecordSet::is_multivalue`]), as Route53 stores it. `name` is normalised
/// (lower case, no trailing dot); `values` keep Route53's order, because a DELETE must repeat them
/// exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSet {
    pub name: String,
    pub rtype: RecordType,
    pub ttl: i64,
    pub values: Vec<String>,
    /// A multivalue answer record set's `SetIdentifier` (None: a simple record set).
    pub set_id: Option<String>,
    /// Its `HealthCheckId`.
    pub health_check: Option<String>,
}

impl RecordSet {
    /// A simple record set of `values`.
    pub fn simple(name: &str, rtype: RecordType, ttl: i64, values: Vec<String>) -> Self {
        RecordSet {
            name: name.to_string(),
            rtype,
            ttl,
            values,
            set_id: None,
            health_check: None,
        }
    }

    /// A multivalue answer record set as lbmanager makes them: one value, which is its
    /// `SetIdentifier`. Route53 lists only these besides the simple ones (see
    /// [`crate::aws::Route53Api::record_sets`]).
    pub fn is_multivalue(&self) -> bool {
        self.set_id.is_some()
    }

    fn ips(&self) -> BTreeSet<IpAddr> {
        self.values.iter().filter_map(|v| v.parse().ok()).collect()
    }
}

/// The values of an FQDN published as multivalue answers (`--route53-health-check`): those
/// wanted, and under upsert-only those it has (in either shape), within
/// [`MAX_MULTIVALUE_VALUES`] (those it has staying first).
pub fn multivalue_values(
    desired: &BTreeSet<IpAddr>,
    current: &[RecordSet],
    policy: Policy,
) -> BTreeSet<IpAddr> {
    let have: BTreeSet<IpAddr> = current.iter().flat_map(RecordSet::ips).collect();
    let mut want = desired.clone();
    if policy == Policy::UpsertOnly {
        want.extend(&have);
    }
    let over: BTreeSet<IpAddr> = values_over_limit(&want, |ip| have.contains(ip), true)
        .into_iter()
        .collect();
    want.retain(|ip| !over.contains(ip));
    want
}

/// Plans an FQDN published as multivalue answers: one record set per value of `want` (see
/// [`multivalue_values`]), with the value's health check in `checks` (None: its check could not
/// be made; Route53 then takes the value for healthy). Its simple record sets are deleted in the
/// same batch (DELETEs first): the switch leaves no moment without an answer.
pub fn plan_multivalue(
    fqdn: &str,
    want: &BTreeSet<IpAddr>,
    current: &[RecordSet],
    ttl: i64,
    checks: &std::collections::BTreeMap<IpAddr, Option<String>>,
) -> Vec<RecordChange> {
    let have: BTreeSet<IpAddr> = current.iter().flat_map(RecordSet::ips).collect();
    let mut changes = Vec::new();
    for set in current {
        let ips = set.ips();
        // Lbmanager's own: one value, the set's identifier as lbmanager spells it.
        let keep = ips.len() == 1
            && ips.iter().all(|ip| {
                want.contains(ip) && set.set_id.as_deref() == Some(ip.to_string().as_str())
            });
        if !keep {
            changes.push(RecordChange {
                action: Action::Delete,
                set: set.clone(),
                added: vec![],
                removed: ips.difference(want).copied().collect(),
            });
        }
    }
    for ip in want {
        let check = checks.get(ip).cloned().flatten();
        let set = RecordSet {
            name: fqdn.to_string(),
            rtype: RecordType::of(ip),
            ttl,
            values: vec![ip.to_string()],
            set_id: Some(ip.to_string()),
            health_check: check,
        };
        let now = current
            .iter()
            .find(|s| s.set_id == set.set_id && s.values.len() == 1);
        let action = match now {
            Some(s) if s.ttl == set.ttl && s.health_check == set.health_check => continue,
            Some(_) => Action::Upsert,
            None => Action::Create,
        };
        changes.push(RecordChange {
            action,
            set,
            added: if have.contains(ip) { vec![] } else { vec![*ip] },
            removed: vec![],
        });
    }
    changes
}

/// The action of one change in a ChangeResourceRecordSets batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The record set does not exist yet. Counts once against the batch limits (an UPSERT counts
    /// twice), and Route53 rejects it if somebody created the name meanwhile: safe either way.
    Create,
    Upsert,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "CREATE",
            Action::Upsert => "UPSERT",
            Action::Delete => "DELETE",
        }
    }
}

/// One change of one record set, with what it means in members (for the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordChange {
    pub action: Action,
    pub set: RecordSet,
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

/// Plans the A and AAAA record sets of `fqdn` from its desired IPs and the record sets Route53 has
/// at that name (`current` holds only simple A/AAAA sets of that name).
///
/// Values are compared as sets of addresses, never as strings: Route53's order and spelling of the
/// values do not matter, and an unchanged set is left alone (a TTL that differs from `ttl` is
/// corrected with an UPSERT). Under [`Policy::UpsertOnly`] the current values are kept.
pub fn plan_fqdn(
    fqdn: &str,
    desired: &BTreeSet<IpAddr>,
    current: &[RecordSet],
    ttl: i64,
    policy: Policy,
) -> Vec<RecordChange> {
    [RecordType::A, RecordType::Aaaa]
        .into_iter()
        .filter_map(|rtype| {
            let want: BTreeSet<IpAddr> = desired
                .iter()
                .filter(|ip| RecordType::of(ip) == rtype)
                .copied()
                .collect();
            let have = current
                .iter()
                .find(|s| s.rtype == rtype && !s.is_multivalue());
            let have_ips = have.map(RecordSet::ips).unwrap_or_default();
            // Route53 refuses a larger set, and with it the whole batch (other names' changes).
            let (mut want, _) = within(want, |ip| have_ips.contains(ip), MAX_RECORD_VALUES);
            if policy == Policy::UpsertOnly {
                want.extend(&have_ips);
            }
            let added: Vec<IpAddr> = want.difference(&have_ips).copied().collect();
            let removed: Vec<IpAddr> = have_ips.difference(&want).copied().collect();
            let wanted_set = || {
                let values = want.iter().map(IpAddr::to_string).collect();
                RecordSet::simple(fqdn, rtype, ttl, values)
            };
            let (action, set) = match have {
                None if want.is_empty() => return None,
                None => (Action::Create, wanted_set()),
                Some(h) if want.is_empty() => (Action::Delete, h.clone()),
                Some(h) if added.is_empty() && removed.is_empty() && h.ttl == ttl => return None,
                Some(_) => (Action::Upsert, wanted_set()),
            };
            Some(RecordChange {
                action,
                set,
                added,
                removed,
            })
        })
        .collect()
}

/// Route53's limits for one ChangeResourceRecordSets call.
pub const MAX_BATCH_RECORDS: usize = 1000;
pub const MAX_BATCH_CHARS: usize = 32_000;

/// What a change counts against the batch limits: (records, characters of values). An UPSERT
/// counts twice, as Route53 counts it.
pub fn batch_cost(change: &RecordChange) -> (usize, usize) {
    let factor = if change.action == Action::Upsert {
        2
    } else {
        1
    };
    let chars: usize = change.set.values.iter().map(String::len).sum();
    (factor * change.set.values.len(), factor * chars)
}

/// Packs groups of changes (each group one FQDN's changes, kept together) into as few batches as
/// Route53's limits allow, in order.
pub fn pack_batches<T>(groups: Vec<(T, Vec<RecordChange>)>) -> Vec<Vec<(T, Vec<RecordChange>)>> {
    let mut batches: Vec<Vec<(T, Vec<RecordChange>)>> = Vec::new();
    let (mut records, mut chars) = (0, 0);
    for (tag, changes) in groups {
        let (r, c) = changes
            .iter()
            .map(batch_cost)
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        let fits = records + r <= MAX_BATCH_RECORDS && chars + c <= MAX_BATCH_CHARS;
        match batches.last_mut() {
            Some(batch) if fits => batch.push((tag, changes)),
            _ => {
                batches.push(vec![(tag, changes)]);
                (records, chars) = (0, 0);
            }
        }
        records += r;
        chars += c;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal's text is what status records, log lines and `member --wait` have said since
    /// it was a string: AWS's message as it is, a limit's reason in its own words.
    #[test]
    fn a_refusal_says_why_in_the_words_of_before() {
        let aws = Refusal::Aws("InvalidInstance: x".into());
        assert_eq!(aws.to_string(), "InvalidInstance: x");
        assert_eq!(
            Refusal::OverLimit(Limit::ElbMembers).to_string(),
            "over the limit of 1000 members per load balancer (AWS's): not added while 1000 \
             others are wanted; lbmanager's README, Limits"
        );
        assert!(Refusal::OverLimit(Limit::RecordValues).is_over_limit());
        assert!(!Refusal::Aws("over the limit".into()).is_over_limit());
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The plan of www.example.com for the values `want`, from the record sets `current`.
    fn www(want: &[&str], current: &[RecordSet], ttl: i64, policy: Policy) -> Vec<RecordChange> {
        plan_fqdn("www.example.com", &ips(want), current, ttl, policy)
    }

    fn set(rtype: RecordType, ttl: i64, values: &[&str]) -> RecordSet {
        RecordSet {
            name: "www.example.com".into(),
            rtype,
            ttl,
            values: values.iter().map(|v| v.to_string()).collect(),
            set_id: None,
            health_check: None,
        }
    }

    /// Past AWS's 1,000 members per load balancer, the members AWS has stay and newcomers fill
    /// what is left; the rest are left out and reported.
    #[test]
    fn members_past_the_limit_are_left_out_never_displacing_registered_ones() {
        let ids: Vec<String> = (0..1_005).map(|n| format!("i-{n:08x}")).collect();
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        // AWS has the last 10 (in key order) already.
        let actual = registered(&all[995..]);
        let plan = plan_elb(&inst(&all), &actual, Policy::Sync);
        assert_eq!(plan.register.len(), MAX_ELB_MEMBERS - 10);
        assert_eq!(plan.over_limit.len(), 5);
        assert!(plan.deregister.is_empty());
        assert!(plan.over_limit.iter().all(|t| !actual.members.contains(t)));
        // Within the limit: nothing left out.
        let plan = plan_elb(&inst(&all[..1_000]), &registered(&[]), Policy::Sync);
        assert!(plan.over_limit.is_empty() && plan.register.len() == 1_000);
        let (fit, over) = within((0..10).collect(), |n| *n >= 8, 3);
        assert_eq!(fit, BTreeSet::from([0, 8, 9]));
        assert_eq!(over, (1..8).collect::<Vec<_>>());
    }

    /// Route53 refuses a record set of more than 400 values (and with it the whole batch): the
    /// plan never asks for one.
    #[test]
    fn record_sets_stay_within_route53s_limit() {
        let ips: BTreeSet<IpAddr> = (0..450u32)
            .map(|n| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n)))
            .collect();
        let changes = plan_fqdn("www.example.com", &ips, &[], 60, Policy::Sync);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].set.values.len(), MAX_RECORD_VALUES);
        assert_eq!(values_over_limit(&ips, |_| false, false).len(), 50);
        let v6: BTreeSet<IpAddr> = ips
            .iter()
            .take(10)
            .map(|_| "2001:db8::1".parse().unwrap())
            .chain(ips.iter().take(400).copied())
            .collect();
        assert!(values_over_limit(&v6, |_| false, false).is_empty());
        // Multivalue answers: 250 in all, A and AAAA together.
        let over = values_over_limit(&v6, |_| false, true);
        assert_eq!(over.len(), v6.len() - 250);
        let values = multivalue_values(&v6, &[], Policy::Sync);
        assert_eq!(values.len(), MAX_MULTIVALUE_VALUES);
    }

    fn inst(ids: &[&str]) -> BTreeSet<Member> {
        ids.iter().map(|i| Member::Instance((*i).into())).collect()
    }

    fn parsed(ids: &[&str]) -> BTreeSet<Target> {
        ids.iter()
            .map(|s| crate::key::parse_target(s).unwrap())
            .collect()
    }

    fn registered(ids: &[&str]) -> Registered {
        Registered {
            members: parsed(ids),
            ..Registered::default()
        }
    }

    /// Members as strings, for comparisons.
    fn s(members: &[Target]) -> Vec<String> {
        members.iter().map(Target::to_string).collect()
    }

    fn targets(list: &[&str]) -> BTreeSet<Member> {
        list.iter()
            .map(|s| Member::Target(Box::new(crate::key::parse_target(s).unwrap())))
            .collect()
    }

    #[test]
    fn target_group_default_port_draining_and_kind() {
        let actual = Registered {
            members: parsed(&["i-00000001:80", "i-00000002:80"]),
            draining: parsed(&["i-00000003:80", "i-00000004:80"]),
            default_port: Some(80),
            kind: Some(TargetKind::Instance),
            ..Registered::default()
        };
        let desired = targets(&["i-00000001", "i-00000003", "i-00000005:8080", "10.0.0.1:80"]);
        let plan = plan_elb(&desired, &actual, Policy::Sync);
        // i-1 is there on the group's port; i-3 is draining but wanted: registered again.
        assert_eq!(s(&plan.register), vec!["i-00000003:80", "i-00000005:8080"]);
        // i-2 goes; i-4 is draining and unwanted: left alone, not deregistered twice.
        assert_eq!(s(&plan.deregister), vec!["i-00000002:80"]);
        assert_eq!(s(&plan.mismatched), vec!["10.0.0.1:80"]);
        // A port move registers the new (id, port) and deregisters the old one.
        let before = registered(&["i-00000001:80"]);
        let moved = plan_elb(&targets(&["i-00000001:81"]), &before, Policy::Sync);
        assert_eq!(s(&moved.register), vec!["i-00000001:81"]);
        assert_eq!(s(&moved.deregister), vec!["i-00000001:80"]);
    }

    #[test]
    fn elb_registers_missing_and_deregisters_extra() {
        let actual = registered(&["i-00000002", "i-00000003"]);
        let plan = plan_elb(&inst(&["i-00000001", "i-00000002"]), &actual, Policy::Sync);
        assert_eq!(s(&plan.register), vec!["i-00000001"]);
        assert_eq!(s(&plan.deregister), vec!["i-00000003"]);
        assert!(plan_elb(&inst(&["i-00000002", "i-00000003"]), &actual, Policy::Sync).is_empty());
        let none = plan_elb(&inst(&[]), &actual, Policy::Sync);
        assert_eq!(none.deregister.len(), 2);
    }

    #[test]
    fn route53_create_when_absent_split_by_family() {
        let changes = www(
            &["192.0.2.2", "192.0.2.1", "2001:db8::1"],
            &[],
            60,
            Policy::Sync,
        );
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].action, Action::Create);
        let a = set(RecordType::A, 60, &["192.0.2.1", "192.0.2.2"]);
        assert_eq!(changes[0].set, a);
        assert_eq!(changes[1].set, set(RecordType::Aaaa, 60, &["2001:db8::1"]));
    }

    #[test]
    fn route53_same_set_in_other_order_and_spelling_is_no_change() {
        let current = [
            set(RecordType::A, 60, &["192.0.2.2", "192.0.2.1"]),
            set(RecordType::Aaaa, 60, &["2001:DB8:0::1"]),
        ];
        let desired = ["192.0.2.1", "192.0.2.2", "2001:db8::1"];
        assert!(www(&desired, &current, 60, Policy::Sync).is_empty());
        // A different TTL is corrected.
        let changes = www(&desired, &current, 30, Policy::Sync);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.action == Action::Upsert));
    }

    #[test]
    fn route53_upsert_on_change_and_delete_exact_current_when_empty() {
        let current = [
            set(RecordType::A, 300, &["192.0.2.9", "192.0.2.1"]),
            set(RecordType::Aaaa, 60, &["2001:db8::1"]),
        ];
        let changes = www(&["192.0.2.1", "192.0.2.3"], &current, 60, Policy::Sync);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].action, Action::Upsert);
        let a = set(RecordType::A, 60, &["192.0.2.1", "192.0.2.3"]);
        assert_eq!(changes[0].set, a);
        assert_eq!(changes[0].added, ["192.0.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(changes[0].removed, ["192.0.2.9".parse::<IpAddr>().unwrap()]);
        // The DELETE repeats the record exactly as read: TTL and value order.
        assert_eq!(changes[1].action, Action::Delete);
        assert_eq!(changes[1].set, current[1]);
        let all_gone = www(&[], &current, 60, Policy::Sync);
        assert_eq!(all_gone[0].set, current[0]);
        assert!(www(&[], &[], 60, Policy::Sync).is_empty());
    }

    #[test]
    fn upsert_only_never_removes() {
        let actual = registered(&["i-00000002"]);
        let plan = plan_elb(&inst(&["i-00000001"]), &actual, Policy::UpsertOnly);
        assert_eq!(s(&plan.register), vec!["i-00000001"]);
        assert!(plan.deregister.is_empty());
        let current = [set(RecordType::A, 60, &["192.0.2.9"])];
        let changes = www(&["192.0.2.1"], &current, 60, Policy::UpsertOnly);
        assert_eq!(changes[0].set.values, vec!["192.0.2.1", "192.0.2.9"]);
        assert!(changes[0].removed.is_empty());
        assert!(www(&[], &current, 60, Policy::UpsertOnly).is_empty());
    }

    #[test]
    fn batches_respect_record_and_char_limits() {
        let change = |action, n: usize| RecordChange {
            action,
            set: RecordSet {
                name: "a.example.com".into(),
                rtype: RecordType::A,
                ttl: 60,
                values: (0..n)
                    .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
                    .collect(),
                set_id: None,
                health_check: None,
            },
            added: vec![],
            removed: vec![],
        };
        assert_eq!(batch_cost(&change(Action::Create, 100)).0, 100);
        assert_eq!(batch_cost(&change(Action::Upsert, 100)).0, 200);
        // `n` FQDNs of 100 values each, the one change of each `action`.
        let groups = |n, action| (0..n).map(|i| (i, vec![change(action, 100)])).collect();
        // 100 FQDNs of 100 new values each: CREATE packs 10 to a batch.
        let batches = pack_batches(groups(100, Action::Create));
        assert_eq!(batches.len(), 10);
        assert!(batches.iter().all(|b| b.len() == 10));
        // UPSERT counts twice: 5 to a batch.
        assert_eq!(pack_batches(groups(10, Action::Upsert)).len(), 2);
        // Characters: 4,000 values of ~9 chars exceed 32,000 chars before 1,000 records.
        for batch in pack_batches(groups(40, Action::Create)) {
            let chars: usize = batch
                .iter()
                .flat_map(|(_, c)| c)
                .map(|c| batch_cost(c).1)
                .sum();
            assert!(chars <= MAX_BATCH_CHARS);
        }
        // Order is kept.
        let batches = pack_batches(groups(25, Action::Create));
        let flat: Vec<i32> = batches.into_iter().flatten().map(|(t, _)| t).collect();
        assert_eq!(flat, (0..25).collect::<Vec<_>>());
    }
}
