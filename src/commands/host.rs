//! What the host's commands (`member`, `status`) share: reaching etcd through the members that
//! answer, their errors, and the daemon's heartbeat.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::EtcdArgs;
use crate::etcd::{self, Failover, PROBE};
use crate::layout::Layout;
use crate::status::Heartbeat;

/// Why a command failed: what it prints, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Bad flags or a key that is not a member key: exit 2.
    #[error("{0}")]
    Usage(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("timed out after {waited:?}: {why}")]
    Timeout { waited: Duration, why: String },
    #[error("{0} received while waiting: stopped waiting")]
    Interrupted(&'static str),
    /// lbmanager reported that the wait cannot end well (a member AWS rejects, …).
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

pub fn etcd_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::Etcd(e.to_string())
}

/// Connects to an etcd member that answers (see [`etcd::connect_alive`]), trying again with
/// backoff within `--etcd-connect-timeout` (no member answers while etcd restarts, or while it
/// has no leader); the requests that follow go on through another member when theirs goes away,
/// within the same timeout ([`Failover`]).
pub async fn connect(args: &EtcdArgs) -> Result<Failover, CommandError> {
    let opts = args.options().map_err(CommandError::Usage)?;
    let deadline = tokio::time::Instant::now() + args.etcd_connect_timeout;
    let mut attempt = 0;
    let client = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = match tokio::time::timeout(left, etcd::connect_alive(&opts, PROBE)).await {
            Ok(Ok(client)) => break client,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        let delay = crate::sync::schedule::backoff(attempt, Duration::from_millis(200), PROBE);
        attempt += 1;
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(CommandError::Etcd(format!(
                "no answer from {} within {:?}: {err}",
                opts.endpoints.join(","),
                args.etcd_connect_timeout
            )));
        }
        tokio::time::sleep(delay).await;
    };
    Ok(Failover::new(
        client,
        opts,
        PROBE,
        args.etcd_connect_timeout,
    ))
}

/// The running lbmanager's heartbeat, if one ever reported.
pub async fn heartbeat(
    etcd: &mut Failover,
    layout: &Layout,
) -> Result<Option<Heartbeat>, CommandError> {
    let key = layout.heartbeat();
    let got = etcd.get(&key).await.map_err(etcd_error)?;
    Ok(got
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// The whole tree under `prefix` at one revision, as the host's commands read it (what etcd
/// wants of every load balancer), without a word in the log.
pub async fn read_tree(etcd: &mut Failover, prefix: &str) -> Result<etcd::Snapshot, CommandError> {
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    etcd::read_snapshot(
        etcd,
        prefix,
        &crate::filter::Filters::default(),
        (etcd::SNAPSHOT_PAGE, &etcd::Cuts::default(), None),
        &quiet,
    )
    .await
    .map_err(etcd_error)
}
