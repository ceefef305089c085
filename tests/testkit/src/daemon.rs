//! The lbmanager binary under test, started against an etcd and a moto, or run once.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::{eventually, free_port, http_get, kill, Etcd, Moto, DEADLINE};

pub const AWS_KEY_ID: &str = "AKIATESTLBMANAGER0001";
pub const AWS_SECRET: &str = "test/secret+LbManagerSecretValue0001";

/// The lbmanager binary under test, started against an etcd and a moto.
pub struct Daemon {
    child: Option<Child>,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
    /// Environment changes for every spawn: `None` removes the variable.
    pub env: Vec<(String, Option<String>)>,
    /// The `--listen` port of the process spawned last (`/metrics`, `/readyz`): the test's own
    /// `--listen`, or one the harness chose.
    pub listen_port: Option<u16>,
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
            listen_port: None,
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
        // Every daemon serves `/readyz`, which is what the tests wait on (a fresh port per
        // process, so a restarted daemon is never taken for ready by its predecessor's answer).
        let given = extra.iter().position(|a| *a == "--listen");
        self.listen_port = match given {
            Some(i) => extra
                .get(i + 1)
                .and_then(|a| a.rsplit(':').next()?.parse().ok()),
            None => {
                let port = free_port();
                cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
                Some(port)
            }
        };
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

    /// Where the daemon's log is written (stdout and stderr of every process spawned).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the process spawned last is ready: its `/readyz` answers 200 (the start-up
    /// sync is done and the etcd watch is live). This, not a log line, is the daemon's contract.
    pub async fn wait_ready(&self) {
        self.wait_ready_within(DEADLINE).await;
    }

    /// [`Daemon::wait_ready`], for a start that may take longer than the usual deadline.
    pub async fn wait_ready_within(&self, timeout: Duration) {
        let port = self.listen_port.expect("a spawned daemon");
        eventually("lbmanager's /readyz to answer 200", timeout, || async {
            tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
                .await
                .ok()
                .flatten()
                .is_some_and(|(status, _)| status == 200)
        })
        .await;
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

    /// SIGTERM, then waits for the exit (up to 15 s: lbmanager gives the AWS calls in flight 10 s
    /// to land, a resync of a thousand ELBs in moto can take that) and returns its code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lbmanager did not stop within 15s of SIGTERM");
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
        self.proc_status_kib("VmRSS:")
    }

    /// The most resident memory the running process has had, in KiB (VmHWM, from /proc).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
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

    /// Sends `signal` (`STOP`, `CONT`, …) to the running process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("a running daemon");
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
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

/// The lbmanager binary cargo built beside the running test or benchmark (`target/PROFILE/`;
/// the test runs from `target/PROFILE/deps/`), or `LBMANAGER_BIN`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LBMANAGER_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary under target/PROFILE/deps");
    let bin = profile_dir.join("lbmanager");
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo test and cargo bench do)",
        bin.display()
    );
    bin
}

/// The binary under test with a clean environment: the test credentials, no instance metadata.
fn lbmanager_command() -> Command {
    let mut cmd = Command::new(binary());
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

/// [`lbmanager`] off the test's runtime (a command that waits must not hold up the proxies and
/// servers the test runs on it).
pub async fn lbmanager_async(args: &[&str]) -> (Option<i32>, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lbmanager(&args)
    })
    .await
    .expect("the lbmanager run")
}

/// Starts `lbmanager ARGS…` in the background (for a command that stays in the foreground), its
/// output captured; stop it with `kill -TERM` and read it with `wait_with_output`.
pub fn lbmanager_spawn(args: &[&str]) -> Child {
    lbmanager_command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the lbmanager binary")
}

/// Sends SIGTERM to a process of [`lbmanager_spawn`] and waits (off the test's runtime) for it to
/// exit: its exit code and its stderr.
pub async fn sigterm(child: Child) -> (Option<i32>, String) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    exited(child).await
}

/// Waits for a [`lbmanager_spawn`]ed command to end by itself: its exit code and its stderr.
pub async fn exited(child: Child) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(|| child.wait_with_output())
        .await
        .expect("the wait")
        .expect("the process's output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
