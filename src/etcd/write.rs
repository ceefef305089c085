//! Every write lbmanager makes to etcd: superseded keys deleted in transactions guarded by the
//! whole decision, and its records, each guarded by the leadership under `--ha`.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::desired::Revision;

use super::EtcdError;

/// etcd's default limit of operations in one transaction is 128 (compares counted apart from
/// the deletes); the decision's guards take one or two of the compares.
const DELETES_PER_TXN: usize = 100;

/// One guarded transaction of a superseded-key delete: the keys (with the revisions they must
/// still have) compared, and the keys deleted if they all hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardedDelete {
    pub compare: Vec<(String, Revision)>,
    pub delete: Vec<String>,
}

/// Splits the deletion of `superseded` into transactions etcd accepts, each guarded by everything
/// the decision depends on (`decided_by`: the winner, and the `single` key whose revision decided
/// which `multiple` keys count) and by its own keys' revisions. A key of `decided_by` that is
/// itself superseded is deleted in the last transaction, so that no earlier one runs without it.
pub fn guarded_deletes(
    decided_by: &[(String, Revision)],
    superseded: &[(String, Revision)],
) -> Vec<GuardedDelete> {
    let (mut order, last): (Vec<_>, Vec<_>) = superseded
        .iter()
        .cloned()
        .partition(|(k, _)| !decided_by.iter().any(|(g, _)| g == k));
    order.extend(last);
    order
        .chunks(DELETES_PER_TXN)
        .map(|chunk| {
            let mut compare = decided_by.to_vec();
            compare.extend(chunk.iter().filter(|c| !decided_by.contains(c)).cloned());
            GuardedDelete {
                compare,
                delete: chunk.iter().map(|(k, _)| k.clone()).collect(),
            }
        })
        .collect()
}

/// Deletes `superseded` keys, each only if it still has the revision it was seen with and only
/// while every key of `decided_by` still has its revision (see [`guarded_deletes`]): a key written
/// (or rewritten, as a rollback does) after the decision is never deleted, nor one that counts
/// again because a key the decision rested on went away. Returns how many keys were deleted.
/// With `leader` (the leader's election key and its create revision), every transaction also
/// requires the leadership.
pub async fn delete_superseded(
    client: &mut Client,
    decided_by: &[(String, Revision)],
    superseded: &[(String, Revision)],
    leader: Option<(&str, Revision)>,
) -> Result<usize, EtcdError> {
    let mut deleted = 0;
    for txn in guarded_deletes(decided_by, superseded) {
        let mut guards: Vec<Compare> = txn
            .compare
            .iter()
            .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
            .collect();
        guards.extend(leader_guard(leader));
        let deletes: Vec<TxnOp> = txn
            .delete
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None))
            .collect();
        let resp = client
            .txn(Txn::new().when(guards).and_then(deletes))
            .await
            .map_err(|source| EtcdError::Delete { source })?;
        if resp.succeeded() {
            deleted += txn.delete.len();
        }
    }
    Ok(deleted)
}

/// The compare that makes a transaction the leader's only (`leader`: its election key and that
/// key's create revision), as etcd's election recipe does: none without `--ha`.
fn leader_guard(leader: Option<(&str, Revision)>) -> Vec<Compare> {
    leader
        .map(|(k, rev)| Compare::create_revision(k, CompareOp::Equal, rev))
        .into_iter()
        .collect()
}

/// Every write lbmanager makes to etcd. Reads and the watch stay on the client: they are not
/// side effects.
#[async_trait::async_trait]
pub trait EtcdWrites: Send + Sync + 'static {
    /// See [`delete_superseded`].
    async fn delete_superseded(
        &self,
        decided_by: &[(String, Revision)],
        superseded: &[(String, Revision)],
    ) -> Result<usize, EtcdError>;
    /// Puts `value` at `key`.
    async fn put(&self, key: &str, value: &str) -> Result<(), EtcdError>;
    /// Deletes `key`.
    async fn delete(&self, key: &str) -> Result<(), EtcdError>;
    /// Puts an empty value at each of `put` and deletes each of `delete` (the ownership records of
    /// `--ownership shared`): all landed when it returns Ok.
    async fn record_many(&self, put: &[String], delete: &[String]) -> Result<(), EtcdError> {
        for key in put {
            self.put(key, "").await?;
        }
        for key in delete {
            self.delete(key).await?;
        }
        Ok(())
    }
}

/// The ownership records of `--ownership shared`, as the syncs write them: each claim durable
/// before AWS hears of the member, each release after it left. The daemon's go through the
/// StateWriter, which owns every write lbmanager makes.
#[async_trait::async_trait]
pub trait OwnershipWrites: Send + Sync + 'static {
    /// Puts an empty value at each of `put` and deletes each of `delete`: all landed when it
    /// returns Ok.
    async fn record_many(&self, put: &[String], delete: &[String]) -> Result<(), EtcdError>;
}

#[async_trait::async_trait]
impl<T: EtcdWrites> OwnershipWrites for T {
    async fn record_many(&self, put: &[String], delete: &[String]) -> Result<(), EtcdError> {
        EtcdWrites::record_many(self, put, delete).await
    }
}

/// The real writes, through an etcd client. With `--ha`, every write is a transaction that also
/// compares the leader's own election key (`leader`: key and create revision), as etcd's election
/// recipe does: an instance that lost its leadership can write nothing.
pub struct ClientWrites {
    pub client: Client,
    pub leader: Option<(String, Revision)>,
}

impl ClientWrites {
    /// One write (`Some(value)`: put, `None`: delete), guarded by the leadership if any.
    async fn write(&self, key: &str, value: Option<&str>) -> Result<(), EtcdError> {
        let write = |source| EtcdError::Write {
            key: key.to_string(),
            source,
        };
        let op = match value {
            Some(v) => TxnOp::put(key, v, None),
            None => TxnOp::delete(key, None),
        };
        let guard = leader_guard(self.leader.as_ref().map(|(k, rev)| (k.as_str(), *rev)));
        let resp = self
            .client
            .clone()
            .txn(Txn::new().when(guard).and_then(vec![op]))
            .await
            .map_err(write)?;
        if !resp.succeeded() {
            return Err(EtcdError::NotLeader {
                key: key.to_string(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EtcdWrites for ClientWrites {
    async fn delete_superseded(
        &self,
        decided_by: &[(String, Revision)],
        superseded: &[(String, Revision)],
    ) -> Result<usize, EtcdError> {
        let leader = self.leader.as_ref().map(|(k, rev)| (k.as_str(), *rev));
        delete_superseded(&mut self.client.clone(), decided_by, superseded, leader).await
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), EtcdError> {
        self.write(key, Some(value)).await
    }

    async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.write(key, None).await
    }

    /// In transactions of up to [`DELETES_PER_TXN`] operations, each guarded by the leadership.
    async fn record_many(&self, put: &[String], delete: &[String]) -> Result<(), EtcdError> {
        let ops: Vec<TxnOp> = put
            .iter()
            .map(|k| TxnOp::put(k.as_str(), "", None))
            .chain(delete.iter().map(|k| TxnOp::delete(k.as_str(), None)))
            .collect();
        let first = put.first().or(delete.first()).cloned().unwrap_or_default();
        let guard = leader_guard(self.leader.as_ref().map(|(k, rev)| (k.as_str(), *rev)));
        for chunk in ops.chunks(DELETES_PER_TXN) {
            let resp = self
                .client
                .clone()
                .txn(Txn::new().when(guard.clone()).and_then(chunk.to_vec()))
                .await
                .map_err(|source| EtcdError::Write {
                    key: first.clone(),
                    source,
                })?;
            if !resp.succeeded() {
                return Err(EtcdError::NotLeader { key: first });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_superseded_delete_is_guarded_by_the_whole_decision() {
        let winner = ("/p/elb/r/web/multiple/i-zzzzzzzz".to_string(), 300);
        let threshold = ("/p/elb/r/web/single/i-s".to_string(), 200);
        let mut superseded: Vec<(String, Revision)> = (0..250)
            .map(|n| (format!("/p/elb/r/web/multiple/i-{n:08x}"), n))
            .collect();
        // The threshold key sorts after the `multiple` keys, but is not counted on for that.
        superseded.insert(7, threshold.clone());
        let decided_by = vec![winner.clone(), threshold.clone()];
        let txns = guarded_deletes(&decided_by, &superseded);
        assert_eq!(txns.len(), 3);
        for txn in &txns {
            assert!(txn.compare.contains(&winner) && txn.compare.contains(&threshold));
            assert!(txn.compare.len() <= 128 && txn.delete.len() <= 128);
            for k in &txn.delete {
                assert!(txn.compare.iter().any(|(c, _)| c == k), "{k} unguarded");
            }
        }
        let last = txns.last().unwrap();
        assert_eq!(
            last.delete.last(),
            Some(&threshold.0),
            "the threshold goes last"
        );
        let deleted: usize = txns.iter().map(|t| t.delete.len()).sum();
        assert_eq!(deleted, 251);
    }
}
