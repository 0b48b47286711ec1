//! In-process mesh for the proxy's integration tests: a real identity service, real proxies
//! (inbound and outbound listeners on loopback port 0, certificates from the identity client),
//! a fixed discovery table, and tiny HTTP/TCP apps.
#![allow(dead_code, clippy::unwrap_used)]

mod load;

#[allow(unused_imports)]
pub use load::*;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::client::{ClientSettings, IdentityClient};
use weft_identity::server::Running;
use weft_policy::authz::{
    AllowRule, DefaultPolicy, InboundPolicy, InboundPolicySpec, WorkloadPolicy,
};
use weft_policy::registry::{Endpoint, EndpointSource, ServiceEndpoints};
use weft_policy::routes::{RouteRule, ServiceRoutes};
use weft_proxy::inbound::{Inbound, InboundConfig};
use weft_proxy::metrics::ProxyMetrics;
use weft_proxy::outbound::{Outbound, OutboundConfig, Resolve};
use weft_proxy::tls::MeshTls;
use weft_runtime::metrics::Registry;

pub fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://weft.local/ns/default/sa/{name}")).unwrap()
}

type EndpointsTx = watch::Sender<Option<Arc<ServiceEndpoints>>>;
type RoutesTx = watch::Sender<Option<Arc<ServiceRoutes>>>;

/// A discovery table (endpoints and routes) tests can change while proxies run. A service
/// whose routes were never set has none.
#[derive(Default)]
pub struct StaticResolver {
    services: Mutex<HashMap<(String, String), EndpointsTx>>,
    routes: Mutex<HashMap<(String, String), RoutesTx>>,
}

impl StaticResolver {
    fn sender(&self, ns: &str, svc: &str) -> EndpointsTx {
        self.services
            .lock()
            .unwrap()
            .entry((ns.to_string(), svc.to_string()))
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    fn routes_sender(&self, ns: &str, svc: &str) -> RoutesTx {
        self.routes
            .lock()
            .unwrap()
            .entry((ns.to_string(), svc.to_string()))
            .or_insert_with(|| {
                watch::channel(Some(Arc::new(ServiceRoutes {
                    namespace: ns.to_string(),
                    service: svc.to_string(),
                    rules: vec![],
                })))
                .0
            })
            .clone()
    }

    /// Sets the route rules of `svc` (they apply live).
    pub fn set_routes(&self, svc: &str, rules: Vec<RouteRule>) {
        self.routes_sender("default", svc)
            .send_replace(Some(Arc::new(ServiceRoutes {
                namespace: "default".into(),
                service: svc.into(),
                rules,
            })));
    }

    pub fn set(&self, svc: &str, endpoints: Vec<(SocketAddr, Option<SpiffeId>)>) {
        let eps = ServiceEndpoints {
            namespace: "default".into(),
            service: svc.into(),
            ports: vec![],
            opaque_ports: vec![],
            unknown: false,
            endpoints: endpoints
                .into_iter()
                .map(|(address, identity)| {
                    std::sync::Arc::new(Endpoint {
                        address,
                        identity,
                        labels: Default::default(),
                        source: EndpointSource::Registered,
                    })
                })
                .collect(),
        };
        self.sender("default", svc)
            .send_replace(Some(Arc::new(eps)));
    }

    /// Points `svc` at these proxies' inbound ports, each proving its own workload's identity.
    pub fn set_proxies<'a>(&self, svc: &str, proxies: impl IntoIterator<Item = &'a TestProxy>) {
        let endpoints = proxies
            .into_iter()
            .map(|p| (p.inbound, Some(id(&p.name))))
            .collect();
        self.set(svc, endpoints);
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self, ns: &str, svc: &str) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        self.sender(ns, svc).subscribe()
    }

    fn routes(&self, ns: &str, svc: &str) -> watch::Receiver<Option<Arc<ServiceRoutes>>> {
        self.routes_sender(ns, svc).subscribe()
    }
}

/// A policy allowing exactly these identities on every port.
pub fn allow_only(names: &[&str]) -> WorkloadPolicy {
    let policy = InboundPolicy::new(InboundPolicySpec {
        name: "server:default/api".into(),
        rules: vec![AllowRule {
            policy: "default/api-from-web".into(),
            identities: names.iter().map(|n| id(n)).collect(),
            ..AllowRule::default()
        }],
    });
    WorkloadPolicy {
        namespace: "default".into(),
        service: "api".into(),
        ports: Default::default(),
        default: policy,
        opaque_ports: Vec::new(),
    }
}

pub fn default_policy(p: DefaultPolicy) -> WorkloadPolicy {
    WorkloadPolicy {
        namespace: "default".into(),
        service: "svc".into(),
        ports: Default::default(),
        default: InboundPolicy::default_policy(p),
        opaque_ports: Vec::new(),
    }
}

/// The mesh: CA, identity service, discovery.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub authority_cfg: AuthorityConfig,
    pub identity: Running,
    pub resolver: Arc<StaticResolver>,
    /// The outbound side's discovery limits (and peer connections' idle timeout) of the
    /// proxies started from now on.
    pub discovery: weft_proxy::discovery::Limits,
}

impl Mesh {
    pub async fn new(leaf_lifetime: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AuthorityConfig::new(dir.path().join("ca"));
        cfg.leaf_lifetime = leaf_lifetime;
        let authority = Authority::load_or_create(&cfg).unwrap();
        let identity = Running::start(authority, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self {
            dir,
            authority_cfg: cfg,
            identity,
            resolver: Arc::new(StaticResolver::default()),
            discovery: Default::default(),
        }
    }

    pub fn authority(&self) -> Authority {
        Authority::load_or_create(&self.authority_cfg).unwrap()
    }

    pub fn token(&self, name: &str) -> String {
        let a = self.authority();
        a.token_key()
            .create(
                &id(name),
                &a.anchor_fingerprint(),
                std::time::SystemTime::now(),
                Duration::from_secs(3600),
            )
            .unwrap()
    }

    /// Starts a proxy for workload `name` whose app listens on `app_port`.
    pub async fn proxy(&self, name: &str, app_port: u16, policy: WorkloadPolicy) -> TestProxy {
        self.proxy_at(name, app_port, policy, "127.0.0.1:0".parse().unwrap())
            .await
    }

    /// Starts a proxy whose inbound port admits every authenticated peer.
    pub async fn open_proxy(&self, name: &str, app_port: u16) -> TestProxy {
        self.proxy(
            name,
            app_port,
            default_policy(DefaultPolicy::AllAuthenticated),
        )
        .await
    }

    /// Starts the proxy of a workload that only calls out (no app behind its inbound port).
    pub async fn client_proxy(&self, name: &str) -> TestProxy {
        self.open_proxy(name, 1).await
    }

    /// Starts a proxy whose inbound port listens on `inbound` (to bring back a stopped one).
    pub async fn proxy_at(
        &self,
        name: &str,
        app_port: u16,
        policy: WorkloadPolicy,
        inbound_at: SocketAddr,
    ) -> TestProxy {
        let registry = Registry::new();
        let metrics = ProxyMetrics::new(registry.clone());
        let tls = MeshTls::new();
        let mut settings = ClientSettings::new(self.identity.addr.to_string(), self.token(name));
        settings.min_backoff = Duration::from_millis(50);
        settings.max_backoff = Duration::from_millis(500);
        let mut client = IdentityClient::start(settings, &registry);
        tokio::time::timeout(Duration::from_secs(10), client.ready())
            .await
            .unwrap();
        let follower = tls.clone().follow(client.credentials(), |_| {});
        // Wait until the first certificate is installed.
        for _ in 0..200 {
            if tls.server_config().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (policy_tx, policy_rx) = watch::channel(Some(Arc::new(policy)));
        let inbound = Inbound::new(
            InboundConfig {
                app_ip: "127.0.0.1".parse().unwrap(),
                default_app_port: app_port,
                detect_timeout: Duration::from_millis(500),
                http1_trailers_wait: TRAILERS_WAIT,
                service: format!("default/{name}"),
                intercept: Default::default(),
            },
            tls.clone(),
            policy_rx,
            metrics.clone(),
        );
        let outbound = Outbound::new(
            OutboundConfig {
                namespace: "default".into(),
                detect_timeout: Duration::from_millis(500),
                http1_trailers_wait: TRAILERS_WAIT,
                intercept: Default::default(),
                discovery: self.discovery,
            },
            tls.clone(),
            self.resolver.clone(),
            metrics.clone(),
        );
        let in_l = tokio::net::TcpListener::bind(inbound_at).await.unwrap();
        let out_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbound_addr = in_l.local_addr().unwrap();
        let outbound_addr = out_l.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = Duration::from_secs(5);
        let tasks = vec![
            tokio::spawn(inbound.serve(
                in_l,
                weft_runtime::process::wait_true(stop_rx.clone()),
                grace,
            )),
            tokio::spawn(outbound.serve(out_l, weft_runtime::process::wait_true(stop_rx), grace)),
        ];
        TestProxy {
            name: name.to_string(),
            inbound: inbound_addr,
            outbound: outbound_addr,
            registry,
            policy: policy_tx,
            _client: client,
            _follower: follower,
            stop: stop_tx,
            tasks,
        }
    }
}

/// `api` (an `http_app` behind a proxy that admits only `web`) and `web`'s proxy, discovery
/// pointing `api` at `api`'s proxy: the mesh, `api`'s app, `api`'s proxy, `web`'s proxy.
/// How long the test proxies read a response ahead for its trailers: far longer than the
/// default, so that no test depends on how fast the trailers cross the proxies.
pub const TRAILERS_WAIT: Duration = Duration::from_secs(5);

pub async fn api_and_web(leaf_lifetime: Duration) -> (Mesh, SocketAddr, TestProxy, TestProxy) {
    let mesh = Mesh::new(leaf_lifetime).await;
    let app = http_app("api").await;
    let api = mesh.proxy("api", app.port(), allow_only(&["web"])).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver.set_proxies("api", [&api]);
    (mesh, app, api, web)
}

pub struct TestProxy {
    pub name: String,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub registry: Registry,
    pub policy: watch::Sender<Option<Arc<WorkloadPolicy>>>,
    _client: IdentityClient,
    _follower: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    pub fn metrics(&self) -> String {
        self.registry.render()
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// An HTTP app (HTTP/1 and h2c) answering `hello from <name>` with what it saw, and `/stream`
/// echoing the request body back with a trailer (gRPC-style).
pub async fn http_app(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let path = req.uri().path().to_string();
                        let method = req.method().to_string();
                        if path == "/stream" {
                            // Echo every frame of the body, then trailers.
                            let body = req.into_body().collect().await.unwrap();
                            let trailers_in = body.trailers().cloned();
                            let data = body.to_bytes();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            if let Some(t) =
                                trailers_in.and_then(|t| t.get("x-client-trailer").cloned())
                            {
                                trailers.insert("x-client-trailer", t);
                            }
                            let frames = vec![
                                Ok::<_, Infallible>(hyper::body::Frame::data(data)),
                                Ok(hyper::body::Frame::trailers(trailers)),
                            ];
                            let body = http_body_util::StreamBody::new(futures_stream(frames));
                            let rsp = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(http_body_util::Either::Right(body))
                                .unwrap();
                            return Ok::<_, Infallible>(rsp);
                        }
                        let text =
                            format!("hello from {name}: {method} {path} via {version} host={host}");
                        let rsp = http::Response::builder()
                            .header("x-app", name)
                            .body(http_body_util::Either::Left(Full::new(Bytes::from(text))))
                            .unwrap();
                        Ok::<_, Infallible>(rsp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::iter(items)
}

/// A line-based TCP echo server.
pub async fn echo_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/1 client that uses `proxy` as its HTTP proxy (absolute-form requests).
pub async fn get_via(proxy: SocketAddr, url: &str) -> (u16, http::HeaderMap, String) {
    let uri: http::Uri = url.parse().unwrap();
    http1_get(proxy, url, uri.authority().unwrap().as_str()).await
}

/// One HTTP/1 GET of `target` (absolute or origin form) with `host`, on a new connection to
/// `addr`: status, headers and body.
pub async fn http1_get(
    addr: SocketAddr,
    target: &str,
    host: &str,
) -> (u16, http::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(target)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// An HTTP app that answers `hello from <name>` (header `x-app: <name>`) after `delay`, or
/// 503 for `fail_percent` % of requests (changeable while it runs), counting what it served.
pub struct TestApp {
    pub addr: SocketAddr,
    pub served: Arc<std::sync::atomic::AtomicU64>,
    pub fail_percent: Arc<std::sync::atomic::AtomicU32>,
}

impl TestApp {
    pub fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub async fn test_app(name: &'static str, delay: Duration, fail_percent: u32) -> TestApp {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let fail = Arc::new(AtomicU32::new(fail_percent));
    let (served2, fail2) = (served.clone(), fail.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (served, fail) = (served2.clone(), fail2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let (served, fail) = (served.clone(), fail.clone());
                        async move {
                            served.fetch_add(1, Ordering::Relaxed);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let failing = fastrand::u32(..100) < fail.load(Ordering::Relaxed);
                            let rsp = http::Response::builder()
                                .status(if failing { 503 } else { 200 })
                                .header("x-app", name)
                                .body(Full::new(Bytes::from(format!("hello from {name}"))))
                                .unwrap();
                            Ok::<_, Infallible>(rsp)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    TestApp {
        addr,
        served,
        fail_percent: fail,
    }
}
