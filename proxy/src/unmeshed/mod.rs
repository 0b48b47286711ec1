//! Outbound traffic on connections `weft init` redirected: to the mesh when the control plane
//! knows where it was going, else sent as it is, in plaintext, to the original destination.
//!
//! With transparent interception every TCP connection the application opens reaches the
//! proxy, not only those to services of the mesh. A request whose authority names a service
//! with endpoints takes the mesh stack. Otherwise the original destination's IP is looked up
//! in the control plane ([`Addresses`], `GET /v1/address`, as Linkerd's destination service
//! looks up pod IPs): when a meshed workload is registered there, the request goes to that
//! workload, over mTLS to its proxy, requiring its identity ([`Meshed`]). Anything else goes
//! to where the application was sending it ([`Intercepted`]); opaque connections likewise go
//! through an mTLS tunnel to a meshed workload or are forwarded byte for byte
//! ([`forward_tcp`]). HTTP sent unmeshed is counted as `dst_service="unmeshed"`, `tls="false"`.
//!
//! The proxy's own connections must never be redirected to it (`weft init --proxy-uid`): each
//! socket the proxy opens from here is bound to its port before it connects, and the port is
//! held in [`OwnSockets`] while it lives, so a connection of the proxy's own that comes back to
//! the outbound listener is recognised and refused instead of looping.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_policy::registry::{AddressInfo, Endpoint, ServiceEndpoints};

use crate::balance::{Backends, Picked};
use crate::body::Body;
use crate::destination::Destination;
use crate::discovery::cache::{Cache, Followed, Shared, lock, now};
use crate::discovery::{DISCOVERY_TIMEOUT, Limits, Resolve};
use crate::edge::error_chain;
use crate::error::ProxyError;
use crate::http::{path_and_query, strip_hop_by_hop};
use crate::metrics::ProxyMetrics;
use crate::orig_dst::OrigDst;
use crate::svc::{BoxError, BoxFuture, HttpService, Labels};

/// The `dst_service` label of everything sent to an original destination outside the mesh.
pub const UNMESHED: &str = "unmeshed";
/// How long connecting to an original destination may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The local ports of the sockets the proxy opened towards original destinations, while they
/// are open.
#[derive(Debug, Clone, Default)]
pub struct OwnSockets(Arc<Mutex<HashSet<u16>>>);

impl OwnSockets {
    /// Whether a connection from `remote` is one the proxy opened itself (redirected back to
    /// it: the proxy does not run as `weft init --proxy-uid`). A port bound to the wildcard
    /// address is the proxy's alone while it holds it.
    pub fn contains(&self, remote: SocketAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&remote.port())
    }

    fn hold(&self, port: u16) -> OwnGuard {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port);
        OwnGuard {
            set: self.clone(),
            port,
        }
    }
}

/// Keeps a port in [`OwnSockets`] until dropped with its socket.
#[derive(Debug)]
struct OwnGuard {
    set: OwnSockets,
    port: u16,
}

impl Drop for OwnGuard {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.port);
    }
}

/// Connects to `addr` from a socket bound first, so its port is in `own` before the SYN
/// leaves (a redirected copy of it can only arrive after that).
async fn connect(addr: SocketAddr, own: &OwnSockets) -> io::Result<(TcpStream, OwnGuard)> {
    let (socket, any) = if addr.is_ipv4() {
        (
            TcpSocket::new_v4()?,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        )
    } else {
        (
            TcpSocket::new_v6()?,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        )
    };
    socket.bind(any)?;
    let guard = own.hold(socket.local_addr()?.port());
    socket.set_nodelay(true)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    Ok((tcp, guard))
}

/// Forwards an opaque connection to its original destination `dst`.
pub async fn forward_tcp<I>(
    mut client: I,
    dst: SocketAddr,
    own: &OwnSockets,
    direction: &str,
    metrics: &ProxyMetrics,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (mut server, _guard) = match connect(dst, own).await {
        Ok(c) => c,
        Err(e) => {
            metrics.error(direction, "connect_failed");
            tracing::info!(orig_dst = %dst, error = %e, "TCP forward to the original destination failed");
            return;
        }
    };
    crate::tcp::relay(&mut client, &mut server, direction, metrics).await;
}

/// A connection to an original destination, for hyper's client: the stream and its place in
/// [`OwnSockets`].
#[derive(Debug)]
struct Tracked {
    io: TokioIo<TcpStream>,
    _guard: OwnGuard,
}

impl Connection for Tracked {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// hyper's connector to original destinations: the URI's authority is always the address.
#[derive(Debug, Clone)]
struct Connector(OwnSockets);

impl tower::Service<Uri> for Connector {
    type Response = Tracked;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Tracked>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let own = self.0.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an address"))?;
            let (tcp, guard) = connect(addr, &own).await?;
            Ok(Tracked {
                io: TokioIo::new(tcp),
                _guard: guard,
            })
        })
    }
}

/// The outbound stack's switch between the mesh and original destinations; without an
/// [`OrigDst`] in the request (the application used the proxy explicitly) it is the mesh.
#[derive(Clone)]
pub struct Intercepted {
    mesh: HttpService,
    /// The endpoint service: requests for a meshed workload's address go straight to it.
    endpoint: HttpService,
    shared: Arc<Switch>,
}

struct Switch {
    /// Upgraded connections' bytes are counted here.
    metrics: Arc<ProxyMetrics>,
    namespace: String,
    /// Whether a service has endpoints: the balancer's discovery cache, so a name takes one
    /// watch whichever of the two asks first.
    backends: Backends,
    addresses: Arc<Addresses>,
    http1: Client<Connector, Body>,
    http2: Client<Connector, Body>,
}

impl std::fmt::Debug for Intercepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted").finish_non_exhaustive()
    }
}

impl Intercepted {
    /// `mesh`: the stack from the destination layer on; `endpoint`: its last service, which
    /// sends a request to the endpoint [`Picked`] for it; `backends`: the mesh's balancer's.
    pub fn new(
        mesh: HttpService,
        endpoint: HttpService,
        namespace: &str,
        backends: Backends,
        addresses: Arc<Addresses>,
        own: OwnSockets,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        let connector = Connector(own);
        Self {
            mesh,
            endpoint,
            shared: Arc::new(Switch {
                metrics,
                namespace: namespace.to_string(),
                backends,
                addresses,
                http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
                http2: Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .http2_max_header_list_size(crate::limits::H2_MAX_HEADER_LIST_SIZE)
                    .http2_initial_stream_window_size(crate::limits::H2_STREAM_WINDOW)
                    .http2_initial_connection_window_size(crate::limits::H2_CONNECTION_WINDOW)
                    .timer(TokioTimer::new())
                    .build(connector),
            }),
        }
    }
}

impl Switch {
    /// Whether the mesh has endpoints for the request's authority (an IP address, or no
    /// authority, is never a service).
    async fn in_mesh(&self, authority: Option<http::uri::Authority>) -> bool {
        match authority.and_then(|a| Destination::parse(&a, &self.namespace)) {
            Some(dst) => self.backends.have_endpoints(&dst).await,
            None => false,
        }
    }

    /// Sends `req` as it is to `dst`.
    async fn unmeshed(
        &self,
        mut req: Request<Body>,
        dst: SocketAddr,
    ) -> Result<Response<Body>, BoxError> {
        Labels::set_dst(&req, || Arc::from(UNMESHED));
        Labels::set_peer(&req, || Arc::from("none"), false);
        // An upgrade (WebSocket, say) keeps its headers and, on a 101, is relayed.
        let client = crate::upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        if client.is_some() {
            crate::upgrade::strip_keeping_upgrade(&mut parts.headers);
        } else {
            strip_hop_by_hop(&mut parts.headers);
        }
        parts.uri = format!("http://{dst}{}", path_and_query(&parts.uri))
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProxyError::BadRequest {
                detail: e.to_string(),
            })?;
        let req = Request::from_parts(parts, body);
        let sent = if req.version() == Version::HTTP_2 {
            self.http2.request(req).await
        } else {
            self.http1.request(req).await
        };
        let rsp = sent.map_err(|e| ProxyError::ConnectFailed {
            endpoint: dst.to_string(),
            detail: error_chain(&e),
        })?;
        if let Some(client) = client {
            return Ok(crate::upgrade::answer(
                client,
                rsp,
                "outbound",
                &self.metrics,
            ));
        }
        Ok(crate::http::forwarded(rsp))
    }
}

impl tower::Service<Request<Body>> for Intercepted {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.mesh.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(OrigDst(dst)) = req.extensions().get::<OrigDst>().copied() else {
            return crate::svc::call_boxed(&mut self.mesh, req);
        };
        // The inner service was made ready for this call: take it, leave a clone behind.
        let clone = self.mesh.clone();
        let mut mesh = std::mem::replace(&mut self.mesh, clone);
        let mut endpoint = self.endpoint.clone();
        let shared = self.shared.clone();
        let authority = crate::http::authority(&req);
        let connect = req.method() == http::Method::CONNECT;
        Box::pin(async move {
            if connect || shared.in_mesh(authority.clone()).await {
                return crate::svc::call_boxed(&mut mesh, req).await;
            }
            let known = shared.addresses.lookup(dst.ip()).await;
            match known.as_ref().and_then(|k| k.meshed.as_ref()) {
                Some(workload) => {
                    let mut req = req;
                    workload.route(&mut req, authority, dst)?;
                    use tower::ServiceExt;
                    endpoint.ready().await?.call(req).await
                }
                None => shared.unmeshed(req, dst).await,
            }
        })
    }
}

#[cfg(test)]
mod tests;

/// A meshed workload registered at the IP of an original destination: its one endpoint (the
/// workload's proxy, as it registered, and the identity it must prove) and its service.
#[derive(Debug)]
pub struct Meshed {
    /// The workload's endpoint alone, for [`Picked`].
    endpoints: Arc<ServiceEndpoints>,
    /// `<namespace>/<service>`: the `dst_service` label.
    label: Arc<str>,
    /// The identity: the peer label.
    peer: Arc<str>,
}

impl Meshed {
    /// The meshed workload among what the mesh knows of an address (the first with an
    /// identity: a workload's IP is its own); `None` when there is none.
    fn of(info: &AddressInfo) -> Option<Self> {
        let found = info
            .endpoints
            .iter()
            .find(|e| e.endpoint.identity.is_some())?;
        let identity = found.endpoint.identity.as_ref()?;
        Some(Self {
            peer: Arc::from(identity.as_str()),
            label: Arc::from(format!("{}/{}", found.namespace, found.service)),
            endpoints: Arc::new(ServiceEndpoints {
                namespace: found.namespace.clone(),
                service: found.service.clone(),
                ports: Vec::new(),
                opaque_ports: Vec::new(),
                endpoints: vec![std::sync::Arc::new(found.endpoint.clone())],
                unknown: false,
            }),
        })
    }

    /// The workload's proxy: where it registered, and the identity it proves.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoints.endpoints[0]
    }

    /// The identity the workload's proxy must prove.
    pub fn identity(&self) -> Option<&SpiffeId> {
        self.endpoint().identity.as_ref()
    }

    /// Makes `req`, going to `dst` with `authority`, a request for this workload: its
    /// destination (the service, and an authority that names `dst`'s port, which the peer
    /// proxy takes as the application port), the endpoint, and the labels.
    fn route(
        &self,
        req: &mut Request<Body>,
        authority: Option<Authority>,
        dst: SocketAddr,
    ) -> Result<(), ProxyError> {
        let authority = with_port(authority, dst)?;
        let picked =
            Picked::new(self.endpoints.clone(), 0).ok_or_else(|| ProxyError::BadRequest {
                detail: "no endpoint chosen".into(),
            })?;
        Labels::set_dst(req, || self.label.clone());
        Labels::set_peer(req, || self.peer.clone(), true);
        let ext = req.extensions_mut();
        ext.insert(Destination::of_service(
            &self.endpoints.namespace,
            &self.endpoints.service,
            self.label.clone(),
            authority,
        ));
        ext.insert(picked);
        Ok(())
    }
}

/// The request's authority with the original destination's port: the host the application
/// named (the peer's application sees it as `Host`), or the address itself when it named none.
fn with_port(authority: Option<Authority>, dst: SocketAddr) -> Result<Authority, ProxyError> {
    let text = match authority {
        Some(a) if a.port_u16() == Some(dst.port()) => return Ok(a),
        Some(a) => format!("{}:{}", a.host(), dst.port()),
        None => dst.to_string(),
    };
    text.parse()
        .map_err(|e: http::uri::InvalidUri| ProxyError::BadRequest {
            detail: format!("authority `{text}`: {e}"),
        })
}

/// What the mesh knows of an original destination's IP, as a connection uses it.
#[derive(Debug)]
pub struct AtAddress {
    /// The meshed workload there, if any.
    pub meshed: Option<Meshed>,
    /// The ports declared opaque (`appProtocol: opaque`) by the services of the endpoints
    /// there: their connections skip protocol detection.
    opaque_ports: Vec<u16>,
}

impl AtAddress {
    fn of(info: &AddressInfo) -> Self {
        let mut opaque_ports: Vec<u16> = info
            .endpoints
            .iter()
            .flat_map(|e| e.opaque_ports.iter().copied())
            .collect();
        opaque_ports.sort_unstable();
        opaque_ports.dedup();
        Self {
            meshed: Meshed::of(info),
            opaque_ports,
        }
    }

    /// Whether the services at this address declare `port` opaque.
    pub fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.binary_search(&port).is_ok()
    }
}

/// What the mesh knows of the IP addresses of original destinations: one control-plane watch
/// per address in use, in a discovery cache, and what each currently holds ([`AtAddress`]).
pub struct Addresses {
    resolver: Arc<dyn Resolve>,
    watches: Shared<IpAddr, AddressWatch>,
}

struct AddressWatch {
    rx: watch::Receiver<Option<Arc<AddressInfo>>>,
    /// The last answer and what was made of it, so a connection copies nothing.
    seen: Option<(Arc<AddressInfo>, Arc<AtAddress>)>,
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses").finish_non_exhaustive()
    }
}

impl Addresses {
    /// With the default discovery limits.
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Self::with_limits(resolver, Limits::default())
    }

    /// Following at most `limits.capacity` addresses, each while in use.
    pub fn with_limits(resolver: Arc<dyn Resolve>, limits: Limits) -> Self {
        Self {
            resolver,
            watches: Cache::shared(limits),
        }
    }

    /// What the mesh knows of `ip`, waiting (bounded) for the control plane's first answer
    /// about it; `None` when it did not answer in time.
    pub async fn lookup(&self, ip: IpAddr) -> Option<Arc<AtAddress>> {
        // The watch waited on, which follows the address again if the cache let it go.
        let mut waited: Option<watch::Receiver<Option<Arc<AddressInfo>>>> = None;
        loop {
            let step = lock(&self.watches).with(
                &ip,
                now(),
                || AddressWatch {
                    rx: waited.clone().unwrap_or_else(|| self.resolver.address(ip)),
                    seen: None,
                },
                |w| {
                    let current = w.rx.borrow().clone();
                    let Some(info) = current else {
                        return Err(w.rx.clone());
                    };
                    Ok(match &w.seen {
                        Some((seen, at)) if Arc::ptr_eq(seen, &info) => at.clone(),
                        _ => {
                            let at = Arc::new(AtAddress::of(&info));
                            w.seen = Some((info, at.clone()));
                            at
                        }
                    })
                },
            );
            let mut rx = match step {
                Ok(at) => return Some(at),
                Err(rx) => rx,
            };
            if waited.is_some() {
                return None;
            }
            let answered = matches!(
                tokio::time::timeout(DISCOVERY_TIMEOUT, rx.wait_for(|v| v.is_some())).await,
                Ok(Ok(_))
            );
            if !answered {
                tracing::warn!(%ip, "the control plane did not answer about an original destination in time: sent unmeshed");
                return None;
            }
            waited = Some(rx);
        }
    }
}

impl Followed for AddressWatch {
    fn is_empty(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|a| a.endpoints.is_empty())
    }
}
