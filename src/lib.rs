//! lbmanager: keeps AWS Classic ELBs and Route53 A/AAAA record sets in step with an etcd key tree.
//!
//! Pure modules hold the rules ([`key`], [`desired`], [`plan`]); [`aws`] and [`etcd`] are the only
//! code that talks to the outside; [`actors`] wires them together.

pub mod actors;
pub mod aws;
pub mod cli;
pub mod daemon;
pub mod desired;
pub mod etcd;
pub mod filter;
pub mod ha;
pub mod http;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod sync;
