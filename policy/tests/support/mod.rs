//! The control-plane test harness: a resource directory in a tempdir, the real server on
//! 127.0.0.1 port 0, the real client, workload credentials from a CA, and bounded waits for
//! conditions (never fixed sleeps).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_identity::authority::Authority;
use weft_identity::tls::Credentials;
use weft_policy::client::{ClientSettings, PolicyClient};
use weft_policy::server::{Listeners, Settings};
use weft_runtime::testing::http_get_async;

pub mod replicas;

pub const RESOURCES: &str = r#"
kind: Service
metadata: {name: api, namespace: default}
spec: {ports: [{port: 8080}]}
---
kind: Service
metadata: {name: api-v1}
spec: {ports: [{port: 8080}], selector: {app: api, version: v1}}
---
kind: Service
metadata: {name: api-v2}
spec: {ports: [{port: 8080}], selector: {app: api, version: v2}}
---
kind: AuthorizationPolicy
metadata: {name: api-from-web}
spec:
  target: {service: api, port: 8080}
  allow:
    - identities: ["spiffe://weft.local/ns/default/sa/web"]
---
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: api, port: 8080}]
  rules:
    - name: split
      backendRefs: [{name: api-v1, port: 8080, weight: 90}, {name: api-v2, port: 8080, weight: 10}]
"#;

/// The resources with another split.
pub fn resources_with_weights(v1: u32, v2: u32) -> String {
    RESOURCES
        .replace("weight: 90}", "weight: V1}")
        .replace("weight: 10}", &format!("weight: {v2}}}"))
        .replace("weight: V1}", &format!("weight: {v1}}}"))
}

/// The weights of the first rule of a service's routes.
pub fn weights(routes: &weft_policy::routes::ServiceRoutes) -> Vec<u32> {
    routes
        .rules
        .first()
        .map(|r| r.backends.iter().map(|b| b.weight).collect())
        .unwrap_or_default()
}

/// A running control plane.
pub struct ControlPlane {
    pub api: SocketAddr,
    pub admin: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl ControlPlane {
    pub async fn start(settings: Settings) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), settings).await
    }

    /// Starts on `api` (port 0 for any).
    pub async fn start_on(api: SocketAddr, settings: Settings) -> Self {
        let api = bind(api).await;
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (api_addr, admin_addr) = (api.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(weft_policy::server::serve(
            Listeners { api, admin },
            settings,
            weft_runtime::process::wait_true(rx),
        ));
        Self {
            api: api_addr,
            admin: admin_addr,
            stop,
            task,
        }
    }

    /// Shuts down and waits until it is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the control plane stops within 5 s");
        r.unwrap().unwrap();
    }

    pub fn client(&self) -> PolicyClient {
        PolicyClient::new(fast_settings(self.api.to_string()))
    }

    /// `GET path` on its admin port: the status and the body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        get(self.admin, path).await
    }

    /// `GET path` on its API (plaintext): the status and the body.
    pub async fn api_get(&self, path: &str) -> (u16, String) {
        get(self.api, path).await
    }
}

/// `GET path` at `addr`, which must answer: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_async(addr, path, "test")
        .await
        .unwrap_or_else(|| panic!("nothing answered GET http://{addr}{path}"))
}

/// Binds `addr`, retrying briefly while a previous listener's port is being released.
async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// Client settings with short back-off, for tests.
pub fn fast_settings(addr: String) -> ClientSettings {
    let mut s = ClientSettings::new(addr, None);
    s.min_backoff = Duration::from_millis(20);
    s.max_backoff = Duration::from_millis(300);
    s
}

/// A resource directory holding `resources`, and a control plane started on it with
/// `settings(dir)` (`Settings::insecure` for plaintext).
pub async fn serve_resources(
    resources: &str,
    settings: impl FnOnce(&Path) -> Settings,
) -> (tempfile::TempDir, ControlPlane) {
    let dir = resource_dir(resources);
    let cp = ControlPlane::start(settings(dir.path())).await;
    (dir, cp)
}

/// Credentials for `id` issued straight by `ca` (no identity service).
pub fn credentials(ca: &Authority, id: &SpiffeId) -> Credentials {
    ca.issue_credentials(id).unwrap()
}

/// A tempdir holding `resources.yaml`.
pub fn resource_dir(content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), content);
    dir
}

/// Replaces `resources.yaml` atomically (write + rename, as editors and config managers do).
pub fn write(dir: &Path, content: &str) {
    let tmp: PathBuf = dir.join(".resources.yaml.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join("resources.yaml")).unwrap();
}

/// Waits until `rx` holds a value satisfying `f`, at most `limit`.
pub async fn wait_until<T>(
    rx: &mut watch::Receiver<Option<std::sync::Arc<T>>>,
    limit: Duration,
    what: &str,
    f: impl Fn(&T) -> bool,
) -> std::sync::Arc<T> {
    let r = tokio::time::timeout(limit, rx.wait_for(|v| v.as_deref().is_some_and(&f)))
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"));
    r.unwrap().clone().unwrap()
}
