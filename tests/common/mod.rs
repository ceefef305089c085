//! Test harness for the integration tests: a real etcd and a real moto, each on free loopback
//! ports with its own temporary directory, and the built `lbmanager` binary between them.
//! Everything started here is killed when its handle is dropped.
#![allow(dead_code)]

pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancing as elb;
use aws_sdk_route53 as r53;
use base64::Engine;
use etcd_client::{Client, GetOptions};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

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

    fn unstarted() -> Etcd {
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
}

/// A real moto server (PyPI moto[server]) on a free loopback port, with its request recorder
/// writing to a file of its own.
pub struct Moto {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Moto {
    pub async fn start() -> Moto {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let log = File::create(dir.path().join("moto.log")).expect("moto log");
        let on_path = Command::new("sh")
            .args(["-c", "command -v moto_server"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        let mut cmd = if on_path {
            Command::new("moto_server")
        } else {
            let mut c = Command::new("python3");
            c.args(["-m", "moto.server"]);
            c
        };
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", dir.path().join("recording"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("moto must be installed (scripts/install-deps.sh)");
        let moto = Moto {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
        };
        eventually("moto answers", DEADLINE, || async {
            moto.try_http("GET", "/moto-api/").is_ok()
        })
        .await;
        moto
    }

    fn try_http(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let ok = out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200");
        if !ok {
            return Err(std::io::Error::other(out));
        }
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }

    /// The id of moto's default VPC (a target group needs one), asked of moto's EC2 API directly.
    pub fn default_vpc(&self) -> String {
        let body = "Action=DescribeVpcs&Version=2016-11-15";
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("moto");
        write!(
            s,
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let start = out.find("<vpcId>").expect("a default VPC") + "<vpcId>".len();
        let end = out[start..].find('<').unwrap() + start;
        out[start..end].to_string()
    }

    pub fn http(&self, method: &str, path: &str) -> String {
        self.try_http(method, path).expect("moto api call")
    }

    pub fn start_recording(&self) {
        self.http("POST", "/moto-api/recorder/reset-recording");
        self.http("POST", "/moto-api/recorder/start-recording");
    }

    /// The calls recorded since `start_recording`.
    pub fn recorded(&self) -> Vec<RecordedCall> {
        let body = self.http("GET", "/moto-api/recorder/download-recording");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).expect("recording is JSON lines");
                let mut body = v["body"].as_str().unwrap_or_default().to_string();
                if v["body_encoded"].as_bool() == Some(true) {
                    body = String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(&body)
                            .unwrap_or_default(),
                    )
                    .into_owned();
                }
                let headers = &v["headers"];
                let agent = headers["User-Agent"]
                    .as_str()
                    .or(headers["user-agent"].as_str())
                    .unwrap_or_default()
                    .to_string();
                RecordedCall {
                    method: v["method"].as_str().unwrap_or_default().to_string(),
                    url: v["url"].as_str().unwrap_or_default().to_string(),
                    body,
                    agent,
                }
            })
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One request moto recorded.
#[derive(Debug)]
pub struct RecordedCall {
    pub method: String,
    pub url: String,
    pub body: String,
    pub agent: String,
}

impl RecordedCall {
    /// Made by lbmanager (its SDK clients carry the app name), not by the test.
    pub fn by_lbmanager(&self) -> bool {
        self.agent.contains("lbmanager")
    }

    /// A call that changes AWS.
    pub fn is_mutating(&self) -> bool {
        self.body
            .contains("Action=RegisterInstancesWithLoadBalancer")
            || self
                .body
                .contains("Action=DeregisterInstancesFromLoadBalancer")
            || (self.method == "POST" && self.url.contains("/rrset"))
    }
}

pub const AWS_KEY_ID: &str = "AKIATESTLBMANAGER0001";
pub const AWS_SECRET: &str = "test/secret+LbManagerSecretValue0001";

/// The lbmanager binary under test, started against an etcd and a moto.
pub struct Daemon {
    child: Option<Child>,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
    /// Environment changes for every spawn: `None` removes the variable.
    pub env: Vec<(String, Option<String>)>,
}

impl Daemon {
    pub fn start(etcd: &Etcd, moto: &Moto, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log_path = dir.path().join("lbmanager.log");
        let mut daemon = Daemon::new(dir, log_path);
        daemon.spawn(&etcd.url, &moto.url, extra);
        daemon
    }

    /// A daemon that has not started yet (set `env`, then `spawn`).
    pub fn unstarted() -> Daemon {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log_path = dir.path().join("lbmanager.log");
        Daemon::new(dir, log_path)
    }

    fn new(dir: tempfile::TempDir, log_path: PathBuf) -> Daemon {
        Daemon {
            child: None,
            log_path,
            _dir: dir,
            env: Vec::new(),
        }
    }

    pub fn spawn(&mut self, etcd_url: &str, moto_url: &str, extra: &[&str]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("daemon log");
        let mut cmd = lbmanager_command();
        cmd.arg("run")
            .args(["--etcd-endpoints", etcd_url])
            .args(["--aws-endpoint-url", moto_url])
            .args(extra)
            .env("LBMANAGER_LOG_LEVEL", "debug");
        for (name, value) in &self.env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let child = cmd
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("the lbmanager binary");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log has `n` lines containing `needle`.
    pub async fn wait_log_count(&self, needle: &str, n: usize) {
        eventually(
            &format!("{n} log lines with {needle:?}"),
            DEADLINE,
            || async { self.log().matches(needle).count() >= n },
        )
        .await;
    }

    pub async fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1).await;
    }

    /// SIGTERM, then waits for the exit (up to 10 s) and returns its code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lbmanager did not stop within 10s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself and returns its code.
    pub async fn exit_code(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "lbmanager did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the running process, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() || std::env::var_os("LBMANAGER_TEST_LOG").is_some() {
            eprintln!("---- lbmanager log ----\n{}", self.log());
        }
    }
}

/// The binary under test with a clean environment: the test credentials, no instance metadata.
fn lbmanager_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbmanager"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs `lbmanager ARGS…` to completion with the test credentials; returns (exit code, stdout,
/// stderr).
pub fn lbmanager(args: &[&str]) -> (Option<i32>, String, String) {
    let out = lbmanager_command()
        .args(args)
        .output()
        .expect("the lbmanager binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The test's own AWS clients, pointed at moto.
pub struct Aws {
    config: aws_config::SdkConfig,
    pub route53: r53::Client,
}

impl Aws {
    pub async fn new(moto: &Moto) -> Aws {
        Aws::at(&moto.url).await
    }

    pub async fn at(url: &str) -> Aws {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(r53::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await;
        Aws {
            route53: r53::Client::new(&config),
            config,
        }
    }

    pub fn elb(&self, region: &str) -> elb::Client {
        let conf = elb::config::Builder::from(&self.config)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        elb::Client::from_conf(conf)
    }

    pub async fn create_elb(&self, region: &str, name: &str) {
        self.elb(region)
            .create_load_balancer()
            .load_balancer_name(name)
            .listeners(
                elb::types::Listener::builder()
                    .protocol("HTTP")
                    .load_balancer_port(80)
                    .instance_protocol("HTTP")
                    .instance_port(80)
                    .build()
                    .unwrap(),
            )
            .availability_zones(format!("{region}a"))
            .send()
            .await
            .expect("create ELB");
    }

    /// The instances registered with an ELB, duplicates included (moto stores a re-registered
    /// instance twice, so a duplicate here means lbmanager registered what was there).
    pub async fn instances(&self, region: &str, name: &str) -> Vec<String> {
        let out = self
            .elb(region)
            .describe_load_balancers()
            .load_balancer_names(name)
            .send()
            .await
            .expect("describe ELB");
        let mut ids: Vec<String> = out.load_balancer_descriptions()[0]
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    pub async fn register(&self, region: &str, name: &str, id: &str) {
        self.elb(region)
            .register_instances_with_load_balancer()
            .load_balancer_name(name)
            .instances(elb::types::Instance::builder().instance_id(id).build())
            .send()
            .await
            .expect("register");
    }

    pub fn elbv2(&self, region: &str) -> aws_sdk_elasticloadbalancingv2::Client {
        let conf = aws_sdk_elasticloadbalancingv2::config::Builder::from(&self.config)
            .region(aws_config::Region::new(region.to_string()))
            .build();
        aws_sdk_elasticloadbalancingv2::Client::from_conf(conf)
    }

    /// Creates a target group (`kind` "instance" or "ip") on `port` in `vpc`; returns its ARN.
    pub async fn create_target_group(
        &self,
        name: &str,
        kind: &str,
        port: i32,
        vpc: &str,
    ) -> String {
        use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetTypeEnum};
        let out = self
            .elbv2("us-east-1")
            .create_target_group()
            .name(name)
            .protocol(ProtocolEnum::Http)
            .port(port)
            .vpc_id(vpc)
            .target_type(TargetTypeEnum::from(kind))
            .send()
            .await
            .expect("create target group");
        out.target_groups()[0]
            .target_group_arn()
            .unwrap()
            .to_string()
    }

    /// A target group's targets as `id:port`, sorted.
    pub async fn targets(&self, arn: &str) -> Vec<String> {
        let out = self
            .elbv2("us-east-1")
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .expect("describe target health");
        let mut list: Vec<String> = out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| d.target())
            .map(|t| {
                let id = t.id().unwrap_or_default();
                match id.parse::<std::net::Ipv6Addr>() {
                    Ok(ip) => format!("[{ip}]:{}", t.port().unwrap_or_default()),
                    Err(_) => format!("{id}:{}", t.port().unwrap_or_default()),
                }
            })
            .collect();
        list.sort();
        list
    }

    /// Creates a hosted zone and returns its bare id.
    pub async fn create_zone(&self, name: &str) -> String {
        let out = self
            .route53
            .create_hosted_zone()
            .name(name)
            .caller_reference(format!("{name}-{}", free_port()))
            .send()
            .await
            .expect("create zone");
        out.hosted_zone()
            .unwrap()
            .id()
            .trim_start_matches("/hostedzone/")
            .to_string()
    }

    /// The A/AAAA record sets of `fqdn`: type → (ttl, sorted values).
    pub async fn records(&self, zone: &str, fqdn: &str) -> BTreeMap<String, (i64, Vec<String>)> {
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .send()
            .await
            .expect("list record sets");
        let mut found = BTreeMap::new();
        for set in out.resource_record_sets() {
            let t = set.r#type().as_str().to_string();
            if set.name().trim_end_matches('.') != fqdn || !(t == "A" || t == "AAAA") {
                continue;
            }
            let mut values: Vec<String> = set
                .resource_records()
                .iter()
                .map(|r| r.value().to_string())
                .collect();
            values.sort();
            found.insert(t, (set.ttl().unwrap_or_default(), values));
        }
        found
    }
}

/// `["a", "b"]` as owned strings.
pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `GET path` on 127.0.0.1:`port`: (status, body); None while nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// The value of the sample `series` (name and labels as printed) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
