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
use slog::{error, info, warn, Logger};

use crate::etcd::{self, EtcdError, EtcdOptions};

/// The election's key prefix under lbmanager's prefix (reserved: not a member key).
pub fn election_key(prefix: &str) -> String {
    format!("{prefix}/_election")
}

/// Leadership held: release it (revoke the lease) on a clean stop so a standby takes over at once.
pub struct Leadership {
    client: Client,
    lease: i64,
    /// The leader's own key in the election, and its create revision: etcd writes compare on it,
    /// as etcd's election recipe does, so a leader that lost its key can write nothing.
    pub key: (String, i64),
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
    let key = loop {
        let won = client
            .campaign(name.as_str(), me.as_str(), lease)
            .await
            .map_err(lease_error)?;
        let Some(leader) = won.leader() else {
            return Err(EtcdError::Read {
                prefix: name,
                source: etcd_client::Error::ElectError("campaign answered without a key".into()),
            });
        };
        let key = (
            String::from_utf8_lossy(leader.key()).into_owned(),
            leader.rev(),
        );
        // A purge of the prefix deletes every campaigner's key, which also ends this campaign:
        // lead only with a key that is still there, else campaign again.
        if still_held(&mut client, &key).await {
            break key;
        }
        warn!(log, "the election key was deleted while campaigning (a purge of the prefix?); \
            campaigning again"; "key" => &key.0);
    };
    info!(log, "elected leader"; "election" => &name, "key" => &key.0);
    watch_own_key(client.clone(), key.clone(), lease, log.clone());
    Ok(Leadership { client, lease, key })
}

/// Watches the leader's own election key: if it goes (a purge of the prefix deletes it, and a
/// standby's campaign then returns), this process stops at once, before it can make another call,
/// so two instances never act together. The watch starts at the key's creation, so a delete that
/// came before the watch is seen too.
fn watch_own_key(mut client: Client, key: (String, i64), lease: i64, log: Logger) {
    actix_rt::spawn(async move {
        let options = etcd_client::WatchOptions::new().with_start_revision(key.1);
        let mut attempt = 0;
        loop {
            let lost = match client.watch(key.0.as_str(), Some(options.clone())).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if resp.compact_revision() > 0 || resp.canceled() {
                                // History gone: ask etcd whether the key is still ours.
                                break !still_held(&mut client, &key).await;
                            }
                            let deleted = resp
                                .events()
                                .iter()
                                .any(|e| e.event_type() == etcd_client::EventType::Delete);
                            if deleted {
                                break true;
                            }
                            attempt = 0;
                        }
                        Ok(None) | Err(_) => break false,
                    }
                },
                Err(_) => false,
            };
            if lost {
                error!(log, "this instance's leadership key was deleted (a purge of the prefix?); \
                    stopping at once, another instance may be leading";
                    "key" => &key.0);
                let revoke = client.lease_revoke(lease);
                let _ = tokio::time::timeout(Duration::from_secs(1), revoke).await;
                std::process::exit(1);
            }
            // The watch broke (etcd restarting): the lease watchdog guards that case; watch again.
            let delay =
                crate::actors::backoff(attempt, Duration::from_millis(200), Duration::from_secs(2));
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    });
}

/// Whether the leader's key still exists with the revision it was created at.
async fn still_held(client: &mut Client, key: &(String, i64)) -> bool {
    match client.get(key.0.as_str(), None).await {
        Ok(resp) => resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == key.1),
        // Unknown: the lease watchdog decides when etcd stays away.
        Err(_) => true,
    }
}
