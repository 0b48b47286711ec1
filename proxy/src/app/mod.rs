//! The last service of the inbound path: the local application on `127.0.0.1:<port>`.
//!
//! A request that came from an HTTP/1 application (marked by the client proxy) goes to the
//! application as HTTP/1 again, with the authority the client used as its `Host`; an HTTP/2
//! request stays HTTP/2 (h2c prior knowledge), trailers included.

mod h2c;
mod pool;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri, Version};

use self::pool::Http1Pool;

use crate::authz::AppPort;
use crate::body::{self, Body};
use crate::edge::error_chain;
use crate::error::ProxyError;
use crate::http::{
    ORIG_PROTO, ORIG_PROTO_HTTP1, PlainClient, origin_form, path_and_query, strip_hop_by_hop,
};
use crate::metrics::ProxyMetrics;
use crate::svc::{BoxError, BoxFuture, Labels};

/// The address of the application a request goes to, when it is not the one [`Forward`] was
/// made with ([`Interception::app_ip`](crate::orig_dst::Interception::app_ip)): a request
/// extension, per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppIp(pub IpAddr);

/// How long connecting to the application may take.
pub const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards requests to the application.
#[derive(Clone)]
pub struct Forward {
    inner: Arc<Inner>,
}

struct Inner {
    ip: IpAddr,
    default_port: u16,
    /// HTTP/1 requests (most): kept-alive connections of our own ([`pool`]).
    http1: Arc<Http1Pool>,
    /// HTTP/2 requests (h2c prior knowledge).
    client: PlainClient,
    /// Upgraded connections' bytes are counted here.
    metrics: Arc<ProxyMetrics>,
    /// Whether the application speaks HTTP/2, asked after HTTP/2 requests to it failed.
    probes: h2c::Probes,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("ip", &self.inner.ip)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// The application at `ip`; requests without an [`AppPort`] go to `default_port`.
    pub fn new(ip: IpAddr, default_port: u16, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                ip,
                default_port,
                http1: Http1Pool::new(APP_CONNECT_TIMEOUT),
                client: PlainClient::new(APP_CONNECT_TIMEOUT),
                metrics,
                probes: h2c::Probes::default(),
            }),
        }
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.forward(req).await?) })
    }
}

impl Inner {
    async fn forward(&self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let port = req
            .extensions()
            .get::<AppPort>()
            .map_or(self.default_port, |p| p.0);
        let ip = req.extensions().get::<AppIp>().map_or(self.ip, |a| a.0);
        let addr = SocketAddr::new(ip, port);
        let labels = req.extensions().get::<Arc<Labels>>().cloned();
        if crate::upgrade::is_upgrade(&req) {
            return self.upgrade(req, addr, labels.as_ref()).await;
        }
        if crate::expect::expects_continue(&req) {
            return self.expect_continue(req, addr, labels.as_ref()).await;
        }
        let (mut parts, body) = req.into_parts();
        let from_http1 = parts
            .headers
            .remove(&ORIG_PROTO)
            .is_some_and(|v| v == ORIG_PROTO_HTTP1);
        let http2 = parts.version == Version::HTTP_2 && !from_http1;
        strip_hop_by_hop(&mut parts.headers);
        // A failure while the client's body was being sent may be the client's (its body was
        // malformed or cut short, or the peer's stream reset): then it is that.
        let unavailable = |detail: String| {
            Labels::fault_or(labels.as_ref(), || ProxyError::AppUnavailable {
                app: addr.to_string(),
                detail: unreachable_detail(addr, detail),
            })
        };
        let rsp = if http2 {
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(addr.to_string().as_str())
                .path_and_query(path_and_query(&parts.uri))
                .build()
                .map_err(|e| ProxyError::BadRequest {
                    detail: e.to_string(),
                })?;
            parts.version = Version::HTTP_2;
            let sent = self
                .client
                .request(Request::from_parts(parts, body))
                .await
                .map(|rsp| rsp.map(body::boxed));
            match sent {
                Ok(rsp) => rsp,
                // Not reached, or the client's own failure: nothing to ask the application.
                Err(e)
                    if e.is_connect()
                        || labels.as_ref().is_some_and(|l| l.client_fault().is_some()) =>
                {
                    return Err(unavailable(error_chain(&e)));
                }
                Err(e) => {
                    return Err(match self.probes.speaks_http2(addr).await {
                        Err(detail) => ProxyError::ProtocolMismatch {
                            app: addr.to_string(),
                            detail,
                        },
                        Ok(()) => unavailable(error_chain(&e)),
                    });
                }
            }
        } else {
            parts.version = Version::HTTP_11;
            for_http1_app(&mut parts, addr);
            self.http1
                .request(addr, Request::from_parts(parts, body))
                .await
                .map_err(|e| unavailable(error_chain(e.as_ref())))?
        };
        let (mut parts, body) = rsp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

impl Inner {
    /// An upgrade request (WebSocket, say) on a connection of its own to the application
    /// ([`Self::alone`]), relayed once the application switches protocols
    /// ([`crate::upgrade`]).
    async fn upgrade(
        &self,
        mut req: Request<Body>,
        addr: SocketAddr,
        labels: Option<&Arc<Labels>>,
    ) -> Result<Response<Body>, ProxyError> {
        let client = hyper::upgrade::on(&mut req);
        crate::upgrade::strip_keeping_upgrade(req.headers_mut());
        let rsp = self.alone(req, addr, labels).await?;
        Ok(crate::upgrade::answer(
            client,
            rsp,
            "inbound",
            &self.metrics,
        ))
    }

    /// A request whose client waits for `100 Continue`: on a connection of its own to the
    /// application ([`Self::alone`]), where its `100` is heard; the body held back until then
    /// ([`crate::expect`]), so the `100` the client gets is the application's.
    async fn expect_continue(
        &self,
        mut req: Request<Body>,
        addr: SocketAddr,
        labels: Option<&Arc<Labels>>,
    ) -> Result<Response<Body>, ProxyError> {
        strip_hop_by_hop(req.headers_mut());
        let gate = crate::expect::Gate::hold(&mut req);
        let rsp = self.alone(req, addr, labels).await?;
        Ok(gate.answered(crate::http::forwarded(rsp)))
    }

    /// Sends `req` to the application on a new HTTP/1.1 connection of its own.
    async fn alone(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
        labels: Option<&Arc<Labels>>,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(&ORIG_PROTO);
        for_http1_app(&mut parts, addr);
        let unavailable = |detail: String| {
            Labels::fault_or(labels, || ProxyError::AppUnavailable {
                app: addr.to_string(),
                detail: unreachable_detail(addr, detail),
            })
        };
        let tcp = crate::tcp::connect(addr).await.map_err(unavailable)?;
        crate::upgrade::send(tcp, Request::from_parts(parts, body))
            .await
            .map_err(|e| unavailable(error_chain(&e)))
    }
}

/// `detail` of a failure to reach the application at `addr`, with a hint when the application
/// is reached on an address other than loopback (under interception) and refused the
/// connection: it most likely listens on 127.0.0.1 only.
pub fn unreachable_detail(addr: SocketAddr, detail: String) -> String {
    if addr.ip().is_loopback() || !detail.contains("Connection refused") {
        return detail;
    }
    format!(
        "{detail} (under interception the application is reached at the address its client dialled: does it listen there, or on every address, rather than on 127.0.0.1 only? See docs/init.md)"
    )
}

/// A request's head as an HTTP/1 application at `addr` gets it: origin-form (no copy of the
/// path), with the authority the client used as its `Host`, else the `Host` it sent, else the
/// application's address.
fn for_http1_app(parts: &mut http::request::Parts, addr: SocketAddr) {
    let host = match parts.uri.authority() {
        Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
        None if !parts.headers.contains_key(http::header::HOST) => {
            http::HeaderValue::from_str(&addr.to_string()).ok()
        }
        None => None,
    };
    if let Some(v) = host {
        parts.headers.insert(http::header::HOST, v);
    }
    parts.uri = origin_form(&parts.uri);
}
