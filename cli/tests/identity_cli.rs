//! The identity commands as an operator runs them: real `weft` processes on loopback.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::*;
use weft_runtime::testing::http;

#[test]
fn token_create_and_cert_issue_against_a_running_identity_service() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let (identity, api, admin) = start_identity(dir.path(), &data);

    let token_file = dir.path().join("token");
    let token = token_with(&data, "default", "web", &["--ttl", "1h"], &token_file);
    assert!(token.starts_with("weft1."), "{token}");

    let certs = dir.path().join("certs");
    let out = Command::new(WEFT)
        .args([
            "cert",
            "issue",
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .args([
            "--out-dir",
            certs.to_str().unwrap(),
            "--identity-addr",
            &api.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("spiffe://weft.local/ns/default/sa/web certified until"),
        "{stdout}"
    );
    let key_mode = std::fs::metadata(certs.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(certs.join("bundle.pem"))
        .arg("-untrusted")
        .arg(certs.join("chain.pem"))
        .arg(certs.join("cert.pem"))
        .output()
        .expect("openssl is needed for this test");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The key written matches the certificate.
    let pubkey = |args: &[&str], file: &std::path::Path| {
        Command::new("openssl")
            .args(args)
            .arg(file)
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], &certs.join("key.pem")),
        pubkey(
            &["x509", "-noout", "-pubkey", "-in"],
            &certs.join("cert.pem")
        )
    );

    // The issuance shows in the service's metrics.
    let (_, metrics) = http(admin, "GET", "/metrics", "x").unwrap();
    assert!(
        metrics.contains("weft_identity_certificates_issued_total{method=\"token\"} 1"),
        "{metrics}"
    );

    // A token for a tampered identity is refused with the reason, and the CLI says so.
    let bad_token = dir.path().join("bad-token");
    std::fs::write(&bad_token, token.replace("weft1.", "weft1.x")).unwrap();
    let out = Command::new(WEFT)
        .args(["cert", "issue", "--token-file", bad_token.to_str().unwrap()])
        .args([
            "--out-dir",
            dir.path().join("bad").to_str().unwrap(),
            "--identity-addr",
            &api.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("weft:") && stderr.contains("token"),
        "{stderr}"
    );

    assert!(identity.terminate().success(), "SIGTERM should exit 0");
}

#[test]
fn restart_keeps_the_anchor_and_a_corrupt_key_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let (first, _, _) = start_identity(dir.path(), &data);
    let anchor = std::fs::read(data.join("trust-anchor.pem")).unwrap();
    assert!(first.terminate().success());
    let (second, _, _) = start_identity(dir.path(), &data);
    assert_eq!(
        std::fs::read(data.join("trust-anchor.pem")).unwrap(),
        anchor
    );
    assert!(second.terminate().success());

    std::fs::write(data.join("issuer.key"), "garbage").unwrap();
    let out = Command::new(WEFT)
        .args(["identity", "--data-dir", data.to_str().unwrap()])
        .args([
            "--listen",
            &free_addr().to_string(),
            "--admin-listen",
            &free_addr().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("issuer.key is corrupt"), "{stderr}");
}

/// `weft token create` for another trust domain than the CA's is refused at once, naming the
/// one the CA serves (it used to mint tokens no identity service would honour).
#[test]
fn a_token_for_another_trust_domain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let create = |td: &str| {
        std::process::Command::new(support::WEFT)
            .args([
                "token",
                "create",
                "--workload",
                "web",
                "--trust-domain",
                td,
                "--data-dir",
            ])
            .arg(&data)
            .output()
            .unwrap()
    };
    assert!(create("weft.local").status.success());
    let refused = create("corp.example");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("serves the trust domain weft.local, not corp.example"),
        "{said}"
    );
    assert!(refused.stdout.is_empty(), "no token is printed");
}
