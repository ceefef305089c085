//! Where lbmanager's own keys live, named in one place: its records (outside the member tree, under
//! `/lbmanager-state` + the prefix) and the reserved keys inside the tree (`PREFIX/_election`,
//! `PREFIX/_waiting/…`). [`crate::key`] keeps the grammar of the member keys; a [`Layout`] is built
//! once from the prefix by whoever reads or writes these keys.

use crate::key::{LbId, Member};

/// The keys of lbmanager's own for the member tree under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The member tree (`/lbManager`), without its trailing slash.
    prefix: String,
    /// Where lbmanager keeps its bookkeeping: `/lbmanager-state` + the prefix
    /// (`/lbmanager-state/lbManager`). Outside the member tree on purpose: the purge of the
    /// original (`etcdctl del --prefix /lbManager/`, or without the slash) does not reach it, so a
    /// load balancer lbmanager managed is still emptied after a purge made while it was stopped.
    state: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_string(),
            state: format!("/lbmanager-state{prefix}"),
        }
    }

    /// The member tree (`/lbManager`), without its trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything lbmanager records for this tree is under it (see [`Layout`]).
    pub fn state_prefix(&self) -> &str {
        &self.state
    }

    /// Where lbmanager records that it manages a load balancer: `STATE/managed/elb/REGION/NAME`,
    /// `STATE/managed/elbv2/REGION/NAME`, `STATE/managed/route53/ZONE/FQDN`. The record outlives
    /// lbmanager, so a load balancer whose keys were all deleted while lbmanager was stopped is
    /// still emptied at the next start.
    pub fn managed(&self, lb: &LbId) -> String {
        format!("{}/managed/{}", self.state, lb)
    }

    /// The load balancer a [`Layout::managed`] key names, if `key` is one (and valid).
    pub fn parse_managed(&self, key: &str) -> Option<LbId> {
        key.strip_prefix(&self.state)?
            .strip_prefix("/managed/")?
            .parse()
            .ok()
    }

    /// Where the running lbmanager publishes what it knows of a load balancer (a JSON
    /// [`crate::status::LbStatus`]: the etcd revision AWS is in step with, the members as AWS
    /// reports them, the last sync, the members AWS refuses): `STATE/status/elb/REGION/NAME` and
    /// the like. Read by `lbmanager member … --wait`, `lbmanager status` and `lbmanager plan`;
    /// written only when something in it changed, deleted when lbmanager stops managing the load
    /// balancer.
    pub fn status(&self, lb: &LbId) -> String {
        format!("{}/status/{}", self.state, lb)
    }

    /// Every status is under this.
    pub fn statuses(&self) -> String {
        format!("{}/status/", self.state)
    }

    /// The load balancer a [`Layout::status`] key names, if `key` is one (and valid).
    pub fn parse_status(&self, key: &str) -> Option<LbId> {
        key.strip_prefix(&self.state)?
            .strip_prefix("/status/")?
            .parse()
            .ok()
    }

    /// Where lbmanager records, with `--ownership shared`, a member it added to a load balancer
    /// (before the call that adds it): `STATE/owned/elb/REGION/NAME/MEMBER` and the like, MEMBER
    /// as AWS names it (a target with its port). It removes only members recorded so; the record
    /// goes once the member is out of AWS.
    pub fn owned(&self, lb: &LbId, member: &str) -> String {
        format!("{}/owned/{}/{member}", self.state, lb)
    }

    /// The load balancer and member a [`Layout::owned`] key names, if `key` is one.
    pub fn parse_owned(&self, key: &str) -> Option<(LbId, String)> {
        let rest = key.strip_prefix(&self.state)?.strip_prefix("/owned/")?;
        let (path, member) = rest.rsplit_once('/')?;
        Some((path.parse().ok()?, member.to_string()))
    }

    /// Where the running lbmanager (the leader, with `--ha`) says it is alive: a JSON
    /// [`crate::status::Heartbeat`], written at start and every resync interval.
    pub fn heartbeat(&self) -> String {
        format!("{}/daemon", self.state)
    }

    /// The installation's identity (see [`crate::health_check::installation`]), written once, at
    /// the first start.
    pub fn installation(&self) -> String {
        format!("{}/installation", self.state)
    }

    /// The election's key prefix (`--ha`), reserved in the member tree.
    pub fn election(&self) -> String {
        format!("{}/_election", self.prefix)
    }

    /// Where `lbmanager member … --wait --healthy|--drain` says that it waits on AWS's progress
    /// with `member`, under the etcd `lease` it holds for the wait (gone when the waiter is):
    /// `PREFIX/_waiting/elb/REGION/NAME/MEMBER/LEASE` and the like. One key per waiting command
    /// (the lease id, in hex, is unique in the cluster): two hosts waiting on one member each
    /// take away only their own. In the member tree (reserved `_` part) because that is what
    /// lbmanager watches; while such a key exists, lbmanager reads the load balancer again as
    /// its members settle (health checks, draining), and only then: those reads cost AWS calls.
    pub fn waiting(&self, lb: &LbId, member: &Member, lease: i64) -> String {
        format!("{}/_waiting/{lb}/{member}/{lease:x}", self.prefix)
    }

    /// The load balancer a [`Layout::waiting`] key names, if `key` is one; also of a key of the
    /// earlier form without the lease (`…/MEMBER`), that a host of an older lbmanager writes.
    pub fn parse_waiting(&self, key: &str) -> Option<LbId> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/_waiting/")?;
        let mut parts = rest.rsplitn(3, '/');
        let (_lease, _member, path) = (parts.next()?, parts.next()?, parts.next());
        let earlier = rest.rsplit_once('/').map(|(path, _member)| path);
        [path, earlier]
            .into_iter()
            .flatten()
            .find_map(|p| p.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse;

    const P: &str = "/lbManager";

    #[test]
    fn records_round_trip_and_are_not_members() {
        let layout = Layout::new(P);
        for lb in [
            "elb/us-east-1/web".parse::<LbId>().unwrap(),
            "route53/Z1/www.example.com".parse::<LbId>().unwrap(),
            "elbv2/eu-west-1/tg".parse::<LbId>().unwrap(),
        ] {
            let key = layout.managed(&lb);
            // Out of reach of `etcdctl del --prefix /lbManager` (with or without the slash).
            assert!(
                key.starts_with("/lbmanager-state/lbManager/managed/"),
                "{key}"
            );
            assert!(!key.starts_with(P));
            assert_eq!(layout.parse_managed(&key), Some(lb.clone()));
            let key = layout.status(&lb);
            assert!(key.starts_with(&layout.statuses()), "{key}");
            assert_eq!(layout.parse_status(&key), Some(lb.clone()));
            let owned = layout.owned(&lb, "i-0abc:80");
            assert_eq!(
                layout.parse_owned(&owned),
                Some((lb.clone(), "i-0abc:80".to_string()))
            );
            let member = Member::Ip("2001:db8::1".parse().unwrap());
            let waiting = layout.waiting(&lb, &member, 0x7f00_0001);
            assert_eq!(
                parse(P, &waiting),
                Ok(None),
                "a waiting key is not a member"
            );
            assert_eq!(layout.parse_waiting(&waiting), Some(lb.clone()));
            // One key per waiting command (its lease), and the earlier form is still understood.
            assert_ne!(waiting, layout.waiting(&lb, &member, 0x7f00_0002));
            let earlier = waiting.rsplit_once('/').unwrap().0;
            assert_eq!(layout.parse_waiting(earlier), Some(lb));
        }
        assert_eq!(parse(P, &layout.election()), Ok(None));
        assert_eq!(layout.parse_managed("/lbManager/elb/us-east-1/web"), None);
        assert_eq!(
            layout.heartbeat(),
            "/lbmanager-state/lbManager/daemon".to_string()
        );
    }
}
