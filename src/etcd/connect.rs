//! Reaching etcd: the options (TLS, a user), a connection to the first member that answers, and
//! [`Failover`], which sends a request again through another member when its own goes away.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetResponse, Identity, TlsOptions};

use super::EtcdError;

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

impl EtcdOptions {
    /// Plain `endpoints`: no TLS, no user.
    pub fn plain(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            user: None,
            ca_file: None,
            cert_key: None,
        }
    }
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

/// How long one etcd member may take to answer a probe before the next is tried.
pub const PROBE: Duration = Duration::from_secs(2);

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
}
