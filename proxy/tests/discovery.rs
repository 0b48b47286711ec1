//! Discovery over a proxy's life, through a real `weft-proxy` process, a real control plane
//! (over mTLS, with its resources in a directory) and a real identity service: a flood of
//! names the mesh does not know never stops the proxy from discovering a real service
//! (issue 16, hole 3: the proxy kept two control-plane streams per destination forever, and
//! the connection allows 200). Issue 18: a proxy that asks for 10,000 distinct destinations
//! over its life holds a bounded set of subscriptions on its one discovery stream.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use weft_identity::SpiffeId;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::server::Running;
use weft_policy::client::service_identity;
use weft_policy::config::{ENV_DIR, PolicyArgs, run_on};
use weft_policy::server::Listeners;
use weft_proxy::config as proxy_config;
use weft_proxy::discovery::cache::DEFAULT_CAPACITY;
use weft_runtime::child::{Child, Options};
use weft_runtime::testing::{eventually_some, http_get_async, metric_sum};

/// Names the mesh does not know, each asked for once.
const UNKNOWN_NAMES: usize = 10_000;
/// Requests in flight at once during the flood.
const CONCURRENCY: usize = 32;
/// The longest a request may take, for an unknown name or the new service: well under
/// DISCOVERY_TIMEOUT (3 s), which is what a request waits when discovery does not answer.
const PROMPT: Duration = Duration::from_secs(2);

/// The identity service and the control plane, in this process; proxies as processes.
struct ControlPlane {
    dir: tempfile::TempDir,
    authority: AuthorityConfig,
    identity: Running,
    resources: PathBuf,
    api: SocketAddr,
    admin: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ControlPlane {
    async fn start(resources: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let authority = AuthorityConfig::new(dir.path().join("ca"));
        let ca = Authority::load_or_create(&authority).unwrap();
        let policy_id = service_identity(ca.trust_domain()).unwrap();
        let identity = Running::start(ca, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dirs = dir.path().join("resources");
        std::fs::create_dir_all(&dirs).unwrap();
        std::fs::write(dirs.join("mesh.yaml"), resources).unwrap();
        let mut cp = Self {
            authority,
            identity,
            resources: dirs,
            api: "127.0.0.1:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            stop: tokio::sync::watch::channel(false).0,
            dir,
        };
        let token = cp.token_file(&policy_id);
        let args = PolicyArgs::from_lookup([
            (ENV_DIR.to_string(), cp.resources.display().to_string()),
            (
                weft_identity::config::ENV_TOKEN_FILE.to_string(),
                token.display().to_string(),
            ),
            (
                weft_identity::config::ENV_IDENTITY_ADDR.to_string(),
                cp.identity.addr.to_string(),
            ),
        ])
        .unwrap();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        cp.api = api.local_addr().unwrap();
        cp.admin = admin.local_addr().unwrap();
        let stop = cp.stop.subscribe();
        tokio::spawn(async move {
            if let Err(e) = run_on(
                Listeners { api, admin },
                args,
                weft_runtime::process::wait_true(stop),
            )
            .await
            {
                panic!("the control plane failed: {e}");
            }
        });
        cp.wait_200("/ready").await;
        cp
    }

    /// A bootstrap token for `id`, in a file.
    fn token_file(&self, id: &SpiffeId) -> PathBuf {
        let ca = Authority::load_or_create(&self.authority).unwrap();
        let token = ca
            .token_key()
            .create(
                id,
                &ca.anchor_fingerprint(),
                SystemTime::now(),
                Duration::from_secs(3600),
            )
            .unwrap();
        let path = self
            .dir
            .path()
            .join(format!("{}.token", id.as_str().replace('/', "_")));
        std::fs::write(&path, token).unwrap();
        path
    }

    async fn admin_metrics(&self) -> String {
        http_get_async(self.admin, "/metrics", "x")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    async fn wait_200(&self, path: &str) {
        eventually_some(
            Duration::from_secs(30),
            "the control plane's admin endpoint",
            || async {
                http_get_async(self.admin, path, "x")
                    .await
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ())
            },
        )
        .await;
    }

    /// A `weft-proxy` process for workload `name` of namespace `default`, ready.
    fn proxy(&self, name: &str) -> ProxyProcess {
        let id = support::id(name);
        let token = self.token_file(&id);
        let free = || weft_runtime::process::free_loopback_addr("a test").unwrap();
        let (inbound, outbound, admin) = (free(), free(), free());
        let env = [
            (proxy_config::ENV_TOKEN_FILE, token.display().to_string()),
            (
                proxy_config::ENV_IDENTITY_ADDR,
                self.identity.addr.to_string(),
            ),
            (proxy_config::ENV_POLICY_ADDR, self.api.to_string()),
            (proxy_config::ENV_INBOUND, inbound.to_string()),
            (proxy_config::ENV_OUTBOUND, outbound.to_string()),
            (proxy_config::ENV_ADMIN, admin.to_string()),
        ];
        let log = self.dir.path().join(format!("{name}.log"));
        let options = Options {
            clear_weft_env: true,
            ..Options::default()
        };
        let mut child = Child::spawn(
            name,
            Path::new(env!("CARGO_BIN_EXE_weft-proxy")),
            &[] as &[&str],
            &env,
            &log,
            &options,
        )
        .unwrap();
        tokio::task::block_in_place(|| child.wait_ready(admin));
        ProxyProcess {
            child,
            outbound,
            admin,
        }
    }

    /// Writes another resource file and waits until the control plane serves it.
    async fn add_resources(&self, file: &str, yaml: &str) {
        let reloads =
            |m: &str| metric_sum(m, "weft_policy_config_reloads_total", &["result=\"ok\""]);
        let before = reloads(&self.admin_metrics().await);
        std::fs::write(self.resources.join(file), yaml).unwrap();
        eventually_some(
            Duration::from_secs(10),
            "the control plane to load the new resources",
            || async { (reloads(&self.admin_metrics().await) > before).then_some(()) },
        )
        .await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct ProxyProcess {
    child: Child,
    outbound: SocketAddr,
    admin: SocketAddr,
}

/// One HTTP/1 GET of `http://<host>/` through the proxy at `proxy` on `conn` (kept alive; a
/// new one when it is gone): the status, the `weft-error` header and how long it took.
async fn get(
    proxy: SocketAddr,
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    host: &str,
) -> (u16, String, Duration) {
    let start = Instant::now();
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(driver);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().unwrap();
    sender.ready().await.unwrap();
    let req = http::Request::get(format!("http://{host}/"))
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("the proxy answers within 30 s")
        .unwrap();
    let status = rsp.status().as_u16();
    let error = rsp
        .headers()
        .get("weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let _ = rsp.into_body().collect().await;
    (status, error, start.elapsed())
}

/// Sends one request for each of `n` distinct unknown names through `proxy`, `CONCURRENCY` at
/// a time. Each must get the proxy's clean answer (502 `unknown_destination`) within [`PROMPT`]; the
/// first that does not stops the flood, and its description is returned.
async fn flood(proxy: SocketAddr, n: usize) -> Result<Duration, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, failed) = (next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut slowest = Duration::ZERO;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    return Ok(slowest);
                }
                let host = format!("nosuch-{i}.default");
                let (status, error, took) = get(proxy, &mut conn, &host).await;
                slowest = slowest.max(took);
                if status != 502 || error != "unknown_destination" || took > PROMPT {
                    failed.store(true, Ordering::Relaxed);
                    return Err(format!(
                        "unknown name #{i} ({host}): {status} {error:?} after {took:?}"
                    ));
                }
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    let mut first_error = None;
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => slowest = slowest.max(s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(slowest), Err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_10000_unknown_names_a_new_service_is_found_at_once() {
    let cp = ControlPlane::start(
        "kind: Service\nmetadata: {name: web, namespace: default}\nspec: {ports: [{port: 8080}]}\n",
    )
    .await;
    let web = cp.proxy("web");
    let app = support::http_app("fresh").await;

    // The series on the proxy's /metrics before: names the mesh does not know add none.
    let series = |m: &str| {
        m.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    };
    let warm = flood(web.outbound, 5).await;
    assert!(warm.is_ok(), "{warm:?}");
    let before = series(&http_get_async(web.admin, "/metrics", "x").await.unwrap().1);
    let started = Instant::now();
    let flooded = flood(web.outbound, UNKNOWN_NAMES).await;
    let took = started.elapsed();
    let active = |m: &str| metric_sum(m, "weft_policy_watches_active", &[]);
    let watches = active(&cp.admin_metrics().await);
    eprintln!(
        "{UNKNOWN_NAMES} unknown names in {took:?} (slowest {flooded:?}); {watches} watches open at the control plane"
    );
    if let Err(e) = flooded {
        panic!("{e}\n--- proxy log (tail) ---\n{}", web.child.log_tail(20));
    }

    // A service created now (a static endpoint: the app, without a proxy) is found at once.
    cp.add_resources(
        "fresh.yaml",
        &format!(
            "kind: Service\nmetadata: {{name: fresh, namespace: default}}\nspec:\n  ports: [{{port: 80}}]\n  endpoints: [{{address: \"{app}\"}}]\n"
        ),
    )
    .await;
    let (status, error, took) = get(web.outbound, &mut None, "fresh.default").await;
    eprintln!("the new service answered {status} {error:?} after {took:?}");
    assert_eq!(
        status,
        200,
        "weft-error: {error}\n{}",
        web.child.log_tail(20)
    );
    assert!(took < PROMPT, "the new service took {took:?}");

    // The proxy holds a bounded number of streams at the control plane: the routes and the
    // endpoints of at most DEFAULT_CAPACITY destinations each, and its inbound policy (each
    // name left two behind before).
    let bound = (2 * DEFAULT_CAPACITY + 1) as f64;
    let watches = eventually_some(
        Duration::from_secs(5),
        &format!("at most {bound} watches open at the control plane"),
        || async {
            let n = active(&cp.admin_metrics().await);
            (n <= bound).then_some(n)
        },
    )
    .await;
    eprintln!("{watches} watches open at the control plane (bound {bound})");
    let proxy_metrics = http_get_async(web.admin, "/metrics", "x").await.unwrap().1;
    assert_eq!(
        metric_sum(
            &proxy_metrics,
            "weft_proxy_errors_total",
            &["reason=\"unknown_destination\""]
        ),
        (UNKNOWN_NAMES + 5) as f64,
        "{proxy_metrics}"
    );
    // Counted under one fixed label value, and no series per name (the new service's own
    // requests add a few).
    assert_eq!(
        metric_sum(
            &proxy_metrics,
            "weft_proxy_requests_total",
            &["dst_service=\"unknown\""]
        ),
        (UNKNOWN_NAMES + 5) as f64,
        "{proxy_metrics}"
    );
    let after = series(&proxy_metrics);
    assert!(
        after <= before + 60,
        "{before} series before 10,000 unknown names, {after} after:\n{proxy_metrics}"
    );
}

/// `CONNECT` to a name the mesh does not know gets its answer at once (it took the 5 s of
/// discovery's timeout when the control plane answered nothing for such a name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_unknown_service_is_answered_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = ControlPlane::start(
        "kind: Service\nmetadata: {name: web, namespace: default}\nspec: {ports: [{port: 8080}]}\n",
    )
    .await;
    let web = cp.proxy("web");
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
    tcp.write_all(b"CONNECT nosuch.default:5432 HTTP/1.1\r\nHost: nosuch.default:5432\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let took = started.elapsed();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("weft-error: unknown_destination"), "{head}");
    assert!(took < PROMPT, "{took:?}");
}
