//! What a load balancer's actor is told and tells: the Supervisor's messages to it (and its
//! handle on it, whatever its kind), and its report after each sync.

use std::sync::Arc;

use actix::prelude::*;

use super::{Elb, Fqdn, Kind, LoadBalancer, SetZone};
use crate::aws::AwsError;
use crate::key::LbId;
use crate::plan::Rejected;
use crate::status::LbStatus;

pub use crate::fleet::Desire;

/// The members a load balancer should have now, as the fleet decided.
impl Message for Desire {
    type Result = ();
}

/// Whether someone waits on AWS's progress with this load balancer's members (see
/// [`crate::layout::Layout::waiting`]): only then is it read again while they settle.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watched(pub bool);

/// A host waits from this etcd revision on (see [`crate::status::Change::NotThere`]): the status
/// is raised to it once the load balancer is idle and in step with every change before it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Barrier(pub i64);

/// The Supervisor no longer needs this load balancer (no keys, AWS emptied): stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Shutting down: start no new sync, and answer once the one in flight (if any) has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Report to the Supervisor after each sync attempt.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Synced {
    pub lb: LbId,
    /// A sync ended (false: the status changed between syncs).
    pub sync: bool,
    pub generation: u64,
    pub error: Option<AwsError>,
    /// The members AWS refuses, when that set (or a reason) changed with this sync.
    pub rejected: Option<Arc<Rejected>>,
    /// The load balancer's status, when something in it changed (see [`crate::status`]).
    pub status: Option<Arc<LbStatus>>,
    /// AWS is still moving members (a target draining, …): a load balancer without keys is not
    /// done with until it has settled, so that whoever waits for the drain is told.
    pub settling: bool,
}

/// The Supervisor's handle on a load balancer's actor, whatever its kind: a [`Recipient`] for
/// each message it sends one.
#[derive(Clone)]
pub struct LbHandle {
    pub desire: Recipient<Desire>,
    pub watched: Recipient<Watched>,
    pub barrier: Recipient<Barrier>,
    pub retire: Recipient<Retire>,
    pub drain: Recipient<Drain>,
    /// A Route53 name's: told when its zone's actor was replaced.
    pub set_zone: Option<Recipient<SetZone>>,
}

impl LbHandle {
    fn of<K: Kind>(addr: &Addr<LoadBalancer<K>>) -> Self {
        LbHandle {
            desire: addr.clone().recipient(),
            watched: addr.clone().recipient(),
            barrier: addr.clone().recipient(),
            retire: addr.clone().recipient(),
            drain: addr.clone().recipient(),
            set_zone: None,
        }
    }

    /// Whether the actor still runs (a panic ends it).
    pub fn connected(&self) -> bool {
        self.desire.connected()
    }
}

impl From<Addr<LoadBalancer<Elb>>> for LbHandle {
    fn from(addr: Addr<LoadBalancer<Elb>>) -> Self {
        LbHandle::of(&addr)
    }
}

impl From<Addr<LoadBalancer<Fqdn>>> for LbHandle {
    fn from(addr: Addr<LoadBalancer<Fqdn>>) -> Self {
        LbHandle {
            set_zone: Some(addr.clone().recipient()),
            ..LbHandle::of(&addr)
        }
    }
}
