//! `lbmanager explain KEY`: reads what etcd holds about one member key or one load balancer (the
//! keys, lbmanager's records of it, the heartbeat) and prints [`crate::explain`]'s answer. Exit 0:
//! where its key says; 1: not, or an error; 2: KEY is neither a member key nor a load balancer.

use std::process::ExitCode;

use super::host::{connect, etcd_error, heartbeat, read_tree, CommandError};
use crate::cli::{ExplainArgs, PlanOutput};
use crate::etcd;
use crate::explain::{self, Explanation, Facts, Subject};
use crate::key::{LbId, MemberKey};
use crate::layout::Layout;
use crate::status::{self, table::DaemonSeen, LbStatus};

pub async fn explain(args: ExplainArgs) -> ExitCode {
    match answer(&args).await {
        Ok(e) => {
            match args.output {
                PlanOutput::Table => print!("{}", explain::render(&e)),
                PlanOutput::Json => match serde_json::to_string_pretty(&e) {
                    Ok(json) => println!("{json}"),
                    Err(err) => {
                        eprintln!("lbmanager: {err}");
                        return ExitCode::FAILURE;
                    }
                },
            }
            if e.as_its_key_says {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lbmanager: {e}");
            e.exit_code()
        }
    }
}

async fn answer(args: &ExplainArgs) -> Result<Explanation, CommandError> {
    let prefix = &args.etcd.prefix;
    let layout = Layout::new(prefix);
    let subject = explain::subject(prefix, &args.key);
    let (lb, key): (LbId, Option<MemberKey>) = match subject {
        Subject::Key(k) => (k.lb.clone(), Some(k)),
        Subject::LoadBalancer(lb) => (lb, None),
        Subject::Not(why) => return Err(CommandError::Usage(why)),
    };
    let mut etcd = connect(&args.etcd).await?;
    // The tree, as `status` reads it: what decides the load balancer's members.
    let snapshot = read_tree(&mut etcd, prefix).await?;
    let resolution = snapshot.loaded.desired.resolve(&lb);
    let (status, status_unreadable) = match record(&mut etcd, &layout.status(&lb)).await? {
        Some((_, v)) => match serde_json::from_slice::<LbStatus>(&v) {
            Ok(status) => (Some(status), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    let managed = record(&mut etcd, &layout.managed(&lb)).await?.is_some();
    let now = status::now();
    let daemon = heartbeat(&mut etcd, &layout)
        .await?
        .map(|beat| DaemonSeen::new(&beat, now));
    let filtered = !args.filter.filters().allows(&lb);
    let mut facts = Facts {
        resolution: Some(resolution),
        filtered,
        status: status.as_ref(),
        status_unreadable,
        managed,
        daemon,
        now,
        ..Facts::default()
    };
    Ok(match key {
        Some(k) => {
            facts.written = record(&mut etcd, &args.key).await?.map(|(rev, _)| rev);
            explain::member(&args.key, &k, &facts)
        }
        None => {
            let desired = facts
                .resolution
                .as_ref()
                .map(|r| r.members.clone())
                .filter(|m| !m.is_empty());
            let desired = desired.into_iter().map(|m| (lb.clone(), m)).collect();
            let published = status.iter().map(|s| (lb.clone(), s)).collect();
            facts.row = status::table::rows(&desired, &published, now).pop();
            explain::load_balancer(&lb, &facts)
        }
    })
}

/// `key`'s revision and value, if it is there.
async fn record(
    etcd: &mut etcd::Failover,
    key: &str,
) -> Result<Option<(i64, Vec<u8>)>, CommandError> {
    let got = etcd.get(key).await.map_err(etcd_error)?;
    Ok(got
        .kvs()
        .first()
        .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
}
