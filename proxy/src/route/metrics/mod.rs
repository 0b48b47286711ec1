//! Golden signals per route rule and backend: requests, responses by status class and
//! latency, once per request after retries, whatever answered (the backend, a timeout, an
//! injected fault, the circuit breaker). Labelled by route and rule *names*, never by path.

mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;

pub use self::layer::RouteMetricsLayer;
use super::{Route, RouteBackend};
use crate::body::Body;
use crate::destination::Destination;
use crate::edge::proxy_error;
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::svc::{BoxError, BoxFuture};

/// Records each request on its route and backend.
#[derive(Debug, Clone)]
pub struct RouteMetrics<S> {
    inner: S,
    metrics: Arc<ProxyMetrics>,
}

impl<S, B> tower::Service<Request<B>> for RouteMetrics<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let ext = req.extensions();
        let (Some(dst), Some(route), Some(backend)) = (
            ext.get::<Destination>().map(|d| d.label().clone()),
            ext.get::<Arc<Route>>().cloned(),
            ext.get::<Arc<RouteBackend>>().cloned(),
        ) else {
            return Box::pin(self.inner.call(req));
        };
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let status = match &res {
                Ok(rsp) => rsp.status().as_u16(),
                Err(e) => match proxy_error(e.as_ref()) {
                    // A name the mesh does not know has no route to count under: the edge
                    // counts it, under `dst_service="unknown"`.
                    ProxyError::UnknownDestination { .. } => return res,
                    e => e.status().as_u16(),
                },
            };
            metrics.route_response(
                route.labels(&dst, backend.label()),
                status,
                start.elapsed().as_secs_f64(),
            );
            res
        })
    }
}
