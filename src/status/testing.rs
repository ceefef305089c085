//! What the status tests share: a target group, a Route53 name, a status of members.

use super::*;
use crate::key::parse_target;

pub(super) fn tg() -> LbId {
    "elbv2/us-east-1/web".parse::<LbId>().unwrap()
}

pub(super) fn status(revision: i64, members: &[(&str, Option<&str>)]) -> LbStatus {
    LbStatus {
        load_balancer: tg().to_string(),
        revision,
        in_step: true,
        desired: members.len(),
        members: members
            .iter()
            .map(|(m, s)| MemberState {
                member: (*m).into(),
                state: s.map(Into::into),
                foreign: false,
            })
            .collect(),
        ttl: None,
        members_more: 0,
        last_sync: LastSync {
            at: 100,
            ok: true,
            cause: "etcd event".into(),
            error: None,
        },
        rejected: Rejections::default(),
        dns_pending: Vec::new(),
    }
}

pub(super) fn target(s: &str) -> Member {
    Member::Target(Box::new(parse_target(s).unwrap()))
}

pub(super) fn name() -> LbId {
    "route53/Z1/www.example.com".parse::<LbId>().unwrap()
}

pub(super) fn pending(id: &str, revision: i64) -> PendingChange {
    PendingChange {
        id: id.into(),
        since: 100,
        revision,
    }
}
