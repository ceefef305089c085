//! High availability (`--ha`): several lbmanager instances elect a leader through etcd, and only
//! the leader reads the tree and calls AWS.
//!
//! Each instance holds an etcd lease (`--ha-lease-ttl`) and campaigns with it under
//! `PREFIX/_election`; etcd makes one campaigner the leader, and the next one only when the
//! leader's key goes — when it resigns (a clean stop revokes the lease) or its lease expires (it
//! died). The leader keeps its lease alive (every TTL/6, re-opening the keep-alive stream when it
//! breaks, as it does in an etcd leader election or a member restart), and a fence stops the
//! process as soon as the lease has not been confirmed for two thirds of its TTL: a leader cut off
//! from etcd is gone before its lease can expire and a standby can start. It also watches its own
//! election key, which a purge of the prefix deletes, and stops at once when it goes; and every
//! etcd write it makes compares that key. So two instances never act at once. A new leader
//! starts like any lbmanager: a full read and a full sync first.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::Client;
use slog::{error, info, warn, Logger};

use crate::etcd::{self, EtcdError, EtcdOptions};
use crate::fence::{boottime, Fence};

/// Leadership held: release it (revoke the lease) on a clean stop so a standby takes over at once.
pub struct Leadership {
    client: Client,
    lease: i64,
    /// The leader's own key in the election, and its create revision: etcd writes compare on it,
    /// as etcd's election recipe does, so a leader that lost its key can write nothing.
    pub key: (String, i64),
    /// What every change to AWS passes (see [`crate::fence`]).
    pub fence: Fence,
    /// The instances in the election, kept current by a watch (what the status page lists).
    pub instances: tokio::sync::watch::Receiver<Vec<Instance>>,
}

/// An instance taking part in the election, as its election key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its key's value (`pid N lease L host H`), cut to [`WHO_SHOWN`] bytes.
    pub who: String,
    /// The etcd revision at which it joined the election.
    pub since: i64,
    /// The one that leads: the oldest key (etcd's election recipe).
    pub leader: bool,
    /// This process.
    pub me: bool,
}

/// Instances listed (a prefix writable by anyone with access to it could hold thousands of keys).
pub const INSTANCES_SHOWN: usize = 20;
/// Bytes of an election key's value kept (another writer's value can be anything).
pub const WHO_SHOWN: usize = 200;

/// The election's keys (key → its create revision and value) as the instances they stand for,
/// the leader first, at most [`INSTANCES_SHOWN`]; `me` is this process's key.
pub fn instances(keys: &BTreeMap<String, (i64, String)>, me: &str) -> Vec<Instance> {
    let mut all: Vec<(&String, &(i64, String))> = keys.iter().collect();
    all.sort_by_key(|(key, (since, _))| (*since, *key));
    all.into_iter()
        .take(INSTANCES_SHOWN)
        .enumerate()
        .map(|(i, (key, (since, who)))| Instance {
            who: crate::escape::within(who, WHO_SHOWN).to_string(),
            since: *since,
            leader: i == 0,
            me: key == me,
        })
        .collect()
}

/// What this instance's election key says of it: its pid first (the soak's checker reads it),
/// its lease, and the host it runs on.
fn who_am_i(lease: i64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "unknown".into()
    } else {
        host
    };
    format!("pid {} lease {lease:x} host {host}", std::process::id())
}

impl Leadership {
    pub async fn release(mut self) {
        // First the watchdogs stand down: the key's deletion that follows is this stop's own.
        self.fence.release();
        let _ = self.client.lease_revoke(self.lease).await;
    }
}

fn lease_error(source: etcd_client::Error) -> EtcdError {
    EtcdError::Read {
        prefix: "the leadership lease".into(),
        source,
    }
}

/// Takes a lease, keeps it alive, and waits until this instance is the leader. `call_limit`
/// bounds a change to AWS (with a quarter of `ttl`, see [`Fence`]).
pub async fn lead(
    opts: &EtcdOptions,
    layout: &crate::layout::Layout,
    ttl: Duration,
    call_limit: Duration,
    connect_timeout: Duration,
    log: &Logger,
) -> Result<Leadership, EtcdError> {
    let ttl_secs = ttl.as_secs().max(2) as i64;
    // etcd may start a little after lbmanager (as for the first read without --ha): retry with
    // backoff within --etcd-connect-timeout.
    let deadline = std::time::Instant::now() + connect_timeout;
    let mut attempt = 0;
    let (client, lease, granted) = loop {
        let sent = boottime();
        let tried = async {
            let mut client = etcd::connect(opts).await?;
            let grant = client.lease_grant(ttl_secs, None);
            let lease = tokio::time::timeout(Duration::from_secs(5), grant)
                .await
                .map_err(|_| EtcdError::Timeout {
                    prefix: "the leadership lease".into(),
                    timeout: Duration::from_secs(5),
                })?
                .map_err(lease_error)?
                .id();
            Ok::<_, EtcdError>((client, lease))
        };
        match tried.await {
            Ok((client, lease)) => break (client, lease, sent),
            Err(e) => {
                let delay = crate::actors::backoff(
                    attempt,
                    Duration::from_millis(250),
                    Duration::from_secs(5),
                );
                attempt += 1;
                if std::time::Instant::now() + delay > deadline {
                    return Err(e);
                }
                warn!(log, "etcd not reachable yet for the leader election, will retry";
                    "error" => %e, "retry_in" => ?delay);
                tokio::time::sleep(delay).await;
            }
        }
    };
    let mut client = client;
    let ttl = Duration::from_secs(ttl_secs as u64);
    // The lease lives at least its TTL from when its grant was sent.
    let fence = Fence::lease(ttl, call_limit, granted);
    keep_alive(client.clone(), lease, ttl, fence.clone(), log.clone());
    stop_when_fenced(client.clone(), lease, ttl, fence.clone(), log.clone());
    let name = layout.election();
    let me = who_am_i(lease);
    info!(log, "campaigning for leadership (standby until elected)"; "election" => &name, "lease_ttl_s" => ttl_secs);
    let mut attempt = 0;
    let key = loop {
        // A campaign is a long request: an etcd member restart or leader election breaks it.
        // Campaigning again with the same lease finds the same key and waits on.
        let won = match client.campaign(name.as_str(), me.as_str(), lease).await {
            Ok(won) => won,
            Err(e) => {
                let delay = crate::actors::backoff(
                    attempt,
                    Duration::from_millis(200),
                    Duration::from_secs(2),
                );
                attempt += 1;
                warn!(log, "the campaign was interrupted, campaigning again";
                    "error" => %e, "retry_in" => ?delay);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
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
    watch_own_key(
        client.clone(),
        key.clone(),
        lease,
        fence.clone(),
        log.clone(),
    );
    let instances = watch_instances(client.clone(), &name, key.0.clone());
    Ok(Leadership {
        client,
        lease,
        key,
        fence,
        instances,
    })
}

/// Keeps the lease alive: a keep-alive every TTL/6, and a new keep-alive stream (after a short
/// backoff) whenever one breaks, as it does when the etcd member restarts or the etcd leader
/// changes. Each acknowledged keep-alive confirms the fence from when it was sent: the lease
/// lives at least TTL past it.
fn keep_alive(mut client: Client, lease: i64, ttl: Duration, fence: Fence, log: Logger) {
    let every = ttl / 6;
    actix_rt::spawn(async move {
        let mut attempt = 0;
        loop {
            let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
                Ok(pair) => pair,
                Err(e) => {
                    let delay = crate::actors::backoff(attempt, every / 4, every);
                    attempt += 1;
                    warn!(log, "cannot open the lease keep-alive, will retry";
                        "error" => %e, "retry_in" => ?delay);
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            loop {
                let sent = boottime();
                let answered = match keeper.keep_alive().await {
                    Ok(()) => tokio::time::timeout(every, stream.message()).await,
                    Err(_) => break,
                };
                match answered {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                        attempt = 0;
                        fence.confirm(sent);
                    }
                    Ok(Ok(Some(_))) => {
                        // TTL 0: the lease is gone; the fence will stop this process.
                    }
                    // The stream broke or went quiet: open a new one.
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
                }
                tokio::time::sleep(every.saturating_sub(boottime().saturating_sub(sent))).await;
            }
        }
    });
}

/// Stops the process before its lease can expire: when the lease has gone unconfirmed for two
/// thirds of its TTL, or as soon as a change was refused by the fence (which lets changes through
/// only within half the TTL, see [`crate::fence`]). The fence is shut first, so that nothing more
/// is sent while the process stops; then it revokes the lease where etcd still answers, so a
/// standby takes over at once. etcd leader elections (1–3 s) and member restarts fit well within
/// half the TTL at the default.
fn stop_when_fenced(client: Client, lease: i64, ttl: Duration, fence: Fence, log: Logger) {
    let limit = ttl * 2 / 3;
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if fence.is_released() {
                return;
            }
            let since = fence.since_confirmed();
            if since > limit || fence.is_tripped() {
                fence.trip();
                error!(log, "the leadership lease was not confirmed in time; stopping \
                    before another instance can take over (no change is sent any more)";
                    "unconfirmed_for" => ?since, "lease_ttl_s" => ttl.as_secs());
                let mut client = client.clone();
                let revoke = client.lease_revoke(lease);
                let _ = tokio::time::timeout(Duration::from_millis(300), revoke).await;
                std::process::exit(1);
            }
        }
    });
}

/// Watches the leader's own election key: if it goes (a purge of the prefix deletes it, and a
/// standby's campaign then returns), this process stops at once, before it can make another call,
/// so two instances never act together. The watch starts at the key's creation, so a delete that
/// came before the watch is seen too.
fn watch_own_key(mut client: Client, key: (String, i64), lease: i64, fence: Fence, log: Logger) {
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
            if lost && fence.is_released() {
                // The clean stop's own revoke deleted the key.
                return;
            }
            if lost {
                fence.trip();
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

/// Keeps the list of the election's instances current: a read of the election's keys, then a
/// watch from the revision after it; read again whenever the watch breaks. Stops when nothing
/// listens any more.
fn watch_instances(
    mut client: Client,
    election: &str,
    me: String,
) -> tokio::sync::watch::Receiver<Vec<Instance>> {
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let prefix = format!("{election}/");
    actix_rt::spawn(async move {
        let mut attempt = 0;
        while !tx.is_closed() {
            let read = client
                .get(
                    prefix.as_str(),
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await;
            if let Ok(resp) = read {
                let mut keys: BTreeMap<String, (i64, String)> = resp
                    .kvs()
                    .iter()
                    .map(|kv| {
                        let value = String::from_utf8_lossy(kv.value()).into_owned();
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        (key, (kv.create_revision(), value))
                    })
                    .collect();
                tx.send_replace(instances(&keys, &me));
                let from = resp.header().map_or(0, |h| h.revision()) + 1;
                let options = etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(from);
                if let Ok(mut stream) = client.watch(prefix.as_str(), Some(options)).await {
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            break;
                        }
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            if event.event_type() == etcd_client::EventType::Delete {
                                keys.remove(&key);
                            } else {
                                let value = String::from_utf8_lossy(kv.value()).into_owned();
                                keys.insert(key, (kv.create_revision(), value));
                            }
                        }
                        tx.send_replace(instances(&keys, &me));
                        attempt = 0;
                    }
                }
            }
            let delay =
                crate::actors::backoff(attempt, Duration::from_millis(200), Duration::from_secs(5));
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    });
    rx
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[(&str, i64, &str)]) -> BTreeMap<String, (i64, String)> {
        entries
            .iter()
            .map(|(k, rev, v)| (k.to_string(), (*rev, v.to_string())))
            .collect()
    }

    #[test]
    fn the_oldest_key_leads_and_this_process_is_marked() {
        let k = keys(&[
            ("/p/_election/b", 9, "pid 2 lease b host two"),
            ("/p/_election/a", 5, "pid 1 lease a host one"),
            ("/p/_election/c", 12, "pid 3 lease c host three"),
        ]);
        let list = instances(&k, "/p/_election/b");
        let who: Vec<(&str, bool, bool)> = list
            .iter()
            .map(|i| (i.who.as_str(), i.leader, i.me))
            .collect();
        assert_eq!(
            who,
            [
                ("pid 1 lease a host one", true, false),
                ("pid 2 lease b host two", false, true),
                ("pid 3 lease c host three", false, false),
            ]
        );
        assert_eq!(list[0].since, 5);
    }

    #[test]
    fn what_an_election_key_says_is_bounded() {
        let long = "é".repeat(500);
        let many: Vec<(String, i64, String)> = (0..50)
            .map(|i| (format!("/p/_election/{i:02}"), i, long.clone()))
            .collect();
        let k: BTreeMap<String, (i64, String)> =
            many.into_iter().map(|(k, rev, v)| (k, (rev, v))).collect();
        let list = instances(&k, "none");
        assert_eq!(list.len(), INSTANCES_SHOWN);
        assert!(list.iter().all(|i| i.who.len() <= WHO_SHOWN));
        assert!(list[0].leader && list.iter().skip(1).all(|i| !i.leader));
    }

    #[test]
    fn an_instance_names_its_pid_first_and_its_host() {
        let me = who_am_i(0xab);
        let parts: Vec<&str> = me.split_whitespace().collect();
        assert_eq!(parts[0], "pid");
        assert_eq!(parts[1], std::process::id().to_string());
        assert_eq!(&parts[2..4], ["lease", "ab"]);
        assert_eq!(parts[4], "host");
    }
}
