//! CA rotation with real processes on loopback: two `weft identity` replicas over one data
//! directory (certificates living 5 s, so every proxy re-issues several times), a control
//! plane, and proxies for `api` and `web` calling each other every few milliseconds over
//! mTLS. Through a whole anchor rotation and then an issuer rotation not one request fails:
//! - the rotation waits for a proxy that does not follow (stopped), names it (`weft ca
//!   rotate anchor` refuses the step, `weft ca status` lists it as lagging, `weft check`
//!   fails on it), and stays at its step;
//! - an identity replica is killed between steps and started again; the rotation, run again,
//!   goes on from its step and completes, while the other replica keeps issuing;
//! - afterwards every proxy trusts the new anchor only, a handshake verified by the new anchor
//!   alone succeeds, and a certificate of the old anchor is refused;
//! - a proxy down during the whole rotation starts with its token made before it (pinning the
//!   old anchor), bootstraps through the anchor link, and serves.
//!
//! And a bundle that keeps none of the anchors a proxy trusts, served by an impostor holding
//! the identity service's certificate, is refused and counted while traffic goes on
//! (`ca_rotation/refused.rs`).
#![allow(clippy::unwrap_used)]

#[path = "ca_rotation/refused.rs"]
mod refused;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE, ENV_TRUST_REFRESH};
use weft_identity::tls::{self, CertStore, Credentials, TrustBundle};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;
use weft_runtime::testing::http;

struct Proxy {
    child: Child,
    admin: SocketAddr,
    inbound: SocketAddr,
    outbound: SocketAddr,
}

struct Mesh {
    dir: tempfile::TempDir,
    data: PathBuf,
    /// Each identity replica: the process, its API and admin addresses.
    identities: Vec<(Option<Child>, SocketAddr, SocketAddr)>,
    _policy: Child,
    policy_admin: SocketAddr,
    policy_api: SocketAddr,
}

/// How long leaves live in the rotation test: every proxy re-issues several times.
const LEAF: &str = "5s";
const REFRESH: &str = "1s";
/// Requests every few milliseconds, at most about 5 minutes of them.
const EVERY: Duration = Duration::from_millis(8);
const MAX: usize = 30_000;

impl Mesh {
    fn start(leaf: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let data = d.join("ca");
        let mut identities = Vec::new();
        for name in ["identity-a", "identity-b"] {
            let (api, admin) = (free_addr(), free_addr());
            let p = start_identity_at(&d, &data, name, api, admin, leaf);
            identities.push((Some(p), api, admin));
        }
        let addrs = |ids: &[(Option<Child>, SocketAddr, SocketAddr)]| {
            ids.iter()
                .map(|i| i.1.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        let service = |name: &str| {
            format!(
                "kind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}], selector: {{app: {name}}}}}\n---\n"
            )
        };
        std::fs::write(
            resources.join("mesh.yaml"),
            format!("{}{}{}", service("api"), service("web"), service("idle")),
        )
        .unwrap();
        let (policy, api, admin) = start_policy_with(
            &d,
            &data,
            &addrs(&identities),
            &resources,
            &[
                (ENV_TRUST_REFRESH, REFRESH.to_string()),
                // A stopped proxy stays registered while the test looks at it.
                (weft_policy::config::ENV_DEFAULT_LEASE, "60s".to_string()),
            ],
        );
        for w in ["api", "web", "idle", "late"] {
            token(&data, "default", w, &d.join(format!("{w}.token")));
        }
        Mesh {
            dir,
            data,
            identities,
            _policy: policy,
            policy_admin: admin,
            policy_api: api,
        }
    }

    fn identity_addrs(&self) -> String {
        self.identities
            .iter()
            .map(|i| i.1.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_proxy(&self, name: &str, app_port: u16) -> Proxy {
        self.start_proxy_with(name, app_port, &self.identity_addrs())
    }

    /// A proxy asking the identity service at `identity` (replicas comma-separated).
    fn start_proxy_with(&self, name: &str, app_port: u16, identity: &str) -> Proxy {
        let d = self.dir.path();
        let (inbound, outbound, admin) = (free_addr(), free_addr(), free_addr());
        let env = vec![
            (
                ENV_TOKEN_FILE,
                d.join(format!("{name}.token")).display().to_string(),
            ),
            (ENV_IDENTITY_ADDR, identity.to_string()),
            (ENV_TRUST_REFRESH, REFRESH.to_string()),
            (ENV_POLICY_ADDR, self.policy_api.to_string()),
            (proxy_config::ENV_INBOUND, inbound.to_string()),
            (proxy_config::ENV_OUTBOUND, outbound.to_string()),
            (proxy_config::ENV_ADMIN, admin.to_string()),
            (proxy_config::ENV_APP_PORT, app_port.to_string()),
        ];
        let mut child = start_weft(d, name, &["proxy"], &env);
        child.wait_ready(admin);
        Proxy {
            child,
            admin,
            inbound,
            outbound,
        }
    }

    fn weft(&self, args: &[&str]) -> Output {
        Command::new(WEFT)
            .args(args)
            .args(["--data-dir", self.data.to_str().unwrap()])
            .env("WEFT_POLICY_ADMIN", self.policy_admin.to_string())
            .output()
            .unwrap()
    }

    fn ca(&self) -> Authority {
        Authority::load_or_create(&AuthorityConfig::new(&self.data)).unwrap()
    }

    fn logs(&self) -> String {
        log_tails(self.dir.path(), 12)
    }
}

/// `weft identity` replica `name` over the CA in `data`, at `api` and `admin`, with leaves
/// living `leaf`, ready.
fn start_identity_at(
    dir: &Path,
    data: &Path,
    name: &str,
    api: SocketAddr,
    admin: SocketAddr,
    leaf: &str,
) -> Child {
    let mut p = start_weft(
        dir,
        name,
        &[
            "identity",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &api.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--leaf-lifetime",
            leaf,
        ],
        &[],
    );
    p.wait_ready(admin);
    p
}

/// Whether the proxy at `admin` trusts `anchor` (and only it, with `only`).
fn trusts(admin: SocketAddr, anchor: &str) -> bool {
    let label = format!("fingerprint=\"{anchor}\"");
    admin_metric(admin, "weft_identity_client_trust_anchor", &[&label]) == 1.0
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A TLS 1.3 handshake with the proxy inbound at `addr` as `creds`, verifying the proxy
/// (`spiffe://weft.local/ns/default/sa/<name>`) against `bundle` only; then whether the proxy
/// takes the connection (it answers the HTTP/2 preface with its settings) or drops it (it
/// refused the client's certificate).
fn handshake(
    addr: SocketAddr,
    name: &str,
    bundle: &TrustBundle,
    creds: &Credentials,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let id =
            weft_identity::SpiffeId::parse(&format!("spiffe://weft.local/ns/default/sa/{name}"))
                .unwrap();
        let store = CertStore::new(creds.certified_key().unwrap());
        let cfg = tls::client_config(bundle, id.clone(), Some(store), &[tls::ALPN_H2]).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(tls::server_name(&id), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The HTTP/2 preface and an empty SETTINGS frame: the proxy answers with its own.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let _ = conn.write_all(preface).await;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err("closed by the proxy".into()),
            Ok(Err(e)) => Err(format!("refused by the proxy: {e}")),
            Err(_) => Err("no answer".into()),
        }
    })
}

/// With the proxy `idle` stopped: `weft ca rotate anchor` takes the first step and refuses the
/// next naming it, `weft ca status` lists it as lagging, and `weft check` fails on it once
/// `others` trust the new anchor. Returns the new anchor.
fn a_stopped_proxy_is_named(mesh: &Mesh, others: &[&Proxy]) -> String {
    // A proxy that does not follow (stopped): the first step is taken, the next refused,
    // naming it.
    let refused = mesh.weft(&["ca", "rotate", "anchor", "--wait", "3s"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let out = text(&refused);
    assert!(out.contains("step 1 of 3"), "{out}");
    assert!(
        out.contains("not ready") && out.contains("proxy default/idle"),
        "{out}"
    );
    assert!(out.contains("stays at step trusting-new-anchor"), "{out}");
    let status = mesh.weft(&["ca", "status"]);
    let st = text(&status);
    assert!(status.status.success(), "{st}");
    assert!(st.contains("step trusting-new-anchor"), "{st}");
    assert!(
        st.contains("lagging") && st.contains("proxy default/idle"),
        "{st}"
    );
    let new_anchor = mesh.ca().state().anchor_rotation.clone().unwrap().new;
    // `weft check` fails naming it too, once the others trust the new anchor.
    let check = || {
        Command::new(WEFT)
            .args(["check", "--identity-admin"])
            .arg(mesh.identities[1].2.to_string())
            .arg("--policy-admin")
            .arg(mesh.policy_admin.to_string())
            .output()
            .unwrap()
    };
    for p in others {
        wait(
            "api and web trusting the new anchor",
            Duration::from_secs(15),
            || trusts(p.admin, &new_anchor),
        );
    }
    let checked = check();
    let out = text(&checked);
    assert!(!checked.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("× proxy default/idle") && l.contains("trusts the CA's anchors")),
        "{out}"
    );
    assert!(out.contains("it lacks sha256:"), "{out}");
    assert!(out.contains("√ proxy default/api"), "{out}");

    new_anchor
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn a_full_anchor_and_issuer_rotation_fails_no_request() {
    let mut mesh = Mesh::start(LEAF);
    let old_ca = mesh.ca();
    let old_anchor = old_ca.anchor_fingerprint();
    // A certificate of the old anchor, valid for a day: refused by everyone at the end.
    let old_client = old_ca
        .issue_credentials(
            &weft_identity::SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap(),
        )
        .unwrap();
    let (api_app, web_app) = (app("api").port(), app("web").port());
    let api = mesh.start_proxy("api", api_app);
    let web = mesh.start_proxy("web", web_app);
    let idle = mesh.start_proxy("idle", app("idle").port());
    let to_api = Traffic::start(web.outbound, "api.default", EVERY, MAX);
    let to_web = Traffic::start(api.outbound, "web.default", EVERY, MAX);
    to_api.go_on_for(50);
    to_web.go_on_for(50);

    // A proxy that does not follow (stopped): the first step is taken, the next refused,
    // naming it; `weft ca status` and `weft check` name it too.
    signal(&idle.child, "-STOP");
    let new_anchor = a_stopped_proxy_is_named(&mesh, &[&api, &web]);

    // An identity replica dies between steps, and comes back.
    let (api_a, admin_a) = (mesh.identities[0].1, mesh.identities[0].2);
    mesh.identities[0].0.take().unwrap().kill().unwrap();
    to_api.go_on_for(100);
    let again = start_identity_at(
        mesh.dir.path(),
        &mesh.data,
        "identity-a-again",
        api_a,
        admin_a,
        LEAF,
    );
    mesh.identities[0].0 = Some(again);
    signal(&idle.child, "-CONT");

    // Run again: it goes on from its step, and completes.
    let done = mesh.weft(&["ca", "rotate", "anchor", "--wait", "60s"]);
    let out = text(&done);
    assert!(done.status.success(), "{out}\n{}", mesh.logs());
    assert!(out.contains("going on with the anchor rotation"), "{out}");
    assert!(out.contains("Rotation complete"), "{out}");
    let ca = mesh.ca();
    assert_eq!(ca.bundle().fingerprints(), vec![new_anchor.clone()]);
    for p in [&api, &web, &idle] {
        wait(
            "every proxy trusting the new anchor only",
            Duration::from_secs(15),
            || trusts(p.admin, &new_anchor) && !trusts(p.admin, &old_anchor),
        );
    }

    // Then the issuer, with every leaf replaced within 3 s.
    let rotated = mesh.weft(&["ca", "rotate", "issuer", "--reissue-within", "3s"]);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let issuer = mesh.ca().issuer_fingerprint();
    for p in [&api, &web, &idle] {
        let label = format!("fingerprint=\"{issuer}\"");
        wait(
            "every proxy on the new issuer",
            Duration::from_secs(15),
            || admin_metric(p.admin, "weft_identity_client_leaf_issuer", &[&label]) == 1.0,
        );
    }
    to_api.go_on_for(100);
    to_web.go_on_for(100);

    // A proxy down the whole time: its token pins the old anchor.
    let late = mesh.start_proxy("late", app("late").port());
    let (status, body) = http(late.outbound, "GET", "http://api.default/", "api.default").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(trusts(late.admin, &new_anchor));

    // New connections verify against the new anchor alone; the old anchor's certificates are
    // refused.
    let new_only = TrustBundle::from_der(ca.bundle().certs().to_vec()).unwrap();
    let new_client = ca
        .issue_credentials(
            &weft_identity::SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap(),
        )
        .unwrap();
    handshake(api.inbound, "api", &new_only, &new_client).unwrap();
    let refused = handshake(api.inbound, "api", &new_only, &old_client);
    assert!(
        refused.is_err(),
        "a certificate of the old anchor was taken"
    );

    let (failed_api, all_api) = to_api.finish();
    let (failed_web, all_web) = to_web.finish();
    eprintln!(
        "rotation: {all_api} requests web→api and {all_web} api→web, {} failed",
        failed_api.len() + failed_web.len()
    );
    assert!(
        failed_api.is_empty() && failed_web.is_empty(),
        "{:?} {:?}\n{}",
        &failed_api[..failed_api.len().min(5)],
        &failed_web[..failed_web.len().min(5)],
        mesh.logs()
    );
    let renewals = admin_metric(
        api.admin,
        "weft_identity_client_certify_total",
        &["kind=\"renewal\""],
    );
    assert!(renewals >= 3.0, "api renewed {renewals} times");
}
