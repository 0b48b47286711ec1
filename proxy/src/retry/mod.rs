//! Retries: a failed attempt is tried again, within the route's limits.
//!
//! What is retried:
//! - a connection that could not be made, for every method: the request never reached the
//!   backend (an endpoint proving the wrong identity is not retried: that is no accident);
//! - for idempotent methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) only: the
//!   route's status `codes` and status conditions (`5xx`, `gateway-error`), a reset
//!   connection (`reset`) and an attempt that ran out of its per-try timeout
//!   (`per-try-timeout`);
//! - gRPC calls (`content-type: application/grpc`) answered `UNAVAILABLE` (grpc-status 14),
//!   which counts as a 503.
//!
//! A route that configures retries with no `codes` or `conditions` gets the default
//! conditions: `5xx` (so gRPC `UNAVAILABLE` too) and `connect-failure`. A route that
//! configures no retries retries connect failures once.
//!
//! Each retry is taken from the route's [`Budget`](crate::route::Budget) (at most `ratio` of the requests plus a
//! small reserve, over a sliding window): when it is spent the failure goes back as it is and
//! is counted as `skipped_budget`. A request body is buffered so it can be sent again when its
//! length is known and at most [`MAX_REPLAY_BYTES`]; a longer body or a stream of unknown
//! length is sent once, never buffered (counted as `skipped_body` if it then fails in a
//! retryable way).

mod layer;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

pub use self::layer::RetryFailuresLayer;
use crate::body::{self, Body};
use crate::edge::proxy_error;
use crate::error::ProxyError;
use crate::metrics::{ProxyMetrics, RetryOutcome};
use crate::route::{RetryPolicy, Route, target_labels};
use crate::svc::{BoxError, BoxFuture, call_boxed};

/// The largest request body buffered for replay.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// Whether this outcome of an attempt of a request of `kind` may be retried under `policy`.
fn retryable(policy: &RetryPolicy, kind: Kind, res: &Result<Response<Body>, BoxError>) -> bool {
    match res {
        Ok(rsp) => match kind {
            Kind::Grpc => grpc_unavailable(rsp.headers()) && policy.retries_status(503),
            Kind::Idempotent => policy.retries_status(rsp.status().as_u16()),
            Kind::Other => false,
        },
        Err(e) => match proxy_error(e.as_ref()) {
            // Not an identity mismatch: that is no accident that a retry could mend.
            ProxyError::ConnectFailed { .. } => policy.connect_failure,
            ProxyError::Upstream { .. } => policy.reset && kind == Kind::Idempotent,
            ProxyError::Timeout { .. } => policy.per_try_timeout && kind == Kind::Idempotent,
            _ => false,
        },
    }
}

/// What a request's method and protocol allow to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Idempotent,
    Grpc,
    Other,
}

fn kind<B>(req: &Request<B>) -> Kind {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Kind::Grpc;
    }
    match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::OPTIONS
        | Method::TRACE
        | Method::PUT
        | Method::DELETE => Kind::Idempotent,
        _ => Kind::Other,
    }
}

/// A trailers-only gRPC response with status 14 (`UNAVAILABLE`).
fn grpc_unavailable(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|v| v == "14")
}

/// Retries each request by its route's policy.
#[derive(Debug, Clone)]
pub struct RetryFailures<S> {
    inner: S,
    metrics: Arc<ProxyMetrics>,
}

impl<S> tower::Service<Request<Body>> for RetryFailures<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
            return Box::pin(self.inner.call(req));
        };
        route.retry.budget().deposit();
        if route.retry.attempts == 0 {
            return Box::pin(self.inner.call(req));
        }
        // Ready for this call: take it, leave a clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        retry(inner, req, route, self.metrics.clone())
    }
}

/// A request body kept to be sent again.
struct Replay {
    data: Bytes,
    /// Boxed: rare, and a `HeaderMap` inline would grow every request's future.
    trailers: Option<Box<HeaderMap>>,
}

impl Replay {
    fn body(&self) -> Body {
        match &self.trailers {
            None => body::full(self.data.clone()),
            Some(t) => {
                let t = HeaderMap::clone(t);
                body::boxed(
                    Full::new(self.data.clone())
                        .map_err(|e| match e {})
                        .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(t)) }),
                )
            }
        }
    }
}

/// The endpoints the attempts of one request went to (a request extension the retry layer
/// shares between its attempts; the balancer reads it and records each endpoint it picks): a
/// retry goes to another endpoint while there is one, as Envoy's `previous_hosts` retry
/// predicate does, so a dead endpoint that fails fast (and so looks cheap) does not take the
/// retry of the request it just failed.
///
/// The first attempt of every request records its endpoint here, so recording and checking
/// allocate nothing until a request has tried more than `Tried::INLINE` (two) endpoints.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<TriedAddrs>>);

#[derive(Debug, Default)]
struct TriedAddrs {
    inline: [Option<SocketAddr>; Tried::INLINE],
    more: Vec<SocketAddr>,
}

impl Tried {
    const INLINE: usize = 2;

    /// Records that an attempt went to `addr`.
    pub(crate) fn record(&self, addr: SocketAddr) {
        let mut t = lock(&self.0);
        match t.inline.iter_mut().find(|a| a.is_none()) {
            Some(slot) => *slot = Some(addr),
            None => t.more.push(addr),
        }
    }

    /// The endpoints tried so far (`None` when none was).
    pub(crate) fn get(&self) -> Option<Vec<SocketAddr>> {
        let t = lock(&self.0);
        t.inline[0]?;
        Some(t.inline.iter().flatten().chain(&t.more).copied().collect())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a body is buffered for replay: its length is known and small, and the client
/// does not wait for `100 Continue` before sending it.
fn replayable(body: &Body, headers: &HeaderMap) -> bool {
    body.is_end_stream()
        || (body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_REPLAY_BYTES)
            && !headers.contains_key(http::header::EXPECT))
}

/// Sends `req` by its route's retry policy. The request is split up front, without an
/// await, into the future that suits it: a body without content (most requests) needs no
/// reading, so its future holds no body collection and no copy of the request beside the
/// template its attempts are made from (one future of 1.7 KB per request was allocated
/// past the allocator's fast sizes; DHAT, callgrind).
fn retry<S>(
    mut inner: S,
    req: Request<Body>,
    route: Arc<Route>,
    metrics: Arc<ProxyMetrics>,
) -> BoxFuture<Result<Response<Body>, BoxError>>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let kind = kind(&req);
    if !replayable(req.body(), req.headers()) {
        let (dst, backend) = target_labels(req.extensions());
        let fut = call_boxed(&mut inner, req);
        return Box::pin(async move {
            let res = fut.await;
            if retryable(&route.retry, kind, &res) {
                metrics.retry(route.labels(&dst, &backend), RetryOutcome::SkippedBody);
            }
            res
        });
    }
    let (parts, body) = req.into_parts();
    let template = Request::from_parts(parts, ());
    if body.is_end_stream() {
        let replay = Replay {
            data: Bytes::new(),
            trailers: None,
        };
        return Box::pin(attempts(inner, template, replay, route, metrics, kind));
    }
    Box::pin(async move {
        // The client's body failed (noted in its labels as what it was): malformed, or cut
        // short by a client that went away.
        let collected = body.collect().await.map_err(|e| {
            crate::svc::Labels::client_fault_of(&template).unwrap_or_else(|| {
                ProxyError::BadRequestBody {
                    detail: crate::edge::error_chain(e.as_ref()),
                }
            })
        })?;
        let trailers = collected.trailers().cloned().map(Box::new);
        let replay = Replay {
            data: collected.to_bytes(),
            trailers,
        };
        Box::pin(attempts(inner, template, replay, route, metrics, kind)).await
    })
}

/// The attempts of a request made from `template` and `replay`, within the route's policy.
async fn attempts<S>(
    mut inner: S,
    mut template: Request<()>,
    replay: Replay,
    route: Arc<Route>,
    metrics: Arc<ProxyMetrics>,
    kind: Kind,
) -> Result<Response<Body>, BoxError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    let policy = &route.retry;
    let (dst, backend) = target_labels(template.extensions());
    let record = |outcome| metrics.retry(route.labels(&dst, &backend), outcome);
    // Shared by every attempt: the balancer sends a retry to another endpoint.
    template.extensions_mut().insert(Tried::default());
    let attempt = || {
        let mut r = Request::new(replay.body());
        *r.method_mut() = template.method().clone();
        *r.uri_mut() = template.uri().clone();
        *r.version_mut() = template.version();
        *r.headers_mut() = template.headers().clone();
        *r.extensions_mut() = template.extensions().clone();
        r
    };
    let mut res = call_boxed(&mut inner, attempt()).await;
    let mut retries = 0;
    while retries < policy.attempts && retryable(policy, kind, &res) {
        if !policy.budget().withdraw() {
            record(RetryOutcome::SkippedBudget);
            return res;
        }
        record(RetryOutcome::Taken);
        retries += 1;
        drop(res);
        res = match inner.ready().await {
            Ok(svc) => call_boxed(svc, attempt()).await,
            Err(e) => Err(e),
        };
    }
    res
}
