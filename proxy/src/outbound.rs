//! The outbound listener: traffic from the local app to other services.
//!
//! The app uses the proxy as its HTTP proxy (`HTTP_PROXY=http://127.0.0.1:4140`: absolute-form
//! requests), or sends ordinary requests whose `Host` names the service, or speaks HTTP/2 with
//! prior knowledge (gRPC). `CONNECT host:port` opens an opaque TCP tunnel. Each connection is
//! served by the outbound stack ([`crate::stack::outbound`]): destination, endpoint choice,
//! pooled mTLS HTTP/2 to the endpoint's proxy.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub use crate::destination::Destination;
pub use crate::discovery::{DISCOVERY_TIMEOUT, Resolve};
pub use crate::endpoint::CONNECT_TIMEOUT;

use crate::detect::{self, Protocol};
use crate::discovery::Limits;
use crate::endpoint::Connect;
use crate::metrics::ProxyMetrics;
use crate::orig_dst::{Interception, OrigDst};
use crate::svc::HttpService;
use crate::tls::MeshTls;
use crate::unmeshed::{Addresses, AtAddress, OwnSockets};

const DIRECTION: &str = "outbound";

/// Settings of the outbound side.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Namespace of names given without one (`http://api:8080`).
    pub namespace: String,
    pub detect_timeout: Duration,
    /// How long an HTTP/1.1 client's response is read ahead for its trailers
    /// ([`crate::trailers`]).
    pub http1_trailers_wait: Duration,
    /// The proxy's own ports and the opaque ports (transparent interception).
    pub intercept: Interception,
    /// How many destinations (and original destinations' addresses) the proxy follows, and
    /// for how long unused.
    pub discovery: Limits,
}

/// The outbound proxy.
pub struct Outbound {
    cfg: OutboundConfig,
    metrics: Arc<ProxyMetrics>,
    stack: HttpService,
    own: OwnSockets,
    /// Meshed workloads by the IP of original destinations.
    addresses: Arc<Addresses>,
    /// Connections to peer proxies (opaque tunnels to meshed original destinations).
    connect: Connect,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    pub fn new(
        cfg: OutboundConfig,
        tls: Arc<MeshTls>,
        resolver: Arc<dyn Resolve>,
        metrics: Arc<ProxyMetrics>,
    ) -> Arc<Self> {
        let own = OwnSockets::default();
        let connect = Connect::new(tls, metrics.clone(), cfg.discovery.idle_timeout);
        let addresses = Arc::new(Addresses::with_limits(resolver.clone(), cfg.discovery));
        let stack = crate::stack::outbound(
            &cfg.namespace,
            connect.clone(),
            resolver,
            addresses.clone(),
            metrics.clone(),
            own.clone(),
            cfg.discovery,
        );
        Arc::new(Self {
            cfg,
            metrics,
            stack,
            own,
            addresses,
            connect,
        })
    }

    /// Accepts app connections until `shutdown`, then lets requests in flight finish (up to
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
        let orig = crate::orig_dst::orig_dst(&tcp);
        // What the mesh knows of a redirected connection's destination IP: one control-plane
        // watch per IP, kept while in use, so only the first connection to an IP waits for it
        // (at most DISCOVERY_TIMEOUT), as Linkerd resolves an original destination before
        // detection.
        let mut known = None;
        if let Some(dst) = orig {
            if self.cfg.intercept.is_own_port(dst.port()) || self.own.contains(remote) {
                // The proxy's own connection came back: iptables does not exempt its user.
                self.metrics.error(DIRECTION, "loop");
                tracing::error!(client.addr = %remote, orig_dst = %dst, "outbound connection refused: it is the proxy's own traffic redirected back to it (a loop); run `weft proxy` as the UID given to `weft init --proxy-uid` (or the GID of --proxy-gid)");
                return;
            }
            known = self.addresses.lookup(dst.ip()).await;
            // Server-speaks-first: no detection, no waiting for the client, on a port declared
            // opaque here (--opaque-ports) or by the destination's service (appProtocol).
            if self.cfg.intercept.is_opaque(dst.port())
                || known.as_ref().is_some_and(|k| k.is_opaque(dst.port()))
            {
                let boxed = Box::pin(self.opaque(tcp, dst, known));
                return boxed.await;
            }
        }
        let (protocol, io) = match detect::detect(tcp, false, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        if io.timed_out() {
            self.metrics.error(DIRECTION, "detect_timeout");
        }
        if !matches!(protocol, Protocol::Http1 | Protocol::Http2) {
            if let Some(dst) = orig {
                // Opaque bytes on a redirected connection: to where they were going.
                let boxed = Box::pin(self.opaque(io, dst, known));
                return boxed.await;
            }
            let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
            // Without an original destination (the app uses the proxy explicitly) there is
            // nowhere to send opaque bytes: refuse rather than guess.
            self.metrics.error(DIRECTION, "bad_request");
            tracing::info!(client.addr = %remote, "outbound connection is not HTTP; use CONNECT for TCP");
            return;
        }
        let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
        let stack = match orig {
            None => self.stack.clone(),
            Some(dst) => {
                use tower::ServiceExt;
                tower::util::BoxCloneSyncService::new(self.stack.clone().map_request(
                    move |mut req: http::Request<crate::body::Body>| {
                        req.extensions_mut().insert(OrigDst(dst));
                        req
                    },
                ))
            }
        };
        let served = crate::listen::Served {
            direction: DIRECTION,
            remote,
            trailers_wait: self.cfg.http1_trailers_wait,
        };
        // Boxed where they are large and rare, so that the future an idle HTTP/1 connection
        // waits in stays small (see crate::park).
        if protocol == Protocol::Http1 {
            crate::park::serve_http1(io, stack, served, watcher, &self.metrics).await;
        } else {
            let boxed = Box::pin(crate::listen::serve_http(
                io,
                stack,
                served,
                watcher,
                &self.metrics,
            ));
            boxed.await;
        }
    }

    /// An opaque connection to the original destination `dst`: through an mTLS tunnel to the
    /// meshed workload there (`known`: what the mesh knows of `dst`'s IP), else forwarded as it
    /// is.
    async fn opaque<I>(&self, io: I, dst: SocketAddr, known: Option<Arc<AtAddress>>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let Some(workload) = known.as_ref().and_then(|k| k.meshed.as_ref())
            && let Some(identity) = workload.identity()
        {
            let _open = self.metrics.tcp_open(DIRECTION, "opaque");
            let addr = workload.endpoint().address;
            return self.connect.opaque(io, addr, identity, dst.port()).await;
        }
        let _open = self.metrics.tcp_open(DIRECTION, "unmeshed");
        crate::unmeshed::forward_tcp(io, dst, &self.own, DIRECTION, &self.metrics).await;
    }
}
