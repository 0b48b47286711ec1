//! Timeouts from the request's route: the route's request timeout (above the fault and retry
//! layers, so injected delays and every attempt count against it) and the per-try timeout
//! (below retries: one attempt). Either answers 504 (`weft-error: timeout`), counted as a
//! failure; a request whose route sets no timeout passes through untouched.

mod layer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;

pub use self::layer::TimeoutLayer;
use crate::destination::Destination;
use crate::error::ProxyError;
use crate::route::Route;
use crate::svc::{BoxError, BoxFuture};

/// Which of the route's timeouts a [`Timeout`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `timeouts.request`: the whole request.
    Request,
    /// `retry.perTryTimeout` or `timeouts.backendRequest`: one attempt.
    PerTry,
}

/// Bounds each request by its route's timeout.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    scope: Scope,
}

impl<S, B> tower::Service<Request<B>> for Timeout<S>
where
    S: tower::Service<Request<B>, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = req
            .extensions()
            .get::<Arc<Route>>()
            .and_then(|r| match self.scope {
                Scope::Request => r.request_timeout,
                Scope::PerTry => r.per_try_timeout,
            });
        let Some(limit) = limit else {
            return Box::pin(self.inner.call(req));
        };
        // The label is shared, not copied: the message is made only if the timeout fires.
        let destination = req
            .extensions()
            .get::<Destination>()
            .map(|d| d.label().clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(res) => res,
                Err(_) => Err(ProxyError::Timeout {
                    destination: destination.map_or_else(|| "unknown".into(), |d| d.to_string()),
                    after_ms: millis(limit),
                }
                .into()),
            }
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
