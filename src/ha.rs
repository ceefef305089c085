//! High availability (`--ha`): several lbmanager instances elect a leader through etcd, and only
//! the leader reads the tree and calls AWS.
//!
//! Each instance holds an etcd lease (`--ha-lease-ttl`) and campaigns with it under
//! `PREFIX/_election`; etcd makes one campaigner the leader, and the next one only when the
//! leader's key goes — when it resigns (a clean stop revokes the lease) or its lease expires (it
//! died). The leader keeps its lease alive, and a watchdog stops the process as soon as the lease
//! has not been confirmed for half its TTL: a leader cut off from etcd is gone well before its
//! lease can expire and a standby can start, so two instances never act at once. A new leader
//! starts like any lbmanager: a full read and a full sync first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use slog::{error, info, Logger};

use crate::etcd::{self, EtcdError, EtcdOptions};

/// The election's key prefix under lbmanager's prefix (reserved: not a member key).
pub fn election_key(prefix: &str) -> String {
    format!("{prefix}/_election")
}

/// Leadership held: release it (revoke the lease) on a clean stop so a standby takes over at once.
pub struct Leadership {
    client: Client,
    lease: i64,
}

impl Leadership {
    pub async fn release(mut self) {
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

fn lease_error(source: etcd_client::Error) -> EtcdError {
    EtcdError::Read {
        prefix: "the leadership lease".into(),
        source,
    }
}

/// Takes a lease, keeps it alive, and waits until this instance is the leader.
pub async fn lead(
    opts: &EtcdOptions,
    prefix: &str,
    ttl: Duration,
    log: &Logger,
) -> Result<Leadership, EtcdError> {
    let mut client = etcd::connect(opts).await?;
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(lease_error)?
        .id();
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.map_err(lease_error)?;
    let confirmed = Arc::new(Mutex::new(Instant::now()));
    let every = Duration::from_secs(ttl_secs as u64) / 3;
    {
        let confirmed = confirmed.clone();
        actix_rt::spawn(async move {
            loop {
                let sent = Instant::now();
                if keeper.keep_alive().await.is_ok() {
                    if let Ok(Some(resp)) = stream.message().await {
                        if resp.ttl() > 0 {
                            *confirmed.lock().unwrap_or_else(|e| e.into_inner()) = sent;
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    {
        let log = log.clone();
        let limit = Duration::from_secs(ttl_secs as u64) / 2;
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let since = confirmed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed();
                if since > limit {
                    error!(log, "the leadership lease was not confirmed in time; stopping \
                        before another instance can take over";
                        "unconfirmed_for" => ?since, "lease_ttl_s" => ttl_secs);
                    std::process::exit(1);
                }
            }
        });
    }
    let name = election_key(prefix);
    let me = format!("pid {} lease {lease:x}", std::process::id());
    info!(log, "campaigning for leadership (standby until elected)"; "election" => &name, "lease_ttl_s" => ttl_secs);
    client
        .campaign(name.as_str(), me.as_str(), lease)
        .await
        .map_err(lease_error)?;
    info!(log, "elected leader"; "election" => &name);
    Ok(Leadership { client, lease })
}
