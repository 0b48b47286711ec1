//! Weighted split: which backend of its route a request goes to (`api-v1` 90 / `api-v2` 10).
//!
//! One random draw per request over the route's cumulative weights; a backend of weight 0 gets
//! nothing (it drains: requests already sent to it finish). The weights are the route's, which
//! the router recompiles on every change, so a new split applies to the next request. The
//! backend travels in the request's extensions ([`Arc<RouteBackend>`]) for the layers below; the
//! balancer picks one of its endpoints.

mod layer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;

pub use self::layer::SplitLayer;
use crate::error::ProxyError;
use crate::route::{Route, RouteBackend};
use crate::svc::{BoxError, BoxFuture};

/// Chooses the backend of each request by its route's weights.
#[derive(Debug, Clone)]
pub struct Split<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Split<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(route) = req.extensions().get::<Arc<Route>>() else {
            return crate::svc::fail(ProxyError::BadRequest {
                detail: "no route".into(),
            });
        };
        let total = route.backends.total();
        let Some(backend) = route.backends.pick(fastrand::u64(..total.max(1))).cloned() else {
            return crate::svc::fail(ProxyError::NoEndpoints {
                destination: format!(
                    "route {} rule {} (every backend weight is 0)",
                    route.route, route.rule
                ),
            });
        };
        req.extensions_mut().insert::<Arc<RouteBackend>>(backend);
        Box::pin(self.inner.call(req))
    }
}
