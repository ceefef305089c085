//! lbmanager's integration tests: the built binary against a real etcd and moto (started on free
//! loopback ports by `lbmanager-testkit`), one module per concern.
//!
//! One test binary, not one per file: each would link the whole crate and the AWS SDKs again,
//! which cost more build time than all of their tests' compilation together.

mod accounts;
mod bookkeeping;
mod browser;
mod cli;
mod elbv2;
mod end_to_end;
mod etcd_failover;
mod etcd_writes;
mod explain;
mod faults;
mod frugal;
mod ha;
mod installations;
mod never_stuck;
mod operations;
mod ownership;
mod package;
mod page;
mod quotas;
mod restart;
mod security;
mod workload;
