//! `lbmanager status`: what lbmanager last published for each load balancer, beside what etcd
//! wants, from parsed flags to an exit code (0 in step, 2 not in step, 1 for an error).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use super::host::{connect, etcd_error, heartbeat, read_tree, CommandError};
use crate::cli::{PlanOutput, StatusArgs};
use crate::etcd;
use crate::key::{LbId, Member};
use crate::layout::Layout;
use crate::status::{self, LbStatus};

/// `lbmanager status`: any error is exit 1 (2 means "not in step").
pub async fn status(args: StatusArgs) -> ExitCode {
    match show_status(&args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lbmanager: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn show_status(args: &StatusArgs) -> Result<u8, CommandError> {
    let prefix = &args.etcd.prefix;
    let layout = Layout::new(prefix);
    let mut etcd = connect(&args.etcd).await?;
    let snapshot = read_tree(&mut etcd, prefix).await?;
    let desired_state = &snapshot.loaded.desired;
    let desired: BTreeMap<LbId, BTreeSet<Member>> = desired_state
        .load_balancers()
        .map(|lb| (lb.clone(), desired_state.resolve(lb).members))
        .filter(|(_, members)| !members.is_empty())
        .collect();

    let state = layout.statuses();
    let published: BTreeMap<LbId, LbStatus> = etcd::read_records(&mut etcd, &state)
        .await
        .map_err(etcd_error)?
        .into_iter()
        .filter_map(|(k, v)| Some((layout.parse_status(&k)?, serde_json::from_str(&v).ok()?)))
        .collect();
    let now = status::now();
    let report = status::table::StatusReport {
        daemon: heartbeat(&mut etcd, &layout)
            .await?
            .map(|beat| status::table::DaemonSeen::new(&beat, now)),
        load_balancers: status::table::rows(&desired, &published, now),
    };
    match args.output {
        PlanOutput::Table => print!("{}", status::table::render_table(&report)),
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
        Some(_) => Ok(status::table::exit_code(&report.load_balancers)),
    }
}
