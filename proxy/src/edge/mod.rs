//! The edge of a stack: the one place where errors become responses, and where every request
//! is counted.
//!
//! Every error below it (a [`ProxyError`] anywhere in the `source()` chain) becomes the
//! response that error describes, with its `weft-error` header, counted by reason in
//! `weft_proxy_errors_total`. Every request, answered by the peer or by the proxy itself, is
//! counted once when its response headers (or its error) come back: requests, responses by
//! status class and latency, labelled with what the layers below learnt ([`Labels`]).

mod layer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};

pub use self::layer::EdgeLayer;
use crate::body::Body;
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::svc::{BoxError, BoxFuture, Labels};

/// Maps errors to responses and records the request's metrics.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    direction: &'static str,
    dst: Option<Arc<str>>,
    metrics: Arc<ProxyMetrics>,
}

impl<S> tower::Service<Request<Body>> for Edge<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let labels = Arc::new(Labels::default());
        if let Some(dst) = &self.dst {
            let _ = labels.dst.set(dst.clone());
        }
        req.extensions_mut().insert(labels.clone());
        let fut = match more_than_one_host(&req) {
            // Refused before any layer reads it: two `Host`s can name two destinations, one
            // for the proxy and another for whatever reads the other (RFC 9112 §3.2: 400).
            Some(e) => Err(e),
            None => Ok(self.inner.call(req)),
        };
        Box::pin(respond(
            fut,
            start,
            labels,
            self.direction,
            self.metrics.clone(),
        ))
    }
}

/// The error of a request with more than one `Host` field line.
fn more_than_one_host(req: &Request<Body>) -> Option<ProxyError> {
    let hosts = req.headers().get_all(http::header::HOST).iter().count();
    (hosts > 1).then(|| ProxyError::BadRequest {
        detail: format!("the request has {hosts} Host headers; one is allowed"),
    })
}

/// Waits for the response (or error) of a request, or takes the error it was refused with
/// before being sent on, and records it.
async fn respond<F>(
    fut: Result<F, ProxyError>,
    start: Instant,
    labels: Arc<Labels>,
    direction: &'static str,
    metrics: Arc<ProxyMetrics>,
) -> Result<Response<Body>, BoxError>
where
    F: std::future::Future<Output = Result<Response<Body>, BoxError>>,
{
    let outcome = match fut {
        Ok(fut) => fut.await,
        Err(refused) => Err(refused.into()),
    };
    let rsp = match outcome {
        Ok(rsp) => rsp,
        Err(e) => {
            let e = proxy_error(e.as_ref());
            metrics.error(direction, e.code());
            // A denied request has its own log line, from authorization.
            if !matches!(e, ProxyError::Forbidden { .. }) {
                let dst = labels.dst();
                tracing::info!(direction, dst, reason = e.code(), error = %e, "request failed");
            }
            e.response()
        }
    };
    let (peer, tls) = labels.peer();
    metrics.request_answered(
        direction,
        (peer, labels.dst(), tls),
        rsp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    Ok(rsp)
}

/// The [`ProxyError`] an error is or wraps; any other error is an upstream failure.
pub fn proxy_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(p) = c.downcast_ref::<ProxyError>() {
            return p.clone();
        }
        cur = c.source();
    }
    ProxyError::Upstream {
        endpoint: "unknown".into(),
        detail: error_chain(e),
    }
}

/// An error and its sources, as one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
