//! A real etcd server (Debian's etcd-server), alone or as a cluster, on free loopback ports.

use std::collections::BTreeSet;
use std::fs::File;
use std::process::{Child, Command, Stdio};

use etcd_client::{Client, GetOptions};

use crate::{eventually, free_port, kill, DEADLINE};

/// A real etcd server (Debian's etcd-server) on free loopback ports.
pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    /// With TLS: an https:// URL that wants a client certificate (the plain `url` stays for the
    /// test's own client).
    pub tls_url: Option<String>,
    peer_url: String,
    pub dir: tempfile::TempDir,
    name: String,
    /// `--initial-cluster` of a cluster member (a lone member names only itself).
    initial_cluster: Option<String>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let mut etcd = Etcd::unstarted();
        etcd.spawn().await;
        etcd
    }

    /// A handle on an etcd started elsewhere (nothing to stop).
    pub fn attach(url: &str) -> Etcd {
        let mut etcd = Etcd::unstarted();
        etcd.url = url.to_string();
        etcd
    }

    /// An etcd with its ports and data dir chosen, not started yet (`launch` starts it).
    pub fn unstarted() -> Etcd {
        Etcd {
            child: None,
            url: format!("http://127.0.0.1:{}", free_port()),
            tls_url: None,
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().expect("a temp dir"),
            name: "test".into(),
            initial_cluster: None,
        }
    }

    /// An etcd that also listens on https with client-certificate authentication. Makes a CA, a
    /// server and a client certificate with openssl in its directory: `ca.pem`, `client.pem`,
    /// `client-key.pem`.
    pub async fn start_tls() -> Etcd {
        let mut etcd = Etcd::unstarted();
        let d = etcd.dir.path().to_path_buf();
        let sh = |script: &str| {
            let ok = Command::new("sh")
                .arg("-ec")
                .arg(script)
                .current_dir(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl")
                .success();
            assert!(ok, "certificate generation failed: {script}");
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca \
            -keyout ca-key.pem -out ca.pem",
        );
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            sh(&format!(
                "openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}-key.pem -out {name}.csr
                 printf '{ext}\\nbasicConstraints=CA:FALSE\\n' > {name}.ext
                 openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
                   -days 2 -extfile {name}.ext -out {name}.pem"
            ));
        }
        etcd.tls_url = Some(format!("https://127.0.0.1:{}", free_port()));
        etcd.spawn().await;
        etcd
    }

    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the process (again, on the same ports and data).
    pub fn launch(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let client_urls = match &self.tls_url {
            Some(tls) => format!("{},{tls}", self.url),
            None => self.url.clone(),
        };
        let mut cmd = Command::new("etcd");
        if self.tls_url.is_some() {
            let p = |f: &str| self.dir.path().join(f).to_str().unwrap().to_string();
            cmd.args([
                "--cert-file",
                &p("server.pem"),
                "--key-file",
                &p("server-key.pem"),
            ])
            .args(["--trusted-ca-file", &p("ca.pem"), "--client-cert-auth"]);
        }
        let child = cmd
            .args([
                "--name",
                &self.name,
                "--data-dir",
                self.dir.path().join("data").to_str().unwrap(),
                "--listen-client-urls",
                &client_urls,
                "--advertise-client-urls",
                &client_urls,
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
                "--initial-cluster",
                &self
                    .initial_cluster
                    .clone()
                    .unwrap_or(format!("{}={}", self.name, self.peer_url)),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd must be installed (scripts/install-deps.sh)");
        self.child = Some(child);
    }

    /// Waits until this member answers a request that needs a leader.
    pub async fn wait_ready(&self) {
        let url = self.url.clone();
        eventually("etcd answers", DEADLINE, || {
            let url = url.clone();
            async move {
                let options = etcd_client::ConnectOptions::new().with_require_leader(true);
                match Client::connect([url], Some(options)).await {
                    Ok(mut c) => c.get("/", None).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// The port of the plain client URL.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Runs etcdctl against this etcd; panics if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .arg("--endpoints")
            .arg(&self.url)
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Saves a snapshot of the store to `path` (etcdctl snapshot save).
    pub fn snapshot_save(&self, path: &std::path::Path) {
        self.ctl(&["snapshot", "save", path.to_str().unwrap()]);
    }

    /// Stops etcd, replaces its data with `snapshot` (etcdctl snapshot restore: the store goes
    /// back to the snapshot's revision) and starts it again on the same ports.
    pub async fn restore(&mut self, snapshot: &std::path::Path) {
        self.stop();
        let data = self.dir.path().join("data");
        std::fs::remove_dir_all(&data).expect("remove the old data dir");
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore", snapshot.to_str().unwrap()])
            .args(["--data-dir", data.to_str().unwrap(), "--name", "test"])
            .args(["--initial-cluster", &format!("test={}", self.peer_url)])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.spawn().await;
    }

    /// Puts every key (empty values) in transactions of 128 puts (etcd's default limit), 16
    /// transactions at a time.
    pub async fn put_many(&self, keys: impl Iterator<Item = String>) {
        use futures::StreamExt;
        let client = self.client().await;
        let keys: Vec<String> = keys.collect();
        futures::stream::iter(keys.chunks(128))
            .for_each_concurrent(16, |chunk| {
                let mut client = client.clone();
                async move {
                    let ops: Vec<etcd_client::TxnOp> = chunk
                        .iter()
                        .map(|k| etcd_client::TxnOp::put(k.as_str(), "", None))
                        .collect();
                    client
                        .txn(etcd_client::Txn::new().and_then(ops))
                        .await
                        .expect("etcd txn");
                }
            })
            .await;
    }

    /// Stops and starts etcd on the same ports and data: an outage with nothing lost.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.url.as_str()], None)
            .await
            .expect("etcd client")
    }

    pub async fn put(&self, key: &str) {
        self.client()
            .await
            .put(key, "", None)
            .await
            .expect("etcd put");
    }

    pub async fn del(&self, key: &str) {
        self.client()
            .await
            .delete(key, None)
            .await
            .expect("etcd delete");
    }

    /// Every key under `prefix` with its value and revisions, and the store's revision.
    pub async fn range(&self, prefix: &str) -> etcd_client::GetResponse {
        let options = GetOptions::new().with_prefix();
        let resp = self.client().await.get(prefix, Some(options)).await;
        resp.expect("etcd get")
    }

    /// All keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> BTreeSet<String> {
        let resp = self
            .client()
            .await
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .expect("etcd get");
        resp.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster of real etcd members on loopback (for quorum tests).
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    pub async fn start(n: usize) -> EtcdCluster {
        let mut members: Vec<Etcd> = (0..n).map(|_| Etcd::unstarted()).collect();
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}={}", m.peer_url))
            .collect();
        let initial = initial.join(",");
        for (i, m) in members.iter_mut().enumerate() {
            m.name = format!("m{i}");
            m.initial_cluster = Some(initial.clone());
            m.launch();
        }
        for m in &members {
            m.wait_ready().await;
        }
        EtcdCluster { members }
    }

    /// Every member's client URL, comma-separated (for `--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        let urls: Vec<&str> = self.members.iter().map(|m| m.url.as_str()).collect();
        urls.join(",")
    }

    /// A client of the whole cluster.
    pub async fn client(&self) -> Client {
        let urls: Vec<&str> = self.members.iter().map(|m| m.url.as_str()).collect();
        Client::connect(urls, None).await.expect("etcd client")
    }

    /// The index of the member that leads the cluster now (waits for one).
    pub async fn leader(&self) -> usize {
        let found = std::cell::Cell::new(None);
        eventually("an etcd leader", DEADLINE, || async {
            for (i, m) in self.members.iter().enumerate() {
                let Ok(mut c) = Client::connect([m.url.as_str()], None).await else {
                    continue;
                };
                if let Ok(status) = c.status().await {
                    let me = status.header().map(|h| h.member_id());
                    if status.leader() != 0 && Some(status.leader()) == me {
                        found.set(Some(i));
                        return true;
                    }
                }
            }
            false
        })
        .await;
        found.get().expect("found above")
    }
}
