//! The fleet's [`Note`]s, carried out: the log lines an operator reads and the metrics they
//! count. The fleet decides what is worth saying ([`crate::fleet`] is pure); this is the one place
//! that says it, so the words and the metrics of those decisions are found together.

use slog::{debug, error, info, warn, Logger};

use crate::desired::{log_ignored, Ignored};
use crate::fleet::Note;
use crate::key::{KeyError, LbId};
use crate::metrics::{Limit, Metrics};
use crate::sync::Cause;

/// The limit a refusal for being past it met: members per load balancer, or values per record set.
fn limit_of(lb: &LbId) -> Limit {
    match lb {
        LbId::Route53 { .. } => Limit::ValuesPerRecordSet,
        _ => Limit::MembersPerLoadBalancer,
    }
}

/// Logs `note` to `log` and counts it in `metrics`.
pub fn tell(log: &Logger, metrics: &Metrics, note: Note) {
    match note {
        Note::ZoneRestarted {
            zone,
            restarts,
            next,
        } => error!(log, "hosted zone actor died, restarting it";
            "zone" => zone, "restarts" => restarts, "next_restart_no_sooner_than" => ?next),
        Note::LbRestarted { lb, restarts, next } => {
            error!(log, "load balancer actor died, restarting it";
                "lb" => lb.to_string(), "restarts" => restarts,
                "next_restart_no_sooner_than" => ?next)
        }
        Note::KeyIgnored { key, why } => {
            if let Ignored::Malformed(KeyError::TooLong(_)) = why {
                metrics.limit(Limit::KeyLength);
            }
            log_ignored(log, &key, &why);
        }
        Note::IgnoredPastRemembered { not_listed } => {
            metrics.limit(Limit::WarnedKeys);
            match not_listed {
                None => warn!(log, "more keys count for nothing than lbmanager remembers; those \
                    past it are not warned about one by one";
                    "remembered" => crate::desired::MAX_WARNED),
                Some(n) => warn!(log, "more keys count for nothing than lbmanager remembers; \
                    those past it are not warned about one by one";
                    "remembered" => crate::desired::MAX_WARNED, "not_listed" => n),
            }
        }
        Note::Relisted { keys, removed } => {
            debug!(log, "relist applied"; "keys" => keys, "removed" => removed)
        }
        Note::ReadEtcd {
            keys,
            load_balancers,
            revision,
            cause,
        } => info!(log, "read etcd";
            "keys" => keys, "load_balancers" => load_balancers,
            "revision" => revision, "cause" => %cause),
        Note::WouldDeleteSuperseded { winner, keys } => {
            info!(log, "would delete superseded keys from etcd";
                "winner" => &winner, "keys" => keys.join(","), "dry_run" => true)
        }
        Note::Members { lb, count } => metrics.members(&lb.to_string(), count),
        Note::Retired { lb } => {
            debug!(log, "load balancer has no keys left, no longer managed";
                "lb" => lb.to_string());
            metrics.lb_retired(&lb.to_string());
        }
        Note::RoundDone {
            cause,
            total,
            failed,
        } => {
            let what = if cause == Cause::Startup {
                "initial sync complete"
            } else {
                "full sync complete"
            };
            info!(log, "{}", what;
                "load_balancers" => total, "failed" => failed, "cause" => %cause);
            metrics.set_initial_sync_done();
            if failed == 0 {
                metrics.full_sync_done();
            }
        }
        Note::Rejected {
            lb,
            member,
            key,
            refusal,
        } => {
            warn!(log, "AWS rejected a member; the others are in step, and it is \
                tried again at each resync until its key is deleted";
                "lb" => lb.to_string(), "member" => member,
                "key" => key.unwrap_or_else(|| "-".into()),
                "reason" => crate::status::cut(&refusal.to_string()));
            if refusal.is_over_limit() {
                metrics.limit(limit_of(&lb));
            }
        }
        Note::RejectedUnnamed {
            lb,
            not_named,
            over_limit,
        } => {
            warn!(log, "AWS rejected more members than are named one by one";
                "lb" => lb.to_string(), "not_named" => not_named);
            for _ in 0..over_limit {
                metrics.limit(limit_of(&lb));
            }
        }
        Note::NoLongerRejected { lb, member } => {
            info!(log, "member no longer rejected"; "lb" => lb.to_string(), "member" => member)
        }
        Note::RejectedCount { lb, count } => metrics.rejected_members(&lb.to_string(), count),
    }
}
