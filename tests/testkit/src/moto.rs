//! A real moto server (PyPI moto[server]) as ELB, ELBv2 and Route53, with its request recorder.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;

use crate::{eventually, free_port, kill, DEADLINE};

/// A real moto server (PyPI moto[server]) on a free loopback port, with its request recorder
/// writing to a file of its own.
pub struct Moto {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    _dir: tempfile::TempDir,
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
            _dir: dir,
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
