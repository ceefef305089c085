//! The daemon as a library: `lbmanager run` and `lbmanager plan`, from parsed flags to an exit
//! code. `main` only parses the flags and calls these (as mini-redis's `server::run` is called), so
//! everything here can be driven from a test with its own stop signal.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use slog::{error, info, warn, Logger};

use crate::actors::supervisor::{Shutdown, Supervisor};
use crate::actors::{backoff, Settings};
use crate::aws::{self, Backends, ClientOptions, Quotas};
use crate::cli::{PlanArgs, PlanOutput, RunArgs};
use crate::etcd::{self, EtcdOptions, Snapshot};
use crate::fence::Fence;
use crate::filter::Filters;
use crate::signal::StopSignal;

/// `lbmanager run`: reach etcd (and, with `--ha`, the leadership), build the AWS backends, start the
/// actor system, and wait for `stop` (exit 0) or for the Supervisor to die (exit 1).
pub async fn run(args: RunArgs, stop: StopSignal) -> ExitCode {
    let log = crate::logging::logger(args.log_level.to_slog(), args.log_format);
    info!(log, "lbmanager starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "etcd" => args.etcd.etcd_endpoints.join(","),
        "prefix" => &args.etcd.prefix,
        "aws_endpoint" => args.aws_endpoint_url.as_deref().unwrap_or("default"));
    let etcd_opts = match args.etcd.options() {
        Ok(opts) => opts,
        Err(e) => {
            error!(log, "bad etcd settings"; "error" => e);
            return ExitCode::from(2);
        }
    };
    let leadership = if args.ha {
        tokio::select! {
            led = crate::ha::lead(&etcd_opts, &args.etcd.prefix, args.ha_lease_ttl, args.aws_timeout, args.etcd.etcd_connect_timeout, &log) => match led {
                Ok(l) => Some(l),
                Err(e) => {
                    error!(log, "cannot take part in the leader election"; "error" => %e);
                    return ExitCode::FAILURE;
                }
            },
            code = wait_for_stop(&log, || true, stop.clone()) => return code,
        }
    } else {
        None
    };
    let filters = Filters {
        elb: args.elb_filter.clone(),
        zones: args.zone_filter.clone(),
    };
    let Some((client, snapshot, records)) = initial_read(
        &log,
        &etcd_opts,
        &args.etcd.prefix,
        &filters,
        args.etcd.etcd_connect_timeout,
    )
    .await
    else {
        return ExitCode::FAILURE;
    };
    let sdk = aws::load_sdk_config(&ClientOptions {
        endpoint_url: args.aws_endpoint_url.clone(),
        timeout: args.aws_timeout,
    })
    .await;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    if let Some(addr) = args.listen {
        if let Err(e) = crate::http::serve(addr, metrics.clone()) {
            error!(log, "cannot listen"; "address" => %addr, "error" => %e);
            return ExitCode::FAILURE;
        }
        info!(log, "serving /metrics, /healthz and /readyz"; "address" => %addr);
    }
    let settings = Arc::new(Settings {
        prefix: args.etcd.prefix.clone(),
        route53_ttl: args.route53_ttl,
        resync_interval: args.resync_interval,
        policy: args.policy.into(),
        ownership: args.ownership.into(),
        dry_run: args.dry_run,
        metrics: metrics.clone(),
        filters,
        ..Settings::default()
    });
    if args.dry_run {
        info!(log, "dry run: nothing will be changed in AWS or etcd");
    }
    let (once_tx, once_rx) = tokio::sync::oneshot::channel();
    let fence = leadership
        .as_ref()
        .map_or_else(Fence::open, |l| l.fence.clone());
    let backends = backends(&sdk, &args, &fence, Some(metrics.clone()), &log).await;
    let filters = settings.filters.clone();
    let recorded = records.managed.into_iter().filter(|lb| filters.allows(lb));
    let mut obsolete = records.obsolete;
    let mut owned = records.owned;
    if settings.ownership == crate::ownership::Ownership::Exclusive && !owned.is_empty() {
        // Records of an earlier `--ownership shared`: stale by now (members came and went
        // unrecorded meanwhile), so a later switch back must not find them.
        let keys: Vec<String> = owned
            .drain()
            .flat_map(|(lb, members)| {
                let prefix = args.etcd.prefix.clone();
                members
                    .into_iter()
                    .map(move |m| crate::layout::Layout::new(&prefix).owned(&lb, &m))
            })
            .collect();
        info!(log, "forgetting the ownership records of --ownership shared";
            "records" => keys.len());
        obsolete.extend(keys);
    }
    let supervisor = Supervisor::new(
        settings,
        &log,
        Arc::new(etcd::ClientWrites {
            client: client.clone(),
            leader: leadership.as_ref().map(|l| l.key.clone()),
        }),
        backends,
        snapshot,
    )
    .with_records(recorded.collect())
    .with_obsolete(obsolete)
    .with_owned(owned)
    .watching(client)
    .once_if(args.once, once_tx)
    .start();

    let code = if args.once {
        tokio::select! {
            code = once_rx => {
                let code = code.unwrap_or(1);
                info!(log, "synced once, exiting"; "converged" => code == 0);
                ExitCode::from(code)
            }
            code = wait_for_stop(&log, || supervisor.connected(), stop.clone()) => code,
        }
    } else {
        wait_for_stop(&log, || supervisor.connected(), stop).await
    };
    let mut drained = false;
    if code == ExitCode::SUCCESS || args.once {
        // Finish the AWS calls in flight; anything not done is done at the next start.
        match tokio::time::timeout(Duration::from_secs(10), supervisor.send(Shutdown)).await {
            Ok(_) => {
                drained = true;
                info!(log, "stopped cleanly")
            }
            Err(_) => warn!(log, "calls still in flight after 10s, stopping anyway"),
        }
    }
    if let Some(leadership) = leadership {
        if drained {
            // Nothing of ours can land any more: a standby may take over at once.
            leadership.release().await;
            info!(log, "resigned the leadership");
        } else {
            // Calls may still be landing: resigning now could let a standby act while they do.
            // The lease runs out by itself instead.
            warn!(
                log,
                "not resigning the leadership: calls may still be in flight; \
                a standby takes over when the lease expires"
            );
        }
    }
    actix_rt::System::current().stop();
    code
}

/// `lbmanager plan`: read etcd and AWS once, print what `run` would change.
pub async fn plan(args: PlanArgs) -> ExitCode {
    let run = &args.run;
    let log = crate::logging::logger(run.log_level.to_slog(), run.log_format);
    let etcd_opts = match run.etcd.options() {
        Ok(opts) => opts,
        Err(e) => {
            error!(log, "bad etcd settings"; "error" => e);
            return ExitCode::from(2);
        }
    };
    let filters = Filters {
        elb: run.elb_filter.clone(),
        zones: run.zone_filter.clone(),
    };
    let Some((_, snapshot, records)) = initial_read(
        &log,
        &etcd_opts,
        &run.etcd.prefix,
        &filters,
        run.etcd.etcd_connect_timeout,
    )
    .await
    else {
        return ExitCode::FAILURE;
    };
    let loaded = snapshot.loaded;
    for (key, e) in &loaded.ignored {
        crate::desired::log_ignored(&log, key, e);
    }
    if loaded.ignored_more > 0 {
        slog::warn!(log, "more keys count for nothing than are listed";
            "not_listed" => loaded.ignored_more);
    }
    let sdk = aws::load_sdk_config(&ClientOptions {
        endpoint_url: run.aws_endpoint_url.clone(),
        timeout: run.aws_timeout,
    })
    .await;
    let mut recorded: std::collections::BTreeSet<_> = loaded.legacy_recorded.into_iter().collect();
    recorded.extend(
        records
            .managed
            .into_iter()
            .filter(|lb| loaded.desired.allows(lb)),
    );
    let plans = crate::report::plan_all(
        &loaded.desired,
        &recorded,
        &records.rejected,
        &backends(&sdk, run, &Fence::open(), None, &log).await,
        run.route53_ttl,
        run.policy.into(),
        (crate::ownership::Ownership::from(run.ownership) == crate::ownership::Ownership::Shared)
            .then_some(&records.owned),
    )
    .await;
    match args.output {
        PlanOutput::Table => print!("{}", crate::report::render_table(&plans)),
        PlanOutput::Json => match serde_json::to_string_pretty(&plans) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                error!(log, "cannot render the plan as JSON"; "error" => %e);
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::from(crate::report::exit_code(&plans))
}

/// Connects and reads the whole prefix and lbmanager's records, retrying with backoff until
/// `timeout`: etcd may start a little after lbmanager, but one that stays away is an error for
/// the operator (and systemd).
async fn initial_read(
    log: &Logger,
    opts: &EtcdOptions,
    prefix: &str,
    filters: &Filters,
    timeout: Duration,
) -> Option<(etcd_client::Client, Snapshot, etcd::Records)> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        // Each request has its own deadline (connecting, then every page of the read): a big
        // tree is slow to read, not unreachable.
        let result = async {
            let mut client = tokio::time::timeout(Duration::from_secs(5), etcd::connect(opts))
                .await
                .map_err(|_| "no answer to connecting within 5s".to_string())?
                .map_err(|e| e.to_string())?;
            let snapshot =
                etcd::read_snapshot(&mut client, prefix, filters, etcd::SNAPSHOT_PAGE, log)
                    .await
                    .map_err(|e| e.to_string())?;
            let records = etcd::read_state(&mut client, prefix)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, snapshot, records))
        };
        let err = match result.await {
            Ok(done) => return Some(done),
            Err(e) => e,
        };
        let delay = backoff(attempt, Duration::from_millis(250), Duration::from_secs(5));
        attempt += 1;
        if Instant::now() + delay > deadline {
            error!(log, "cannot read from etcd, giving up";
                "endpoints" => opts.endpoints.join(","), "error" => err, "waited" => ?timeout);
            return None;
        }
        warn!(log, "etcd not reachable yet, will retry"; "error" => err, "retry_in" => ?delay);
        tokio::time::sleep(delay).await;
    }
}

/// Waits for `stop` (exit 0), or for the Supervisor to die (exit 1, so that systemd restarts
/// lbmanager from etcd's state).
async fn wait_for_stop(log: &Logger, alive: impl Fn() -> bool, stop: StopSignal) -> ExitCode {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            what = &mut stop => {
                info!(log, "{} received, stopping", what);
                return ExitCode::SUCCESS;
            }
            _ = tick.tick() => if !alive() {
                error!(log, "the supervisor died, exiting to be restarted");
                return ExitCode::FAILURE;
            },
        }
    }
}

/// The AWS clients: the default credentials', and those of each `--assume-role` rule for the
/// load balancers and zones it covers.
async fn backends(
    sdk: &aws_config::SdkConfig,
    args: &RunArgs,
    fence: &Fence,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    log: &Logger,
) -> Backends {
    let default = Backends::sdk(sdk, &quotas(args), fence, metrics.clone());
    if args.assume_role.is_empty() {
        return default;
    }
    for rule in &args.assume_role {
        info!(log, "assuming a role for some load balancers";
            "scope" => %rule.scope, "role" => &rule.role_arn,
            "external_id" => rule.external_id.is_some());
    }
    aws::roles::Routed::assume(
        sdk,
        default,
        &args.assume_role,
        &quotas(args),
        fence,
        metrics,
    )
    .await
    .backends()
}

/// The share of AWS's quotas the flags allow.
fn quotas(args: &RunArgs) -> Quotas {
    Quotas {
        share: args.aws_quota_share,
        route53_changes: aws::quota::Bucket::new(
            args.route53_change_burst,
            args.route53_change_rate,
        ),
    }
}
