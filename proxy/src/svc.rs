//! The types every layer of the request path shares: one request and response type, one boxed
//! error between services, the type-erased service at stack boundaries, and the per-request
//! labels the edge reports metrics with.

use std::sync::{Arc, OnceLock};

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

use crate::body::Body;

pub use crate::body::BoxError;

/// The one service type at the boundary of a stack.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// A boxed future, as application middleware returns it (style.md: concrete types, boxed
/// futures unless a profile shows the box matters).
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A call that fails at once with `e` (the layer refused the request before any await).
pub fn fail<T: Send + 'static>(e: impl Into<BoxError>) -> BoxFuture<Result<T, BoxError>> {
    Box::pin(std::future::ready(Err(e.into())))
}

/// Calls `svc` and boxes its future. Awaiting the box instead of `S::Future` inside an async
/// block avoids rustc's "`Send` is not general enough" on the body's `dyn Error` (the future
/// type is then concrete).
pub fn call_boxed<S>(svc: &mut S, req: Request<Body>) -> BoxFuture<Result<Response<Body>, BoxError>>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    Box::pin(svc.call(req))
}

/// What the edge's metrics are labelled with, learnt by layers further down (the destination
/// service once parsed, the endpoint's identity once chosen). The edge creates it, puts it in
/// the request's extensions and reads it when the response (or error) comes back.
#[derive(Debug, Default)]
pub struct Labels {
    /// `<namespace>/<service>` of the destination.
    pub dst: OnceLock<Arc<str>>,
    /// The peer's identity (`none`: plaintext endpoint, `unauthenticated`: no client
    /// certificate) and whether the hop to it is mTLS.
    pub peer: OnceLock<(Arc<str>, bool)>,
}

impl Labels {
    /// The destination label, `unknown` until a layer learnt it.
    pub fn dst(&self) -> &str {
        match self.dst.get() {
            Some(d) => d,
            None => "unknown",
        }
    }

    /// The peer label and whether the hop is mTLS: (`none`, false) until a layer learnt it.
    pub fn peer(&self) -> (&str, bool) {
        match self.peer.get() {
            Some((p, tls)) => (p, *tls),
            None => ("none", false),
        }
    }

    /// Sets the destination label of the request `req` (no-op when the edge is absent, as in
    /// a layer's unit test).
    pub fn set_dst<B>(req: &Request<B>, dst: impl FnOnce() -> Arc<str>) {
        if let Some(l) = req.extensions().get::<Arc<Labels>>() {
            let _ = l.dst.set(dst());
        }
    }

    /// Sets the peer label of the request `req` and whether the hop is mTLS.
    pub fn set_peer<B>(req: &Request<B>, peer: impl FnOnce() -> Arc<str>, tls: bool) {
        if let Some(l) = req.extensions().get::<Arc<Labels>>() {
            let _ = l.peer.set((peer(), tls));
        }
    }
}

/// Adapts a stack to hyper's server: boxes the incoming body on the way in.
pub fn to_hyper(
    svc: HttpService,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone {
    use tower::ServiceExt;
    hyper_util::service::TowerToHyperService::new(
        svc.map_request(|req: Request<hyper::body::Incoming>| req.map(crate::body::boxed)),
    )
}
