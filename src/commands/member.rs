//! `lbmanager member add|remove`, as a workload's host runs them.
//!
//! They need etcd access only: they write or delete a member key, then read what the running
//! lbmanager publishes ([`crate::status`]) to learn when AWS has followed. The waiting watches the
//! load balancer's status key from the revision of the change, so no update is missed, and judges
//! each version with [`crate::status::judge`].

use std::process::ExitCode;
use std::time::{Duration, Instant};

use etcd_client::{EventType, PutOptions, WatchOptions};
use futures::StreamExt;

use super::host::{connect, etcd_error, heartbeat, CommandError};
use crate::cli::{AddArgs, RemoveArgs};
use crate::etcd::{self, Failover, PROBE};
use crate::key::{self, LbId, Member, MemberKey};
use crate::layout::Layout;
use crate::signal::StopSignal;
use crate::status::{self, judge_change, Change, Goal, LbStatus, Verdict};

/// Prints `result`'s error and turns it into the exit code.
fn exit(result: Result<(), CommandError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbmanager: {e}");
            e.exit_code()
        }
    }
}

/// The member a key names, or why it names none.
fn member_key(prefix: &str, key: &str) -> Result<MemberKey, CommandError> {
    match key::parse(prefix, key) {
        Ok(Some(member)) => Ok(member),
        Ok(None) => Err(CommandError::Usage(format!(
            "{key} is not a member key under the prefix {prefix} (see `lbmanager --help` for \
             the grammar, --prefix for another prefix)"
        ))),
        Err(e) => Err(CommandError::Usage(format!(
            "{key} is not a valid member key: {e}"
        ))),
    }
}

/// `lbmanager member add`.
pub async fn add(args: AddArgs, stop: StopSignal) -> ExitCode {
    exit(adding(args, stop).await)
}

async fn adding(args: AddArgs, stop: StopSignal) -> Result<(), CommandError> {
    let layout = &Layout::new(&args.etcd.prefix);
    let target = member_key(layout.prefix(), &args.key)?;
    let mut etcd = connect(&args.etcd).await?;
    let deadline = Instant::now() + args.timeout;
    let goal = Goal::Present {
        healthy: args.healthy,
    };
    // Said before the write, so that the very first sync already reads the health back.
    let waiting = match args.wait {
        true => announce_waiting(&mut etcd, layout, &target, goal, args.timeout).await?,
        false => None,
    };
    let lease = match args.lease_ttl {
        // Granted twice if an answer is lost: the lease not used runs out by itself.
        Some(ttl) => Some(
            etcd.run(|mut c| async move { c.lease_grant(ttl.as_secs() as i64, None).await })
                .await
                .map_err(etcd_error)?
                .id(),
        ),
        None => None,
    };
    let options = lease.map(|id| PutOptions::new().with_lease(id));
    let put = etcd
        .run(|mut c| {
            let (key, options) = (args.key.clone(), options.clone());
            async move { c.put(key, "", options).await }
        })
        .await
        .map_err(etcd_error)?;
    let revision = put.header().map_or(0, |h| h.revision());
    eprintln!("lbmanager: wrote {} (etcd revision {revision})", args.key);
    let mut keeping = None;
    if let (Some(id), Some(ttl)) = (lease, args.lease_ttl) {
        keeping = Some(tokio::spawn(keep_alive(etcd.clone(), id, ttl)));
    }
    let waited = match args.wait {
        true => {
            let waited = tokio::select! {
                done = wait(&mut etcd, layout, &target, goal, Change::At(revision), deadline, args.timeout) => done.map(|_| ()),
                what = stop.clone() => Err(CommandError::Interrupted(what)),
            };
            withdraw(&mut etcd, waiting).await;
            waited
        }
        false => Ok(()),
    };
    if waited.is_ok() && args.wait {
        eprintln!(
            "lbmanager: AWS has {} in {}{}",
            target.member,
            target.lb,
            if args.healthy { ", healthy" } else { "" }
        );
    }
    let Some(id) = lease else {
        return waited;
    };
    let keeper = keeping.expect("started with the lease");
    if waited.is_ok() {
        // Lease-backed presence: hold the key until told to stop (or the lease is lost).
        tokio::select! {
            what = stop => eprintln!("lbmanager: {what} received, deleting {}", args.key),
            lost = keeper => {
                let why = lost.unwrap_or_else(|e| e.to_string());
                return Err(CommandError::Failed(format!("lost the lease of {}: {why}", args.key)));
            }
        }
    }
    // Revoking the lease deletes the key; lbmanager then removes the member.
    revoke(&mut etcd, id).await?;
    waited
}

/// Revokes lease `id` (through another member if its own has gone). A lease etcd no longer
/// knows is gone already, with its keys: a revoke sent twice, or a lease that ran out.
async fn revoke(etcd: &mut Failover, id: i64) -> Result<(), CommandError> {
    match etcd
        .run(|mut c| async move { c.lease_revoke(id).await })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
        Err(e) => Err(etcd_error(e)),
    }
}

/// Keeps lease `id` alive (every third of its TTL) until it is lost; returns why. When the
/// member it reaches fails, it goes on through another that answers.
async fn keep_alive(etcd: Failover, id: i64, ttl: Duration) -> String {
    let (mut client, opts) = (etcd.client(), etcd.options().clone());
    let every = ttl / 3;
    loop {
        let (mut keeper, mut answers) = match client.lease_keep_alive(id).await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("lbmanager: keeping the lease alive failed, retrying: {e}");
                tokio::time::sleep(every.min(Duration::from_secs(1))).await;
                if let Ok(other) = etcd::connect_alive(&opts, PROBE).await {
                    client = other;
                }
                continue;
            }
        };
        loop {
            if let Err(e) = keeper.keep_alive().await {
                eprintln!("lbmanager: keeping the lease alive failed, retrying: {e}");
                break;
            }
            // A member that stalls answers nothing: give up on it after a third of the TTL.
            let answered = tokio::time::timeout(every, answers.message()).await;
            let Ok(answered) = answered else {
                eprintln!("lbmanager: keeping the lease alive: no answer, retrying");
                break;
            };
            match answered {
                Ok(Some(answer)) if answer.ttl() <= 0 => {
                    return "etcd says it expired (was etcd out of reach for longer than the TTL?)"
                        .into()
                }
                Ok(Some(_)) => tokio::time::sleep(every).await,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("lbmanager: keeping the lease alive failed, retrying: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(other) = etcd::connect_alive(&opts, PROBE).await {
            client = other;
        }
    }
}

/// `lbmanager member remove`.
pub async fn remove(args: RemoveArgs, stop: StopSignal) -> ExitCode {
    exit(removing(args, stop).await)
}

async fn removing(args: RemoveArgs, stop: StopSignal) -> Result<(), CommandError> {
    let layout = &Layout::new(&args.etcd.prefix);
    let target = member_key(layout.prefix(), &args.key)?;
    let mut etcd = connect(&args.etcd).await?;
    let deadline = Instant::now() + args.timeout;
    let goal = Goal::Absent {
        drained: args.drain,
    };
    // Said before the delete: the draining is read back from the deregistration on.
    let waiting = match args.wait || args.drain {
        true => announce_waiting(&mut etcd, layout, &target, goal, args.timeout).await?,
        false => None,
    };
    let deleted = etcd
        .run(|mut c| {
            let key = args.key.clone();
            async move { c.delete(key, None).await }
        })
        .await
        .map_err(etcd_error)?;
    // A key that was not there (or whose delete, sent again, found it gone) changes nothing:
    // the wait is for lbmanager to have applied the change that removed it.
    let deleted_one = deleted.deleted() > 0;
    if deleted_one {
        eprintln!("lbmanager: deleted {}", args.key);
    } else {
        eprintln!("lbmanager: {} was not there", args.key);
    }
    if !(args.wait || args.drain) {
        return Ok(());
    }
    let mut waiting = waiting;
    let change = if deleted_one {
        Change::At(deleted.header().map_or(0, |h| h.revision()))
    } else {
        // A sync in flight may have just registered the member that some other change took out
        // of etcd: a barrier written now makes lbmanager say when it has caught up.
        match barrier(&mut etcd, layout, &target, waiting, args.timeout).await {
            Ok((lease, barrier)) => {
                waiting = Some(lease);
                Change::NotThere { barrier }
            }
            Err(e) => {
                withdraw(&mut etcd, waiting).await;
                return Err(e);
            }
        }
    };
    let waited = async {
        let status = wait(
            &mut etcd.clone(),
            layout,
            &target,
            goal,
            change,
            deadline,
            args.timeout,
        )
        .await?;
        eprintln!(
            "lbmanager: AWS no longer routes to {} in {}",
            target.member, target.lb
        );
        let Some(ttl) = status.and_then(|s| s.ttl).filter(|_| args.drain) else {
            return Ok(());
        };
        let ttl = Duration::from_secs(ttl.max(0) as u64);
        let left = deadline.saturating_duration_since(Instant::now());
        eprintln!(
            "lbmanager: waiting out the record's TTL ({}s) for clients holding the old answer",
            ttl.as_secs()
        );
        tokio::time::sleep(ttl.min(left)).await;
        if ttl > left {
            return Err(CommandError::Timeout {
                waited: args.timeout,
                why: format!(
                    "the value is out of the record set, but its TTL ({}s) is longer than what \
                     --timeout left",
                    ttl.as_secs()
                ),
            });
        }
        Ok(())
    };
    let waited = tokio::select! {
        done = waited => done,
        what = stop => Err(CommandError::Interrupted(what)),
    };
    withdraw(&mut etcd, waiting).await;
    waited
}

/// Waits until the published status of `target`'s load balancer says `goal` is reached for the
/// `change`, or `deadline` (`timeout` after the start) passes; returns the status
/// that said so (none: the record was removed).
async fn wait(
    etcd: &mut Failover,
    layout: &Layout,
    target: &MemberKey,
    goal: Goal,
    change: Change,
    deadline: Instant,
    timeout: Duration,
) -> Result<Option<LbStatus>, CommandError> {
    let mut why = None;
    let mut watcher = etcd.clone();
    let watched = watch_status(
        &mut watcher,
        layout,
        &target.lb,
        &target.member,
        goal,
        change,
        &mut why,
    );
    match tokio::time::timeout_at(deadline.into(), watched).await {
        Ok(result) => result,
        Err(_) => {
            let mut why = why.unwrap_or_else(|| "no word from lbmanager".into());
            if let Some(note) = liveness(etcd, layout).await {
                why = format!("{why}; {note}");
            }
            Err(CommandError::Timeout {
                waited: timeout,
                why,
            })
        }
    }
}

/// Health and draining are read back only while someone waits on them (see
/// [`Layout::waiting`]): for a `goal` that needs them, writes the waiting key under a
/// lease that outlives the wait a little, and returns the lease.
async fn announce_waiting(
    etcd: &mut Failover,
    layout: &Layout,
    target: &MemberKey,
    goal: Goal,
    timeout: Duration,
) -> Result<Option<i64>, CommandError> {
    let needed = match goal {
        Goal::Present { healthy } => healthy,
        Goal::Absent { drained } => drained,
    };
    // Route53 has no health, and its "drain" is the TTL, waited here.
    if !needed || matches!(target.lb, LbId::Route53 { .. }) {
        return Ok(None);
    }
    let lease = wait_lease(etcd, timeout).await?;
    put_waiting(etcd, layout, target, lease).await?;
    Ok(Some(lease))
}

/// A lease for the waiting key that outlives the wait a little.
async fn wait_lease(etcd: &mut Failover, timeout: Duration) -> Result<i64, CommandError> {
    let ttl = timeout.as_secs() as i64 + 10;
    Ok(etcd
        .run(|mut c| async move { c.lease_grant(ttl, None).await })
        .await
        .map_err(etcd_error)?
        .id())
}

/// Writes `target`'s waiting key under `lease`; returns the write's revision.
async fn put_waiting(
    etcd: &mut Failover,
    layout: &Layout,
    target: &MemberKey,
    lease: i64,
) -> Result<i64, CommandError> {
    let key = layout.waiting(&target.lb, &target.member, lease);
    let put = etcd
        .run(|mut c| {
            let key = key.clone();
            async move {
                c.put(key, "", Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await
        .map_err(etcd_error)?;
    Ok(put.header().map_or(0, |h| h.revision()))
}

/// Writes the waiting key now (under `lease`, or a new one that outlives the wait a little) as a
/// barrier: lbmanager raises the load balancer's status to its revision once it is idle and in
/// step with every change before it. Returns the lease and the barrier's revision.
async fn barrier(
    etcd: &mut Failover,
    layout: &Layout,
    target: &MemberKey,
    lease: Option<i64>,
    timeout: Duration,
) -> Result<(i64, i64), CommandError> {
    let lease = match lease {
        Some(lease) => lease,
        None => wait_lease(etcd, timeout).await?,
    };
    let revision = put_waiting(etcd, layout, target, lease).await?;
    Ok((lease, revision))
}

/// Deletes the waiting key (revoking its lease; if that fails, the lease runs out by itself).
async fn withdraw(etcd: &mut Failover, waiting: Option<i64>) {
    if let Some(lease) = waiting {
        let _ = revoke(etcd, lease).await;
    }
}

/// Follows the status key until a verdict; `why` keeps the latest reason to wait.
async fn watch_status(
    etcd: &mut Failover,
    layout: &Layout,
    lb: &LbId,
    member: &Member,
    goal: Goal,
    change: Change,
    why: &mut Option<String>,
) -> Result<Option<LbStatus>, CommandError> {
    let key = layout.status(lb);
    let revision = change.revision();
    // The last status seen: what a wait that ends with the record's removal returns.
    let mut last: Option<LbStatus> = None;
    // No record now: replay the record's history since the change (it may have come and gone).
    let mut replay = true;
    loop {
        let got = etcd.get(&key).await.map_err(etcd_error)?;
        let current = match got.kvs().first() {
            Some(kv) => match parse(kv.value(), why) {
                Some(status) => Some(status),
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            None => None,
        };
        // No status at all for a key that was not there: done if the load balancer is not
        // managed (no managed record either), else a status may be on its way.
        let unmanaged = match (change, &current) {
            (Change::NotThere { .. }, None) => {
                let managed = layout.managed(lb);
                etcd.get(&managed)
                    .await
                    .map_err(etcd_error)?
                    .kvs()
                    .is_empty()
            }
            _ => false,
        };
        let verdict = judge_change(lb, member, goal, change, current.as_ref(), unmanaged);
        let absent = current.is_none();
        last = seen(current, last);
        if decide(verdict, why)? {
            return Ok(last);
        }
        let from = match replay && absent && revision > 0 {
            true => revision + 1,
            false => got.header().map_or(0, |h| h.revision()) + 1,
        };
        let mut stream = etcd
            .run(|mut c| {
                let key = key.clone();
                async move {
                    c.watch(key, Some(WatchOptions::new().with_start_revision(from)))
                        .await
                }
            })
            .await
            .map_err(etcd_error)?;
        loop {
            let resp = match stream.next().await {
                Some(Ok(resp)) => resp,
                // The stream broke (etcd restarted, …): read again and watch anew.
                None | Some(Err(_)) => break,
            };
            if resp.canceled() {
                // Compacted past `from`: read again and watch from now.
                replay = false;
                break;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let (status, deleted) = match event.event_type() {
                    EventType::Put => match parse(kv.value(), why) {
                        Some(status) => (Some(status), false),
                        None => continue,
                    },
                    EventType::Delete => (None, kv.mod_revision() > revision),
                };
                let verdict = judge_change(lb, member, goal, change, status.as_ref(), deleted);
                last = seen(status, last);
                if decide(verdict, why)? {
                    return Ok(last);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The status a wait ends with: the latest seen, with the longest TTL any status of the wait
/// gave (a name's last status may be gone, or one published blind, by a leader that had not read
/// Route53 yet: `--drain` waits out the longest TTL resolvers may have been handed).
fn seen(status: Option<LbStatus>, last: Option<LbStatus>) -> Option<LbStatus> {
    let ttl = status
        .as_ref()
        .and_then(|s| s.ttl)
        .max(last.as_ref().and_then(|s| s.ttl));
    let mut latest = status.or(last)?;
    latest.ttl = ttl;
    Some(latest)
}

/// A status record; one that cannot be read is a reason to wait (in `why`), not a verdict.
fn parse(value: &[u8], why: &mut Option<String>) -> Option<LbStatus> {
    match serde_json::from_slice(value) {
        Ok(status) => Some(status),
        Err(e) => {
            *why = Some(format!(
                "the status record cannot be read ({e}): is lbmanager of another version?"
            ));
            None
        }
    }
}

/// Whether the wait is over (an error: over, and failed); keeps the reason to wait in `why`.
fn decide(verdict: Verdict, why: &mut Option<String>) -> Result<bool, CommandError> {
    match verdict {
        Verdict::Done => Ok(true),
        Verdict::Failed(reason) => Err(CommandError::Failed(reason)),
        Verdict::Wait(reason) => {
            if reason.is_some() {
                *why = reason;
            }
            Ok(false)
        }
    }
}

/// What the heartbeat says when lbmanager is not (or no longer) reporting; `None` when it is.
async fn liveness(etcd: &mut Failover, layout: &Layout) -> Option<String> {
    let prefix = layout.prefix();
    match heartbeat(etcd, layout).await.ok()? {
        None => Some(format!(
            "no lbmanager has ever reported for the prefix {prefix}: is one running?"
        )),
        Some(beat) => beat.stale(status::now()).map(|age| {
            format!(
                "lbmanager last reported {age}s ago (every {}s when running): is it running?",
                beat.resync_interval_secs
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(revision: i64, ttl: Option<i64>) -> LbStatus {
        let mut s: LbStatus = serde_json::from_str(
            r#"{"load_balancer":"route53/Z1/www.example.com","revision":1,"in_step":true,
                "desired":0,"members":[],"last_sync":{"at":1,"ok":true,"cause":"etcd event"}}"#,
        )
        .unwrap();
        s.revision = revision;
        s.ttl = ttl;
        s
    }

    /// A status published blind (a new leader that had not read Route53: no TTL) after one that
    /// had the TTL does not make `--drain` forget it (the 60-minute soak's Route53 drain).
    #[test]
    fn a_wait_keeps_the_longest_ttl_it_saw() {
        let last = seen(Some(status(5, Some(300))), None);
        let last = seen(Some(status(0, None)), last).unwrap();
        assert_eq!((last.revision, last.ttl), (0, Some(300)));
        let last = seen(None, Some(last)).unwrap();
        assert_eq!(last.ttl, Some(300));
        assert!(seen(None, None).is_none());
    }
}
