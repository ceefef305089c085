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

/// The per-service rate flags of before AWS's buckets were modelled fail with a pointer to the
/// new ones, from the command line or from an old environment file.
#[test]
fn the_removed_rate_flags_name_their_replacements() {
    for args in [
        &["run", "--elb-rate", "4"][..],
        &["run", "--elb-burst", "20"],
        &["run", "--elbv2-rate", "4"],
        &["run", "--route53-rate", "5"],
        &["run", "--route53-burst", "2"],
    ] {
        let out = lbmanager(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--aws-quota-share"), "{args:?}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lbmanager"))
        .args(["run"])
        .env("LBMANAGER_ELB_RATE", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--aws-quota-share"));
    let help = String::from_utf8_lossy(&lbmanager(&["run", "--help"]).stdout).to_string();
    assert!(!help.contains("--elb-rate"), "a removed flag in --help");
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
    for unit in [
        "systemd/lbmanager-binary.service",
        "examples/webserver.service",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{unit}")).unwrap();
        let text = text
            .replace("/usr/local/bin/lbmanager", env!("CARGO_BIN_EXE_lbmanager"))
            .replace("/usr/bin/docker", "/bin/true")
            .replace("/usr/bin/etcdctl", "/bin/true");
        let name = std::path::Path::new(unit).file_name().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
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
