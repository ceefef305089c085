//! A Classic ELB or a target group: its actor runs [`sync_elb`] itself, with its account's
//! [`ElbApi`], and keeps what only these kinds have: the desire the sync in flight reads again
//! after it waited for its quota, the refused members to try again, the targets of a kind the
//! group does not take.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use slog::warn;

use super::{Desire, InFlight, Kind, LoadBalancer};
use crate::aws::ElbApi;
use crate::key::Target;
use crate::status::{self, MemberState};
use crate::sync::elb::{sync_elb, ElbSync, ElbSyncContext, Want, Wanted};
use crate::sync::Cause;

/// What an ELB's or target group's actor keeps of its own.
pub struct Elb {
    api: Arc<dyn ElbApi>,
    region: String,
    name: String,
    /// What its members are called in log lines: `instances` or `targets`.
    what: &'static str,
    /// The latest desire, for the sync in flight to read again after it waited for its permit.
    wanted: tokio::sync::watch::Sender<Want>,
    /// A key was written again while AWS refuses members: the next sync tries them again (the
    /// instance may be running again), so `member add --wait` gets today's answer.
    retry_rejected: bool,
    /// Targets already warned about for not fitting the target group's type.
    mismatched: HashSet<String>,
}

impl Elb {
    /// Classic ELB `name` in `region`, reached through `api` (its account's).
    pub fn classic(api: Arc<dyn ElbApi>, region: &str, name: &str) -> Self {
        Elb::new(api, region, name, "instances")
    }

    /// Target group `name` in `region`, reached through `api` (its account's).
    pub fn target_group(api: Arc<dyn ElbApi>, region: &str, name: &str) -> Self {
        Elb::new(api, region, name, "targets")
    }

    fn new(api: Arc<dyn ElbApi>, region: &str, name: &str, what: &'static str) -> Self {
        Elb {
            api,
            region: region.to_string(),
            name: name.to_string(),
            what,
            wanted: tokio::sync::watch::channel(Want::default()).0,
            retry_rejected: false,
            mismatched: HashSet::new(),
        }
    }
}

impl LoadBalancer<Elb> {
    /// Warns once about each target of a kind its target group does not take.
    fn warn_mismatched(&mut self, targets: Vec<Target>) {
        for target in targets {
            if self.kind.mismatched.insert(target.to_string()) {
                warn!(self.log, "ignoring a target of a kind the target group does not take";
                    "target" => %target);
            }
        }
    }
}

impl Kind for Elb {
    type Seen = Box<ElbSync>;

    fn start(lb: &mut LoadBalancer<Self>, desire: Desire, ctx: &mut Context<LoadBalancer<Self>>) {
        let elb = &mut lb.kind;
        let (api, log) = (elb.api.clone(), lb.log.clone());
        let (region, name, what) = (elb.region.clone(), elb.name.clone(), elb.what);
        let options = lb.settings.sync_options();
        let known = lb.rejected.clone();
        // Refused members are tried again at a resync (or a relist, a restart), not at every
        // etcd event: each try is a failed call.
        let retry_rejected = !(desire.cause.is_etcd_change() || desire.cause == Cause::Settle)
            || std::mem::take(&mut elb.retry_rejected);
        let read_health = desire.cause == Cause::Settle;
        let wanted: Wanted = elb.wanted.subscribe();
        let cause = desire.cause;
        // Lent to the sync, and given back whatever happens (claims may have landed).
        let mut owned = lb.owned.take();
        let fut = async move {
            let ctx = ElbSyncContext {
                api: &*api,
                region: &region,
                name: &name,
                wanted: &wanted,
                cause,
                options: &options,
                what,
                log: &log,
                known: &known,
                retry_rejected,
                read_health,
            };
            let res = sync_elb(&ctx, owned.as_mut()).await;
            (res, owned)
        };
        ctx.spawn(fut.into_actor(lb).map(move |(res, owned), act, ctx| {
            act.owned = owned;
            let (generation, error, rejected, seen) = match res {
                Ok(mut sync) => {
                    act.warn_mismatched(std::mem::take(&mut sync.changes.mismatched));
                    let latest = act.desired.as_ref().map(|d| d.generation);
                    if latest == Some(sync.generation) {
                        act.schedule.covered();
                    }
                    let rejected = act.update_rejected(sync.rejected.clone());
                    (sync.generation, None, rejected, Some(Box::new(sync)))
                }
                Err(e) => (desire.generation, Some(e), None, None),
            };
            act.finished(generation, error, rejected, false, seen, ctx)
        }));
    }

    fn status_of(
        lb: &LoadBalancer<Self>,
        sync: Box<ElbSync>,
        _: &InFlight,
    ) -> (Vec<MemberState>, Option<i64>, i64) {
        let members = status::elb_members(
            &lb.id,
            &sync.actual,
            &sync.changes.register,
            &sync.changes.deregister,
            lb.published.as_deref(),
            lb.owned.as_ref().map(|o| &o.members),
        );
        (members, None, sync.revision)
    }

    fn desired(&mut self, desire: &Desire) {
        self.wanted.send_replace(Want {
            members: desire.members.clone(),
            generation: desire.generation,
            revision: desire.revision,
        });
    }

    fn retry_refused(&mut self) {
        self.retry_rejected = true;
    }
}
