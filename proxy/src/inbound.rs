//! The inbound listener: traffic from peers (and from outside the mesh) to the local app.
//!
//! accept → TLS detection (peek the ClientHello) → mTLS termination, peer identity from its
//! certificate → HTTP detection (HTTP/1, HTTP/2 preface, or opaque) → authorization against
//! the control plane's policy (HTTP deny = 403 naming the policy; TCP deny = connection
//! closed) → metrics → the application on `127.0.0.1:<port>` (under interception: at the
//! address the client dialled, [`Interception::app_ip`]).
//!
//! Plaintext is accepted only where the policy allows unauthenticated peers: a plaintext
//! connection simply has no peer identity, and authorization decides.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_identity::SpiffeId;
use weft_policy::authz::{Decision, authorize};

use crate::app::AppIp;
use crate::authz::PolicyWatch;
use crate::detect::{self, Protocol};
use crate::identity::ClientIdentity;
use crate::metrics::{ProxyMetrics, tls_failure_reason};
use crate::orig_dst::{Interception, OrigDst};
use crate::stack::InboundStack;
use crate::tls::{ALPN_OPAQUE, ALPN_OPAQUE_V1, MeshTls, TunnelReply, read_opaque_header};

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
    /// How long an HTTP/1.1 client's response is read ahead for its trailers
    /// ([`crate::trailers`]).
    pub http1_trailers_wait: Duration,
    /// The local workload's service, `<namespace>/<name>`, for metric labels.
    pub service: String,
    /// The proxy's own ports and the opaque ports (transparent interception).
    pub intercept: Interception,
}

/// The inbound proxy.
pub struct Inbound {
    cfg: InboundConfig,
    /// Whether the warning about interception without `--proxy-uid` was logged.
    warned: AtomicBool,
    tls: Arc<MeshTls>,
    policy: PolicyWatch,
    metrics: Arc<ProxyMetrics>,
    stack: InboundStack,
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
        policy: PolicyWatch,
        metrics: Arc<ProxyMetrics>,
    ) -> Arc<Self> {
        let stack = InboundStack::new(
            &cfg.service,
            cfg.app_ip,
            (cfg.default_app_port, &cfg.intercept.own_ports),
            policy.clone(),
            metrics.clone(),
        );
        Arc::new(Self {
            cfg,
            warned: AtomicBool::new(false),
            tls,
            policy,
            metrics,
            stack,
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
        watcher: crate::listen::Watcher,
    ) {
        // Redirected by `weft init`: the port the peer dialled is the application's.
        let orig = crate::orig_dst::orig_dst(&tcp).map(OrigDst);
        let app_ip = self
            .cfg
            .intercept
            .app_ip(orig, tcp.local_addr().ok(), self.cfg.app_ip);
        let Some(app_ip) = app_ip else {
            self.metrics.error(DIRECTION, "not_local");
            tracing::warn!(client.addr = %remote, orig_dst = ?orig, "inbound connection refused: it was redirected to the proxy, but its original destination is not one of this host's addresses (traffic routed through the host, or a loopback address from the network)");
            return;
        };
        if orig.is_some() && !self.cfg.intercept.transparent && !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                "inbound connections are redirected (`weft init`), but the proxy was not given --proxy-uid or --proxy-gid: peers' connections go to the application on 127.0.0.1, redirected ones to the address their client dialled; give the proxy the flag `weft init` was given"
            );
        }
        let at = Conn { remote, app_ip };
        if let Some(OrigDst(dst)) = orig {
            if self.cfg.intercept.is_own_port(dst.port()) {
                self.metrics.error(DIRECTION, "loop");
                tracing::warn!(client.addr = %remote, orig_dst = %dst, "inbound connection refused: its original destination is one of the proxy's own ports (a redirection loop)");
                return;
            }
            if self.cfg.intercept.is_opaque(dst.port()) || self.declared_opaque(dst.port()) {
                // Server-speaks-first: no detection, no waiting for the client.
                let _open = self.metrics.tcp_open(DIRECTION, "opaque");
                let boxed = Box::pin(self.tcp(tcp, dst.port(), Tunnel::plain(None, at)));
                return boxed.await;
            }
        }
        let (protocol, io) = match detect::detect(tcp, true, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        if io.timed_out() {
            self.metrics.error(DIRECTION, "detect_timeout");
        }
        if protocol != Protocol::Tls {
            let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
            let boxed = Box::pin(self.plain_or_http(io, protocol, None, orig, at, watcher));
            return boxed.await;
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
        let alpn = conn.alpn_protocol();
        let opaque = alpn == Some(ALPN_OPAQUE) || alpn == Some(ALPN_OPAQUE_V1);
        // The first tunnel version gets no reply.
        let reply = alpn == Some(ALPN_OPAQUE);
        let peer_label = peer.as_ref().map_or("unknown", |p| p.as_str()).to_string();
        self.metrics
            .tls_handshake(DIRECTION, &peer_label, conn.protocol_version());
        if opaque {
            let _open = self.metrics.tcp_open(DIRECTION, "opaque");
            let mut tls = tls;
            let Ok(port) = read_opaque_header(&mut tls).await else {
                return;
            };
            let tunnel = Tunnel {
                peer: peer.as_ref(),
                conn: at,
                reply,
            };
            let boxed = Box::pin(self.tcp(tls, port, tunnel));
            return boxed.await;
        }
        let (protocol, io) = match detect::detect(tls, false, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        if io.timed_out() {
            self.metrics.error(DIRECTION, "detect_timeout");
        }
        let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
        // Boxed, as the other large and per-kind futures here, so that a connection's task
        // holds only the one it runs.
        let boxed = Box::pin(self.plain_or_http(io, protocol, peer, orig, at, watcher));
        boxed.await
    }

    /// Whether the workload's service declares `port` opaque (`appProtocol: opaque`).
    fn declared_opaque(&self, port: u16) -> bool {
        self.policy
            .borrow()
            .as_ref()
            .is_some_and(|p| p.opaque_ports.contains(&port))
    }

    async fn plain_or_http<I>(
        self: &Arc<Self>,
        io: I,
        protocol: Protocol,
        peer: Option<SpiffeId>,
        orig: Option<OrigDst>,
        conn: Conn,
        watcher: crate::listen::Watcher,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let stack =
                    self.stack
                        .for_connection(ClientIdentity::new(peer), orig, AppIp(conn.app_ip));
                let served = crate::listen::Served {
                    direction: DIRECTION,
                    remote: conn.remote,
                    trailers_wait: self.cfg.http1_trailers_wait,
                };
                crate::listen::serve_http(io, stack, served, watcher, &self.metrics).await
            }
            Protocol::Opaque | Protocol::Tls => {
                let port = orig.map_or(self.cfg.default_app_port, |o| o.0.port());
                self.tcp(io, port, Tunnel::plain(peer.as_ref(), conn)).await
            }
        }
    }

    /// Authorizes an opaque TCP connection at connect and forwards its bytes to the app; a
    /// tunnel that asks for it ([`ALPN_OPAQUE`]) is told whether the app was reached first.
    async fn tcp<I>(&self, mut io: I, port: u16, tunnel: Tunnel<'_>)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let Tunnel { peer, conn, reply } = tunnel;
        let remote = conn.remote;
        let peer_label = peer.map_or("unauthenticated", |p| p.as_str());
        let refused = if self.cfg.intercept.is_own_port(port) {
            // A tunnel names its port: never one of the proxy's own, through which a peer
            // would act as this workload (its outbound) or reach its admin endpoint.
            self.metrics.error(DIRECTION, "forbidden");
            tracing::warn!(client.addr = %remote, client.id = peer_label, port, "TCP tunnel refused: the port is one of the proxy's own");
            Some(TunnelReply::Forbidden(format!(
                "port {port} is the proxy's own"
            )))
        } else {
            match self.policy.borrow().clone() {
                None => {
                    self.metrics.error(DIRECTION, "not_ready");
                    Some(TunnelReply::Unavailable(
                        "the proxy has no policy yet".into(),
                    ))
                }
                Some(policy) => {
                    match authorize(policy.port(port), peer, &http::Method::CONNECT, "") {
                        Decision::Allow { policy } => {
                            self.metrics.authz(true, &policy, peer_label);
                            None
                        }
                        Decision::Deny { policy, reason } => {
                            self.metrics.authz(false, &policy, peer_label);
                            self.metrics.error(DIRECTION, "forbidden");
                            tracing::info!(client.addr = %remote, client.id = peer_label, policy = %policy, reason = %reason, port, "TCP connection denied");
                            Some(TunnelReply::Forbidden(policy.to_string()))
                        }
                    }
                }
            }
        };
        let app = SocketAddr::new(conn.app_ip, port);
        let server = match refused {
            Some(r) => Err(r),
            None => crate::tcp::connect(app).await.map_err(|e| {
                self.metrics.error(DIRECTION, "app_unavailable");
                tracing::info!(%app, error = %e, "TCP forward: connect failed");
                TunnelReply::Unavailable(crate::app::unreachable_detail(app, e))
            }),
        };
        match server {
            Ok(mut server) => {
                let connected = TunnelReply::Connected.encode();
                if reply && (io.write_all(&connected).await.is_err() || io.flush().await.is_err()) {
                    return;
                }
                crate::tcp::relay(&mut io, &mut server, DIRECTION, &self.metrics).await;
            }
            Err(refused) if reply => {
                let _ = io.write_all(&refused.encode()).await;
                let _ = io.shutdown().await;
            }
            Err(_) => {}
        }
    }
}

/// Where a connection is from, and where its application is
/// ([`Interception::app_ip`]).
#[derive(Debug, Clone, Copy)]
struct Conn {
    remote: SocketAddr,
    app_ip: IpAddr,
}

/// Who an opaque connection is from, and whether it is a tunnel that wants a reply.
struct Tunnel<'a> {
    peer: Option<&'a SpiffeId>,
    conn: Conn,
    reply: bool,
}

impl<'a> Tunnel<'a> {
    /// A connection that gets no reply.
    fn plain(peer: Option<&'a SpiffeId>, conn: Conn) -> Self {
        Self {
            peer,
            conn,
            reply: false,
        }
    }
}
