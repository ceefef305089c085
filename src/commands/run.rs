//! `lbmanager run`, from parsed flags to an exit code. `main` only parses the flags and calls it
//! (as mini-redis's `server::run` is called), so it can be driven from a test with its own stop
//! signal.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix::AsyncContext;
use slog::{error, info, warn, Logger};

use crate::actors::supervisor::{Shutdown, Supervisor};
use crate::actors::Settings;
use crate::aws;
use crate::cli::RunArgs;
use crate::etcd;
use crate::fence::Fence;
use crate::signal::StopSignal;

/// `lbmanager run`: reach etcd (and, with `--ha`, the leadership), build the AWS backends, start the
/// actor system, and wait for `stop` (exit 0) or for the Supervisor to die (exit 1).
pub async fn run(args: RunArgs, stop: StopSignal) -> ExitCode {
    let log = args.log.logger();
    info!(log, "lbmanager starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "etcd" => args.etcd.etcd_endpoints.join(","),
        "prefix" => &args.etcd.prefix,
        "aws_endpoint" => args.aws.aws_endpoint_url.as_deref().unwrap_or("default"));
    let etcd_opts = match super::reach::checked(&log, &args.etcd, &args.route53, &args.sync) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    // Where lbmanager's keys are, built once for everything that reads or writes them.
    let layout = crate::layout::Layout::new(&args.etcd.prefix);
    let leadership = if args.ha.enabled {
        tokio::select! {
            led = crate::ha::lead(&etcd_opts, &layout, args.ha.lease_ttl, args.aws.aws_timeout, args.etcd.etcd_connect_timeout, &log) => match led {
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
    let filters = args.sync.filters();
    let Some((client, snapshot, records)) = super::reach::initial_read(
        &log,
        &etcd_opts,
        &layout,
        &filters,
        args.etcd.etcd_connect_timeout,
        !args.dry_run,
    )
    .await
    else {
        return ExitCode::FAILURE;
    };
    let sdk = aws::load_sdk_config(&args.aws.client_options()).await;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let settings = Arc::new(Settings {
        layout,
        route53_ttl: args.route53.route53_ttl,
        resync_interval: args.resync_interval,
        policy: args.sync.policy.into(),
        ownership: args.sync.ownership(),
        dry_run: args.dry_run,
        metrics: metrics.clone(),
        filters,
        health_checks: args.route53.route53_health_check.clone(),
        installation: records.installation.clone().unwrap_or_default(),
        ..Settings::default()
    });
    if args.dry_run {
        info!(log, "dry run: nothing will be changed in AWS or etcd");
    }
    let (once_tx, once_rx) = tokio::sync::oneshot::channel();
    let fence = leadership
        .as_ref()
        .map_or_else(Fence::open, |l| l.fence.clone());
    let backends = super::reach::backends(
        &sdk,
        &args.aws.quotas(),
        &args.aws.assume_role,
        &fence,
        Some(metrics.clone()),
        &log,
    )
    .await;
    // The Supervisor's address before it starts: the status page asks it for what it shows.
    let supervisor_ctx = actix::Context::<Supervisor>::new();
    if let Some(addr) = args.listen {
        let page = crate::http::Page {
            board: supervisor_ctx.address().recipient(),
            report: supervisor_ctx.address().recipient(),
            instances: leadership.as_ref().map(|l| l.instances.clone()),
            quotas: backends.clone(),
        };
        if let Err(e) = crate::http::serve(addr, metrics.clone(), page) {
            error!(log, "cannot listen"; "address" => %addr, "error" => %e);
            return ExitCode::FAILURE;
        }
        info!(log, "serving the status page, /metrics, /healthz and /readyz"; "address" => %addr);
    }
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
                let layout = &settings.layout;
                members.into_iter().map(move |m| layout.owned(&lb, &m))
            })
            .collect();
        info!(log, "forgetting the ownership records of --ownership shared";
            "records" => keys.len());
        obsolete.extend(keys);
    }
    let supervisor = supervisor_ctx.run(
        Supervisor::new(
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
        .with_published(records.published)
        .watching(etcd::Failover::new(
            client,
            etcd_opts,
            etcd::PROBE,
            args.etcd.etcd_connect_timeout,
        ))
        .once_if(args.once, once_tx),
    );

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
