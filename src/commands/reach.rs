//! What `run` and `plan` share: the first read of etcd, and the AWS clients the flags ask for.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::{debug, error, info, warn, Logger};

use crate::actors::backoff;
use crate::aws::roles::{Accounts, RoleRule};
use crate::aws::{AccountQuotas, Backends, Quotas};
use crate::cli::{EtcdArgs, Route53Args, SyncArgs};
use crate::etcd::{self, EtcdOptions, Snapshot};
use crate::fence::Fence;
use crate::filter::Filters;
use crate::layout::Layout;

/// Connects and reads the whole prefix and lbmanager's records, and the installation's identity
/// (`record`: recorded if it is not yet, see [`etcd::installation`]), retrying with backoff until
/// `timeout`: etcd may start a little after lbmanager, but one that stays away is an error for
/// the operator (and systemd).
pub async fn initial_read(
    log: &Logger,
    opts: &EtcdOptions,
    layout: &Layout,
    filters: &Filters,
    timeout: Duration,
    record: bool,
) -> Option<(etcd_client::Client, Snapshot, etcd::Records)> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        // Each request has its own deadline (connecting, then every page of the read): a big
        // tree is slow to read, not unreachable.
        let result = async {
            let client = tokio::time::timeout(Duration::from_secs(5), etcd::connect(opts))
                .await
                .map_err(|_| "no answer to connecting within 5s".to_string())?
                .map_err(|e| e.to_string())?;
            // A page whose member goes away is asked of another (the watch keeps `client`, of
            // every endpoint).
            let mut etcd = etcd::Failover::new(client.clone(), opts.clone(), etcd::PROBE, timeout);
            // lbmanager's records first: they say where to cut the tree's read (see
            // `etcd::Cuts`), and the tree is read at their revision.
            let mut records = etcd::read_state(&mut etcd, layout)
                .await
                .map_err(|e| e.to_string())?;
            let cuts = records.cuts(layout.prefix());
            let snapshot = etcd::read_snapshot(
                &mut etcd,
                layout.prefix(),
                filters,
                (etcd::SNAPSHOT_PAGE, &cuts, Some(records.revision)),
                log,
            )
            .await
            .map_err(|e| e.to_string())?;
            let installation = etcd::installation(&mut etcd, layout, &records, record)
                .await
                .map_err(|e| e.to_string())?;
            records.installation = Some(installation);
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

/// The flags `run` and `plan` share, checked: how to reach etcd, or the exit code of flags
/// that cannot work (2, said in the log).
pub fn checked(
    log: &Logger,
    etcd: &EtcdArgs,
    route53: &Route53Args,
    sync: &SyncArgs,
) -> Result<EtcdOptions, ExitCode> {
    if let Err(e) = route53.check(sync) {
        error!(log, "bad flags"; "error" => e);
        return Err(ExitCode::from(2));
    }
    etcd.options().map_err(|e| {
        error!(log, "bad etcd settings"; "error" => e);
        ExitCode::from(2)
    })
}

/// The AWS clients: the default credentials', and those of each of `roles` (`--assume-role`)
/// for the load balancers and zones it covers; `quotas`, the share of AWS's quotas to take.
pub async fn backends(
    sdk: &aws_config::SdkConfig,
    quotas: &Quotas,
    roles: &[RoleRule],
    fence: &Fence,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    log: &Logger,
) -> Accounts {
    let account = AccountQuotas::new(quotas);
    let default = Backends::sdk_in(sdk, &account, quotas, fence, metrics.clone());
    if roles.is_empty() {
        return Accounts::from(default).with_default_quotas("default credentials", account);
    }
    for rule in roles {
        info!(log, "assuming a role for some load balancers";
            "scope" => %rule.scope, "role" => &rule.role_arn,
            "external_id" => rule.external_id.is_some());
    }
    let accounts = Accounts::assume(sdk, default, roles, quotas, fence, metrics).await;
    debug!(log, "each account's calls are paced by its own quota buckets";
        "accounts_by_role" => accounts.accounts());
    accounts.with_default_quotas("default credentials", account)
}
