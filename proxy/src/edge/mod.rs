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
        let labels = match req.extensions().get::<Arc<Labels>>() {
            Some(l) => l.clone(),
            None => {
                let l = Arc::new(Labels::default());
                req.extensions_mut().insert(l.clone());
                l
            }
        };
        if let Some(dst) = &self.dst {
            let _ = labels.dst.set(dst.clone());
        }
        // Refused before any layer reads it: two `Host`s can name two destinations, one for
        // the proxy and another for whatever reads the other (RFC 9112 §3.2: 400); a header
        // block over the mesh's limits is refused where it enters the mesh (431).
        let refused = more_than_one_host(&req).or_else(|| crate::limits::check_request(&req).err());
        let grpc = crate::error::is_grpc(&req);
        let fut = match refused {
            Some(e) => Err(e),
            None => Ok(self.inner.call(req)),
        };
        let answer = Answer {
            start,
            labels,
            direction: self.direction,
            metrics: self.metrics.clone(),
            answered: false,
            grpc,
        };
        Box::pin(respond(fut, answer))
    }
}

/// The error of a request with more than one `Host` field line.
fn more_than_one_host(req: &Request<Body>) -> Option<ProxyError> {
    let hosts = req.headers().get_all(http::header::HOST).iter().count();
    (hosts > 1).then(|| ProxyError::BadRequest {
        detail: format!("the request has {hosts} Host headers; one is allowed"),
    })
}

/// What the edge records of one request once it is answered, or, when the request's future is
/// dropped unanswered (its client went away), as the client's 499 `client_closed`.
struct Answer {
    start: Instant,
    labels: Arc<Labels>,
    direction: &'static str,
    metrics: Arc<ProxyMetrics>,
    answered: bool,
    /// A gRPC request: the proxy's own answers are gRPC-shaped ([`ProxyError::grpc_response`]).
    grpc: bool,
}

impl Answer {
    /// Records the response the client gets (or would have got).
    fn record(&mut self, status: u16) {
        self.record_as(None, status);
    }

    /// Records the response under the destination label `dst` (`None`: the one the layers
    /// below learnt).
    fn record_as(&mut self, dst: Option<&'static str>, status: u16) {
        self.answered = true;
        let (peer, tls) = self.labels.peer();
        let dst = dst.unwrap_or_else(|| self.labels.dst());
        self.metrics.request_answered(
            self.direction,
            (peer, dst, tls),
            status,
            self.start.elapsed().as_secs_f64(),
        );
    }

    /// The response of a request that failed with `e`, recorded; the client's fault, when
    /// the client caused the failure, whatever the layers below made of it.
    fn failed(&mut self, e: ProxyError) -> Response<Body> {
        let e = match self.labels.client_fault() {
            Some(client) if !e.is_client_fault() => client.clone(),
            _ => e,
        };
        self.metrics.error(self.direction, e.code());
        // A denied request has its own log line, from authorization.
        if !matches!(e, ProxyError::Forbidden { .. }) {
            let (direction, dst) = (self.direction, self.labels.dst());
            tracing::info!(direction, dst, reason = e.code(), error = %e, "request failed");
        }
        // A name the mesh does not know is no label value: its requests are counted under
        // `unknown`, so what an application asks for cannot add series. A gRPC answer is
        // counted under the status the error stands for, not its HTTP 200.
        let dst = matches!(e, ProxyError::UnknownDestination { .. }).then_some("unknown");
        self.record_as(dst, e.status().as_u16());
        if self.grpc {
            e.grpc_response()
        } else {
            e.response()
        }
    }

    /// The request's future is being dropped unanswered: its client went away (hyper drops
    /// it when the client's connection closes or its stream is reset). Noted in the labels,
    /// for the layers below, and counted as the client's 499.
    fn client_gone(&mut self) {
        let gone = ProxyError::ClientClosed {
            detail: "the client closed its connection or reset its stream before the response"
                .into(),
        };
        let _ = self.labels.client_fault.set(gone);
        self.metrics.error(self.direction, "client_closed");
        self.record(crate::error::client_closed_status().as_u16());
    }
}

/// Waits for the response (or error) of a request, or takes the error it was refused with
/// before being sent on, and records it.
async fn respond<F>(fut: Result<F, ProxyError>, answer: Answer) -> Result<Response<Body>, BoxError>
where
    F: std::future::Future<Output = Result<Response<Body>, BoxError>>,
{
    let outcome = match fut {
        Ok(fut) => {
            // Pinned here, before the answer: if the client goes away, this future is dropped
            // with its locals in the reverse order of their declaration, so the answer notes
            // whose fault it was before the layers below, in `fut`, are dropped (the circuit
            // breaker's probe looks).
            let fut = std::pin::pin!(fut);
            let mut answer = answer;
            let outcome = fut.await;
            return Ok(answered(outcome, &mut answer));
        }
        Err(refused) => Err(refused.into()),
    };
    let mut answer = answer;
    Ok(answered(outcome, &mut answer))
}

/// The response to the client for `outcome`, recorded.
fn answered(outcome: Result<Response<Body>, BoxError>, answer: &mut Answer) -> Response<Body> {
    let checked = outcome
        .map_err(|e| proxy_error(e.as_ref()))
        .and_then(|rsp| crate::limits::check_response(&rsp).map(|()| rsp));
    match checked {
        Ok(rsp) => {
            answer.record(rsp.status().as_u16());
            rsp
        }
        Err(e) => answer.failed(e),
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.answered {
            self.client_gone();
        }
    }
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

pub use weft_runtime::process::error_chain;
