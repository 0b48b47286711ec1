//! Fault injection from the request's route: a fixed delay for a percentage of requests, and
//! an abort with a given status for a percentage, each drawn independently (a request can be
//! delayed, then aborted). Both are counted (`weft_route_faults_total`) and marked in the
//! response (`weft-fault: delay` / `abort`) so they are never mistaken for real failures.
//!
//! The layer sits above retries and below the route's request timeout: the application sees
//! an injected abort as it is (it is not retried away), and an injected delay counts against
//! the request timeout. Retries stay on for the real failures of a faulted route.

mod layer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};

pub use self::layer::InjectFaultsLayer;
use crate::body::{self, Body};
use crate::metrics::ProxyMetrics;
use crate::route::{Route, target_labels};
use crate::svc::{BoxError, BoxFuture};

/// The response header marking an injected fault.
pub const FAULT_HEADER: &str = "weft-fault";

/// Injects the faults of each request's route.
#[derive(Debug, Clone)]
pub struct InjectFaults<S> {
    inner: S,
    metrics: Arc<ProxyMetrics>,
}

/// Whether `percentage` % of requests includes this one.
fn drawn(percentage: f64) -> bool {
    percentage > 0.0 && fastrand::f64() * 100.0 < percentage
}

impl<S> tower::Service<Request<Body>> for InjectFaults<S>
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
        let Some(route) = req
            .extensions()
            .get::<Arc<Route>>()
            .filter(|r| r.fault.is_some())
            .cloned()
        else {
            return Box::pin(self.inner.call(req));
        };
        let Some(fault) = &route.fault else {
            return Box::pin(self.inner.call(req));
        };
        let delay = fault
            .delay
            .as_ref()
            .filter(|d| drawn(d.percentage))
            .map(|d| d.fixed_delay.0);
        let abort = fault
            .abort
            .as_ref()
            .filter(|a| drawn(a.percentage))
            .map(|a| a.http_status);
        if delay.is_none() && abort.is_none() {
            return Box::pin(self.inner.call(req));
        }
        let (dst, backend) = target_labels(req.extensions());
        // Ready for this call: take it, leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            if let Some(d) = delay {
                metrics.fault(route.labels(&dst, &backend), "delay");
                tokio::time::sleep(d).await;
            }
            let mut rsp = match abort {
                Some(status) => {
                    metrics.fault(route.labels(&dst, &backend), "abort");
                    aborted(status, &route)
                }
                None => crate::svc::call_boxed(&mut inner, req).await?,
            };
            if delay.is_some() {
                rsp.headers_mut()
                    .append(FAULT_HEADER, HeaderValue::from_static("delay"));
            }
            Ok(rsp)
        })
    }
}

/// The response of an injected abort.
fn aborted(status: u16, route: &Route) -> Response<Body> {
    let mut rsp = Response::new(body::full(Bytes::from(format!(
        "weft: fault injected by route {} rule {}: abort with {status}\n",
        route.route, route.rule
    ))));
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    rsp.headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static("abort"));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
