//! Reading etcd: the whole prefix at one revision, page by page (into the desired state at
//! start-up, to the Supervisor for a relist), and lbmanager's own records.

use std::time::Duration;

use etcd_client::GetOptions;

use crate::desired::{Loaded, Revision};
use crate::filter::Filters;

use super::{EtcdError, Failover};

/// Every key under a prefix at one revision, loaded into the desired state as it was read (values
/// are not needed: only keys and revisions mean anything to lbmanager).
#[derive(Debug)]
pub struct Snapshot {
    /// What the keys mean.
    pub loaded: Loaded,
    /// How many keys were read.
    pub keys: usize,
    /// The store revision the snapshot was read at; a watch resumes at `revision + 1`.
    pub revision: Revision,
    /// Keys that are not UTF-8 (they can't be member keys), counted and skipped.
    pub skipped: usize,
    /// Keys written under a lease (their delete is, in practice, the lease's expiry).
    pub leased: std::collections::HashSet<String>,
    /// Where the next read of the prefix (a relist) cuts it into ranges (see [`Cuts`]).
    pub cuts: Cuts,
}

impl Snapshot {
    /// A snapshot of `keys` (key, mod_revision) read at `revision`: for tests, and for a start
    /// without one.
    pub fn from_keys(
        prefix: &str,
        filters: Filters,
        keys: &[(String, Revision)],
        revision: Revision,
    ) -> Self {
        Snapshot {
            loaded: crate::desired::DesiredState::from_keys(prefix, filters, keys),
            keys: keys.len(),
            revision,
            skipped: 0,
            leased: Default::default(),
            cuts: Cuts::default(),
        }
    }
}

/// Keys of the prefix at which a read of the whole prefix is cut into ranges, each read apart
/// (at the same revision). etcd 3.4 answers a page of a range by first walking every key from
/// the page's start to the *range's* end (to count them): read as one range in pages, a million
/// keys cost etcd twice the walk of one full read (4.6 s against 2.3 s for etcdctl's own). Cut
/// into ranges of about [`CUT_EVERY`] keys, each read in one page, etcd walks each key once.
///
/// A cut is only where a range ends and the next begins: wherever the cuts are (learned from the
/// previous read, or from lbmanager's records at start-up), every key is read exactly once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cuts(Vec<String>);

/// Keys a range of a cut read holds, about: one page, well under [`SNAPSHOT_PAGE`] so that a
/// range that grew since its cut was learned still fits one.
pub const CUT_EVERY: usize = 25_000;

impl Cuts {
    /// The cuts of a tree whose load balancers (their keys' path under the prefix, as
    /// `elb/us-east-1/webLB`) hold about so many keys each: at the load balancer where
    /// [`CUT_EVERY`] keys have gone by since the last cut. Sizes come from lbmanager's records
    /// (each status says how many members etcd wanted): a guess, which only decides how fast the
    /// read is, never what it reads.
    pub fn of_load_balancers(
        prefix: &str,
        sizes: impl IntoIterator<Item = (String, usize)>,
    ) -> Self {
        let mut lbs: Vec<(String, usize)> = sizes.into_iter().collect();
        lbs.sort();
        let mut cuts = Vec::new();
        let mut since = 0;
        for (path, size) in lbs {
            if since >= CUT_EVERY {
                cuts.push(format!("{prefix}/{path}/"));
                since = 0;
            }
            since += size.max(1);
        }
        Cuts(cuts)
    }

    /// The ranges of `[start, end)` these cuts make, in order: the cuts inside it, each once.
    fn ranges(&self, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut inside: Vec<&[u8]> = self
            .0
            .iter()
            .map(|c| c.as_bytes())
            .filter(|c| *c > start && *c < end)
            .collect();
        inside.sort();
        inside.dedup();
        let mut bounds = vec![start];
        bounds.extend(inside);
        bounds.push(end);
        bounds
            .windows(2)
            .map(|w| (w[0].to_vec(), w[1].to_vec()))
            .collect()
    }

    /// Cuts at these keys.
    pub fn at(keys: Vec<String>) -> Self {
        Cuts(keys)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The watched range: the prefix with its trailing slash, so `/lbManager` does not also match
/// `/lbManager-election/…`.
pub fn watch_key(prefix: &str) -> String {
    format!("{prefix}/")
}

/// The first key after every key that starts with `key`.
fn range_end(key: &str) -> Vec<u8> {
    let mut end = key.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Keys per page when reading the whole prefix. etcd 3.4 answers every page of a range by first
/// collecting the revisions of *all* keys from the page's start to the range's end (to count
/// them), so a page costs as much as the rest of the range: with a million keys a page of 5,000
/// took 150 ms at the start and 5 ms at the end, and 200 such pages 15 s. Fewer, bigger pages
/// make that cost small (20 pages for a million keys, ~1.7 s of etcd's time) while a page stays
/// a few MiB (keys only, ~70 bytes each; ~15 MiB once decoded, which counts against lbmanager's
/// peak memory).
pub const SNAPSHOT_PAGE: i64 = 50_000;

/// The largest answer from etcd lbmanager accepts: what etcd 3.4 may send (2 GiB). A page of the
/// prefix is a few MiB, and one revision of a watch (a `del --prefix` of a big tree) can be far
/// more, over gRPC's default 4 MiB.
pub const MAX_MESSAGE: usize = i32::MAX as usize;

/// The longest one request of a whole-prefix read may take. The deadline is per request, not
/// per read: a tree of a million keys takes far longer to read than any one page.
pub const READ_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a long read says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Reads every key under `prefix/` at one revision (`at`, or the store's current one), cut into
/// ranges at `cuts`, `page` keys a request, keys only, into the desired state of the load
/// balancers `filters` allows. A read that takes long logs its progress.
pub async fn read_snapshot(
    etcd: &mut Failover,
    prefix: &str,
    filters: &Filters,
    (page, cuts, at): (i64, &Cuts, Option<Revision>),
    log: &slog::Logger,
) -> Result<Snapshot, EtcdError> {
    let mut loaded = Loaded::new(prefix, filters.clone());
    let mut leased = std::collections::HashSet::new();
    let read = read_prefix(etcd, prefix, (page, cuts, at), log, &mut |keys: &[(
        &str,
        Revision,
        bool,
    )]| {
        for &(key, revision, lease) in keys {
            if lease {
                leased.insert(key.to_string());
            }
            loaded.add(key, revision);
        }
    })
    .await?;
    Ok(Snapshot {
        loaded,
        keys: read.keys,
        revision: read.revision,
        skipped: read.skipped,
        leased,
        cuts: read.cuts,
    })
}

/// A page of a read of the prefix: (key, mod_revision, has a lease).
pub type Page<'a> = [(&'a str, Revision, bool)];

/// What a read of the whole prefix saw.
#[derive(Clone, Debug, Default)]
pub struct PrefixRead {
    /// The store revision it was read at.
    pub revision: Revision,
    pub keys: usize,
    /// Keys that are not UTF-8, skipped.
    pub skipped: usize,
    /// Where the next read cuts the prefix: every [`CUT_EVERY`]th key of this one.
    pub cuts: Cuts,
}

/// Reads every key under `prefix/` at one revision (`at`, or the store's current one), cut into
/// ranges at `cuts`, `page` keys a request, keys only, handing each page to `on_page` as (key,
/// mod_revision, has a lease) as it arrives: nothing is kept here, so the caller decides what a
/// million keys cost.
pub async fn read_prefix(
    etcd: &mut Failover,
    prefix: &str,
    (page, cuts, at): (i64, &Cuts, Option<Revision>),
    log: &slog::Logger,
    on_page: &mut dyn FnMut(&Page),
) -> Result<PrefixRead, EtcdError> {
    let mut read = PrefixRead::default();
    let began = std::time::Instant::now();
    let mut next_report = began + PROGRESS_EVERY;
    let mut learned = Vec::new();
    let start = watch_key(prefix);
    let ranges = cuts.ranges(start.as_bytes(), &range_end(&start));
    read.revision = read_pages(etcd, &start, &ranges, (page, at), true, &mut |kvs| {
        if std::time::Instant::now() >= next_report {
            next_report += PROGRESS_EVERY;
            slog::info!(log, "still reading etcd";
                "keys_so_far" => read.keys, "elapsed" => ?began.elapsed());
        }
        let keys: Vec<(&str, Revision, bool)> = kvs
            .iter()
            .filter_map(|kv| match kv.key_str() {
                Ok(key) => Some((key, kv.mod_revision(), kv.lease() != 0)),
                Err(_) => None,
            })
            .collect();
        read.skipped += kvs.len() - keys.len();
        for (i, (key, _, _)) in keys.iter().enumerate() {
            if (read.keys + i) % CUT_EVERY == 0 && read.keys + i > 0 {
                learned.push(key.to_string());
            }
        }
        read.keys += keys.len();
        on_page(&keys);
    })
    .await?;
    read.cuts = Cuts(learned);
    Ok(read)
}

/// Reads every key of `ranges` (which together make the keys that start with `prefix`) at one
/// revision (`at`, or the store's current one), `page` keys a request (each request with its own
/// deadline, [`READ_REQUEST_TIMEOUT`], and answers up to [`MAX_MESSAGE`]), handing each page to
/// `on_page`; returns the revision it read at. A page of 50,000 keys is
/// ~3.5 MiB, close to gRPC's default limit of 4 MiB, which longer keys (or values) would pass.
///
/// A page that fails for the member (it went away, lost its leader, or the leader changed) is
/// asked again of another member ([`Failover`]), from where the read stood and at its revision:
/// a read of a million keys survives an etcd upgrade, and is still of one revision.
async fn read_pages(
    etcd: &mut Failover,
    prefix: &str,
    ranges: &[(Vec<u8>, Vec<u8>)],
    (page, at): (i64, Option<Revision>),
    keys_only: bool,
    on_page: &mut dyn FnMut(&[etcd_client::KeyValue]),
) -> Result<Revision, EtcdError> {
    let mut revision = at.unwrap_or(0);
    let mut ranges = ranges.iter().cloned();
    let Some(first) = ranges.next() else {
        return Ok(revision);
    };
    use futures::FutureExt;
    let mut asked = get_page(
        etcd.clone(),
        prefix,
        first.clone(),
        page,
        revision,
        keys_only,
    )
    .boxed_local();
    let mut range = first;
    loop {
        let resp = asked.await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        }
        // The next request goes out before this page is taken in, so that etcd answers it while
        // lbmanager works through this one (one thread: it is sent once the client's tasks have
        // run, hence the yields).
        let next = match resp.kvs().last() {
            Some(last) if resp.more() => {
                let mut from = last.key().to_vec();
                from.push(0);
                Some((from, range.1.clone()))
            }
            _ => ranges.next(),
        };
        let Some(next) = next else {
            on_page(resp.kvs());
            return Ok(revision);
        };
        asked = get_page(
            etcd.clone(),
            prefix,
            next.clone(),
            page,
            revision,
            keys_only,
        )
        .boxed_local();
        if let std::task::Poll::Ready(done) = futures::poll!(&mut asked) {
            asked = futures::future::ready(done).boxed_local();
        }
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        on_page(resp.kvs());
        range = next;
    }
}

/// One page of `[from, end)` at `revision` (0: the store's current one), through any member
/// (see [`Failover`]), with its own deadline.
async fn get_page(
    mut etcd: Failover,
    prefix: &str,
    (from, end): (Vec<u8>, Vec<u8>),
    page: i64,
    revision: Revision,
    keys_only: bool,
) -> Result<etcd_client::GetResponse, EtcdError> {
    let mut options = GetOptions::new().with_range(end).with_limit(page);
    if keys_only {
        options = options.with_keys_only();
    }
    if revision > 0 {
        options = options.with_revision(revision);
    }
    etcd.run(|client| {
        let (from, options) = (from.clone(), options.clone());
        async move {
            let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
            tokio::time::timeout(READ_REQUEST_TIMEOUT, kv.get(from, Some(options)))
                .await
                .unwrap_or_else(|_| {
                    Err(etcd_client::Error::GRpcStatus(
                        tonic::Status::deadline_exceeded(format!(
                            "no answer within {READ_REQUEST_TIMEOUT:?}"
                        )),
                    ))
                })
        }
    })
    .await
    .map_err(|source| EtcdError::Read {
        prefix: prefix.to_string(),
        source,
    })
}

/// The whole prefix as one range.
fn whole(prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![(prefix.as_bytes().to_vec(), range_end(prefix))]
}

/// Records per page when reading lbmanager's own records: a status is at most
/// [`crate::status::STATUS_MAX_BYTES`] (192 KiB), so a page is at most ~19 MiB and, for the
/// 150 load balancers of 1,000 members the README's limits allow (30 KiB each), ~3 MiB. (150,000
/// ownership records, empty values, take 1,500 pages: a few seconds at start-up.)
pub const RECORD_PAGE: i64 = 100;

/// Every key under `prefix` with its value (lbmanager's own records), read in pages of
/// [`RECORD_PAGE`] at one revision, each request with its own deadline: the records of the largest installation
/// are many MiB in all, over what one answer may carry.
pub async fn read_records(
    etcd: &mut Failover,
    prefix: &str,
) -> Result<Vec<(String, String)>, EtcdError> {
    let mut out = Vec::new();
    read_pages(
        etcd,
        prefix,
        &whole(prefix),
        (RECORD_PAGE, None),
        false,
        &mut |kvs| {
            out.extend(kvs.iter().filter_map(|kv| {
                Some((
                    kv.key_str().ok()?.to_string(),
                    kv.value_str().ok()?.to_string(),
                ))
            }));
        },
    )
    .await?;
    Ok(out)
}

/// lbmanager's records (under [`crate::layout::Layout::state_prefix`]).
#[derive(Debug, Default)]
pub struct Records {
    /// Load balancers recorded as managed.
    pub managed: std::collections::HashSet<crate::key::LbId>,
    /// Members AWS refuses, as the running lbmanager last published them.
    pub rejected: std::collections::BTreeMap<crate::key::LbId, crate::status::Rejections>,
    /// Members lbmanager added to each load balancer (`--ownership shared`), as AWS names them.
    pub owned: std::collections::HashMap<crate::key::LbId, std::collections::BTreeSet<String>>,
    /// Records to delete: the status of load balancers no longer managed.
    pub obsolete: Vec<String>,
    /// Each managed load balancer's status as the last leader published it: its actor starts
    /// from it (the members and TTL it knew, its Route53 changes not yet `INSYNC`, followed on so
    /// that a wait is not told "done" by a new leader that does not know of them), and writes it
    /// again only when what it says changed.
    pub published:
        std::collections::HashMap<crate::key::LbId, std::sync::Arc<crate::status::LbStatus>>,
    /// The installation's identity, once recorded (see [`installation`]).
    pub installation: Option<String>,
    /// No record at all: lbmanager never managed anything with this prefix on this cluster.
    pub none: bool,
    /// The etcd revision they were read at.
    pub revision: Revision,
}

impl Records {
    /// Where to cut the first read of the tree (see [`Cuts`]): at the ELBs and target groups
    /// lbmanager manages, sized by the members their statuses say etcd wanted. (An FQDN's keys
    /// also name a region its record does not keep: the FQDNs' keys are read as the ranges fall.)
    pub fn cuts(&self, prefix: &str) -> Cuts {
        Cuts::of_load_balancers(
            prefix,
            self.managed
                .iter()
                .filter(|lb| !matches!(lb, crate::key::LbId::Route53 { .. }))
                .map(|lb| {
                    let size = self.published.get(lb).map_or(1, |s| s.desired);
                    (lb.to_string(), size)
                }),
        )
    }
}

/// Reads lbmanager's records for the tree of `layout`, in pages of [`RECORD_PAGE`] at one
/// revision, each page taken in as it arrives: the records of the largest installation are many
/// MiB of JSON, never all held at once beside what they are parsed into.
pub async fn read_state(
    etcd: &mut Failover,
    layout: &crate::layout::Layout,
) -> Result<Records, EtcdError> {
    let state = format!("{}/", layout.state_prefix());
    let installation = layout.installation();
    let mut out = Records {
        none: true,
        ..Records::default()
    };
    let mut published = Vec::new();
    out.revision = read_pages(
        etcd,
        &state,
        &whole(&state),
        (RECORD_PAGE, None),
        false,
        &mut |kvs| {
            out.none &= kvs.is_empty();
            for kv in kvs {
                let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
                    continue;
                };
                if key == installation {
                    out.installation = Some(value.to_string());
                } else if let Some(lb) = layout.parse_managed(key) {
                    out.managed.insert(lb);
                } else if let Some(lb) = layout.parse_status(key) {
                    // One not of this version's shape is left out: its actor starts afresh.
                    if let Ok(status) = serde_json::from_str::<crate::status::LbStatus>(value) {
                        if !status.rejected.is_empty() {
                            out.rejected.insert(lb.clone(), status.rejected.clone());
                        }
                        out.published
                            .insert(lb.clone(), std::sync::Arc::new(status));
                    }
                    published.push((lb, key.to_string()));
                } else if let Some((lb, member)) = layout.parse_owned(key) {
                    out.owned.entry(lb).or_default().insert(member);
                }
            }
        },
    )
    .await?;
    // The status of a load balancer no longer managed (its removal was lost): not to be shown.
    for (lb, key) in published {
        if !out.managed.contains(&lb) {
            out.rejected.remove(&lb);
            out.published.remove(&lb);
            out.obsolete.push(key);
        }
    }
    Ok(out)
}

/// The installation's identity (see [`crate::health_check::installation`]): as recorded, or made
/// from the etcd cluster's id, and `record`ed (by `run`, at its first start, before any check is
/// made; a put-if-absent, so two instances starting together agree). An installation with
/// records and no identity recorded is one from before identities were: it keeps the mark its
/// checks carry.
pub async fn installation(
    etcd: &mut Failover,
    layout: &crate::layout::Layout,
    records: &Records,
    record: bool,
) -> Result<String, EtcdError> {
    if let Some(id) = &records.installation {
        return Ok(id.clone());
    }
    let key = layout.installation();
    let read = |source| EtcdError::Read {
        prefix: key.clone(),
        source,
    };
    let got = etcd.get(&key).await.map_err(read)?;
    if let Some(kv) = got.kvs().first() {
        return Ok(kv.value_str().unwrap_or_default().to_string());
    }
    let id = match records.none {
        true => {
            let cluster = got.header().map_or(0, |h| h.cluster_id());
            crate::health_check::installation(cluster, layout.prefix())
        }
        false => crate::health_check::installation_before_records(layout.prefix()),
    };
    if !record {
        return Ok(id);
    }
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::create_revision(
            key.clone(),
            etcd_client::CompareOp::Equal,
            0,
        )])
        .and_then([etcd_client::TxnOp::put(key.clone(), id.clone(), None)])
        .or_else([etcd_client::TxnOp::get(key.clone(), None)]);
    let done = etcd
        .run(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|source| EtcdError::Write {
            key: key.clone(),
            source,
        })?;
    // Another instance recorded one first: its.
    let theirs = done.op_responses().into_iter().find_map(|op| match op {
        etcd_client::TxnOpResponse::Get(got) => got
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok().map(String::from)),
        _ => None,
    });
    Ok(theirs.unwrap_or(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts make ranges that hold every key of the prefix once, whatever they are.
    #[test]
    fn cuts_split_the_prefix_into_ranges_that_cover_it() {
        let start = b"/p/".to_vec();
        let end = range_end("/p/");
        let cuts = Cuts(vec![
            "/p/m".into(),
            "/p/c".into(),
            "/p/m".into(),
            "/o/before".into(),
            "/q/after".into(),
            "/p/".into(),
        ]);
        let ranges = cuts.ranges(&start, &end);
        let strs: Vec<(String, String)> = ranges
            .iter()
            .map(|(a, b)| {
                (
                    String::from_utf8_lossy(a).into_owned(),
                    String::from_utf8_lossy(b).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            strs,
            [
                ("/p/".into(), "/p/c".into()),
                ("/p/c".into(), "/p/m".into()),
                ("/p/m".into(), "/p0".into())
            ]
        );
        assert_eq!(Cuts::default().ranges(&start, &end), [(start, end)]);
    }

    /// Load balancers are grouped into ranges of about CUT_EVERY keys, cut where one begins.
    #[test]
    fn cuts_of_load_balancers_fall_at_a_load_balancer_every_cut_every_keys() {
        let sizes = (0..100).map(|i| (format!("elb/us-east-1/lb{i:03}"), 1_000));
        let cuts = Cuts::of_load_balancers("/p", sizes);
        assert_eq!(cuts.len(), 100 * 1_000 / CUT_EVERY - 1);
        assert_eq!(cuts.0[0], "/p/elb/us-east-1/lb025/");
        // A key of a load balancer is under its cut.
        let key = "/p/elb/us-east-1/lb025/multiple/i-0123456789abcdef0";
        let lb = crate::key::parse("/p", key).unwrap().unwrap().lb;
        assert!(key.starts_with(&format!("/p/{lb}/")));
        // Unknown sizes count one key each: a few ranges.
        let small = Cuts::of_load_balancers("/p", (0..10).map(|i| (format!("elb/r/lb{i}"), 0)));
        assert!(small.is_empty());
    }

    #[test]
    fn range_end_is_next_prefix() {
        assert_eq!(range_end("/lbManager/"), b"/lbManager0".to_vec());
        assert_eq!(watch_key("/lbManager"), "/lbManager/");
    }
}
