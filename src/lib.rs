//! lbmanager: keeps AWS Classic ELBs, ALB/NLB target groups and Route53 A/AAAA record sets in step
//! with an etcd key tree.
//!
//! Pure modules hold the rules ([`key`], [`desired`], [`plan`], [`filter`], [`escape`], and
//! [`fleet`]: which load balancers have an actor, restarts, retirement, rounds); [`sync`] reads,
//! plans and applies one load balancer or zone (and schedules its retries) over the [`aws`]
//! traits; the [`aws`] clients are the only code that talks to AWS, through [`fence`] under
//! `--ha`; etcd is reached through [`etcd`]'s functions, by the actors that hold its clients (the
//! StateWriter makes every write of lbmanager's: its records, and with `--ownership shared` the
//! ownership records the syncs ask for through [`etcd::OwnershipWrites`]); [`actors`] carry out
//! the fleet's rules and decide when each load balancer syncs; [`commands`] takes each
//! subcommand from flags to an exit code (`run` and `plan`, and those of the workload, `member
//! add|remove --wait` and `status`, which read what the daemon publishes with etcd access only);
//! [`status`] is what the daemon publishes.

pub mod actors;
pub mod aws;
pub mod board;
pub mod cli;
pub mod commands;
pub mod desired;
pub mod escape;
pub mod etcd;
pub mod explain;
pub mod fence;
pub mod filter;
pub mod fleet;
pub mod ha;
pub mod health_check;
pub mod http;
pub mod key;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod ownership;
pub mod plan;
pub mod signal;
pub mod status;
pub mod sync;
