//! One actor per Route53 hosted zone: every change to the zone passes through its mailbox, and it
//! runs one sync at a time, so two changes of one zone never overlap (as the original lbManager
//! promised). Desires that arrive while a sync runs wait and go out together in the next one: one
//! read per FQDN, then as few ChangeResourceRecordSets calls as Route53's limits allow.
//!
//! The zone keeps what it read of its record sets (updated by its own writes, dropped after a
//! failed one) so that a stream of changes to one FQDN costs no read per change; a resync always
//! reads afresh, which is what catches changes made by hand.
//!
//! The zone attempts each desire once and answers the FQDN's load balancer (through the desire's
//! `reply` recipient) with the result; retrying is the load balancer's business (one place for
//! backoff).
//!
//! Route53 accepts a change long before resolvers can get it: the change is `PENDING` until every
//! Route53 name server has it (`INSYNC`). The zone follows its changes with one poll loop (one
//! GetChange at a time, about the oldest change, not per name, with growing pauses, through the
//! account's quota) and tells the names a change carried when it is `INSYNC` ([`ChangeInSync`]);
//! a change still `PENDING` after [`SLOW_CHANGE`] is said at warn level and counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use slog::{info, warn, Logger};

use super::Settings;
use crate::aws::{AwsError, ChangeId, ChangeState, ErrorKind, Route53Api};
use crate::sync::zone::{sync_zone, FqdnWant, Recorder, ZoneCache};

/// What one FQDN's A and AAAA record sets should hold.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ZoneDesire {
    pub want: FqdnWant,
    pub generation: u64,
    pub reply: Recipient<ZoneSynced>,
    /// Told when a change that carried this name's changes is `INSYNC`.
    pub in_sync: Recipient<ChangeInSync>,
    /// Changes of this name still `PENDING` as far as its load balancer knows (made by this
    /// zone's actor before it was replaced, say): watched too, if they are not already.
    pub pending: Vec<ChangeId>,
}

/// A change that carried a name's changes is on every Route53 name server (or Route53 no longer
/// knows it: nothing left to wait for).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChangeInSync(pub ChangeId);

/// A zone's answer to a [`ZoneDesire`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ZoneSynced {
    pub generation: u64,
    pub error: Option<AwsError>,
    /// The failed plan was built from what the zone remembered, not from a fresh read: a retry
    /// from a fresh read may well succeed at once.
    pub stale: bool,
    /// The FQDN's record sets after a sync that succeeded.
    pub sets: Option<Vec<crate::plan::RecordSet>>,
    /// `--ownership shared`: the values lbmanager owns after the sync.
    pub owned: Option<std::collections::BTreeSet<std::net::IpAddr>>,
    /// The longest TTL the FQDN's record sets had before the sync (see
    /// [`crate::sync::zone::FqdnResult::ttl_before`]).
    pub ttl_before: Option<i64>,
    /// The change that carried the FQDN's changes, `PENDING` until [`ChangeInSync`] says.
    pub change: Option<ChangeId>,
    /// `--route53-health-check`: each value's health as Route53 last reported it (read at
    /// start-up and resyncs; empty otherwise).
    pub health: std::collections::BTreeMap<std::net::IpAddr, String>,
    /// `--route53-health-check`: checks the name no longer uses wait for its change to be
    /// `INSYNC` (see [`crate::sync::zone::FqdnResult::checks_waiting`]).
    pub checks_waiting: bool,
}

/// The first pause before asking Route53 whether a change is `INSYNC`, doubled after each
/// `PENDING` up to [`POLL_MAX`]. Route53 usually takes seconds to a minute.
const POLL_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const POLL_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// A change still `PENDING` this long is no longer waited for (said at warn level): its names are
/// told as if it were `INSYNC`, so that no wait and no retirement hangs on it for good.
const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// A change still `PENDING` this long after Route53 accepted it is said at warn level and counted
/// (`lbmanager_route53_changes_slow_total`); it is still waited for (the default of
/// [`super::Settings::route53_slow_change`]). Route53's own figure: "within
/// 60 seconds" as a rule.
pub const SLOW_CHANGE: std::time::Duration = std::time::Duration::from_secs(120);

/// A change of the zone not yet `INSYNC`, and who waits for it.
struct Watch {
    since: tokio::time::Instant,
    /// The names it carried.
    names: Vec<Recipient<ChangeInSync>>,
    /// Polls answered so far (the pause before the next grows with them).
    polls: u32,
    slow: bool,
    /// The gauge of pending changes counts it until it is dropped.
    _pending: PendingGauge,
}

/// One change on the `route53_changes_pending` gauge, for as long as it lives.
struct PendingGauge(prometheus_client::metrics::gauge::Gauge);

impl PendingGauge {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        PendingGauge(gauge.clone())
    }
}

impl Drop for PendingGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long the zone gathers the desires of a full sync (start-up, relist, restart) before its
/// first batch. They arrive in waves, as the names' managed records land in etcd; without the
/// wait the first wave goes out alone and the rest in more, smaller batches. A change from an
/// etcd event goes out at once.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

pub struct HostedZone {
    /// The hosted zone id.
    zone: String,
    api: Arc<dyn Route53Api>,
    log: Logger,
    settings: Arc<Settings>,
    /// Desires waiting for the next sync, the newest per FQDN (an older one is superseded).
    pending: BTreeMap<String, ZoneDesire>,
    /// A sync of this zone is running: the next waits, so two changes never overlap.
    busy: bool,
    /// A full sync's desires are being gathered (see [`GATHER`]).
    gathering: bool,
    /// What the zone last read or wrote, so a stream of changes costs no read per change.
    cache: ZoneCache,
    /// `--ownership shared`: where the values lbmanager adds are recorded.
    writes: Option<Arc<dyn crate::etcd::OwnershipWrites>>,
    /// The zone's changes not yet `INSYNC`, and the order Route53 accepted them in.
    watches: BTreeMap<ChangeId, Watch>,
    order: std::collections::VecDeque<ChangeId>,
    /// The poll loop is running (see [`HostedZone::poll_later`]).
    polling: bool,
}

impl HostedZone {
    pub fn new(
        zone: &str,
        api: Arc<dyn Route53Api>,
        log: &Logger,
        settings: Arc<Settings>,
    ) -> Self {
        let references = crate::health_check::Reference::zone_prefix(&settings.installation, zone);
        HostedZone {
            zone: zone.to_string(),
            api,
            log: log.new(slog::o!("zone" => zone.to_string())),
            settings,
            pending: BTreeMap::new(),
            busy: false,
            gathering: false,
            cache: ZoneCache::new(references),
            writes: None,
            watches: BTreeMap::new(),
            order: Default::default(),
            polling: false,
        }
    }

    /// `--ownership shared`: records the values it adds with `writes`.
    pub fn recording(mut self, writes: Option<Arc<dyn crate::etcd::OwnershipWrites>>) -> Self {
        self.writes = writes;
        self
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.pending.is_empty() {
            return;
        }
        self.busy = true;
        let batch: Vec<ZoneDesire> = std::mem::take(&mut self.pending).into_values().collect();
        // Names with a change still PENDING keep the checks they stopped using a while.
        let busy: Vec<bool> = batch
            .iter()
            .map(|d| d.pending.iter().any(|c| self.watches.contains_key(c)))
            .collect();
        let (api, zone, log, options) = (
            self.api.clone(),
            self.zone.clone(),
            self.log.clone(),
            self.settings.sync_options(),
        );
        let mut cache = std::mem::take(&mut self.cache);
        let (writes, layout) = (self.writes.clone(), self.settings.layout.clone());
        let fut = async move {
            let wants: Vec<FqdnWant> = batch
                .iter()
                .zip(busy)
                .map(|(d, dns_busy)| FqdnWant {
                    dns_busy,
                    ..d.want.clone()
                })
                .collect();
            let recorder = writes.as_deref().map(|writes| Recorder {
                writes,
                layout: &layout,
            });
            let results =
                sync_zone(&*api, &zone, &wants, &options, &mut cache, &log, recorder).await;
            (batch, results, cache)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|(batch, results, cache), act, ctx| {
                    act.cache = cache;
                    for (desire, result) in batch.into_iter().zip(results) {
                        if let Some(change) = &result.change {
                            act.watch(change, &desire.in_sync, ctx);
                        }
                        desire.reply.do_send(ZoneSynced {
                            generation: desire.generation,
                            error: result.result.err(),
                            stale: result.from_cache,
                            sets: result.sets,
                            owned: result.owned,
                            ttl_before: result.ttl_before,
                            change: result.change,
                            health: result.health,
                            checks_waiting: result.checks_waiting,
                        });
                    }
                    act.busy = false;
                    act.run(ctx);
                }),
        );
    }
}

impl HostedZone {
    /// Watches `change` until it is `INSYNC`, and then tells `name`.
    fn watch(&mut self, change: &str, name: &Recipient<ChangeInSync>, ctx: &mut Context<Self>) {
        if change.is_empty() {
            return;
        }
        if let Some(watch) = self.watches.get_mut(change) {
            if !watch.names.contains(name) {
                watch.names.push(name.clone());
            }
            return;
        }
        self.watches.insert(
            change.to_string(),
            Watch {
                since: tokio::time::Instant::now(),
                names: vec![name.clone()],
                polls: 0,
                slow: false,
                _pending: PendingGauge::new(&self.settings.metrics.route53_changes_pending),
            },
        );
        self.order.push_back(change.to_string());
        if !self.polling {
            self.polling = true;
            self.poll_later(ctx);
        }
    }

    /// The zone's one poll loop: it asks about the oldest change not yet `INSYNC` (Route53 puts a
    /// zone's changes on its name servers in the order it accepted them), after a pause that grows
    /// with the polls that change has had; once it is `INSYNC`, the next oldest is asked about at
    /// once. However many changes are pending, a zone makes one GetChange at a time.
    fn poll_later(&mut self, ctx: &mut Context<Self>) {
        let Some(oldest) = self.order.front() else {
            self.polling = false;
            return;
        };
        let polls = self.watches.get(oldest).map_or(0, |w| w.polls);
        let pause = POLL_FIRST
            .saturating_mul(2u32.saturating_pow(polls.min(8)))
            .min(POLL_MAX);
        ctx.run_later(pause, |act, ctx| act.poll(ctx));
    }

    /// Asks Route53 once where the oldest pending change is.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let Some(change) = self.order.front().cloned() else {
            self.polling = false;
            return;
        };
        let (api, zone, id) = (self.api.clone(), self.zone.clone(), change.clone());
        let fut = async move { api.change_state(&zone, &id).await };
        ctx.spawn(fut.into_actor(self).map(move |state, act, ctx| {
            let Some(watch) = act.watches.get_mut(&change) else {
                act.poll_later(ctx);
                return;
            };
            watch.polls = watch.polls.saturating_add(1);
            let age = watch.since.elapsed();
            let names = watch.names.len();
            let done = match state {
                Ok(ChangeState::InSync) => {
                    info!(act.log, "Route53 change is on every Route53 name server (INSYNC)";
                        "change" => &change, "after" => ?age, "names" => names);
                    true
                }
                Ok(ChangeState::Pending) => false,
                // Route53 forgets changes after a while (and knows none made elsewhere): nothing
                // is left to wait for.
                Err(e) if e.kind == ErrorKind::NotFound => {
                    warn!(act.log, "Route53 does not know the change; taking it as INSYNC";
                        "change" => &change, "error" => %e);
                    true
                }
                // Refused (the role lacks route53:GetChange, say): asking again will not help, and
                // waiting on would hold every wait on the name up to its timeout.
                Err(e) if !e.is_retryable() => {
                    warn!(act.log, "Route53 refuses to say whether a change is INSYNC; no longer \
                        waiting for it (grant route53:GetChange)";
                        "change" => &change, "error" => %e, "pending_for" => ?age);
                    true
                }
                Err(e) => {
                    warn!(act.log, "could not ask Route53 whether a change is INSYNC; will ask \
                        again"; "change" => &change, "error" => %e, "pending_for" => ?age);
                    false
                }
            };
            if done {
                act.in_sync(&change);
                act.poll_later(ctx);
                return;
            }
            if age >= act.settings.route53_slow_change && !watch.slow {
                watch.slow = true;
                act.settings.metrics.route53_changes_slow.inc();
                warn!(act.log, "Route53 change still PENDING: resolvers may not get it yet, and \
                    whoever waits for it (member --wait, --drain) waits on";
                    "change" => &change, "pending_for" => ?age, "names" => names);
            }
            if age >= GIVE_UP {
                warn!(act.log, "Route53 change PENDING for too long; no longer waiting for it";
                    "change" => &change, "pending_for" => ?age, "names" => names);
                act.in_sync(&change);
            }
            act.poll_later(ctx);
        }));
    }

    /// `change` is `INSYNC` (or no longer waited for): its names are told, and the loop moves on.
    fn in_sync(&mut self, change: &str) {
        self.order.retain(|c| c != change);
        if let Some(watch) = self.watches.remove(change) {
            for name in watch.names {
                name.do_send(ChangeInSync(change.to_string()));
            }
        }
    }
}

impl Actor for HostedZone {
    type Context = Context<Self>;
}

impl Handler<ZoneDesire> for HostedZone {
    type Result = ();

    fn handle(&mut self, msg: ZoneDesire, ctx: &mut Self::Context) {
        for change in &msg.pending {
            self.watch(change, &msg.in_sync, ctx);
        }
        let full_sync = msg.want.cause.is_start();
        self.pending.insert(msg.want.fqdn.clone(), msg);
        if self.gathering {
            return;
        }
        if full_sync && !self.busy {
            self.gathering = true;
            ctx.run_later(GATHER, |act, ctx| {
                act.gathering = false;
                act.run(ctx);
            });
            return;
        }
        self.run(ctx);
    }
}
