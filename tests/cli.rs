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
