//! The etcd side: connecting to a member that answers ([`connect`]), reading the whole prefix at
//! one revision and lbmanager's own records ([`read`]), and every write lbmanager makes, behind
//! [`EtcdWrites`] (deleting superseded `single`/`multiple` keys, its records; [`write`]), so the
//! actors are tested against an in-memory fake ([`fake`]) as they are against the AWS fakes. The
//! watch itself lives in the `EtcdWatcher` actor.

use std::time::Duration;

pub mod connect;
#[cfg(test)]
pub mod fake;
pub mod read;
pub mod write;

pub use connect::*;
pub use read::*;
pub use write::*;

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("reading {prefix} from etcd failed: {source}")]
    Read {
        prefix: String,
        source: etcd_client::Error,
    },
    #[error("reading {prefix} from etcd: no answer to one request within {timeout:?}")]
    Timeout { prefix: String, timeout: Duration },
    #[error("deleting superseded keys failed: {source}")]
    Delete { source: etcd_client::Error },
    #[error("writing {key} failed: {source}")]
    Write {
        key: String,
        source: etcd_client::Error,
    },
    #[error("writing {key} refused: this instance is no longer the leader")]
    NotLeader { key: String },
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}
