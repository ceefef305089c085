//! One ELB or target-group sync, and how members AWS refuses are set aside.

use std::collections::BTreeSet;
use std::sync::Arc;

use slog::{debug, info, warn, Logger};

use super::{read_elb, Cause, SyncOptions};
use crate::aws::{members_named_in, AwsError, ElbApi, ErrorKind, Permit};
use crate::etcd::OwnershipWrites;
use crate::key::{LbId, Member, Target};
use crate::plan::{spell, ElbChanges, Limit, Refusal, Registered, Rejected};

/// The members a load balancer's actor wants now, and that desire's generation. A sync reads it
/// again after each wait for AWS's quota, so that what arrived meanwhile goes out in the same
/// call: when calls are scarce, a load balancer gets one call with ten changes rather than ten.
pub type Wanted = tokio::sync::watch::Receiver<Want>;

/// A load balancer's desire, as its actor holds it for the sync in flight.
#[derive(Clone, Debug, Default)]
pub struct Want {
    pub members: Arc<BTreeSet<Member>>,
    /// Numbers the desires the Supervisor sends.
    pub generation: u64,
    /// The etcd revision of the latest change of the load balancer's keys it reflects.
    pub revision: i64,
}

/// Told a load balancer's owned members each time a change of them lands in etcd.
pub type OnRecorded = Arc<dyn Fn(&BTreeSet<String>) + Send + Sync>;

/// `--ownership shared`: the members lbmanager added to this load balancer (as AWS names them),
/// and where it records them.
pub struct Owned {
    pub writes: Arc<dyn OwnershipWrites>,
    pub layout: crate::layout::Layout,
    pub lb: LbId,
    pub members: BTreeSet<String>,
    /// Told the members as soon as a change of them has landed in etcd (the actor sends them to
    /// the Supervisor): an actor restarted after a panic mid-sync starts from what is recorded.
    pub recorded: OnRecorded,
    /// Members a sync took out of AWS but could not forget (etcd refused the write): forgotten
    /// at the next sync, whatever its cause.
    pub releasing: BTreeSet<String>,
    /// When this actor last claimed or registered each member: a read soon after may not show
    /// a registration yet (AWS's Describe is eventually consistent), so a member claimed or
    /// registered within [`JUST_CLAIMED`] is not taken for gone.
    pub claimed: std::collections::HashMap<String, tokio::time::Instant>,
}

/// How long after its claim a member missing from a read is still taken for in AWS.
/// (ELB's Describe catches up within a second or two.)
pub const JUST_CLAIMED: std::time::Duration = std::time::Duration::from_secs(5);

impl Owned {
    /// Sets the members (after a zone's sync, which records them itself).
    pub fn set(&mut self, members: BTreeSet<String>) {
        (self.recorded)(&members);
        self.members = members;
    }

    /// Forgets `gone` (out of AWS now) and what an earlier sync could not forget, except what
    /// is in AWS again (`back`); what fails is tried again at the next sync.
    async fn forget(&mut self, gone: Vec<String>, back: &BTreeSet<String>) -> Result<(), AwsError> {
        let mut all = std::mem::take(&mut self.releasing);
        all.retain(|m| !back.contains(m));
        all.extend(gone);
        let result = self.record(Vec::new(), all.iter().cloned().collect()).await;
        if result.is_err() {
            self.releasing = all;
        }
        result
    }

    /// `members` were just registered: not taken for gone by a read that may lag them.
    fn registered(&mut self, members: impl Iterator<Item = String>) {
        let now = tokio::time::Instant::now();
        for m in members {
            self.claimed.insert(m, now);
        }
    }

    /// Records `add` as lbmanager's and forgets `remove`, durably, before it returns.
    pub async fn record(&mut self, add: Vec<String>, remove: Vec<String>) -> Result<(), AwsError> {
        let add: Vec<String> = add
            .into_iter()
            .filter(|m| !self.members.contains(m))
            .collect();
        let remove: Vec<String> = remove
            .into_iter()
            .filter(|m| self.members.contains(m))
            .collect();
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let key = |m: &String| self.layout.owned(&self.lb, m);
        let puts: Vec<String> = add.iter().map(key).collect();
        let deletes: Vec<String> = remove.iter().map(key).collect();
        self.writes
            .record_many(&puts, &deletes)
            .await
            .map_err(|e| {
                // Nothing is added to AWS before its record is durable: retried like AWS's own
                // transient errors.
                AwsError::new(
                    ErrorKind::Transient,
                    "recording ownership in etcd",
                    &self.lb,
                    e.to_string(),
                )
            })?;
        let now = tokio::time::Instant::now();
        self.claimed
            .retain(|_, at| now.duration_since(*at) < JUST_CLAIMED);
        for m in &add {
            self.claimed.insert(m.clone(), now);
        }
        self.members.extend(add);
        for m in &remove {
            self.members.remove(m);
        }
        (self.recorded)(&self.members);
        Ok(())
    }
}

/// What one ELB sync did.
#[derive(Clone, Debug, Default)]
pub struct ElbSync {
    /// The changes made (`register` holds only what AWS accepted).
    pub changes: ElbChanges,
    /// Wanted members AWS refuses, with its reason: left out until the next resync tries again.
    pub rejected: Rejected,
    /// The generation of the desire the sync brought AWS to.
    pub generation: u64,
    /// That desire's etcd revision.
    pub revision: i64,
    /// What AWS reported before the changes (with the members' health when it was read).
    pub actual: Registered,
}

/// Plans `wanted`'s latest desire against `actual`, leaving out the members AWS refused before
/// (unless they are to be tried again), which it returns with their reasons.
fn plan_latest(
    wanted: &Wanted,
    actual: &Registered,
    options: &SyncOptions,
    known: &Rejected,
    retry_rejected: bool,
    owned: Option<&Owned>,
) -> (ElbChanges, Rejected, Want, Vec<Target>) {
    let want = wanted.borrow().clone();
    let (mut changes, foreign) = super::plan_elb_members(
        &want.members,
        actual,
        options.policy,
        owned.map(|o| &o.members),
    );
    let mut rejected: Rejected = changes
        .over_limit
        .iter()
        .map(|m| (m.to_string(), Refusal::OverLimit(Limit::ElbMembers)))
        .collect();
    if !retry_rejected {
        changes
            .register
            // A member left out for the limit is not AWS's refusal: it goes in when there is
            // room (the plan above decides that afresh).
            .retain(
                |m| match known.get(&m.to_string()).filter(|r| !r.is_over_limit()) {
                    Some(reason) => {
                        rejected.insert(m.to_string(), reason.clone());
                        false
                    }
                    None => true,
                },
            );
    }
    (changes, rejected, want, foreign)
}

/// What one ELB or target-group sync works on and knows: the load balancer and its API, the
/// desire to bring AWS to, and what earlier syncs learnt.
#[derive(Clone, Copy)]
pub struct ElbSyncContext<'a> {
    pub api: &'a dyn ElbApi,
    pub region: &'a str,
    pub name: &'a str,
    /// The latest desire (read again once the quota for a change is taken).
    pub wanted: &'a Wanted,
    pub cause: Cause,
    pub options: &'a SyncOptions,
    /// How the log names the members: "instances", "targets".
    pub what: &'a str,
    pub log: &'a Logger,
    /// Members AWS refused before, with its reason.
    pub known: &'a Rejected,
    /// Try the known refusals again (a resync).
    pub retry_rejected: bool,
    /// Also read the members' health where the Describe does not report it.
    pub read_health: bool,
}

/// One ELB or target-group sync: a Describe, then the Register calls and at most one Deregister
/// (register first, so a `single` switch never leaves it empty). Logs each change with its cause;
/// `what` names the members in the log ("instances", "targets"). The plan is made again from the
/// latest desire once the quota for the first change is taken (see [`Wanted`]).
///
/// A member AWS refuses (a terminated instance whose key stayed) fails the whole Register call:
/// the members it names are set aside and the rest registered again; a refusal that names none
/// is bisected. Known refusals (`known`) are not tried again unless `retry_rejected` (a resync).
/// The extras are deregistered all the same, except when that would empty a load balancer whose
/// every wanted member was refused: one bad key must not take a service down. `read_health`: also
/// read the members' health where the Describe does not report it (Classic ELB), for whoever
/// waits on it (see [`crate::status`]).
pub async fn sync_elb(
    ctx: &ElbSyncContext<'_>,
    mut owned: Option<&mut Owned>,
) -> Result<ElbSync, AwsError> {
    let ElbSyncContext {
        api,
        region,
        name,
        wanted,
        cause,
        options,
        what,
        log,
        known,
        retry_rejected,
        read_health,
    } = *ctx;
    let wants_nothing = wanted.borrow().members.is_empty();
    let mut actual = read_elb(api, region, name, wants_nothing).await?;
    if read_health && !actual.members.is_empty() {
        // Only for whoever waits on health: a failure here must not hold up the members.
        match api.health(region, name).await {
            Ok(health) => actual.health.extend(health),
            Err(e) => warn!(log, "could not read the members' health; \
                `lbmanager member add --healthy` waits until it can be read"; "error" => %e),
        }
    }
    // Planned again once the quota is taken (see [`Wanted`]).
    let plan =
        |owned: Option<&Owned>| plan_latest(wanted, &actual, options, known, retry_rejected, owned);
    let (mut changes, mut rejected, mut want, mut foreign) = plan(owned.as_deref());
    if options.dry_run {
        if !changes.register.is_empty() {
            info!(log, "would register {}", what;
                "added" => spell(&changes.register), "cause" => %cause, "dry_run" => true);
        }
        if !changes.deregister.is_empty() {
            info!(log, "would deregister {}", what;
                "removed" => spell(&changes.deregister), "cause" => %cause, "dry_run" => true);
        }
        return Ok(ElbSync {
            changes,
            rejected,
            generation: want.generation,
            revision: want.revision,
            actual,
        });
    }
    let mut permit = None;
    if !changes.register.is_empty() || !changes.deregister.is_empty() {
        permit = Some(api.permit(region, name).await);
        (changes, rejected, want, foreign) = plan(owned.as_deref());
    }
    let name_of = |t: &Target| t.or_port(actual.default_port).to_string();
    if let Some(owned) = owned.as_mut() {
        // Durable before AWS hears of them: no restart can forget what lbmanager added.
        let claim = changes.register.iter().map(name_of).collect();
        owned.record(claim, Vec::new()).await?;
    }
    // Register first, so that a `single` switch never leaves the load balancer empty; but at
    // AWS's limit the members that go must go first, or the Register is refused as a whole.
    let make_room = !changes.deregister.is_empty()
        && actual.members.len() + changes.register.len() > crate::plan::MAX_ELB_MEMBERS;
    if make_room {
        deregister(ctx, &changes.deregister, &mut permit).await?;
    }
    if !changes.register.is_empty() {
        let (accepted, refused) =
            register_accepted(api, region, name, &changes.register, &mut permit).await?;
        if let Some(owned) = owned.as_mut() {
            // A read soon after may not show these yet (see [`JUST_CLAIMED`]).
            owned.registered(accepted.iter().map(name_of));
        }
        rejected.extend(refused);
        if !accepted.is_empty() {
            info!(log, "registered {}", what;
                "added" => spell(&accepted), "cause" => %cause);
        }
        changes.register = accepted;
    }
    let left = actual.members.len() + changes.register.len() - changes.deregister.len();
    if !make_room && left == 0 && !changes.deregister.is_empty() && !rejected.is_empty() {
        warn!(log, "not deregistering the last {}: every wanted member was rejected by AWS", what;
            "kept" => spell(&changes.deregister),
            "rejected" => rejected.keys().cloned().collect::<Vec<_>>().join(","),
            "cause" => %cause);
        changes.deregister.clear();
    }
    if !make_room && !changes.deregister.is_empty() {
        deregister(ctx, &changes.deregister, &mut permit).await?;
    }
    if let Some(owned) = owned.as_mut() {
        // Forget what is out of AWS: what this sync deregistered; and what is gone (taken out
        // by hand, or with its load balancer) and not wanted any more, or was refused (an Auto
        // Scaling group that later registers a refused instance must not find it recorded as
        // lbmanager's), unless this actor claimed it just now (AWS's Describe is eventually
        // consistent: a registration may not show yet).
        let mut gone: Vec<String> = changes.deregister.iter().map(name_of).collect();
        {
            let in_aws: BTreeSet<String> = actual
                .members
                .iter()
                .chain(&actual.draining)
                .chain(&changes.register)
                .map(name_of)
                .collect();
            let refused: BTreeSet<String> = rejected
                .keys()
                .filter_map(|k| crate::key::parse_target(k).ok())
                .map(|t| name_of(&t))
                .collect();
            let wanted: BTreeSet<String> = want
                .members
                .iter()
                .filter_map(|m| match m {
                    Member::Instance(id) => Some(id.to_string()),
                    Member::Target(t) => Some(name_of(t)),
                    Member::Ip(_) => None,
                })
                .filter(|m| !refused.contains(m))
                .collect();
            let just = |m: &String| {
                owned
                    .claimed
                    .get(m)
                    .is_some_and(|at| at.elapsed() < JUST_CLAIMED)
            };
            gone.extend(
                owned
                    .members
                    .iter()
                    .filter(|m| !in_aws.contains(*m) && !wanted.contains(*m) && !just(m))
                    .cloned(),
            );
        }
        // Not done until they are forgotten: a failure fails the sync, which is retried (AWS,
        // read again, is in step by then, and what is gone is forgotten again). Left to a later
        // sync, a load balancer with no keys left would have none: it is retired after this one.
        let back: BTreeSet<String> = changes.register.iter().map(name_of).collect();
        owned.forget(gone, &back).await?;
        if !foreign.is_empty() {
            debug!(log, "leaving {} lbmanager did not add", what;
                "kept" => spell(&foreign), "cause" => %cause);
        }
    }
    Ok(ElbSync {
        changes,
        rejected,
        generation: want.generation,
        revision: want.revision,
        actual,
    })
}

/// The permit taken ahead, or a new one.
async fn paid(api: &dyn ElbApi, region: &str, name: &str, ahead: &mut Option<Permit>) -> Permit {
    match ahead.take() {
        Some(permit) => permit,
        None => api.permit(region, name).await,
    }
}

/// Deregisters `members` in one call (with the permit already taken, if any) and says so.
async fn deregister(
    ctx: &ElbSyncContext<'_>,
    members: &[Target],
    permit: &mut Option<Permit>,
) -> Result<(), AwsError> {
    let paid = paid(ctx.api, ctx.region, ctx.name, permit).await;
    ctx.api
        .deregister(ctx.region, ctx.name, members, paid)
        .await?;
    info!(ctx.log, "deregistered {}", ctx.what;
        "removed" => spell(members), "cause" => %ctx.cause);
    Ok(())
}

/// Registers `members`, setting aside those AWS refuses (see [`sync_elb`]). Returns what was
/// registered and what was refused, with AWS's reason. Any other error ends it (what was
/// registered so far stays registered; the next sync reads it back).
async fn register_accepted(
    api: &dyn ElbApi,
    region: &str,
    name: &str,
    members: &[Target],
    permit: &mut Option<Permit>,
) -> Result<(Vec<Target>, Rejected), AwsError> {
    let (mut accepted, mut refused) = (Vec::new(), Rejected::new());
    let mut todo = vec![members.to_vec()];
    while let Some(mut chunk) = todo.pop() {
        let paid = paid(api, region, name, permit).await;
        match api.register(region, name, &chunk, paid).await {
            Ok(()) => accepted.extend(chunk),
            Err(e) if e.kind == ErrorKind::InvalidMember => {
                let named = members_named_in(&e.message, &chunk);
                if !named.is_empty() {
                    chunk.retain(|m| !named.contains(m));
                    let why = Refusal::Aws(e.message.clone());
                    refused.extend(named.iter().map(|m| (m.to_string(), why.clone())));
                    if !chunk.is_empty() {
                        todo.push(chunk);
                    }
                } else if chunk.len() == 1 {
                    refused.insert(chunk.remove(0).to_string(), Refusal::Aws(e.message.clone()));
                } else {
                    let half = chunk.split_off(chunk.len() / 2);
                    todo.push(half);
                    todo.push(chunk);
                }
            }
            Err(e) => return Err(e),
        }
    }
    accepted.sort();
    Ok((accepted, refused))
}
