//! The systemd units of `deploy/systemd/` and the readiness they rely on: `systemd-analyze
//! verify` finds nothing to say about them (a system test: it needs systemd's tools), and
//! every component sends `READY=1` to `$NOTIFY_SOCKET` (`Type=notify`) only once it is ready,
//! here a socket the test listens on: the identity service and the control plane once they
//! serve, the proxy only once `/ready` answers 200 (not while its identity service is away),
//! and `STOPPING=1` when it is told to stop.
#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_runtime::testing::http;

fn units() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn the_units_pass_systemd_analyze_verify() {
    require_tools(&["systemd-analyze"], "systemd");
    // As installed, but with this build's binary (verify checks that it is executable) and
    // the template as an instance.
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for unit in std::fs::read_dir(units()).unwrap() {
        let unit = unit.unwrap().path();
        let name = unit
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("@.", "@api.");
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(text.contains("/usr/local/bin/weft "), "{name}");
        std::fs::write(
            dir.path().join(&name),
            text.replace("/usr/local/bin/weft", WEFT),
        )
        .unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "weft-identity.service",
            "weft-policy.service",
            "weft-proxy@api.service"
        ]
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Warnings (an unknown key, say) do not fail the command: none is wanted either.
    assert!(err.trim().is_empty(), "{err}");
}

/// A socket standing in for systemd's: what the process under test sends it.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    fn env(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.display().to_string())
    }

    /// The next message, waiting at most `limit`.
    fn next(&self, limit: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

#[test]
fn each_component_notifies_readiness_only_once_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("ca");

    // The proxy first, with its identity service away: not ready, so not a word.
    token(&data, "default", "api", &d.join("api.token"));
    let (id_api, id_admin, pol_api) = (free_addr(), free_addr(), free_addr());
    let proxy_socket = NotifySocket::new();
    let proxy_admin = free_addr();
    let mut env = proxy_env(
        &d.join("api.token"),
        id_api,
        pol_api,
        (free_addr(), proxy_admin),
        1,
    );
    env.push(proxy_socket.env());
    let proxy = start_weft(d, "proxy", &["proxy"], &env);
    assert_eq!(
        proxy_socket.next(Duration::from_secs(2)),
        None,
        "{}",
        proxy.logs()
    );
    assert_ne!(
        http(proxy_admin, "GET", "/ready", "x").map(|r| r.0),
        Some(200)
    );

    // The identity service, then the control plane: each says READY=1 once it serves.
    let id_socket = NotifySocket::new();
    let mut identity = start_weft(
        d,
        "identity",
        &[
            "identity",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &id_api.to_string(),
            "--admin-listen",
            &id_admin.to_string(),
        ],
        &[id_socket.env()],
    );
    let said = id_socket.next(Duration::from_secs(60));
    assert_eq!(said.as_deref(), Some("READY=1\n"), "{}", identity.logs());
    assert_eq!(http(id_admin, "GET", "/ready", "x").map(|r| r.0), Some(200));
    identity.wait_ready(id_admin);

    token(&data, "weft", "policy", &d.join("policy.token"));
    let resources = d.join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(
        resources.join("mesh.yaml"),
        "kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n",
    )
    .unwrap();
    let pol_socket = NotifySocket::new();
    let pol_admin = free_addr();
    let policy = start_weft(
        d,
        "policy",
        &[
            "policy",
            "--dir",
            resources.to_str().unwrap(),
            "--listen",
            &pol_api.to_string(),
            "--admin-listen",
            &pol_admin.to_string(),
        ],
        &[
            pol_socket.env(),
            (ENV_TOKEN_FILE, d.join("policy.token").display().to_string()),
            (ENV_IDENTITY_ADDR, id_api.to_string()),
        ],
    );
    let said = pol_socket.next(Duration::from_secs(60));
    assert_eq!(said.as_deref(), Some("READY=1\n"), "{}", policy.logs());
    assert_eq!(
        http(pol_admin, "GET", "/ready", "x").map(|r| r.0),
        Some(200)
    );

    // Now the proxy gets ready (it retries its identity service): READY=1, and by then its
    // /ready answers 200.
    let started = Instant::now();
    let said = proxy_socket.next(Duration::from_secs(60));
    assert_eq!(said.as_deref(), Some("READY=1\n"), "{}", proxy.logs());
    assert_eq!(
        http(proxy_admin, "GET", "/ready", "x").map(|r| r.0),
        Some(200),
        "READY=1 came before /ready answered 200 ({:?} after the control plane)",
        started.elapsed()
    );

    // Told to stop: STOPPING=1.
    signal(proxy.pid(), "-TERM");
    let said = proxy_socket.next(Duration::from_secs(10));
    assert_eq!(said.as_deref(), Some("STOPPING=1\n"), "{}", proxy.logs());
}
