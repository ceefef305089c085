//! The commands a workload's host runs: `lbmanager member add|remove` and `lbmanager status`.
//!
//! They need etcd access only: they write or delete a member key, then read what the running
//! lbmanager publishes ([`crate::status`]) to learn when AWS has followed. The waiting watches the
//! load balancer's status key from the revision of the change, so no update is missed, and judges
//! each version with [`crate::status::judge`].

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use futures::StreamExt;

use crate::cli::{AddArgs, EtcdArgs, PlanOutput, RemoveArgs, StatusArgs};
use crate::daemon::{etcd_options, StopSignal};
use crate::etcd::{self, EtcdOptions};
use crate::filter::Filters;
use crate::key::{self, heartbeat_key, status_key, waiting_key, LbId, Member, MemberKey};
use crate::status::{self, judge, Goal, Heartbeat, LbStatus, Verdict};

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
    /// lbmanager reported that the wait cannot end well (a member AWS rejects, …).
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CommandError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

fn etcd_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::Etcd(e.to_string())
}

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

/// Connects and makes sure etcd answers, within `--etcd-connect-timeout`.
async fn connect(args: &EtcdArgs) -> Result<(Client, EtcdOptions), CommandError> {
    let opts = etcd_options(args).map_err(CommandError::Usage)?;
    let reach = async {
        let mut client = etcd::connect(&opts).await.map_err(etcd_error)?;
        client.status().await.map_err(etcd_error)?;
        Ok::<_, CommandError>(client)
    };
    match tokio::time::timeout(args.etcd_connect_timeout, reach).await {
        Ok(client) => Ok((client?, opts)),
        Err(_) => Err(CommandError::Etcd(format!(
            "no answer from {} within {:?}",
            opts.endpoints.join(","),
            args.etcd_connect_timeout
        ))),
    }
}

/// `lbmanager member add`.
pub async fn member_add(args: AddArgs, stop: StopSignal) -> ExitCode {
    exit(add(args, stop).await)
}

async fn add(args: AddArgs, stop: StopSignal) -> Result<(), CommandError> {
    let prefix = &args.etcd.prefix;
    let target = member_key(prefix, &args.key)?;
    let (mut client, _) = connect(&args.etcd).await?;
    let lease = match args.lease_ttl {
        Some(ttl) => Some(
            client
                .lease_grant(ttl.as_secs() as i64, None)
                .await
                .map_err(etcd_error)?
                .id(),
        ),
        None => None,
    };
    let options = lease.map(|id| PutOptions::new().with_lease(id));
    let put = client
        .put(args.key.as_str(), "", options)
        .await
        .map_err(etcd_error)?;
    let revision = put.header().map_or(0, |h| h.revision());
    eprintln!("lbmanager: wrote {} (etcd revision {revision})", args.key);
    let mut keeping = None;
    if let (Some(id), Some(ttl)) = (lease, args.lease_ttl) {
        keeping = Some(tokio::spawn(keep_alive(client.clone(), id, ttl)));
    }
    let waited = async {
        if args.wait {
            let goal = Goal::Present {
                healthy: args.healthy,
            };
            wait(&mut client, prefix, &target, goal, revision, args.timeout).await?;
            eprintln!(
                "lbmanager: AWS has {} in {}{}",
                target.member,
                target.lb,
                if args.healthy { ", healthy" } else { "" }
            );
        }
        Ok::<_, CommandError>(())
    }
    .await;
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
    client.lease_revoke(id).await.map_err(etcd_error)?;
    waited
}

/// Keeps lease `id` alive (every third of its TTL) until it is lost; returns why.
async fn keep_alive(mut client: Client, id: i64, ttl: Duration) -> String {
    let every = ttl / 3;
    loop {
        let (mut keeper, mut answers) = match client.lease_keep_alive(id).await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("lbmanager: keeping the lease alive failed, retrying: {e}");
                tokio::time::sleep(every.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        loop {
            if let Err(e) = keeper.keep_alive().await {
                eprintln!("lbmanager: keeping the lease alive failed, retrying: {e}");
                break;
            }
            match answers.message().await {
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
    }
}

/// `lbmanager member remove`.
pub async fn member_remove(args: RemoveArgs) -> ExitCode {
    exit(remove(args).await)
}

async fn remove(args: RemoveArgs) -> Result<(), CommandError> {
    let prefix = &args.etcd.prefix;
    let target = member_key(prefix, &args.key)?;
    let (mut client, _) = connect(&args.etcd).await?;
    let deleted = client
        .delete(args.key.as_str(), None)
        .await
        .map_err(etcd_error)?;
    // A key that was not there changes nothing: any status will do.
    let revision = if deleted.deleted() > 0 {
        eprintln!("lbmanager: deleted {}", args.key);
        deleted.header().map_or(0, |h| h.revision())
    } else {
        eprintln!("lbmanager: {} was not there", args.key);
        0
    };
    if !(args.wait || args.drain) {
        return Ok(());
    }
    let goal = Goal::Absent {
        drained: args.drain,
    };
    let status = wait(&mut client, prefix, &target, goal, revision, args.timeout).await?;
    eprintln!(
        "lbmanager: AWS no longer routes to {} in {}",
        target.member, target.lb
    );
    if let (true, Some(ttl)) = (args.drain, status.and_then(|s| s.ttl)) {
        eprintln!(
            "lbmanager: waiting out the record's TTL ({ttl}s) for clients holding the old answer"
        );
        tokio::time::sleep(Duration::from_secs(ttl.max(0) as u64)).await;
    }
    Ok(())
}

/// Waits until the published status of `target`'s load balancer says `goal` is reached for the
/// change at `revision`; returns the status that said so (none: the record was removed).
async fn wait(
    client: &mut Client,
    prefix: &str,
    target: &MemberKey,
    goal: Goal,
    revision: i64,
    timeout: Duration,
) -> Result<Option<LbStatus>, CommandError> {
    // Health and draining are read again only while someone waits on them: say so.
    let settle = matches!(
        goal,
        Goal::Present { healthy: true } | Goal::Absent { drained: true }
    );
    let waiting = if settle {
        Some(announce_waiting(client, prefix, target, timeout).await?)
    } else {
        None
    };
    let mut why = None;
    let mut watcher = client.clone();
    let watched = watch_status(
        &mut watcher,
        prefix,
        &target.lb,
        &target.member,
        goal,
        revision,
        &mut why,
    );
    let result = tokio::time::timeout(timeout, watched).await;
    if let Some(lease) = waiting {
        // Deletes the waiting key (and if this fails, the lease runs out by itself).
        let _ = client.lease_revoke(lease).await;
    }
    match result {
        Ok(result) => result,
        Err(_) => {
            let mut why = why.unwrap_or_else(|| "no word from lbmanager".into());
            if let Some(note) = liveness(client, prefix).await {
                why = format!("{why}; {note}");
            }
            Err(CommandError::Timeout {
                waited: timeout,
                why,
            })
        }
    }
}

/// Writes the [`waiting_key`] of `target` under a lease that outlives the wait a little; returns
/// the lease.
async fn announce_waiting(
    client: &mut Client,
    prefix: &str,
    target: &MemberKey,
    timeout: Duration,
) -> Result<i64, CommandError> {
    let ttl = timeout.as_secs() as i64 + 10;
    let lease = client
        .lease_grant(ttl, None)
        .await
        .map_err(etcd_error)?
        .id();
    let key = waiting_key(prefix, &target.lb, &target.member);
    client
        .put(key, "", Some(PutOptions::new().with_lease(lease)))
        .await
        .map_err(etcd_error)?;
    Ok(lease)
}

/// Follows the status key until a verdict; `why` keeps the latest reason to wait.
async fn watch_status(
    client: &mut Client,
    prefix: &str,
    lb: &LbId,
    member: &Member,
    goal: Goal,
    revision: i64,
    why: &mut Option<String>,
) -> Result<Option<LbStatus>, CommandError> {
    let key = status_key(prefix, lb);
    // The last status seen: what a wait that ends with the record's removal returns.
    let mut last: Option<LbStatus> = None;
    loop {
        let got = client.get(key.as_str(), None).await.map_err(etcd_error)?;
        let current = got.kvs().first().and_then(|kv| parse(kv.value()));
        let verdict = judge(lb, member, goal, revision, current.as_ref(), false);
        last = current.or(last);
        if decide(verdict, why)? {
            return Ok(last);
        }
        let from = got.header().map_or(0, |h| h.revision()) + 1;
        let mut stream = client
            .watch(
                key.as_str(),
                Some(WatchOptions::new().with_start_revision(from)),
            )
            .await
            .map_err(etcd_error)?;
        loop {
            let resp = match stream.next().await {
                Some(Ok(resp)) => resp,
                // The stream broke (etcd restarted, …): read again and watch anew.
                None | Some(Err(_)) => break,
            };
            if resp.canceled() {
                break;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let (status, deleted) = match event.event_type() {
                    EventType::Put => (parse(kv.value()), false),
                    EventType::Delete => (None, kv.mod_revision() > revision),
                };
                let verdict = judge(lb, member, goal, revision, status.as_ref(), deleted);
                last = status.or(last);
                if decide(verdict, why)? {
                    return Ok(last);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn parse(value: &[u8]) -> Option<LbStatus> {
    serde_json::from_slice(value).ok()
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

/// The running lbmanager's heartbeat, if one ever reported.
async fn heartbeat(client: &mut Client, prefix: &str) -> Result<Option<Heartbeat>, CommandError> {
    let got = client
        .get(heartbeat_key(prefix), None)
        .await
        .map_err(etcd_error)?;
    Ok(got
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// What the heartbeat says when lbmanager is not (or no longer) reporting; `None` when it is.
async fn liveness(client: &mut Client, prefix: &str) -> Option<String> {
    match heartbeat(client, prefix).await.ok()? {
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

/// `lbmanager status`.
pub async fn status(args: StatusArgs) -> ExitCode {
    match show_status(&args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => exit(Err(e)),
    }
}

async fn show_status(args: &StatusArgs) -> Result<u8, CommandError> {
    let prefix = &args.etcd.prefix;
    let (mut client, _) = connect(&args.etcd).await?;
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    let snapshot = etcd::read_snapshot(
        &mut client,
        prefix,
        &Filters::default(),
        etcd::SNAPSHOT_PAGE,
        &quiet,
    )
    .await
    .map_err(etcd_error)?;
    let desired_state = &snapshot.loaded.desired;
    let desired: BTreeMap<LbId, BTreeSet<Member>> = desired_state
        .load_balancers()
        .map(|lb| (lb.clone(), desired_state.resolve(lb).members))
        .filter(|(_, members)| !members.is_empty())
        .collect();
    let state = format!("{}/status/", key::state_prefix(prefix));
    let published: BTreeMap<LbId, LbStatus> = etcd::read_records(&mut client, &state)
        .await
        .map_err(etcd_error)?
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                key::parse_status(prefix, &k)?,
                serde_json::from_str(&v).ok()?,
            ))
        })
        .collect();
    let now = status::now();
    let report = status::StatusReport {
        daemon: heartbeat(&mut client, prefix)
            .await?
            .map(|beat| status::DaemonSeen::new(&beat, now)),
        load_balancers: status::rows(&desired, &published, now),
    };
    match args.output {
        PlanOutput::Table => print!("{}", status::render_table(&report)),
        PlanOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| CommandError::Failed(e.to_string()))?
        ),
    }
    match &report.daemon {
        None => {
            eprintln!("lbmanager: no lbmanager has ever reported for the prefix {prefix}: is one running?");
            Ok(1)
        }
        Some(d) if d.stale => {
            eprintln!(
                "lbmanager: lbmanager last reported {}s ago (every {}s when running): is it running?",
                d.reported_secs_ago, d.resync_interval_secs
            );
            Ok(1)
        }
        Some(_) => Ok(status::exit_code(&report.load_balancers)),
    }
}
