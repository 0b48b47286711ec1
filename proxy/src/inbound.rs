//! The inbound listener: traffic from peers (and from outside the mesh) to the local app.
//!
//! accept → TLS detection (peek the ClientHello) → mTLS termination, peer identity from its
//! certificate → HTTP detection (HTTP/1, HTTP/2 preface, or opaque) → authorization against
//! the control plane's policy (HTTP deny = 403 naming the policy; TCP deny = connection
//! closed) → metrics → the application on `127.0.0.1:<port>`.
//!
//! Plaintext is accepted only where the policy allows unauthenticated peers: a plaintext
//! connection simply has no peer identity, and authorization decides.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_policy::authz::{Decision, WorkloadPolicy, authorize};

use crate::body::{self, Body};
use crate::detect::{self, Protocol};
use crate::error::ProxyError;
use crate::http::{ORIG_PROTO_HEADER, ORIG_PROTO_HTTP1, path_and_query, strip_hop_by_hop};
use crate::metrics::{ProxyMetrics, tls_failure_reason};
use crate::tls::{ALPN_OPAQUE, MeshTls};

const DIRECTION: &str = "inbound";
/// How long a peer may take to complete its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the inbound side.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Where the application listens (always loopback in the sidecar layout).
    pub app_ip: IpAddr,
    /// The application port used when a request names none.
    pub default_app_port: u16,
    /// How long protocol detection waits for a client's first bytes.
    pub detect_timeout: Duration,
    /// The local workload's service, `<namespace>/<name>`, for metric labels.
    pub service: String,
}

/// The inbound proxy.
pub struct Inbound {
    cfg: InboundConfig,
    tls: Arc<MeshTls>,
    policy: watch::Receiver<Option<Arc<WorkloadPolicy>>>,
    metrics: Arc<ProxyMetrics>,
    app_http1: Client<HttpConnector, Body>,
    app_http2: Client<HttpConnector, Body>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    pub fn new(
        cfg: InboundConfig,
        tls: Arc<MeshTls>,
        policy: watch::Receiver<Option<Arc<WorkloadPolicy>>>,
        metrics: Arc<ProxyMetrics>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let app_http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let app_http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .build(connector);
        Arc::new(Self {
            cfg,
            tls,
            policy,
            metrics,
            app_http1,
            app_http2,
        })
    }

    /// Accepts connections until `shutdown`, then lets HTTP requests in flight finish (up to
    /// `grace`).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) {
        crate::listen::accept_loop(
            listener,
            DIRECTION,
            shutdown,
            grace,
            |tcp, remote, watcher| self.clone().connection(tcp, remote, watcher),
        )
        .await;
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let (protocol, io) = match detect::detect(tcp, true, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        if protocol != Protocol::Tls {
            let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
            return self
                .plain_or_http(io, protocol, None, false, remote, watcher)
                .await;
        }
        let Some(cfg) = self.tls.server_config() else {
            self.metrics.error(DIRECTION, "not_ready");
            tracing::warn!(%remote, "TLS connection refused: the proxy has no certificate yet");
            return;
        };
        let accepted = tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(cfg).accept(io),
        )
        .await;
        let tls = match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = tls_failure_reason(&e);
                self.metrics.tls_failure(DIRECTION, reason);
                tracing::info!(client.addr = %remote, reason, error = %e, "inbound TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.tls_failure(DIRECTION, "timeout");
                tracing::info!(client.addr = %remote, reason = "timeout", "inbound TLS handshake failed");
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        let peer = weft_identity::tls::client_identity(conn);
        let opaque = conn.alpn_protocol() == Some(ALPN_OPAQUE);
        let peer_label = peer.as_ref().map_or("unknown", |p| p.as_str()).to_string();
        self.metrics
            .tls_handshake(DIRECTION, &peer_label, conn.protocol_version());
        if opaque {
            let _open = self.metrics.tcp_open(DIRECTION, "opaque");
            let mut tls = tls;
            let mut port = [0u8; 2];
            if tls.read_exact(&mut port).await.is_err() {
                return;
            }
            return self
                .tcp(tls, u16::from_be_bytes(port), peer.as_ref(), remote)
                .await;
        }
        let (protocol, io) = match detect::detect(tls, false, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
        self.plain_or_http(io, protocol, peer, true, remote, watcher)
            .await
    }

    async fn plain_or_http<I>(
        self: &Arc<Self>,
        io: I,
        protocol: Protocol,
        peer: Option<SpiffeId>,
        tls: bool,
        remote: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let this = self.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, Infallible>(this.request(req, peer.as_ref(), tls).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new());
                let conn = builder.serve_connection(TokioIo::new(io), svc);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(client.addr = %remote, error = %e, "inbound HTTP connection ended");
                }
            }
            Protocol::Opaque | Protocol::Tls => {
                self.tcp(io, self.cfg.default_app_port, peer.as_ref(), remote)
                    .await
            }
        }
    }

    /// Authorizes an opaque TCP connection at connect and forwards its bytes to the app.
    async fn tcp<I>(&self, io: I, port: u16, peer: Option<&SpiffeId>, remote: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let peer_label = peer.map_or("unauthenticated", |p| p.as_str());
        let Some(policy) = self.policy.borrow().clone() else {
            self.metrics.error(DIRECTION, "not_ready");
            return;
        };
        match authorize(policy.port(port), peer, &http::Method::CONNECT, "") {
            Decision::Allow { policy } => self.metrics.authz(true, &policy, peer_label),
            Decision::Deny { policy, reason } => {
                self.metrics.authz(false, &policy, peer_label);
                self.metrics.error(DIRECTION, "forbidden");
                tracing::info!(client.addr = %remote, client.id = peer_label, policy = %policy, reason = %reason, port, "TCP connection denied");
                return;
            }
        }
        let app = SocketAddr::new(self.cfg.app_ip, port);
        crate::tcp::forward(io, app, DIRECTION, &self.metrics).await;
    }

    async fn request(
        &self,
        req: Request<Incoming>,
        peer: Option<&SpiffeId>,
        tls: bool,
    ) -> Response<Body> {
        let start = Instant::now();
        let peer_label = peer.map_or("unauthenticated", |p| p.as_str());
        let port = crate::http::authority(&req)
            .and_then(|a| a.port_u16())
            .unwrap_or(self.cfg.default_app_port);
        self.metrics
            .request(DIRECTION, peer_label, &self.cfg.service, tls);
        let rsp = match self.authorize_and_forward(req, peer, port).await {
            Ok(rsp) => rsp,
            Err(e) => {
                self.metrics.error(DIRECTION, e.code());
                e.response()
            }
        };
        self.metrics.response(
            DIRECTION,
            peer_label,
            &self.cfg.service,
            rsp.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
        rsp
    }

    async fn authorize_and_forward(
        &self,
        req: Request<Incoming>,
        peer: Option<&SpiffeId>,
        port: u16,
    ) -> Result<Response<Body>, ProxyError> {
        let peer_label = peer.map_or("unauthenticated", |p| p.as_str());
        // Until the control plane has answered once, nothing is authorized.
        let policy = self.policy.borrow().clone().ok_or(ProxyError::NotReady)?;
        match authorize(policy.port(port), peer, req.method(), req.uri().path()) {
            Decision::Allow { policy } => self.metrics.authz(true, &policy, peer_label),
            Decision::Deny { policy, reason } => {
                self.metrics.authz(false, &policy, peer_label);
                tracing::info!(
                    client.id = peer_label,
                    policy = %policy,
                    reason = %reason,
                    method = %req.method(),
                    path = req.uri().path(),
                    port,
                    "request denied"
                );
                return Err(ProxyError::Forbidden {
                    policy: policy.to_string(),
                    reason: reason.to_string(),
                    peer: peer_label.to_string(),
                });
            }
        }
        let (mut parts, body) = req.into_parts();
        let from_http1 = parts
            .headers
            .remove(ORIG_PROTO_HEADER)
            .is_some_and(|v| v == ORIG_PROTO_HTTP1);
        let http2 = parts.version == Version::HTTP_2 && !from_http1;
        // Keep the authority the client used as the Host the application sees.
        if let Some(a) = parts.uri.authority().cloned()
            && !http2
            && let Ok(v) = http::HeaderValue::from_str(a.as_str())
        {
            parts.headers.insert(http::header::HOST, v);
        }
        strip_hop_by_hop(&mut parts.headers);
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(format!("{}:{port}", self.cfg.app_ip).as_str())
            .path_and_query(path_and_query(&parts.uri))
            .build()
            .map_err(|e| ProxyError::BadRequest {
                detail: e.to_string(),
            })?;
        parts.version = if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let req = Request::from_parts(parts, body::boxed(body));
        let client = if http2 {
            &self.app_http2
        } else {
            &self.app_http1
        };
        let rsp = client
            .request(req)
            .await
            .map_err(|e| ProxyError::AppUnavailable {
                port,
                detail: error_chain(&e),
            })?;
        let (mut parts, body) = rsp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body::boxed(body)))
    }
}

/// An error and its sources, as one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
