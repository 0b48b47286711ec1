//! `weft check` against a real mesh: `weft identity` (2 h workload certificates), `weft policy`
//! and one `weft proxy`, as processes on loopback.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;
use weft_runtime::child::Child;
use weft_runtime::testing::http;

struct Mesh {
    _dir: tempfile::TempDir,
    _procs: Vec<Child>,
    identity_admin: SocketAddr,
    policy_admin: SocketAddr,
    proxy_admin: SocketAddr,
}

impl Mesh {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("ca");
        let (identity, id_api, identity_admin) =
            start_identity_with(d, &data, &["--leaf-lifetime", "2h"]);
        token(&data, "default", "api", &d.join("api.token"));
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        std::fs::write(
            resources.join("mesh.yaml"),
            "kind: Service\nmetadata: {name: api, namespace: default}\nspec: {ports: [{port: 8080}]}\n",
        )
        .unwrap();
        let (policy, pol_api, policy_admin) = start_policy(d, &data, id_api, &resources);
        let proxy_admin = free_addr();
        let env = proxy_env(
            &d.join("api.token"),
            id_api,
            pol_api,
            (free_addr(), proxy_admin),
            1,
        );
        let mut proxy = start_weft(d, "api", &["proxy"], &env);
        proxy.wait_ready(proxy_admin);
        // The proxy registers with the control plane once ready: wait (bounded) for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = http(policy_admin, "GET", "/workloads", "x")
                .is_some_and(|(_, body)| body.contains(&proxy_admin.to_string()));
            if listed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not register:\n{}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _dir: dir,
            _procs: vec![identity, policy, proxy],
            identity_admin,
            policy_admin,
            proxy_admin,
        }
    }

    fn check(&self, extra: &[&str]) -> (Output, String) {
        self.check_with_policy_admin(self.policy_admin, extra)
    }

    fn check_with_policy_admin(
        &self,
        policy_admin: SocketAddr,
        extra: &[&str],
    ) -> (Output, String) {
        weft_check(self.identity_admin, policy_admin, extra)
    }
}

/// `weft check` against these admin addresses (whatever the environment says): its output
/// and its standard output.
fn weft_check(
    identity_admin: SocketAddr,
    policy_admin: SocketAddr,
    extra: &[&str],
) -> (Output, String) {
    let out = Command::new(WEFT)
        .arg("check")
        .args(["--identity-admin", &identity_admin.to_string()])
        .args(["--policy-admin", &policy_admin.to_string()])
        .args(extra)
        .env_remove("WEFT_IDENTITY_ADMIN")
        .env_remove("WEFT_POLICY_ADMIN")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    (out, stdout)
}

/// The lines that report a check (as opposed to headings, details, fixes and the summary).
fn check_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.starts_with(['√', '×', '‼']))
        .collect()
}

#[test]
fn check_a_real_mesh_healthy_unreachable_and_expiring() {
    let mesh = Mesh::start();
    let proxy = format!("proxy default/api ({})", mesh.proxy_admin);

    // (a) Healthy: every line √, the certificate's time to expiry shown, exit 0.
    let (out, stdout) = mesh.check(&[]);
    assert!(out.status.success(), "{stdout}");
    let lines = check_lines(&stdout);
    assert!(lines.len() >= 10, "{stdout}");
    assert!(lines.iter().all(|l| l.starts_with('√')), "{stdout}");
    for expected in [
        "identity service is ready",
        "issuer certificate is valid (expires in 364d",
        "trust anchor is valid (expires in",
        "control plane is ready",
        "control plane lists 1 workload",
        &format!("{proxy} is ready"),
        // 2 h certificates, issued moments ago.
        &format!("{proxy} certificate is valid (expires in 1h5"),
        &format!("{proxy} clock is in sync"),
        "control plane clock is in sync",
        "identity service clock is in sync",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }
    assert!(
        stdout.trim_end().ends_with("Status check results are √"),
        "{stdout}"
    );

    // The same as JSON.
    let (out, stdout) = mesh.check(&["-o", "json"]);
    assert!(out.status.success(), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["healthy"], true);
    assert_eq!(json["failures"], 0);
    assert_eq!(json["groups"][2]["name"], "proxies");

    // (c) A certificate closer to expiry than --expiry-warning: a warning, still exit 0.
    let (out, stdout) = mesh.check(&["--expiry-warning", "3h"]);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "‼ {proxy} certificate is valid for more than 3h0m"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("(under --expiry-warning 3h0m)"), "{stdout}");
    assert!(stdout.contains("--leaf-lifetime"), "{stdout}");
    assert!(
        stdout
            .trim_end()
            .ends_with("Status check results are √ (1 warning)"),
        "{stdout}"
    );

    // (b) The control plane at a closed port: it is named unreachable, with the fix; exit 1.
    // The proxies are still checked when named with --proxy-admin.
    let closed = free_addr();
    let (out, stdout) =
        mesh.check_with_policy_admin(closed, &["--proxy-admin", &mesh.proxy_admin.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "× control plane admin is reachable at {closed}\n    control plane admin at {closed} is unreachable: "
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("fix: start it with `weft policy --dir DIR`")
            && stdout.contains("--policy-admin or WEFT_POLICY_ADMIN"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("√ proxy {} is ready", mesh.proxy_admin)),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("Status check results are ×: 1 check failed"),
        "{stdout}"
    );
}

#[test]
fn check_with_nothing_running_fails_on_every_component() {
    let (identity, policy) = (free_addr(), free_addr());
    let (out, stdout) = weft_check(identity, policy, &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("fix: start it with `weft identity`")
            && stdout.contains("--identity-admin or WEFT_IDENTITY_ADMIN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("‼ proxies can be listed") && stdout.contains("--proxy-admin"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("Status check results are ×: 2 checks failed"),
        "{stdout}"
    );
}

/// An admin endpoint whose clock is stuck in 1994: answers every request 200 with that `Date`
/// and no body.
fn skewed_admin() -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            // Read the request head, then answer (an empty body: no metrics).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    addr
}

#[test]
fn a_component_clock_far_behind_fails_with_the_ntp_hint() {
    let (identity, policy) = (skewed_admin(), free_addr());
    let (out, stdout) = weft_check(identity, policy, &[]);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("× identity service clock is within 5s of this machine's\n    it is "),
        "{stdout}"
    );
    assert!(stdout.contains("behind this machine's"), "{stdout}");
    assert!(
        stdout.contains("fix: sync both clocks with NTP"),
        "{stdout}"
    );
}
