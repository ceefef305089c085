//! Installing it like a system tool: the Debian package (built from the binary this test run
//! built, unpacked, never installed), and the dashboard and alert rules checked against the
//! metrics lbmanager really exposes.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lbmanager_testkit::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `scripts/package.sh` on the debug binary `cargo test` built (one build per CI run; the
/// release package is the same recipe around the release binary), unpacked with `dpkg-deb -x`:
/// the binary runs, the man pages render, the settings file is a 0600 conffile, the completions
/// are where the shells look, and the unit verifies.
#[test]
fn the_debian_package_unpacks_into_a_working_install() {
    // The profile this test run was built with (`target/debug/…`: dev).
    let built = PathBuf::from(env!("CARGO_BIN_EXE_lbmanager"));
    let profile = match built
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
    {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("{}", built.display()),
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("debian");
    run(Command::new("bash")
        .arg(format!("{ROOT}/scripts/package.sh"))
        .args(["--profile", &profile, "--no-build", "--output"])
        .arg(&out));
    let version = env!("CARGO_PKG_VERSION");
    let deb = out.join(format!("lbmanager_{version}_amd64.deb"));
    assert!(deb.exists(), "{} missing", deb.display());
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));

    // The binary.
    let bin = root.join("usr/bin/lbmanager");
    let said = run(Command::new(&bin).arg("--version"));
    assert!(said.contains(version), "{said}");

    // Man pages: one per command, rendered by man itself.
    let man1 = root.join("usr/share/man/man1");
    for page in [
        "lbmanager",
        "lbmanager-run",
        "lbmanager-plan",
        "lbmanager-member-add",
        "lbmanager-member-remove",
        "lbmanager-status",
        "lbmanager-explain",
        "lbmanager-completions",
    ] {
        let path = man1.join(format!("{page}.1.gz"));
        assert!(path.exists(), "{} missing", path.display());
    }
    let page = run(Command::new("man")
        .arg("-l")
        .arg(man1.join("lbmanager-member-add.1.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100"));
    assert!(page.contains("lbmanager-member-add"), "{page}");
    assert!(page.contains("--lease-ttl"), "{page}");
    let page = run(Command::new("man")
        .arg("-l")
        .arg(man1.join("lbmanager.1.gz"))
        .env("MANPAGER", "cat"));
    assert!(page.contains("lbmanager-status(1)"), "{page}");
    assert!(page.contains("lbmanager-explain(1)"), "{page}");

    // The settings file: root-only, and a conffile (kept across upgrades).
    let env = root.join("etc/lbmanager/lbmanager.env");
    let mode = std::fs::metadata(&env).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}: {mode:o}", env.display());
    let text = std::fs::read_to_string(&env).unwrap();
    assert!(
        text.lines().all(|l| l.is_empty() || l.starts_with('#')),
        "every example setting is commented out:\n{text}"
    );
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/lbmanager/lbmanager.env");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");

    // Completions where bash, zsh and fish look for them.
    for (path, needle) in [
        (
            "usr/share/bash-completion/completions/lbmanager",
            "_lbmanager",
        ),
        (
            "usr/share/zsh/vendor-completions/_lbmanager",
            "#compdef lbmanager",
        ),
        (
            "usr/share/fish/vendor_completions.d/lbmanager.fish",
            "complete -c lbmanager",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(path)).unwrap();
        assert!(text.contains(needle), "{path}");
    }
    let copyright =
        std::fs::read_to_string(root.join("usr/share/doc/lbmanager/copyright")).unwrap();
    assert!(copyright.contains("MIT"), "{copyright}");
    assert!(
        copyright.contains("Permission is hereby granted"),
        "the licence's full text: {copyright}"
    );
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(fields.contains("ca-certificates"), "{fields}");
    let summary = fields
        .lines()
        .find_map(|l| l.strip_prefix("Description: "))
        .unwrap();
    assert!(summary.len() < 80, "Debian's synopsis line: {summary}");

    // The unit: names its manual, runs as a dynamic user, and systemd-analyze has nothing to say
    // (pointed at the unpacked binary: verify checks that ExecStart= exists).
    let unit = root.join("usr/lib/systemd/system/lbmanager.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("Documentation=man:lbmanager(1)"), "{text}");
    assert!(text.contains("DynamicUser=yes"), "{text}");
    let checked = dir.path().join("lbmanager.service");
    std::fs::write(
        &checked,
        text.replace("/usr/bin/lbmanager", bin.to_str().unwrap()),
    )
    .unwrap();
    // (verify runs `man` for each Documentation=man: page: the unpacked ones.)
    let said = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .env("MANPATH", root.join("usr/share/man")));
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
}

/// `lbmanager completions` prints a script for each shell; an unknown shell is refused.
#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, needle) in [
        ("bash", "complete -F _lbmanager"),
        ("zsh", "#compdef lbmanager"),
        ("fish", "complete -c lbmanager"),
    ] {
        let (code, out, err) = lbmanager(&["completions", shell]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(needle), "{shell}");
        assert!(out.contains("member"), "{shell}: subcommands completed");
        assert!(out.contains("explain"), "{shell}: explain completed");
    }
    let (code, _, _) = lbmanager(&["completions", "tcsh"]);
    assert_eq!(code, Some(2));
}

/// The series names a scrape of lbmanager's `/metrics` can have, from its `# TYPE` lines.
fn exposed(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => names.insert(format!("{name}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
                true
            }
            _ => names.insert(name.to_string()),
        };
    }
    names
}

/// Every `lbmanager_…` name in `text`.
fn queried(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("lbmanager_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("examples").join(name)).unwrap()
}

/// Every metric the dashboard and the alert rules query is one a running lbmanager exposes, and
/// `promtool check rules` accepts the rules.
#[tokio::test]
async fn the_dashboard_and_the_alert_rules_query_what_metrics_exposes() {
    // A load balancer that has synced and a member AWS refused: every family has a sample.
    let (etcd, moto) = (Etcd::start().await, Moto::start().await);
    let aws = Aws::new(&moto).await;
    aws.create_elb("us-east-1", "web").await;
    let dead = "i-0000000000000dead";
    let proxy = lbmanager_testkit::proxy::FaultProxy::aws_rules(moto.port);
    proxy.set_invalid(&[dead]);
    for id in ["i-00000000000000c01", dead] {
        etcd.put(&format!("/lbManager/elb/us-east-1/web/multiple/{id}"))
            .await;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::unstarted();
    daemon.spawn(&etcd.url, &proxy.url, &["--listen", &listen]);
    daemon.wait_ready().await;
    daemon.wait_log("AWS rejected a member").await;
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    let exposed = exposed(&metrics);
    assert!(exposed.contains("lbmanager_aws_calls_total"), "{metrics}");

    let dashboard = example("grafana-dashboard.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let exprs: Vec<&str> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let queries = exprs.join("\n");
    let rules = example("prometheus-rules.yml");
    for (what, text) in [("dashboard", queries.clone()), ("rules", rules)] {
        let names = queried(&text);
        assert!(names.len() >= 5, "{what}: {names:?}");
        let unknown: Vec<&String> = names.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{what} queries metrics lbmanager does not expose: {unknown:?}"
        );
    }
    // The dashboard shows what the issue asked for.
    for needle in [
        "lbmanager_load_balancer_syncs_total",
        "result=\"throttled\"",
        "lbmanager_sync_duration_seconds_bucket",
        "lbmanager_members",
        "lbmanager_etcd_watch_revision",
        "lbmanager_etcd_watch_reconnects_total",
        "lbmanager_last_full_sync_timestamp_seconds",
        "lbmanager_ready",
    ] {
        assert!(queries.contains(needle), "dashboard lacks {needle}");
    }

    let said = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(Path::new(ROOT).join("examples/prometheus-rules.yml")));
    assert!(said.contains("SUCCESS: 7 rules found"), "{said}");
}
