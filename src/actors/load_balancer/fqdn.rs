//! A Route53 FQDN: its actor hands its desired record sets to its zone's [`HostedZone`] (which
//! serialises every change of the zone) and keeps what only a name has: the values left out for
//! Route53's limit, its changes not yet `INSYNC` (published, and followed until they are), and
//! the health checks it no longer uses, deleted once its last change is `INSYNC`.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;

use super::{Desire, InFlight, Kind, LoadBalancer};
use crate::actors::hosted_zone::{ChangeInSync, HostedZone, ZoneDesire, ZoneSynced};
use crate::plan::{RecordSet, Rejected};
use crate::status::{self, MemberState, PendingChange};
use crate::sync::zone::{refused_over_limit, FqdnWant};
use crate::sync::{ips_of, Cause};

/// A Route53 load balancer's zone actor was replaced (after a restart).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetZone(pub Addr<HostedZone>);

/// What a name's actor keeps of its own.
pub struct Fqdn {
    /// Its zone's actor.
    zone: Addr<HostedZone>,
    zone_id: String,
    fqdn: String,
    /// A change of the values left out for Route53's limit, to report with the sync.
    refused: Option<Arc<Rejected>>,
    /// The changes of this name not yet `INSYNC`, oldest first (see
    /// [`crate::status::LbStatus::dns_pending`]).
    dns_pending: Vec<PendingChange>,
    /// `--route53-health-check`: checks the name no longer uses wait for its last change to be
    /// `INSYNC`; the name is synced again then (and not retired before).
    checks_waiting: bool,
}

impl Fqdn {
    /// Name `fqdn` of hosted zone `zone_id`, whose actor is `zone`; `pending`: its changes still
    /// `PENDING` when the previous leader last said, followed on (and published) until they are
    /// `INSYNC`.
    pub fn new(
        zone: Addr<HostedZone>,
        zone_id: &str,
        fqdn: &str,
        pending: Vec<PendingChange>,
    ) -> Self {
        Fqdn {
            zone,
            zone_id: zone_id.to_string(),
            fqdn: fqdn.to_string(),
            refused: None,
            dns_pending: pending,
            checks_waiting: false,
        }
    }
}

/// What a name's sync saw of Route53.
pub struct ZoneSeen {
    /// Its record sets after the sync.
    sets: Vec<RecordSet>,
    /// The longest TTL they had before it.
    ttl_before: Option<i64>,
    /// The health read of its values (`--route53-health-check`).
    health: BTreeMap<IpAddr, String>,
}

impl Kind for Fqdn {
    type Seen = ZoneSeen;

    fn start(lb: &mut LoadBalancer<Self>, desire: Desire, ctx: &mut Context<LoadBalancer<Self>>) {
        let name = &lb.kind;
        let check =
            crate::health_check::rule_for(&lb.settings.health_checks, &name.zone_id, &name.fqdn)
                .cloned();
        let ips = ips_of(&desire.members);
        // Values past Route53's limit are left out by the plan; said as refusals.
        let published: HashSet<&str> = lb
            .published
            .iter()
            .flat_map(|p| p.members.iter().map(|m| m.member.as_str()))
            .collect();
        let over = refused_over_limit(
            &ips,
            |ip| published.contains(ip.to_string().as_str()),
            check.is_some(),
        );
        let want = FqdnWant {
            lb: lb.id.clone(),
            fqdn: name.fqdn.clone(),
            ips,
            cause: desire.cause,
            owned: lb
                .owned
                .as_ref()
                .map(|o| o.members.iter().filter_map(|m| m.parse().ok()).collect()),
            check,
            dns_busy: false,
        };
        let pending = name.dns_pending.iter().map(|p| p.id.clone()).collect();
        // A change not handed over yet (its sync was given up) stays to be handed over.
        if let Some(changed) = lb.update_rejected(over) {
            lb.kind.refused = Some(changed);
        }
        lb.kind.zone.do_send(ZoneDesire {
            want,
            generation: desire.generation,
            reply: ctx.address().recipient(),
            in_sync: ctx.address().recipient(),
            pending,
        });
    }

    fn status_of(
        lb: &LoadBalancer<Self>,
        seen: ZoneSeen,
        in_flight: &InFlight,
    ) -> (Vec<MemberState>, Option<i64>, i64) {
        let previous = lb.published.as_deref();
        let ttl = status::zone_ttl(&seen.sets, seen.ttl_before, previous);
        let owned = lb.owned.as_ref().map(|o| &o.members);
        let members = status::zone_members(&seen.sets, owned, &seen.health, previous);
        (members, ttl, in_flight.revision)
    }

    fn holding(&self) -> bool {
        !self.dns_pending.is_empty() || self.checks_waiting
    }

    /// The newest change not yet `INSYNC` carries the name's record sets as of `revision` (a
    /// sync that changed nothing found Route53 as that change left it), so a wait for it waits
    /// for that change.
    fn carried(&mut self, revision: i64) -> Vec<PendingChange> {
        if let Some(newest) = self.dns_pending.last_mut() {
            newest.revision = newest.revision.max(revision);
        }
        self.dns_pending.clone()
    }
}

impl Handler<ZoneSynced> for LoadBalancer<Fqdn> {
    type Result = ();

    fn handle(&mut self, msg: ZoneSynced, ctx: &mut Self::Context) {
        if let (Some(change), Some(in_flight)) = (&msg.change, &self.in_flight) {
            let pending = &mut self.kind.dns_pending;
            pending.push(PendingChange {
                id: change.clone(),
                since: status::now(),
                revision: in_flight.revision,
            });
            if pending.len() > status::PENDING_LISTED {
                pending.remove(0);
            }
        }
        if let (Some(owned), Some(ips)) = (self.owned.as_mut(), &msg.owned) {
            owned.set(ips.iter().map(|ip| ip.to_string()).collect());
        }
        let seen = msg.sets.map(|sets| ZoneSeen {
            sets,
            ttl_before: msg.ttl_before,
            health: msg.health,
        });
        // The answer of the sync in flight (not of one given up).
        if msg.error.is_none() && self.in_flight.is_some() {
            self.kind.checks_waiting = msg.checks_waiting;
        }
        let rejected = self.kind.refused.take();
        self.finished(msg.generation, msg.error, rejected, msg.stale, seen, ctx);
        // Its change may be INSYNC already (told before this answer arrived).
        if self.kind.checks_waiting && self.kind.dns_pending.is_empty() {
            ctx.run_later(std::time::Duration::from_secs(1), |act, ctx| {
                act.drop_waiting_checks(ctx)
            });
        }
    }
}

impl LoadBalancer<Fqdn> {
    /// Syncs the name again once no change of it is `PENDING`, when it has health checks it no
    /// longer uses: that sync deletes them (see [`crate::sync::zone::FqdnResult::checks_waiting`]).
    fn drop_waiting_checks(&mut self, ctx: &mut Context<Self>) {
        if !self.kind.checks_waiting || !self.kind.dns_pending.is_empty() {
            return;
        }
        let next = self.schedule.resync_due();
        self.follow_for(Cause::Settle, next, ctx);
    }
}

impl Handler<ChangeInSync> for LoadBalancer<Fqdn> {
    type Result = ();

    /// A change of the name is on every Route53 name server: the status says so at once (a
    /// `--wait` or `--drain` may be waiting for just that).
    fn handle(&mut self, ChangeInSync(change): ChangeInSync, ctx: &mut Self::Context) {
        let before = self.kind.dns_pending.len();
        self.kind.dns_pending.retain(|p| p.id != change);
        if self.kind.dns_pending.len() == before {
            return;
        }
        let pending = self.kind.dns_pending.clone();
        self.republish(|p| p.dns_pending = pending);
        self.drop_waiting_checks(ctx);
    }
}

impl Handler<SetZone> for LoadBalancer<Fqdn> {
    type Result = ();

    fn handle(&mut self, msg: SetZone, ctx: &mut Self::Context) {
        self.kind.zone = msg.0;
        // Whatever was in flight died with the old zone actor: a drain waiting for it is over.
        self.in_flight = None;
        self.schedule.abandon();
        self.release_drain();
        if let Some(desire) = self.desired.as_mut() {
            desire.cause = Cause::Restart;
        }
        let next = self.schedule.request();
        self.follow(next, ctx);
    }
}
