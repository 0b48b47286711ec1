//! The types every layer of the request path shares: one request and response type, one boxed
//! error between services, the type-erased service at stack boundaries, and the per-request
//! labels the edge reports metrics with.
//!
//! # Request extensions
//!
//! What a layer learns about a request travels to the layers below it in the request's
//! extensions, one value per type, each type defined by the module that inserts it ([`Labels`],
//! which many layers fill in, is here). These are all of them, in about the order a request
//! meets them. A layer that finds a value missing goes on without it unless the table says it
//! fails; [`ProxyError::BadRequest`](crate::error::ProxyError::BadRequest) is a 400
//! `bad_request` at the edge.
//!
//! | type | inserted by | read by | if it is missing |
//! |---|---|---|---|
//! | [`Arc<Labels>`](Labels) | [`to_hyper`], as the request arrives (with the body that notes a client's fault in them); else [`Edge`](crate::edge::Edge), both directions, first | [`Labels::set_dst`] and [`Labels::set_peer`]: [`FindDestination`](crate::destination::FindDestination), [`Identity`](crate::identity::Identity), [`Balance`](crate::balance::Balance), [`Intercepted`](crate::unmeshed::Intercepted); [`Labels::client_fault`]: [`Edge`](crate::edge::Edge), [`Balance`](crate::balance::Balance), [`Connect`](crate::endpoint::Connect), [`Forward`](crate::app::Forward) | nothing is labelled (a layer's unit test); the edge keeps its own handle |
//! | [`OrigDst`](crate::orig_dst::OrigDst) | the outbound listener ([`Outbound`](crate::outbound::Outbound)) and [`InboundStack::for_connection`](crate::stack::InboundStack::for_connection), on connections `weft init` redirected | [`Intercepted`](crate::unmeshed::Intercepted) (outbound), [`Authorize`](crate::authz::Authorize) (inbound) | outbound: the request takes the mesh; inbound: authorization takes the port of the authority, else the default application port |
//! | [`AppIp`](crate::app::AppIp) | [`InboundStack::for_connection`](crate::stack::InboundStack::for_connection), per connection ([`Interception::app_ip`](crate::orig_dst::Interception::app_ip)) | [`Forward`](crate::app::Forward) | the address `Forward` was made with (loopback) |
//! | [`ClientIdentity`](crate::identity::ClientIdentity) | [`Identity`](crate::identity::Identity) (inbound) | [`Authorize`](crate::authz::Authorize) | the peer counts as unauthenticated |
//! | [`AppPort`](crate::authz::AppPort) | [`Authorize`](crate::authz::Authorize) | [`Forward`](crate::app::Forward) | the default application port |
//! | [`Destination`](crate::destination::Destination) | [`FindDestination`](crate::destination::FindDestination); [`Intercepted`](crate::unmeshed::Intercepted) for a meshed workload at an original destination's address | [`Router`](crate::route::Router), [`RouteMetrics`](crate::route::metrics::RouteMetrics), [`Timeout`](crate::timeout::Timeout), [`InjectFaults`](crate::fault::InjectFaults) and [`RetryFailures`](crate::retry::RetryFailures) (metric labels, [`target_labels`](crate::route::target_labels)), [`Balance`](crate::balance::Balance), [`Connect`](crate::endpoint::Connect) | router: `BadRequest` "no destination"; balance, with no backend either: the same; connect: `BadRequest` "no endpoint chosen"; route metrics: not recorded; timeout: its message names `unknown`; fault and retry metrics: labelled `unknown` |
//! | [`Arc<Route>`](crate::route::Route) | [`Router`](crate::route::Router) | [`Split`](crate::split::Split), [`RouteMetrics`](crate::route::metrics::RouteMetrics), both [`Timeout`](crate::timeout::Timeout)s, [`InjectFaults`](crate::fault::InjectFaults), [`RetryFailures`](crate::retry::RetryFailures), [`Balance`](crate::balance::Balance) (its circuit breaker) | split: `BadRequest` "no route"; route metrics: not recorded; no timeout, no fault, one attempt (no budget deposit), no circuit breaker |
//! | [`Arc<RouteBackend>`](crate::route::RouteBackend) | [`Split`](crate::split::Split) | [`Balance`](crate::balance::Balance), [`RouteMetrics`](crate::route::metrics::RouteMetrics), [`InjectFaults`](crate::fault::InjectFaults) and [`RetryFailures`](crate::retry::RetryFailures) (metric labels) | balance: the destination's own service; route metrics: not recorded; fault and retry metrics: labelled `unknown` |
//! | [`Tried`](crate::retry::Tried) | [`RetryFailures`](crate::retry::RetryFailures), once per request it may retry (a route with retries and a replayable body), shared by every attempt | [`Balance`](crate::balance::Balance), which also records each endpoint it picks in it | the endpoint is picked without avoiding the ones tried before |
//! | [`Picked`](crate::balance::Picked) | [`Balance`](crate::balance::Balance); [`Intercepted`](crate::unmeshed::Intercepted) for a meshed workload at an original destination's address | [`Connect`](crate::endpoint::Connect) | `BadRequest` "no endpoint chosen" |
//!
//! Each attempt of a retried request gets a copy of the extensions as the retry layer received
//! them (values are shared, not copied: `Arc`s, and `Tried`'s one list). hyper puts one value of
//! its own there, the connection's pending upgrade, which [`Connect`](crate::endpoint::Connect)
//! takes for `CONNECT` tunnels (`hyper::upgrade::on`; without it the tunnel is not opened and
//! the failure is logged at debug).

use std::sync::{Arc, OnceLock};

use http::{Request, Response};
use tower::util::BoxCloneSyncService;

use crate::body::Body;

pub use crate::body::BoxError;

/// The one service type at the boundary of a stack.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// A boxed future, as application middleware returns it: the layers are written against
/// concrete types (`Request<Body>`) and box their futures rather than name them, unless a
/// profile shows that a box matters.
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
    /// Set when the client caused the request to fail: its body could not be read
    /// ([`ClientBody`](crate::body::ClientBody)), or it went away before the answer
    /// ([`Edge`](crate::edge::Edge)). Whatever the layers below made of the failure, it is
    /// this error, and no endpoint is blamed for it.
    pub client_fault: OnceLock<crate::error::ProxyError>,
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

    /// The client's fault, if the client caused the request to fail.
    pub fn client_fault(&self) -> Option<&crate::error::ProxyError> {
        self.client_fault.get()
    }

    /// The client's fault noted in `labels`, if any, else `otherwise()`: what a failure to
    /// send a request on is, when the client's body may have caused it.
    pub fn fault_or(
        labels: Option<&Arc<Labels>>,
        otherwise: impl FnOnce() -> crate::error::ProxyError,
    ) -> crate::error::ProxyError {
        match labels.and_then(|l| l.client_fault()) {
            Some(client) => client.clone(),
            None => otherwise(),
        }
    }

    /// The client's fault noted on the request `req`, if any.
    pub fn client_fault_of<B>(req: &Request<B>) -> Option<crate::error::ProxyError> {
        req.extensions()
            .get::<Arc<Labels>>()
            .and_then(|l| l.client_fault().cloned())
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

/// Adapts a stack to hyper's server: makes the request's [`Labels`] and boxes the incoming
/// body on the way in, as a [`ClientBody`](crate::body::ClientBody) that notes in them a
/// failure to read it; on the way out, declares the response's trailer fields for an HTTP/1.1
/// client that takes them ([`crate::trailers`]).
pub fn to_hyper(svc: HttpService, trailers_wait: std::time::Duration) -> HyperService {
    hyper_util::service::TowerToHyperService::new(FromHyper(svc, trailers_wait))
}

/// A stack as hyper's server calls it ([`to_hyper`]).
pub type HyperService = hyper_util::service::TowerToHyperService<FromHyper>;

/// The stack as [`to_hyper`] serves it, and how long an HTTP/1.1 client's response is read
/// ahead for its trailers.
#[derive(Clone, Debug)]
pub struct FromHyper(HttpService, std::time::Duration);

impl tower::Service<Request<hyper::body::Incoming>> for FromHyper {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let client = crate::trailers::Client::of(&req);
        let labels = Arc::new(Labels::default());
        let (mut parts, body) = req.into_parts();
        let body = crate::body::boxed(crate::body::ClientBody::new(body, labels.clone()));
        parts.extensions.insert(labels);
        let fut = tower::Service::call(&mut self.0, Request::from_parts(parts, body));
        if !client.takes_trailers() {
            return fut;
        }
        let wait = self.1;
        Box::pin(async move { Ok(client.declare(fut.await?, wait).await) })
    }
}
