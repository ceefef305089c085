//! A real browser for the status page's tests: Debian's `chromium` (installed by
//! `scripts/install-deps.sh`; nothing downloads a browser of its own), headless, driven over the
//! DevTools protocol on a loopback websocket: navigate, evaluate, take a screenshot.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::{free_port, kill};

pub struct Browser {
    child: Option<Child>,
    ws: WebSocket<TcpStream>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromium headless on a blank page; its window `width` × `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("a profile dir");
        let port = free_port();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                &format!("--remote-debugging-port={port}"),
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (scripts/install-deps.sh installs Debian's)");
        let url = poll("chromium's DevTools", Duration::from_secs(30), || {
            let list: Value = serde_json::from_str(&targets(port)?).ok()?;
            list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_string)
        });
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("the DevTools port");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("the DevTools websocket");
        Browser {
            child: Some(child),
            ws,
            next: 0,
            _profile: profile,
        }
    }

    /// One DevTools command; its result (events met on the way are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("a DevTools command");
        loop {
            let Message::Text(text) = self.ws.read().expect("a DevTools answer") else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of JavaScript `expression` in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        result["result"]["value"].clone()
    }

    /// Opens `url` and waits until the page has loaded.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        poll(url, crate::DEADLINE, || {
            let loaded = self.eval("document.readyState") == "complete"
                && self.eval("location.href").as_str() == Some(url);
            loaded.then_some(())
        });
    }

    /// The text the page shows (`document.body.innerText`).
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits (polling every 100 ms, up to [`crate::DEADLINE`]) until the page's text satisfies
    /// `done`.
    pub fn wait_for_text(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        poll(what, crate::DEADLINE, || done(&self.text()).then_some(()));
    }

    /// Saves what the page shows as a PNG, `width` × `height` CSS pixels.
    pub fn screenshot(&mut self, path: &Path, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        );
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot's directory");
        }
        std::fs::write(path, png).expect("the screenshot");
    }
}

/// Polls `ready` every 100 ms until it has a value, for at most `limit`.
fn poll<T>(what: &str, limit: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// DevTools' list of targets (`/json/list`): HTTP/1.1, read by its length (DevTools does not
/// answer HTTP/1.0, and keeps the connection open).
fn targets(port: u16) -> Option<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reader = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
