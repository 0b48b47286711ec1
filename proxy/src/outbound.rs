//! The outbound listener: traffic from the local app to other services.
//!
//! The app uses the proxy as its HTTP proxy (`HTTP_PROXY=http://127.0.0.1:4140`: absolute-form
//! requests), or sends ordinary requests whose `Host` names the service, or speaks HTTP/2 with
//! prior knowledge (gRPC). `CONNECT host:port` opens an opaque TCP tunnel. The destination
//! `<service>[.<namespace>][:<port>]` is resolved through the control plane; an endpoint is
//! picked and reached over mTLS, requiring the SPIFFE identity discovery gave for it (any other
//! identity: connection refused and counted). Connections between proxies are HTTP/2, pooled
//! and multiplexed, whatever the app spoke. An endpoint without a proxy (static, no identity)
//! gets plaintext, labelled `tls="false"`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_policy::registry::{Endpoint, ServiceEndpoints};

use crate::body::{self, Body};
use crate::detect::{self, Protocol};
use crate::error::ProxyError;
use crate::http::{ORIG_PROTO_HEADER, ORIG_PROTO_HTTP1, path_and_query, strip_hop_by_hop};
use crate::inbound::error_chain;
use crate::metrics::{ProxyMetrics, tls_failure_reason};
use crate::tls::{ALPN_OPAQUE, MeshTls};

const DIRECTION: &str = "outbound";
/// How long connecting (TCP + TLS + HTTP/2) to a peer proxy may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the first discovery answer about its destination.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the outbound side learns the endpoints of a service: the control plane client in a
/// real proxy, a fixed table in tests.
pub trait Resolve: Send + Sync + 'static {
    /// The endpoints of `namespace/service`, kept current. The value is `None` until the first
    /// answer arrives.
    fn resolve(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceEndpoints>>>;
}

/// Settings of the outbound side.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Namespace of names given without one (`http://api:8080`).
    pub namespace: String,
    pub detect_timeout: Duration,
}

/// A destination parsed from an authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub namespace: String,
    pub service: String,
    pub port: u16,
}

impl Destination {
    /// `api`, `api.default`, `api.default.svc.cluster.local`, each with an optional port
    /// (default 80).
    pub fn parse(authority: &http::uri::Authority, default_ns: &str) -> Option<Self> {
        let host = authority.host();
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return None;
        }
        let mut labels = host.split('.');
        let service = labels.next().filter(|s| !s.is_empty())?.to_string();
        let namespace = labels
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or(default_ns)
            .to_string();
        Some(Self {
            namespace,
            service,
            port: authority.port_u16().unwrap_or(80),
        })
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.service)
    }
}

/// Pooled HTTP/2 connections to peer proxies, one per (address, identity).
#[derive(Default)]
struct Pool {
    conns: Mutex<HashMap<(SocketAddr, SpiffeId), SendRequest<Body>>>,
}

/// The outbound proxy.
pub struct Outbound {
    cfg: OutboundConfig,
    tls: Arc<MeshTls>,
    resolver: Arc<dyn Resolve>,
    metrics: Arc<ProxyMetrics>,
    pool: Pool,
    plain_http1: Client<HttpConnector, Body>,
    plain_http2: Client<HttpConnector, Body>,
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Arc::new(Self {
            cfg,
            tls,
            resolver,
            metrics,
            pool: Pool::default(),
            plain_http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            plain_http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
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
        remote: std::net::SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let (protocol, io) = match detect::detect(tcp, false, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        let _open = self.metrics.tcp_open(DIRECTION, protocol.as_str());
        if !matches!(protocol, Protocol::Http1 | Protocol::Http2) {
            // Without an original destination (transparent mode) there is nowhere to
            // send opaque bytes: refuse rather than guess.
            self.metrics.error(DIRECTION, "bad_request");
            tracing::info!(client.addr = %remote, "outbound connection is not HTTP; use CONNECT for TCP");
            return;
        }
        let svc = {
            let this = self.clone();
            hyper::service::service_fn(move |req| {
                let this = this.clone();
                async move { Ok::<_, Infallible>(this.request(req).await) }
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            tracing::debug!(client.addr = %remote, error = %e, "outbound connection ended");
        }
    }

    async fn request(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let Some(authority) = crate::http::authority(&req) else {
            let e = ProxyError::BadRequest {
                detail: "the request names no destination (no Host header or absolute URI)".into(),
            };
            self.metrics.error(DIRECTION, e.code());
            return e.response();
        };
        let Some(dst) = Destination::parse(&authority, &self.cfg.namespace) else {
            let e = ProxyError::UnknownDestination {
                destination: authority.to_string(),
            };
            self.metrics.error(DIRECTION, e.code());
            return e.response();
        };
        let label = dst.label();
        // The peer is the identity the endpoint must prove (`none`: plaintext or no endpoint).
        let (peer, result) = match self.pick(&dst).await {
            Err(e) => ("none".to_string(), Err(e)),
            Ok(ep) => {
                let peer = ep
                    .identity
                    .as_ref()
                    .map_or("none".to_string(), |i| i.to_string());
                self.metrics
                    .request(DIRECTION, &peer, &label, ep.identity.is_some());
                let r = if req.method() == Method::CONNECT {
                    self.connect_tunnel(req, &ep, &dst)
                } else {
                    self.forward(req, &ep, &authority).await
                };
                (peer, r)
            }
        };
        let rsp = result.unwrap_or_else(|e| {
            self.metrics.error(DIRECTION, e.code());
            tracing::info!(dst = %label, reason = e.code(), error = %e, "outbound request failed");
            e.response()
        });
        self.metrics.response(
            DIRECTION,
            &peer,
            &label,
            rsp.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
        rsp
    }

    /// Picks an endpoint of `dst`, waiting (bounded) for the first discovery answer.
    async fn pick(&self, dst: &Destination) -> Result<Endpoint, ProxyError> {
        let mut rx = self.resolver.resolve(&dst.namespace, &dst.service);
        let endpoints =
            match tokio::time::timeout(DISCOVERY_TIMEOUT, rx.wait_for(|v| v.is_some())).await {
                Ok(Ok(v)) => v.clone(),
                _ => None,
            };
        let Some(endpoints) = endpoints else {
            return Err(ProxyError::UnknownDestination {
                destination: format!("{}.{}:{}", dst.service, dst.namespace, dst.port),
            });
        };
        if endpoints.endpoints.is_empty() {
            return Err(ProxyError::NoEndpoints {
                destination: format!("{}.{}:{}", dst.service, dst.namespace, dst.port),
            });
        }
        let i = fastrand::usize(..endpoints.endpoints.len());
        Ok(endpoints.endpoints[i].clone())
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        ep: &Endpoint,
        authority: &http::uri::Authority,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let from_http1 = parts.version != Version::HTTP_2;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(ORIG_PROTO_HEADER);
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path_and_query(&parts.uri))
            .build()
            .map_err(|e| ProxyError::BadRequest {
                detail: e.to_string(),
            })?;
        let Some(identity) = &ep.identity else {
            // An endpoint without a proxy: plaintext, in the protocol the app spoke.
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(ep.address.to_string().as_str())
                .path_and_query(path_and_query(&uri))
                .build()
                .map_err(|e| ProxyError::BadRequest {
                    detail: e.to_string(),
                })?;
            if from_http1 {
                if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
            let client = if from_http1 {
                &self.plain_http1
            } else {
                &self.plain_http2
            };
            let rsp = client
                .request(Request::from_parts(parts, body::boxed(body)))
                .await
                .map_err(|e| ProxyError::ConnectFailed {
                    endpoint: ep.address.to_string(),
                    detail: error_chain(&e),
                })?;
            return Ok(finish(rsp));
        };
        parts.uri = uri;
        parts.version = Version::HTTP_2;
        parts.headers.remove(http::header::HOST);
        if from_http1 {
            parts.headers.insert(
                ORIG_PROTO_HEADER,
                http::HeaderValue::from_static(ORIG_PROTO_HTTP1),
            );
        }
        let req = Request::from_parts(parts, body::boxed(body));
        let mut sender = self.peer(ep.address, identity).await?;
        let rsp = match sender.send_request(req).await {
            Ok(rsp) => rsp,
            Err(e) => {
                self.forget(ep.address, identity);
                return Err(ProxyError::Upstream {
                    endpoint: ep.address.to_string(),
                    detail: error_chain(&e),
                });
            }
        };
        let mut rsp = finish(rsp);
        if from_http1 {
            *rsp.version_mut() = Version::HTTP_11;
        }
        Ok(rsp)
    }

    /// A pooled HTTP/2 connection to the peer proxy at `addr` proving `identity`.
    async fn peer(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let key = (addr, identity.clone());
        let pooled = self
            .pool
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|s| !s.is_closed())
            .cloned();
        if let Some(mut s) = pooled
            && s.ready().await.is_ok()
        {
            return Ok(s);
        }
        let tls = self
            .connect_tls(addr, identity, weft_identity::tls::ALPN_H2)
            .await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ProxyError::ConnectFailed {
                endpoint: addr.to_string(),
                detail: error_chain(&e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection to peer proxy ended");
            }
        });
        self.pool
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, sender.clone());
        Ok(sender)
    }

    fn forget(&self, addr: SocketAddr, identity: &SpiffeId) {
        self.pool
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(addr, identity.clone()));
    }

    /// TCP + mTLS to a peer proxy, requiring `identity`.
    async fn connect_tls(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let Some(cfg) = self.tls.client_config(identity, alpn) else {
            return Err(ProxyError::NotReady);
        };
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| ProxyError::ConnectFailed {
                    endpoint: addr.to_string(),
                    detail: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(cfg)
                .connect(weft_identity::tls::server_name(identity), tcp)
                .await
                .map_err(|e| {
                    let reason = tls_failure_reason(&e);
                    self.metrics.tls_failure(DIRECTION, reason);
                    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                    match inner.and_then(weft_identity::tls::identity_mismatch) {
                        Some(m) => {
                            tracing::warn!(endpoint = %addr, expected = %m.expected, found = %m.found, "peer identity mismatch: connection refused");
                            ProxyError::IdentityMismatch {
                                endpoint: addr.to_string(),
                                expected: m.expected.to_string(),
                                found: m.found.clone(),
                            }
                        }
                        None => {
                            tracing::info!(endpoint = %addr, reason, error = %e, "outbound TLS handshake failed");
                            ProxyError::ConnectFailed {
                                endpoint: addr.to_string(),
                                detail: format!("TLS handshake failed: {e}"),
                            }
                        }
                    }
                })
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ProxyError::ConnectFailed {
                endpoint: addr.to_string(),
                detail: format!("no connection within {CONNECT_TIMEOUT:?}"),
            })??;
        self.metrics.tls_handshake(
            DIRECTION,
            identity.as_str(),
            tls.get_ref().1.protocol_version(),
        );
        Ok(tls)
    }

    /// `CONNECT host:port`: answers 200, then relays the upgraded connection to the endpoint
    /// (over an mTLS opaque tunnel to its proxy, or plaintext to an unmeshed endpoint).
    fn connect_tunnel(
        self: &Arc<Self>,
        req: Request<Incoming>,
        ep: &Endpoint,
        dst: &Destination,
    ) -> Result<Response<Body>, ProxyError> {
        let this = self.clone();
        let ep = ep.clone();
        let port = dst.port;
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "CONNECT upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(upgraded);
            match &ep.identity {
                Some(id) => match this.connect_tls(ep.address, id, ALPN_OPAQUE).await {
                    Ok(mut tls) => {
                        if tls.write_all(&port.to_be_bytes()).await.is_ok() {
                            crate::tcp::relay(&mut client, &mut tls, DIRECTION, &this.metrics)
                                .await;
                        }
                    }
                    Err(e) => {
                        this.metrics.error(DIRECTION, e.code());
                        tracing::info!(error = %e, "CONNECT tunnel failed");
                    }
                },
                None => crate::tcp::forward(client, ep.address, DIRECTION, &this.metrics).await,
            }
        });
        let mut rsp = Response::new(body::empty());
        *rsp.status_mut() = StatusCode::OK;
        Ok(rsp)
    }
}

fn finish(rsp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = rsp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::boxed(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_destinations() {
        let d = |s: &str| Destination::parse(&s.parse().unwrap(), "default");
        assert_eq!(
            d("api:8080"),
            Some(Destination {
                namespace: "default".into(),
                service: "api".into(),
                port: 8080
            })
        );
        assert_eq!(d("api.prod").unwrap().namespace, "prod");
        assert_eq!(d("api.prod").unwrap().port, 80);
        assert_eq!(d("api.prod.svc.cluster.local:9000").unwrap().service, "api");
        assert_eq!(d("10.0.0.1:80"), None);
    }
}
