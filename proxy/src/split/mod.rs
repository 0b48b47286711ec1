//! Weighted split: which backend of its route a request goes to (`api-v1` 90 / `api-v2` 10).
//!
//! One random draw per request over the route's cumulative weights; a backend of weight 0 gets
//! nothing (it drains: requests already sent to it finish). The weights are the route's, which
//! the router recompiles on every change, so a new split applies to the next request. The
//! backend travels in the request's extensions ([`Arc<RouteBackend>`]) for the layers below; the
//! balancer picks one of its endpoints.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::Request;
use tower::filter::{Filter, FilterLayer, Predicate};

use crate::error::ProxyError;
use crate::route::{Route, RouteBackend};
use crate::svc::BoxError;

/// Chooses the backend of each request by its route's weights (tower's [`Filter`]: the
/// request goes on with its backend, or fails at once).
pub type Split<S> = Filter<S, ChooseBackend>;

/// Builds [`Split`] services: `SplitLayer::new(ChooseBackend)`.
pub type SplitLayer = FilterLayer<ChooseBackend>;

/// The choice [`Split`] makes: one random draw over the route's cumulative weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChooseBackend;

impl<B> Predicate<Request<B>> for ChooseBackend {
    type Request = Request<B>;

    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, BoxError> {
        let Some(route) = req.extensions().get::<Arc<Route>>() else {
            return Err(ProxyError::BadRequest {
                detail: "no route".into(),
            }
            .into());
        };
        let total = route.backends.total();
        let Some(backend) = route.backends.pick(fastrand::u64(..total.max(1))).cloned() else {
            return Err(ProxyError::NoEndpoints {
                destination: format!(
                    "route {} rule {} (every backend weight is 0)",
                    route.route, route.rule
                ),
            }
            .into());
        };
        req.extensions_mut().insert::<Arc<RouteBackend>>(backend);
        Ok(req)
    }
}
