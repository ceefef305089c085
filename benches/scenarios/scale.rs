//! R and M: restarts of 150,000 and 1,000,000 members with lbmanager's records written.

use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use lbmanager_testkit::proxy::TcpCut;
use lbmanager_testkit::*;

use crate::common::*;

/// `lbs` Classic ELBs of 1,000 instances each: their keys in etcd and the ELBs in moto.
pub(crate) async fn big_tree(etcd: &Etcd, aws: &Aws, lbs: usize) {
    let keys =
        (0..lbs * 1000).map(|n| format!("{P}/elb/us-east-1/lb{:04}/multiple/i-{n:017x}", n / 1000));
    let t = Instant::now();
    etcd.put_many(keys).await;
    let names: Vec<String> = (0..lbs).map(|n| format!("lb{n:04}")).collect();
    for chunk in names.chunks(20) {
        futures::future::join_all(chunk.iter().map(|n| aws.create_elb("us-east-1", n))).await;
    }
    eprintln!(
        "{lbs} ELBs x 1,000: keys written and ELBs made in {}",
        secs(t.elapsed())
    );
}

/// The size of lbmanager's records: (records, bytes), read in pages.
pub(crate) async fn records_size(etcd: &Etcd) -> (usize, usize) {
    let client = etcd.client().await;
    let mut kv = client.kv_client().max_decoding_message_size(usize::MAX);
    let (mut n, mut bytes) = (0, 0);
    let mut from = b"/lbmanager-state/".to_vec();
    loop {
        let resp = kv
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range("/lbmanager-state0")
                        .with_limit(100),
                ),
            )
            .await
            .unwrap();
        n += resp.kvs().len();
        bytes += resp.kvs().iter().map(|kv| kv.value().len()).sum::<usize>();
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return (n, bytes),
        }
    }
}

/// Waits until no sync of `daemon` runs or waits for a retry (moto, swamped by a first start of a
/// million members, times some calls out: their load balancers sync again later), and its
/// records are `keys` or more and have stopped changing (the same size 3 seconds running): every
/// status written as the first start left it, not only its first version (a restart measured from
/// statuses older than AWS rewrites them all).
pub(crate) async fn records_settled(
    daemon: &Daemon,
    etcd: &Etcd,
    keys: usize,
    limit: Duration,
) -> (usize, usize) {
    let t = Instant::now();
    let port = daemon.listen_port.unwrap();
    let idle = || {
        http_get(port, "/metrics").and_then(|(_, text)| sample(&text, "lbmanager_syncs_pending"))
            == Some(0.0)
    };
    let (mut last, mut same) = ((0, 0), 0);
    loop {
        let now = records_size(etcd).await;
        same = if now == last && now.0 >= keys && idle() {
            same + 1
        } else {
            0
        };
        if same >= 3 {
            return now;
        }
        assert!(t.elapsed() < limit, "records not settled: {now:?}");
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Starts lbmanager on `etcd_url` and waits for its start-up: (read + desired state, initial
/// sync complete, peak RSS in KiB).
pub(crate) async fn start_up(
    daemon: &mut Daemon,
    etcd_url: &str,
    moto: &Moto,
    starts: usize,
    quota_share: &str,
) -> (Duration, Duration, u64) {
    let t = Instant::now();
    daemon.spawn(
        etcd_url,
        &moto.url,
        &["--log-level", "info", "--aws-quota-share", quota_share],
    );
    let (read, _) = wait_sampling(daemon, "read etcd", starts, t, 180).await;
    let (ready, peak) = wait_sampling(daemon, "initial sync complete", starts, t, 1800).await;
    let peak = peak.max(proc_stat(daemon.pid().unwrap()).1);
    (read, ready, peak)
}

/// R: 150 ELBs × 1,000 instances (150,000 members) synced for real, then a restart that reads
/// lbmanager's records back (~4.8 MiB, over one etcd answer's 4 MiB).
pub(crate) async fn scenario_r(rows: &mut Vec<Row>) {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    big_tree(&etcd, &aws, 150).await;
    let mut daemon = Daemon::unstarted();
    let (_, synced, first_peak) = start_up(&mut daemon, &etcd.url, &moto, 1, "1000").await;
    let (records, bytes) = records_settled(&daemon, &etcd, 301, Duration::from_secs(120)).await;
    assert_eq!(daemon.stop(), Some(0));
    let (read, ready, peak) = start_up(&mut daemon, &etcd.url, &moto, 2, "1000").await;
    push(
        rows,
        Row {
            scenario: "R: restart with 150,000 members (150 ELBs × 1,000) in step, records written",
            tool: "lbmanager",
            calls: String::new(),
            time: format!(
                "read + desired state {}; initial sync complete {}",
                secs(read),
                secs(ready)
            ),
            notes: format!(
                "peak RSS {:.0} MiB at the restart ({:.0} MiB at the first start, whose sync \
                 registered everything in {}); lbmanager's records: {records} keys, {:.1} MiB",
                peak as f64 / 1024.0,
                first_peak as f64 / 1024.0,
                secs(synced),
                bytes as f64 / 1048576.0
            ),
        },
    );
}

/// M: a million keys (1,000 ELBs × 1,000 members), the ELBs in moto: the first start registers
/// them all and writes lbmanager's records (~30 MiB); then a restart that reads them back, and a
/// relist, against etcdctl's own full read in the same run.
pub(crate) async fn scenario_m(rows: &mut Vec<Row>) {
    let etcd = Etcd::start().await;
    let moto = Moto::start().await;
    let aws = Aws::new(&moto).await;
    big_tree(&etcd, &aws, 1000).await;
    let floor: Vec<Duration> = (0..3).map(|_| etcdctl_full_read(&etcd)).collect();
    let floor = *floor.iter().min().unwrap();
    // Where a paged read's time goes: a page at the start of the range and one at its end.
    let first = page_time(&etcd, &format!("{P}/"), 5000).await;
    let last = page_time(&etcd, &format!("{P}/elb/us-east-1/lb0995"), 5000).await;
    eprintln!(
        "M: etcdctl full read {}; a page of 5,000 keys: {} at the start, {} at the end",
        secs(floor),
        ms(first),
        ms(last)
    );
    let cut = TcpCut::start(etcd.port());
    let mut daemon = Daemon::unstarted();
    // Registering a million instances at once would swamp moto (a Register of 1,000 takes it
    // ~0.1 s, and it answers them one after another): the first start keeps to twice AWS's rate.
    let (first_read, synced, first_peak) = start_up(&mut daemon, &cut.url, &moto, 1, "2").await;
    eprintln!(
        "M: first start: read {}, synced {}",
        secs(first_read),
        secs(synced)
    );
    // 1,000 managed records, 1,000 statuses, the heartbeat and the installation's identity.
    let (records, bytes) = records_settled(&daemon, &etcd, 2002, Duration::from_secs(600)).await;
    let one = etcd
        .client()
        .await
        .get(
            "/lbmanager-state/lbManager/status/elb/us-east-1/lb0000",
            None,
        )
        .await
        .unwrap();
    let one = one
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap_or("").to_string());
    let log = daemon.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    eprintln!(
        "M: first start's records {records} keys, {bytes} bytes; a status: {} bytes, {} members; \
         {} warnings, the first: {:?}",
        one.as_ref().map_or(0, String::len),
        one.as_ref().map_or(0, |s| s.matches("\"member\"").count()),
        warnings.len(),
        warnings.first().map(|l| &l[..l.len().min(300)])
    );
    assert_eq!(daemon.stop(), Some(0));
    // The restart: the tree, lbmanager's records, AWS already in step.
    let (read, ready, peak) = start_up(&mut daemon, &cut.url, &moto, 2, "1000").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak = peak.max(proc_stat(daemon.pid().unwrap()).1);
    // A relist: lbmanager cut off from etcd while etcd moves on and compacts its history away.
    cut.cut();
    // Two writes: a watch resumes at the revision after the one it saw, which compacting at the
    // first write's revision would keep.
    let mut client = etcd.client().await;
    let mut rev = 0;
    for n in 0..2 {
        rev = client
            .put(
                format!("{P}/elb/us-east-1/lb0000/multiple/i-0fffffffffffffff{n}"),
                "",
                None,
            )
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    client.compact(rev, None).await.unwrap();
    let t = Instant::now();
    cut.restore();
    let (_, relist_peak) = wait_sampling(&daemon, "read etcd", 3, t, 180).await;
    // From the watcher's decision to relist to the desired state rebuilt (reconnecting to etcd
    // after the cut is not part of it): the log's own timestamps.
    let log = daemon.log();
    let at = |needle: &str| {
        let line = log.lines().rfind(|l| l.contains(needle)).unwrap();
        log_time(line)
    };
    let relist = at("read etcd") - at("relisting");
    drop(daemon);
    push(
        rows,
        Row {
            scenario: "M: restart with 1,000,000 keys (1,000 ELBs × 1,000) in step, records written, and a relist",
            tool: "lbmanager",
            calls: String::new(),
            time: format!(
                "read + desired state {} ({:.2}× etcdctl); initial sync complete {}; relist {} \
                 ({:.2}× etcdctl)",
                secs(read),
                read.as_secs_f64() / floor.as_secs_f64(),
                secs(ready),
                secs(relist),
                relist.as_secs_f64() / floor.as_secs_f64()
            ),
            notes: format!(
                "etcdctl get --prefix --keys-only {}; peak RSS {:.0} MiB at the restart, {:.0} MiB \
                 after the relist ({:.0} MiB at the first start, whose sync registered everything \
                 in {}); lbmanager's records: {records} keys, {:.1} MiB; a page of 5,000 keys: {} \
                 at the start of the range, {} at its end",
                secs(floor),
                peak as f64 / 1024.0,
                relist_peak as f64 / 1024.0,
                first_peak as f64 / 1024.0,
                secs(synced),
                bytes as f64 / 1048576.0,
                ms(first),
                ms(last)
            ),
        },
    );
}
