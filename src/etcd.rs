//! The etcd side: connecting, reading the whole prefix at one revision, and every write lbmanager
//! makes, behind [`EtcdWrites`] (deleting superseded `single`/`multiple` keys, its records), so the
//! actors are tested against an in-memory fake as they are against the AWS fakes. The watch itself lives
//! in the `EtcdWatcher` actor.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity,
    TlsOptions, Txn, TxnOp,
};

use crate::desired::{Loaded, Revision};
use crate::filter::Filters;

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("reading {prefix} from etcd failed: {source}")]
    Read {
        prefix: String,
        source: etcd_client::Error,
    },
    #[error("reading {prefix} from etcd: no answer to one request within {timeout:?}")]
    Timeout { prefix: String, timeout: Duration },
    #[error("deleting superseded keys failed: {source}")]
    Delete { source: etcd_client::Error },
    #[error("writing {key} failed: {source}")]
    Write {
        key: String,
        source: etcd_client::Error,
    },
    #[error("writing {key} refused: this instance is no longer the leader")]
    NotLeader { key: String },
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// User and password.
    pub user: Option<(String, String)>,
    /// PEM files: CA to trust, and a client certificate and key.
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_key: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Written by hand so that the password never reaches a log line or a panic message.
impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field(
                "user",
                &self.user.as_ref().map(|(user, _)| (user, "<redacted>")),
            )
            .field("ca_file", &self.ca_file)
            .field("cert_key", &self.cert_key)
            .finish()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Connects to etcd. The connection is lazy: this succeeds against a dead endpoint, and the first
/// request says whether etcd is there.
pub async fn connect(opts: &EtcdOptions) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        // HTTP/2 pings notice a dead etcd under an idle watch; a request timeout would cut the
        // watch stream itself, so there is none (reads time out one request at a time instead).
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // A member that has lost its quorum answers nothing new, ever: with this, its requests
        // and watches fail ("no leader") instead of going quiet, so lbmanager says so and
        // retries (on another endpoint, where there is one).
        .with_require_leader(true);
    if let Some((user, password)) = &opts.user {
        options = options
            .with_user(user, password)
            .with_auto_token_refresh(true);
    }
    let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    if https || opts.ca_file.is_some() || opts.cert_key.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &opts.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &opts.cert_key {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Client::connect(&opts.endpoints, Some(options))
        .await
        .map_err(|source| EtcdError::Connect {
            endpoints: opts.endpoints.join(","),
            source,
        })
}

/// Connects to the first endpoint that answers (a `status` request within `probe`), trying
/// them in turn from one picked at random (so that hosts spread over the members). For the
/// host's short commands: a client of all endpoints balances each request over them, and one to a
/// member that is down fails at once (`tcp connect error`) however many others answer.
pub async fn connect_alive(opts: &EtcdOptions, probe: Duration) -> Result<Client, EtcdError> {
    let n = opts.endpoints.len().max(1);
    let first = fastrand::usize(..n);
    let mut last = None;
    for i in 0..opts.endpoints.len() {
        let one = EtcdOptions {
            endpoints: vec![opts.endpoints[(first + i) % n].clone()],
            ..opts.clone()
        };
        // With a user, connecting authenticates: a member that is down fails here.
        let mut client = match tokio::time::timeout(probe, connect(&one)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                last = Some(e);
                continue;
            }
            Err(_) => {
                last = Some(EtcdError::Timeout {
                    prefix: one.endpoints.join(","),
                    timeout: probe,
                });
                continue;
            }
        };
        match tokio::time::timeout(probe, client.status()).await {
            Ok(Ok(_)) => return Ok(client),
            Ok(Err(source)) => {
                last = Some(EtcdError::Connect {
                    endpoints: one.endpoints.join(","),
                    source,
                })
            }
            Err(_) => {
                last = Some(EtcdError::Timeout {
                    prefix: one.endpoints.join(","),
                    timeout: probe,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| EtcdError::Connect {
        endpoints: String::new(),
        source: etcd_client::Error::InvalidArgs("no etcd endpoint".into()),
    }))
}

/// A host command's way to etcd, for commands that outlive one etcd member: a request that
/// fails at the transport (its member went down mid-command, or lost its quorum) is sent again
/// through another member that answers, until `patience` has passed since the first failure.
/// What the request does must be safe to do twice (a put of the same value, a delete, a read):
/// an answer lost on the way back may hide a request that was carried out.
#[derive(Clone)]
pub struct Failover {
    client: Client,
    opts: EtcdOptions,
    probe: Duration,
    patience: Duration,
}

impl Failover {
    /// `client` reaches one member (see [`connect_alive`]).
    pub fn new(client: Client, opts: EtcdOptions, probe: Duration, patience: Duration) -> Self {
        Failover {
            client,
            opts,
            probe,
            patience,
        }
    }

    /// A client of the member reached last.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// Sends `request` (given a client to send it with) and sends it again through another
    /// member while it fails at the transport, for `patience` at most. Each try is bounded by
    /// `patience` too: a member that accepts and never answers is given up on.
    pub async fn run<T, F, Fut>(&mut self, mut request: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut failing_since = None;
        loop {
            let failed =
                match tokio::time::timeout(self.patience, request(self.client.clone())).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(e)) if !unreachable(&e) => return Err(e),
                    Ok(Err(e)) => e,
                    Err(_) => etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(
                        format!("no answer within {:?}", self.patience),
                    )),
                };
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= self.patience {
                return Err(failed);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Ok(other) = connect_alive(&self.opts, self.probe).await {
                self.client = other;
            }
        }
    }

    /// Reads one key (a read is always safe to send twice).
    pub async fn get(&mut self, key: &str) -> Result<GetResponse, etcd_client::Error> {
        self.run(|mut c| {
            let key = key.to_string();
            async move { c.get(key, None).await }
        })
        .await
    }
}

/// Whether `e` says the member could not be reached or could not serve (rather than that the
/// request itself was refused): worth sending again through another member.
fn unreachable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // "transport error" (a connection reset mid-request) comes as Unknown; "no leader" and
        // refused connections as Unavailable.
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        _ => false,
    }
}

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
        }
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

/// Reads every key under `prefix/` at one revision, `page` keys a request, keys only, into the
/// desired state of the load balancers `filters` allows. A read that takes long logs its progress.
pub async fn read_snapshot(
    client: &mut Client,
    prefix: &str,
    filters: &Filters,
    page: i64,
    log: &slog::Logger,
) -> Result<Snapshot, EtcdError> {
    let mut loaded = Loaded::new(prefix, filters.clone());
    let mut leased = std::collections::HashSet::new();
    let read = read_prefix(client, prefix, page, log, &mut |keys: &[(
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
    })
}

/// A page of a read of the prefix: (key, mod_revision, has a lease).
pub type Page<'a> = [(&'a str, Revision, bool)];

/// What a read of the whole prefix saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefixRead {
    /// The store revision it was read at.
    pub revision: Revision,
    pub keys: usize,
    /// Keys that are not UTF-8, skipped.
    pub skipped: usize,
}

/// Reads every key under `prefix/` at one revision, `page` keys a request, keys only, handing
/// each page to `on_page` as (key, mod_revision, has a lease) as it arrives: nothing is kept
/// here, so the caller decides what a million keys cost.
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
    page: i64,
    log: &slog::Logger,
    on_page: &mut dyn FnMut(&Page),
) -> Result<PrefixRead, EtcdError> {
    let mut read = PrefixRead::default();
    let began = std::time::Instant::now();
    let mut next_report = began + PROGRESS_EVERY;
    read.revision = read_pages(client, &watch_key(prefix), page, true, &mut |kvs| {
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
        read.keys += keys.len();
        on_page(&keys);
    })
    .await?;
    Ok(read)
}

/// Reads every key that starts with `prefix` at one revision, `page` keys a request (each
/// request with its own deadline, [`READ_REQUEST_TIMEOUT`], and answers up to [`MAX_MESSAGE`]),
/// handing each page to `on_page`; returns the revision it read at. A page of 50,000 keys is
/// ~3.5 MiB, close to gRPC's default limit of 4 MiB, which longer keys (or values) would pass.
async fn read_pages(
    client: &mut Client,
    prefix: &str,
    page: i64,
    keys_only: bool,
    on_page: &mut dyn FnMut(&[etcd_client::KeyValue]),
) -> Result<Revision, EtcdError> {
    let end = range_end(prefix);
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
        if keys_only {
            options = options.with_keys_only();
        }
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = tokio::time::timeout(READ_REQUEST_TIMEOUT, kv.get(from.clone(), Some(options)))
            .await
            .map_err(|_| EtcdError::Timeout {
                prefix: prefix.to_string(),
                timeout: READ_REQUEST_TIMEOUT,
            })?
            .map_err(|source| EtcdError::Read {
                prefix: prefix.to_string(),
                source,
            })?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        }
        on_page(resp.kvs());
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(revision),
        }
    }
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
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<(String, String)>, EtcdError> {
    let mut out = Vec::new();
    read_pages(client, prefix, RECORD_PAGE, false, &mut |kvs| {
        out.extend(kvs.iter().filter_map(|kv| {
            Some((
                kv.key_str().ok()?.to_string(),
                kv.value_str().ok()?.to_string(),
            ))
        }));
    })
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
    /// Route53 changes that the last leader saw accepted and not yet `INSYNC`, by name: followed
    /// on, so that a wait is not told "done" by a new leader that does not know of them.
    pub dns_pending: std::collections::HashMap<crate::key::LbId, Vec<crate::status::PendingChange>>,
}

/// Reads lbmanager's records for the tree under `prefix` (paged, see [`read_records`]).
pub async fn read_state(client: &mut Client, prefix: &str) -> Result<Records, EtcdError> {
    let layout = crate::layout::Layout::new(prefix);
    let state = format!("{}/", layout.state_prefix());
    let records = read_records(client, &state).await?;
    let mut out = Records::default();
    let mut published = Vec::new();
    for (key, value) in records {
        if let Some(lb) = layout.parse_managed(&key) {
            out.managed.insert(lb);
        } else if let Some(lb) = layout.parse_status(&key) {
            /// Only what start-up needs of a status: its members are not built (a million of
            /// them in the largest installation).
            #[derive(serde::Deserialize)]
            struct Refused {
                #[serde(default)]
                rejected: crate::status::Rejections,
                #[serde(default)]
                dns_pending: Vec<crate::status::PendingChange>,
            }
            if let Ok(status) = serde_json::from_str::<Refused>(&value) {
                if !status.rejected.is_empty() {
                    out.rejected.insert(lb.clone(), status.rejected);
                }
                if !status.dns_pending.is_empty() {
                    out.dns_pending.insert(lb.clone(), status.dns_pending);
                }
            }
            published.push((lb, key));
        } else if let Some((lb, member)) = layout.parse_owned(&key) {
            out.owned.entry(lb).or_default().insert(member);
        }
    }
    // The status of a load balancer no longer managed (its removal was lost): not to be shown.
    for (lb, key) in published {
        if !out.managed.contains(&lb) {
            out.rejected.remove(&lb);
            out.dns_pending.remove(&lb);
            out.obsolete.push(key);
        }
    }
    Ok(out)
}

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

/// Test doubles (compiled for tests only).
#[cfg(test)]
pub mod fake {
    use super::{EtcdError, EtcdWrites, Revision};

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
        ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, (String, Revision)>>
        {
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
                let holds =
                    |(k, rev): &(String, Revision)| keys.get(k).is_some_and(|(_, r)| r == rev);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_not_in_debug_output() {
        let opts = EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            user: Some(("lbm".into(), "S3cret-Pa55".into())),
            ca_file: None,
            cert_key: None,
        };
        let shown = format!("{opts:?} {opts:#?}");
        assert!(!shown.contains("S3cret-Pa55"), "{shown}");
        assert!(
            shown.contains("lbm") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

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

    #[test]
    fn range_end_is_next_prefix() {
        assert_eq!(range_end("/lbManager/"), b"/lbManager0".to_vec());
        assert_eq!(watch_key("/lbManager"), "/lbManager/");
    }
}
