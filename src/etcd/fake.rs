//! Test doubles (compiled for tests only): an in-memory etcd for the actor tests.

use super::{EtcdError, EtcdWrites};
use crate::desired::Revision;

/// An in-memory etcd for the actor tests: keys with values and mod revisions, the guarded delete
/// of superseded keys done as etcd's transaction does it.
#[derive(Default)]
pub struct FakeEtcd {
    keys: std::sync::Mutex<std::collections::BTreeMap<String, (String, Revision)>>,
    revision: std::sync::atomic::AtomicI64,
    /// How long each put takes (a slow etcd).
    pub put_delay: std::sync::Mutex<std::time::Duration>,
    /// Puts of values longer than this are refused as etcd refuses them
    /// (`--max-request-bytes`).
    pub max_value: std::sync::Mutex<Option<usize>>,
    /// Keys whose writes fail (no permission, say).
    pub failing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Every put, in order, with the length of its value.
    pub puts: std::sync::Mutex<Vec<(String, usize)>>,
    /// Every put that landed, in order, with its value.
    pub landed: std::sync::Mutex<Vec<(String, String)>>,
}

impl FakeEtcd {
    fn keys(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, (String, Revision)>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a key as a test's own write would, at the next revision; returns the revision.
    pub fn put_key(&self, key: &str, value: &str) -> Revision {
        let revision = self
            .revision
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.keys()
            .insert(key.to_string(), (value.to_string(), revision));
        revision
    }

    /// The value of `key`, if it is there.
    pub fn get(&self, key: &str) -> Option<String> {
        self.keys().get(key).map(|(v, _)| v.clone())
    }
}

#[async_trait::async_trait]
impl EtcdWrites for FakeEtcd {
    async fn delete_superseded(
        &self,
        decided_by: &[(String, Revision)],
        superseded: &[(String, Revision)],
    ) -> Result<usize, EtcdError> {
        let mut keys = self.keys();
        let mut deleted = 0;
        for txn in super::guarded_deletes(decided_by, superseded) {
            let holds = |(k, rev): &(String, Revision)| keys.get(k).is_some_and(|(_, r)| r == rev);
            if txn.compare.iter().all(holds) {
                for k in &txn.delete {
                    keys.remove(k);
                }
                deleted += txn.delete.len();
            }
        }
        Ok(deleted)
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), EtcdError> {
        let delay = *self.put_delay.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::sleep(delay).await;
        self.puts
            .lock()
            .unwrap()
            .push((key.to_string(), value.len()));
        let fail = |why: &str| EtcdError::Write {
            key: key.to_string(),
            source: etcd_client::Error::InvalidArgs(why.to_string()),
        };
        if self.failing.lock().unwrap().contains(key) {
            return Err(fail("etcdserver: permission denied"));
        }
        if self
            .max_value
            .lock()
            .unwrap()
            .is_some_and(|m| value.len() > m)
        {
            return Err(fail("etcdserver: request is too large"));
        }
        self.put_key(key, value);
        self.landed
            .lock()
            .unwrap()
            .push((key.to_string(), value.to_string()));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        if self.failing.lock().unwrap().contains(key) {
            return Err(EtcdError::Write {
                key: key.to_string(),
                source: etcd_client::Error::InvalidArgs("etcdserver: no leader".into()),
            });
        }
        self.keys().remove(key);
        Ok(())
    }
}
