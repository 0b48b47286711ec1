//! The identity commands as an operator runs them: real `weft` processes on loopback.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}

struct Identity {
    child: Child,
    api: SocketAddr,
    admin: SocketAddr,
}

impl Identity {
    fn start(data_dir: &std::path::Path) -> Self {
        let (api, admin) = (free_addr(), free_addr());
        let child = Command::new(WEFT)
            .args(["identity", "--data-dir", data_dir.to_str().unwrap()])
            .args([
                "--listen",
                &api.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let me = Self { child, api, admin };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(admin, "/ready").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "weft identity did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "weft identity did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn token_create_and_cert_issue_against_a_running_identity_service() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ca");
    let identity = Identity::start(&data);

    let out = Command::new(WEFT)
        .args([
            "token",
            "create",
            "--namespace",
            "default",
            "--workload",
            "web",
            "--ttl",
            "1h",
        ])
        .args(["--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.starts_with("weft1."), "{token}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();

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
            &identity.api.to_string(),
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
    let (_, metrics) = http_get(identity.admin, "/metrics").unwrap();
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
            &identity.api.to_string(),
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
    let first = Identity::start(&data);
    let anchor = std::fs::read(data.join("trust-anchor.pem")).unwrap();
    assert!(first.terminate().success());
    let second = Identity::start(&data);
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
