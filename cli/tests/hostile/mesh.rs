//! The mesh every hostile case runs against: `weft identity`, `weft policy` and two `weft
//! proxy` processes (`api` in front of a recording app, `web` with no app of its own) on
//! loopback; the good client that calls api through web's outbound the whole time; the
//! proxies' RSS; their metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;
use weft_runtime::testing::{http, metric_sum};

use crate::support::*;

/// How much a proxy's (or the control plane's) resident memory may grow over one case. Such a
/// debug-build process sits at 15-30 MiB; a case makes at most a few thousand connections or
/// streams and sends at most a few tens of MiB. Memory kept per attacker connection or stream
/// (an unbounded buffer, a leaked task, a watch per name) grows by far more than this over a
/// case; the allocator's slack after a burst of a few hundred connections stays well under it.
pub const RSS_GROWTH_LIMIT_KIB: u64 = 20 * 1024;

/// A proxy process and its listeners.
pub struct Proxy {
    pub child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics", "x")
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// The sum of the series of `name` with every one of `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }
}

/// What the api app has seen: every request's path, in order (bounded: a flood adds at most a
/// few thousand).
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    pub fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// How many requests for a path containing `part` the app has seen.
    pub fn count(&self, part: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.contains(part))
            .count()
    }
}

/// The api app: hyper (HTTP/1 and HTTP/2) on its own runtime thread; reads every body to the end and
/// answers `hello from api: <path> (<n> body bytes)`; `/big-response` has a 100 KiB header.
fn app(seen: Seen) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            while let Ok((tcp, _)) = l.accept().await {
                let seen = seen.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        seen.0.lock().unwrap().push(path.clone());
                        let body: hyper::body::Incoming = req.into_body();
                        let n = body.collect().await.map_or(0, |b| b.to_bytes().len());
                        let mut rsp = http::Response::builder();
                        if path == "/big-response" {
                            rsp = rsp.header("x-big", "b".repeat(100 * 1024));
                        }
                        let text = format!("hello from api: {path} ({n} body bytes)");
                        Ok::<_, Infallible>(rsp.body(Full::new(Bytes::from(text))).unwrap())
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                });
            }
        });
    });
    addr
}

/// The whole mesh, as an operator runs it.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    /// The CA's data directory (its issuer signs the test's own certificates).
    pub data: PathBuf,
    _identity: Child,
    pub policy: Child,
    pub pol_api: SocketAddr,
    pub resources: PathBuf,
    pub api: Proxy,
    pub web: Proxy,
    /// The api app's port (the port of service `api`).
    pub port: u16,
    pub seen: Seen,
}

impl Mesh {
    /// The mesh in front of the recording app.
    pub fn start() -> Self {
        let seen = Seen::default();
        let port = app(seen.clone()).port();
        Self::start_with(port, seen)
    }

    /// The mesh in front of an app of the caller's on `port` (`seen` stays empty); ready once
    /// web's requests reach the app (any answer the proxies did not make).
    pub fn start_with(port: u16, seen: Seen) -> Self {
        let mesh = Self::start_unready(port, seen);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(mesh.get("/").0, 0 | 500..) {
            assert!(
                Instant::now() < deadline,
                "web never reached api:\n{}",
                mesh.web.child.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mesh
    }

    /// The mesh in front of an app of the caller's on `port`, its processes ready, but not
    /// yet known to reach the app: for an app that does not answer `GET /` over HTTP/1 (a
    /// gRPC server), whose caller waits its own way.
    pub fn start_unready(port: u16, seen: Seen) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let data = d.join("ca");
        let (identity, id_api, _) = start_identity(&d, &data);
        for w in ["api", "web"] {
            token(&data, "default", w, &d.join(format!("{w}.token")));
        }
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        write_file(&d, &resources.join("mesh.yaml"), &mesh_yaml(port));
        let (policy, pol_api, _) = start_policy(&d, &data, id_api, &resources);
        let start = |name: &str, app_port: u16| {
            let (inbound, outbound, admin) = (free_addr(), free_addr(), free_addr());
            let env = vec![
                (
                    ENV_TOKEN_FILE,
                    d.join(format!("{name}.token")).display().to_string(),
                ),
                (ENV_IDENTITY_ADDR, id_api.to_string()),
                (ENV_POLICY_ADDR, pol_api.to_string()),
                (proxy_config::ENV_INBOUND, inbound.to_string()),
                (proxy_config::ENV_OUTBOUND, outbound.to_string()),
                (proxy_config::ENV_ADMIN, admin.to_string()),
                (proxy_config::ENV_APP_PORT, app_port.to_string()),
                // No case depends on how fast trailers cross the proxies.
                (proxy_config::ENV_HTTP1_TRAILERS_WAIT, "5s".to_string()),
            ];
            let mut child = start_weft(&d, name, &["proxy"], &env);
            child.wait_ready(admin);
            Proxy {
                child,
                inbound,
                outbound,
                admin,
            }
        };
        let api = start("api", port);
        let web = start("web", 1);
        Self {
            dir,
            data,
            _identity: identity,
            policy,
            pol_api,
            resources,
            api,
            web,
            port,
            seen,
        }
    }

    /// `http://api.default:<port>` as web's app names it.
    pub fn authority(&self) -> String {
        format!("api.default:{}", self.port)
    }

    /// `GET path` from web's app to api, through web's outbound.
    pub fn get(&self, path: &str) -> (u16, String) {
        let a = self.authority();
        http(self.web.outbound, "GET", &format!("http://{a}{path}"), &a)
            .unwrap_or((0, "no answer".into()))
    }

    /// Writes a resource file (write, then rename, as editors do).
    pub fn write_resource(&self, name: &str, yaml: &str) {
        write_file(self.dir.path(), &self.resources.join(name), yaml);
    }
}

fn write_file(tmp_dir: &Path, path: &Path, text: &str) {
    let tmp = tmp_dir.join("resource.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Services api, web and a policy letting only web call api.
fn mesh_yaml(port: u16) -> String {
    format!(
        "kind: Service\nmetadata: {{name: api, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n\
         kind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
         kind: AuthorizationPolicy\nmetadata: {{name: api-from-web, namespace: default}}\nspec:\n  target: {{service: api, port: {port}}}\n  allow:\n    - identities: [\"spiffe://weft.local/ns/default/sa/web\"]\n"
    )
}

/// The resident memory of process `pid`, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}:\n{status}"))
}

/// A background client doing what web's app does all day: `GET /good` on api through web's
/// outbound every 15 ms, noting every answer that is not api's 200.
pub struct GoodClient {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GoodClient {
    pub fn start(mesh: &Mesh) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (outbound, a) = (mesh.web.outbound, mesh.authority());
        let (s, n, f) = (stop.clone(), done.clone(), failures.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            // Bounded: an hour of requests at most, far more than any test takes.
            for i in 0..240_000u64 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let r = http(outbound, "GET", &format!("http://{a}/good"), &a);
                match r {
                    Some((200, body)) if body.contains("hello from api: /good") => {}
                    other => f
                        .lock()
                        .unwrap()
                        .push(format!("request {i} at {:?}: {other:?}", started.elapsed())),
                }
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Self {
            stop,
            done,
            failures,
            thread: Some(thread),
        }
    }

    /// How many requests it has made.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Asserts that no request failed since the last check, and that it is still making
    /// requests (a few more within two seconds).
    pub fn check(&self, case: &str) {
        let before = self.done();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.done() < before + 3 {
            assert!(
                Instant::now() < deadline,
                "{case}: the good client is stuck"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        assert!(
            failures.is_empty(),
            "{case}: the good client saw {} failure(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

impl Drop for GoodClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one case: the good client must see no failure during it, and neither proxy's RSS
/// may grow by more than [`RSS_GROWTH_LIMIT_KIB`]. Prints the growth, for the record.
pub fn case(mesh: &Mesh, good: &GoodClient, name: &str, run: impl FnOnce()) {
    let procs = [("api", mesh.api.child.pid()), ("web", mesh.web.child.pid())];
    let before: Vec<u64> = procs.iter().map(|(_, pid)| rss_kib(*pid)).collect();
    let started = Instant::now();
    run();
    good.check(name);
    for ((proc, pid), before) in procs.iter().zip(before) {
        let after = rss_kib(*pid);
        let growth = after.saturating_sub(before);
        eprintln!(
            "case {name}: {proc} RSS {before} -> {after} KiB (+{growth}), {:?}",
            started.elapsed()
        );
        assert!(
            growth < RSS_GROWTH_LIMIT_KIB,
            "{name}: {proc}'s RSS grew by {growth} KiB ({before} -> {after})"
        );
    }
}

/// A tokio runtime for a case's async clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (up to 10 s) until the sum of `name{labels}` on `proxy` reaches `at_least`; panics
/// with `what` and the page otherwise.
pub fn wait_metric(proxy: &Proxy, name: &str, labels: &[&str], at_least: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = proxy.metrics();
        let v = metric_sum(&page, name, labels);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {name}{labels:?} is {v}, expected at least {at_least}\n{page}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `weft_proxy_errors_total{direction,reason}` on `proxy`.
pub fn errors(proxy: &Proxy, direction: &str, reason: &str) -> f64 {
    proxy.metric(
        "weft_proxy_errors_total",
        &[
            &format!("direction=\"{direction}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

/// Waits until `weft_proxy_errors_total{direction,reason}` on `proxy` has grown by `by` from
/// `before`.
pub fn wait_errors(proxy: &Proxy, direction: &str, reason: &str, before: f64, by: f64, what: &str) {
    wait_metric(
        proxy,
        "weft_proxy_errors_total",
        &[
            &format!("direction=\"{direction}\""),
            &format!("reason=\"{reason}\""),
        ],
        before + by,
        what,
    );
}
