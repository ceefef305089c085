//! Deleting superseded keys in chunks against a real etcd: every chunk is guarded by all the keys
//! the decision rests on, so a key that counts again (its `single` was removed by someone else
//! meanwhile) is never deleted.

use etcd_client::GetOptions;
use lbmanager::desired::DesiredState;
use lbmanager::etcd::{delete_superseded, read_snapshot, SNAPSHOT_PAGE};
use lbmanager::key::LbId;
use lbmanager_testkit::*;

const P: &str = "/lbManager";

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
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let snapshot = read_snapshot(&mut client, P, SNAPSHOT_PAGE, &log)
        .await
        .unwrap();
    let loaded = DesiredState::from_keys(P, Default::default(), &snapshot.keys);
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
