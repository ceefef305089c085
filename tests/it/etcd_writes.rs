//! lbmanager's writes against a real etcd: superseded keys are deleted in chunks each guarded by
//! all the keys the decision rests on, so a key that counts again (its `single` was removed by
//! someone else meanwhile) is never deleted; with `--ha`, every write requires the leadership.

use etcd_client::GetOptions;
use lbmanager::etcd::{
    delete_superseded, read_snapshot, ClientWrites, EtcdOptions, EtcdWrites, Failover, PROBE,
    SNAPSHOT_PAGE,
};
use lbmanager::key::LbId;
use lbmanager_testkit::*;

#[tokio::test]
async fn a_chunk_never_deletes_keys_that_count_again() {
    let etcd = Etcd::start().await;
    let key = |class: &str, n: u64| format!("{P}/elb/us-east-1/web/{class}/i-{n:08x}");
    // 150 `multiple` keys, then a `single` that supersedes them, then a newer `multiple` that
    // overrides the `single`: the 150 old ones and the `single` are superseded, because of the
    // `single`'s revision.
    etcd.put_many((0..150).map(|n| key("multiple", n))).await;
    etcd.put(&key("single", 0xffff)).await;
    etcd.put(&key("multiple", 0xaaaa)).await;
    let mut client = etcd.client().await;
    let mut reader = Failover::new(
        client.clone(),
        EtcdOptions::plain(vec![etcd.url.clone()]),
        PROBE,
        DEADLINE,
    );
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let cuts = Default::default();
    let snapshot = read_snapshot(
        &mut reader,
        P,
        &Default::default(),
        (SNAPSHOT_PAGE, &cuts, None),
        &log,
    )
    .await
    .unwrap();
    let loaded = snapshot.loaded;
    let lb = LbId::Elb {
        region: "us-east-1".into(),
        name: "web".into(),
    };
    let resolution = loaded.desired.resolve(&lb);
    assert_eq!(resolution.superseded.len(), 151);
    // Someone else removes the `single` after the decision: every `multiple` key counts again.
    etcd.del(&key("single", 0xffff)).await;
    let deleted = delete_superseded(
        &mut client,
        &resolution.decided_by(),
        &resolution.superseded,
        None,
    )
    .await
    .unwrap();
    assert_eq!(deleted, 0);
    let left = client
        .get(
            format!("{P}/elb/us-east-1/web/multiple/"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(left, 151, "every multiple key is still there");
}

#[tokio::test]
async fn a_leader_that_lost_its_election_key_can_write_nothing() {
    let etcd = Etcd::start().await;
    let election = "/lbManager/_election/694d0000";
    etcd.put(election).await;
    let mut client = etcd.client().await;
    let created = client.get(election, None).await.unwrap().kvs()[0].create_revision();
    let writes = ClientWrites {
        client: client.clone(),
        leader: Some((election.to_string(), created)),
    };
    let record = "/lbmanager-state/lbManager/managed/elb/us-east-1/web";
    writes.put(record, "elb/us-east-1/web").await.unwrap();
    assert!(!etcd.keys(record).await.is_empty());
    // A purge deletes the election key: the old leader's writes are refused from then on.
    etcd.ctl(&["del", "--prefix", "/lbManager/"]);
    assert!(writes.delete(record).await.is_err());
    assert!(writes.put(&format!("{record}2"), "x").await.is_err());
    assert!(!etcd.keys(record).await.is_empty(), "the record stayed");
    assert!(etcd.keys(&format!("{record}2")).await.is_empty());
}
