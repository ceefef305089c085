//! etcd with authentication and with TLS client certificates, and no secret in any log line.

use lbmanager_testkit::*;

const ETCD_PASSWORD: &str = "Etcd-Pa55word-that-must-not-leak";

fn key(class: &str, id: &str) -> String {
    format!("/lbManager/elb/us-east-1/webLB/{class}/{id}")
}

/// An etcd with auth on, a role that may read and write only the prefix, and lbmanager logging in
/// as a user with that role (password from a file). The single switch exercises the writes
/// (deleting superseded keys, the managed records). Neither the etcd password nor the AWS secret
/// appears in lbmanager's output, at the most verbose log level.
#[tokio::test]
async fn etcd_auth_with_a_prefix_role_and_no_secret_in_the_logs() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.ctl(&["user", "add", "root:rootpw"]);
    etcd.ctl(&["role", "add", "lbmanager"]);
    // The member tree, and lbmanager's own records (out of reach of a purge of the tree).
    for prefix in ["/lbManager/", "/lbmanager-state/lbManager/"] {
        etcd.ctl(&[
            "role",
            "grant-permission",
            "lbmanager",
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
    }
    etcd.ctl(&["user", "add", &format!("lbm:{ETCD_PASSWORD}")]);
    etcd.ctl(&["user", "grant-role", "lbm", "lbmanager"]);
    etcd.ctl(&["auth", "enable"]);
    let root = |args: &[&str]| {
        let mut all = vec!["--user", "root:rootpw"];
        all.extend_from_slice(args);
        etcd.ctl(&all)
    };
    root(&["put", &key("multiple", I1), ""]);

    let mut daemon = Daemon::unstarted();
    let pw_file = daemon.log_path.with_file_name("etcd-password");
    std::fs::write(&pw_file, format!("{ETCD_PASSWORD}\n")).unwrap();
    daemon.env.push(("ETCD_USER".into(), Some("lbm".into())));
    daemon.spawn(
        &etcd.url,
        &moto.url,
        &[
            "--etcd-password-file",
            pw_file.to_str().unwrap(),
            "--log-level",
            "trace",
        ],
    );
    eventually(
        "converged through an authenticated etcd",
        DEADLINE,
        || async { aws.instances("us-east-1", "webLB").await == strings(&[I1]) },
    )
    .await;
    root(&["put", &key("single", I2), ""]);
    eventually("single switch applied", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I2])
    })
    .await;
    eventually(
        "superseded key deleted under the role",
        DEADLINE,
        || async {
            !root(&["get", "--prefix", "--keys-only", "/lbManager/elb/"]).contains("multiple")
        },
    )
    .await;
    assert!(root(&[
        "get",
        "--prefix",
        "--keys-only",
        "/lbmanager-state/lbManager/managed/"
    ])
    .contains("webLB"));

    // A container host, with the role the README gives it: its load balancer's member keys, its
    // waiting keys, read access to the status (and to the tree, for `lbmanager status`).
    root(&["role", "add", "lbmanager-host"]);
    for (perm, prefix) in [
        ("readwrite", "/lbManager/elb/us-east-1/webLB/"),
        ("readwrite", "/lbManager/_waiting/elb/us-east-1/webLB/"),
        ("read", "/lbmanager-state/lbManager/"),
        ("read", "/lbManager/"),
    ] {
        root(&[
            "role",
            "grant-permission",
            "lbmanager-host",
            "--prefix=true",
            perm,
            prefix,
        ]);
    }
    root(&["user", "add", "host:HostPassw0rd"]);
    root(&["user", "grant-role", "host", "lbmanager-host"]);
    let host_pw = daemon.log_path.with_file_name("host-password");
    std::fs::write(&host_pw, "HostPassw0rd\n").unwrap();
    let as_host = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for flag in [
            "--etcd-endpoints",
            &etcd.url,
            "--etcd-user",
            "host",
            "--etcd-password-file",
            host_pw.to_str().unwrap(),
        ] {
            all.push(flag.to_string());
        }
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            lbmanager_async(&all).await
        }
    };
    let (code, _, err) = as_host(&["member", "add", &key("single", I1), "--wait"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(aws.instances("us-east-1", "webLB").await, strings(&[I1]));
    let (code, out, err) = as_host(&["status"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = as_host(&["member", "remove", &key("single", I1), "--drain"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(aws.instances("us-east-1", "webLB").await.is_empty());
    // Another load balancer's keys are out of its reach.
    let other = "/lbManager/elb/us-east-1/otherLB/multiple/i-0123456789abcdef0";
    let (code, _, err) = as_host(&["member", "add", other]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");

    assert_eq!(daemon.stop(), Some(0));
    let log = daemon.log();
    assert!(log.contains("registered instances"), "the log has content");
    for secret in [ETCD_PASSWORD, AWS_SECRET, AWS_KEY_ID] {
        assert!(!log.contains(secret), "a secret in the log: {secret}");
    }
}

/// etcd over https with client-certificate authentication.
#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate() {
    let (etcd, moto) = (Etcd::start_tls().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    etcd.put(&key("multiple", I1)).await;
    let cert = |f: &str| etcd.dir.path().join(f).to_str().unwrap().to_string();
    let mut daemon = Daemon::unstarted();
    let tls_url = etcd.tls_url.clone().unwrap();
    daemon.spawn(
        &tls_url,
        &moto.url,
        &[
            "--etcd-ca-file",
            &cert("ca.pem"),
            "--etcd-cert-file",
            &cert("client.pem"),
            "--etcd-key-file",
            &cert("client-key.pem"),
        ],
    );
    eventually("converged over TLS", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    etcd.put(&key("multiple", I2)).await;
    eventually("the watch works over TLS", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;

    // Without the client certificate etcd refuses the connection: a clear error and exit 1.
    let mut refused = Daemon::unstarted();
    refused.spawn(
        &tls_url,
        &moto.url,
        &[
            "--etcd-ca-file",
            &cert("ca.pem"),
            "--etcd-connect-timeout",
            "2s",
        ],
    );
    assert_eq!(
        refused.exit_code(std::time::Duration::from_secs(20)).await,
        Some(1)
    );
    assert!(refused.log().contains("cannot read from etcd, giving up"));
}

/// Keys are written by every container host: one with a newline that would start a line that
/// reads like lbmanager's own, one with an ANSI escape sequence, one far past the key bound. Each
/// is warned about in exactly one line, with its control characters shown, never interpreted
/// (in the daemon's log and in `lbmanager plan`'s); the long one by its beginning only. The good
/// key next to them is applied.
#[tokio::test]
async fn keys_cannot_forge_log_lines_or_reach_a_terminal() {
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "webLB").await;
    let forged = format!(
        "{}\nDec 03 21:00:00.000 INFO registered instances, added: i-0evil",
        key("multiple", "i-0bad")
    );
    let ansi = "/lbManager/elb/us-east-1/web\u{1b}[2J\u{1b}[31mLB/multiple/i-0123456789abcdef0";
    let long = format!(
        "/lbManager/elb/us-east-1/webLB/multiple/i-{}",
        "0".repeat(4000)
    );
    let mut client = etcd.client().await;
    for k in [forged.as_str(), ansi, long.as_str()] {
        client.put(k, "", None).await.unwrap();
    }
    etcd.put(&key("multiple", I1)).await;
    let mut daemon = Daemon::start(&etcd, &moto, &[]);
    eventually("the good key applied", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1])
    })
    .await;
    // The same keys written again while running: seen through the watch, not warned again.
    client.put(ansi, "", None).await.unwrap();
    etcd.put(&key("multiple", I2)).await;
    eventually("the watch goes on", DEADLINE, || async {
        aws.instances("us-east-1", "webLB").await == strings(&[I1, I2])
    })
    .await;
    let (code, out, err) = lbmanager_async(&[
        "plan",
        "--etcd-endpoints",
        &etcd.url,
        "--aws-endpoint-url",
        &moto.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(daemon.stop(), Some(0));

    for (what, text) in [
        ("the daemon's log", daemon.log()),
        ("plan's output", out + &err),
    ] {
        assert!(
            !text.contains('\u{1b}'),
            "an escape sequence in {what}: {text}"
        );
        // Every line is one of lbmanager's: a timestamp and a level first.
        for line in text.lines().filter(|l| l.contains(':') && l.len() > 20) {
            if line.starts_with("LOAD BALANCER") || line.starts_with("us-east-1") {
                continue;
            }
            let level = line.split_whitespace().nth(3).unwrap_or("");
            assert!(
                ["TRCE", "DEBG", "INFO", "WARN", "ERRO", "CRIT"].contains(&level)
                    || line.starts_with("elb/"),
                "a line that is not lbmanager's in {what}: {line:?}"
            );
        }
        assert!(
            !text.lines().any(|l| l.starts_with("Dec 03 21:00:00.000")),
            "a forged line in {what}: {text}"
        );
        let forged_warnings = text
            .lines()
            .filter(|l| l.contains("i-0bad\\nDec 03 21:00:00.000 INFO registered instances"))
            .count();
        let ansi_warnings = text
            .lines()
            .filter(|l| l.contains("web\\u{1b}[2J\\u{1b}[31mLB"))
            .count();
        let long_warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ignoring a key too long to read"))
            .collect();
        assert_eq!(forged_warnings, 1, "{what}: {text}");
        assert_eq!(ansi_warnings, 1, "{what}: {text}");
        assert_eq!(long_warnings.len(), 1, "{what}: {text}");
        assert!(long_warnings[0].len() < 400, "{}", long_warnings[0]);
        assert!(long_warnings[0].contains(&format!("the key is {} bytes long", long.len())));
    }
}
