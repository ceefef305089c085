//! What the fleet's tests share: keys, a fleet started from them, and the commands and notes
//! it returns, apart.

use super::*;
use crate::filter::Filters;

pub(super) const A: &str = "/lbManager/elb/us-east-1/a/multiple/i-0000000a";
pub(super) const A2: &str = "/lbManager/elb/us-east-1/a/multiple/i-000000a2";
pub(super) const A_SINGLE: &str = "/lbManager/elb/us-east-1/a/single/i-000000a3";
pub(super) const B: &str = "/lbManager/elb/us-east-1/b/multiple/i-0000000b";
pub(super) const WWW: &str = "/lbManager/route53/us-east-1/Z1/www.example.com/multiple/192.0.2.1";

pub(super) fn lb(name: &str) -> LbId {
    format!("elb/us-east-1/{name}").parse().unwrap()
}

pub(super) fn fleet(once: bool) -> Fleet {
    let config = Config {
        layout: Layout::new("/lbManager"),
        filters: Filters::default(),
        dry_run: false,
        shared: false,
        once,
    };
    Fleet::new(config)
}

/// A fleet started from `keys`, every managed record landed.
pub(super) fn started(once: bool, keys: &[&str]) -> (Fleet, Vec<Command>) {
    let mut fleet = fleet(once);
    let keys: Vec<(String, Revision)> = keys.iter().map(|k| (k.to_string(), 5)).collect();
    let loaded = DesiredState::from_keys("/lbManager", Filters::default(), &keys);
    let mut out = acts(fleet.snapshot(loaded, keys.len(), 10, Cause::Startup));
    let landed: Vec<LbId> = out
        .iter()
        .filter_map(|c| match c {
            Command::AwaitRecord { lb } => Some(lb.clone()),
            _ => None,
        })
        .collect();
    for lb in landed {
        out.extend(acts(fleet.record_landed(&lb)));
    }
    (fleet, out)
}

/// What the fleet has done, without what it said: its notes are tested apart.
pub(super) fn acts(out: Vec<Command>) -> Vec<Command> {
    out.into_iter()
        .filter(|c| !matches!(c, Command::Note(_)))
        .collect()
}

pub(super) fn notes(out: &[Command]) -> Vec<&Note> {
    out.iter()
        .filter_map(|c| match c {
            Command::Note(n) => Some(n),
            _ => None,
        })
        .collect()
}

pub(super) fn desire_of(out: &[Command], of: &LbId) -> Option<Desire> {
    out.iter().rev().find_map(|c| match c {
        Command::Desire { lb, desire } if lb == of => Some(desire.clone()),
        _ => None,
    })
}

pub(super) fn ok(lb: &LbId, generation: u64) -> Report {
    Report {
        lb: lb.clone(),
        sync: true,
        generation,
        failed: false,
        settling: false,
        rejected: None,
        status: None,
    }
}

pub(super) fn change(changes: Vec<KeyChange>) -> EtcdChanges {
    EtcdChanges {
        changes,
        revision: 0,
    }
}

pub(super) fn delete(key: &str, revision: Revision) -> KeyChange {
    KeyChange::Delete {
        key: key.into(),
        leased: false,
        revision,
    }
}

pub(super) fn put(key: &str, revision: Revision) -> KeyChange {
    KeyChange::Put {
        key: key.into(),
        revision,
    }
}

pub(super) fn lb_of(key: &str) -> LbId {
    crate::key::parse("/lbManager", key).unwrap().unwrap().lb
}
