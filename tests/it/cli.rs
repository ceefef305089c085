//! The binary's command line and the shipped unit files.

use std::process::Command;

fn lbmanager(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lbmanager"))
        .args(args)
        .env_remove("ETCD_ENDPOINTS")
        .output()
        .expect("run lbmanager")
}

#[test]
fn bad_flags_exit_2_with_a_clear_message() {
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "--route53-ttl", "soon"],
        &["run", "--prefix", "noslash"],
        &["run", "--resync-interval", "5 parsecs"],
        &[
            "run",
            "--route53-health-check",
            "route53/Z1/www.example.com=UDP:80",
        ],
        &["run", "--route53-health-check", "route53/Z1=HTTP:80"],
        // Health-checked names are lbmanager's alone.
        &[
            "run",
            "--ownership",
            "shared",
            "--route53-health-check",
            "route53/Z1/www.example.com=HTTP:80",
        ],
        &[
            "plan",
            "--ownership",
            "shared",
            "--route53-health-check",
            "route53/*/*=TCP:443",
        ],
        &["frobnicate"],
        &[],
    ] {
        let out = lbmanager(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error") || err.contains("Usage"),
            "{args:?}: {err}"
        );
    }
}

/// `plan` takes what it reads and how `run` would sync, and nothing of running a daemon: the
/// daemon's flags are refused, not silently accepted.
#[test]
fn plan_refuses_the_flags_of_the_daemon() {
    for flag in [
        &["--ha"][..],
        &["--once"],
        &["--dry-run"],
        &["--listen", "127.0.0.1:9090"],
        &["--resync-interval", "30s"],
        &["--ha-lease-ttl", "10s"],
    ] {
        let args: Vec<&str> = ["plan"].iter().chain(flag).copied().collect();
        let out = lbmanager(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag[0]), "{args:?}: {err}");
    }
    let help = String::from_utf8_lossy(&lbmanager(&["plan", "--help"]).stdout).to_string();
    for flag in [
        "--etcd-endpoints",
        "--aws-quota-share",
        "--route53-ttl",
        "--policy",
    ] {
        assert!(help.contains(flag), "{flag} missing from plan --help");
    }
}

#[test]
fn help_explains_every_flag() {
    let out = lbmanager(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--etcd-endpoints",
        "--etcd-user",
        "--etcd-password-file",
        "--etcd-connect-timeout",
        "--prefix",
        "--aws-endpoint-url",
        "--aws-timeout",
        "--route53-ttl",
        "--aws-quota-share",
        "--route53-change-burst",
        "--route53-change-rate",
        "--resync-interval",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    for env in [
        "ETCD_ENDPOINTS",
        "AWS_ENDPOINT_URL",
        "LBMANAGER_ROUTE53_TTL",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
}

/// `systemd-analyze verify` prints a warning for anything it does not like but exits 0: the test
/// asserts it prints nothing. The unit's binary path is pointed at the built binary.
#[test]
fn systemd_units_verify_clean() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let units = [
        "systemd/lbmanager.service",
        "systemd/lbmanager-container.service",
        "examples/webserver.service",
        "examples/webserver-alb.service",
        "examples/webserver-route53.service",
        "examples/webserver-presence.service",
    ];
    // All in one directory first: the presence unit binds to the web server's.
    for unit in units {
        let text = std::fs::read_to_string(format!("{root}/{unit}")).unwrap();
        let text = text
            .replace("/usr/bin/lbmanager", env!("CARGO_BIN_EXE_lbmanager"))
            .replace("/usr/bin/docker", "/bin/true");
        let name = std::path::Path::new(unit).file_name().unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    // verify runs `man` for each Documentation=man: page: give it the generated ones.
    let man = dir.path().join("man");
    let out = lbmanager(&["manpages", man.join("man1").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for unit in units {
        let name = std::path::Path::new(unit).file_name().unwrap();
        let path = dir.path().join(name);
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("MANPATH", &man)
            .output()
            .expect("systemd-analyze (Debian systemd) is needed for this test");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
}

/// The `lbmanager member …` lines of the example units parse with the real flags, and their keys
/// are member keys (with the variables as the units fill them in).
#[test]
fn the_examples_member_commands_parse() {
    use clap::Parser;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut seen = 0;
    for unit in [
        "webserver.service",
        "webserver-alb.service",
        "webserver-route53.service",
        "webserver-presence.service",
    ] {
        let text = std::fs::read_to_string(format!("{root}/examples/{unit}")).unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("Exec") && l.contains("lbmanager member"))
        {
            let command = line.split_once('=').unwrap().1.trim_start_matches('-');
            let command = command
                .replace("${INSTANCE_ID}", "i-0123456789abcdef0")
                .replace("${HOST_PORT}", "8080")
                .replace("${PUBLIC_IPV4}", "192.0.2.10");
            let words: Vec<&str> = command.split_whitespace().collect();
            let cli = lbmanager::cli::Cli::try_parse_from(&words)
                .unwrap_or_else(|e| panic!("{unit}: {command}: {e}"));
            use lbmanager::cli::{AddArgs, Command, MemberCommand, RemoveArgs};
            let Command::Member(
                MemberCommand::Add(AddArgs { key, .. })
                | MemberCommand::Remove(RemoveArgs { key, .. }),
            ) = cli.command
            else {
                panic!("{unit}: not a member command: {command}");
            };
            assert!(
                matches!(lbmanager::key::parse("/lbManager", &key), Ok(Some(_))),
                "{unit}: {key}"
            );
            seen += 1;
        }
    }
    assert_eq!(
        seen, 7,
        "every example announces and withdraws through lbmanager"
    );
}
