//! The `lbmanager` binary: parse flags, reach etcd, build the AWS clients, start the actor system.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use clap::Parser;
use slog::{error, info, warn, Logger};

use lbmanager::actors::supervisor::{Shutdown, Supervisor};
use lbmanager::actors::{backoff, Settings};
use lbmanager::aws::metered::{MeteredElb, MeteredRoute53};
use lbmanager::aws::{self, elb::SdkElb, elbv2::SdkElbV2, route53::SdkRoute53, ClientOptions};
use lbmanager::cli::{Cli, Command, PlanArgs, PlanOutput, RunArgs};
use lbmanager::desired::DesiredState;
use lbmanager::etcd::{self, EtcdOptions, Snapshot};
use lbmanager::filter::Filters;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => actix_rt::System::new().block_on(run(args)),
        Command::Plan(args) => actix_rt::System::new().block_on(plan(args)),
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let log = lbmanager::logging::logger(args.log_level.to_slog(), args.log_format);
    info!(log, "lbmanager starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "etcd" => args.etcd_endpoints.join(","),
        "prefix" => &args.prefix,
        "aws_endpoint" => args.aws_endpoint_url.as_deref().unwrap_or("default"));
    let etcd_opts = match etcd_options(&args) {
        Ok(opts) => opts,
        Err(e) => {
            error!(log, "bad etcd settings"; "error" => e);
            return ExitCode::from(2);
        }
    };
    let leadership = if args.ha {
        tokio::select! {
            led = lbmanager::ha::lead(&etcd_opts, &args.prefix, args.ha_lease_ttl, &log) => match led {
                Ok(l) => Some(l),
                Err(e) => {
                    error!(log, "cannot take part in the leader election"; "error" => %e);
                    return ExitCode::FAILURE;
                }
            },
            code = wait_for_stop(&log, || true) => return code,
        }
    } else {
        None
    };
    let Some((client, snapshot)) =
        initial_read(&log, &etcd_opts, &args.prefix, args.etcd_connect_timeout).await
    else {
        return ExitCode::FAILURE;
    };
    let sdk = aws::load_sdk_config(&ClientOptions {
        endpoint_url: args.aws_endpoint_url.clone(),
        timeout: args.aws_timeout,
    })
    .await;
    let metrics = Arc::new(lbmanager::metrics::Metrics::new());
    if let Some(addr) = args.listen {
        if let Err(e) = lbmanager::http::serve(addr, metrics.clone()) {
            error!(log, "cannot listen"; "address" => %addr, "error" => %e);
            return ExitCode::FAILURE;
        }
        info!(log, "serving /metrics, /healthz and /readyz"; "address" => %addr);
    }
    let settings = Arc::new(Settings {
        prefix: args.prefix.clone(),
        route53_ttl: args.route53_ttl,
        resync_interval: args.resync_interval,
        policy: args.policy,
        dry_run: args.dry_run,
        metrics: metrics.clone(),
        filters: Filters {
            elb: args.elb_filter.clone(),
            zones: args.zone_filter.clone(),
        },
        ..Settings::default()
    });
    if args.dry_run {
        info!(log, "dry run: nothing will be changed in AWS or etcd");
    }
    let (once_tx, once_rx) = tokio::sync::oneshot::channel();
    let supervisor = Supervisor::new(
        settings,
        &log,
        Arc::new(etcd::ClientWrites(client.clone())),
        Arc::new(MeteredElb {
            inner: Arc::new(SdkElb::new(sdk.clone(), (args.elb_rate, args.elb_burst))),
            metrics: metrics.clone(),
            service: "elb",
        }),
        Arc::new(MeteredRoute53 {
            inner: Arc::new(SdkRoute53::new(
                &sdk,
                (args.route53_rate, args.route53_burst),
            )),
            metrics: metrics.clone(),
        }),
        snapshot,
    )
    .watching(client)
    .once_if(args.once, once_tx)
    .with_target_groups(Arc::new(MeteredElb {
        inner: Arc::new(SdkElbV2::new(
            sdk.clone(),
            (args.elbv2_rate, args.elbv2_burst),
        )),
        metrics: metrics.clone(),
        service: "elbv2",
    }))
    .start();

    let code = if args.once {
        tokio::select! {
            code = once_rx => {
                let code = code.unwrap_or(1);
                info!(log, "synced once, exiting"; "converged" => code == 0);
                ExitCode::from(code)
            }
            code = wait_for_stop(&log, || supervisor.connected()) => code,
        }
    } else {
        wait_for_stop(&log, || supervisor.connected()).await
    };
    if code == ExitCode::SUCCESS || args.once {
        // Finish the AWS calls in flight; anything not done is done at the next start.
        match tokio::time::timeout(Duration::from_secs(10), supervisor.send(Shutdown)).await {
            Ok(_) => info!(log, "stopped cleanly"),
            Err(_) => warn!(log, "calls still in flight after 10s, stopping anyway"),
        }
    }
    if let Some(leadership) = leadership {
        leadership.release().await;
        info!(log, "resigned the leadership");
    }
    actix_rt::System::current().stop();
    code
}

/// `lbmanager plan`: read etcd and AWS once, print what `run` would change.
async fn plan(args: PlanArgs) -> ExitCode {
    let run = &args.run;
    let log = lbmanager::logging::logger(run.log_level.to_slog(), run.log_format);
    let etcd_opts = match etcd_options(run) {
        Ok(opts) => opts,
        Err(e) => {
            error!(log, "bad etcd settings"; "error" => e);
            return ExitCode::from(2);
        }
    };
    let Some((mut client, snapshot)) =
        initial_read(&log, &etcd_opts, &run.prefix, run.etcd_connect_timeout).await
    else {
        return ExitCode::FAILURE;
    };
    let rejected_prefix = format!("{}/_rejected/", run.prefix);
    let rejected = match etcd::read_records(&mut client, &rejected_prefix).await {
        Ok(records) => records
            .into_iter()
            .filter_map(|(key, value)| {
                let lb = lbmanager::key::parse_rejected(&run.prefix, &key)?;
                Some((lb, serde_json::from_str(&value).ok()?))
            })
            .collect(),
        Err(e) => {
            warn!(log, "cannot read the rejected members lbmanager recorded"; "error" => %e);
            Default::default()
        }
    };
    let filters = Filters {
        elb: run.elb_filter.clone(),
        zones: run.zone_filter.clone(),
    };
    let loaded = DesiredState::from_keys(&run.prefix, filters, &snapshot.keys);
    for (key, e) in &loaded.malformed {
        warn!(log, "ignoring malformed key"; "key" => key, "reason" => %e);
    }
    let sdk = aws::load_sdk_config(&ClientOptions {
        endpoint_url: run.aws_endpoint_url.clone(),
        timeout: run.aws_timeout,
    })
    .await;
    let plans = lbmanager::report::plan_all(
        &loaded.desired,
        &loaded.managed.into_iter().collect(),
        &rejected,
        &SdkElb::new(sdk.clone(), (run.elb_rate, run.elb_burst)),
        &SdkElbV2::new(sdk.clone(), (run.elbv2_rate, run.elbv2_burst)),
        &SdkRoute53::new(&sdk, (run.route53_rate, run.route53_burst)),
        run.route53_ttl,
        run.policy,
    )
    .await;
    match args.output {
        PlanOutput::Table => print!("{}", lbmanager::report::render_table(&plans)),
        PlanOutput::Json => match serde_json::to_string_pretty(&plans) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                error!(log, "cannot render the plan as JSON"; "error" => %e);
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::from(lbmanager::report::exit_code(&plans))
}

fn etcd_options(args: &RunArgs) -> Result<EtcdOptions, String> {
    let password = match (&args.etcd_password_file, std::env::var("ETCD_PASSWORD")) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
        (None, Ok(p)) => Some(p),
        (None, Err(_)) => None,
    };
    let user = match (&args.etcd_user, password) {
        (Some(u), Some(p)) => Some((u.clone(), p)),
        (Some(_), None) => {
            return Err("--etcd-user needs ETCD_PASSWORD or --etcd-password-file".into())
        }
        (None, _) => None,
    };
    Ok(EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        user,
        ca_file: args.etcd_ca_file.clone(),
        cert_key: args.etcd_cert_file.clone().zip(args.etcd_key_file.clone()),
    })
}

/// Connects and reads the whole prefix, retrying with backoff until `timeout`: etcd may start a
/// little after lbmanager, but one that stays away is an error for the operator (and systemd).
async fn initial_read(
    log: &Logger,
    opts: &EtcdOptions,
    prefix: &str,
    timeout: Duration,
) -> Option<(etcd_client::Client, Snapshot)> {
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
            let snapshot = etcd::read_snapshot(&mut client, prefix, etcd::SNAPSHOT_PAGE, log)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((client, snapshot))
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

/// Waits for SIGTERM or SIGINT (exit 0), or for the Supervisor to die (exit 1, so that systemd
/// restarts lbmanager from etcd's state).
async fn wait_for_stop(log: &Logger, alive: impl Fn() -> bool) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => { info!(log, "SIGTERM received, stopping"); return ExitCode::SUCCESS; }
            _ = int.recv() => { info!(log, "SIGINT received, stopping"); return ExitCode::SUCCESS; }
            _ = tick.tick() => if !alive() {
                error!(log, "the supervisor died, exiting to be restarted");
                return ExitCode::FAILURE;
            },
        }
    }
}
