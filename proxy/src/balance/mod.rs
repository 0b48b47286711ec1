//! Endpoint choice: the endpoints of the request's destination, as discovery reports them now,
//! and one of them for this request.
//!
//! Discovery is a watch per destination that the control plane keeps current, so endpoints
//! added or removed apply to the next request, and requests in flight keep the endpoint they
//! have. A request waits (bounded by [`DISCOVERY_TIMEOUT`]) only for the first answer about a
//! destination.

mod layer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tokio::sync::watch;
use weft_policy::registry::{Endpoint, ServiceEndpoints};

pub use self::layer::BalanceLayer;
use crate::destination::Destination;
use crate::error::ProxyError;
use crate::svc::{BoxError, BoxFuture, Labels};

/// How long a request waits for the first discovery answer about its destination.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the outbound side learns the endpoints of a service: the control plane client in a
/// real proxy, a fixed table in tests.
pub trait Resolve: Send + Sync + 'static {
    /// The endpoints of `namespace/service`, kept current. The value is `None` until the first
    /// answer arrives.
    fn resolve(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceEndpoints>>>;
}

/// Picks an endpoint of the request's [`Destination`] and attaches it to the request.
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    resolver: Arc<dyn Resolve>,
}

impl<S> std::fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance").finish_non_exhaustive()
    }
}

impl<S, B> tower::Service<Request<B>> for Balance<S>
where
    S: tower::Service<Request<B>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(dst) = req.extensions().get::<Destination>().cloned() else {
            return Box::pin(std::future::ready(Err(ProxyError::BadRequest {
                detail: "no destination".into(),
            }
            .into())));
        };
        let mut endpoints = self.resolver.resolve(&dst.namespace, &dst.service);
        // The inner service was made ready for this call: take it, leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let picked = pick(&mut endpoints, &dst).await?;
            let ep = picked.endpoint();
            Labels::set_peer(
                &req,
                || {
                    ep.identity
                        .as_ref()
                        .map_or_else(|| Arc::from("none"), |i| Arc::from(i.as_str()))
                },
                ep.identity.is_some(),
            );
            req.extensions_mut().insert(picked);
            inner.call(req).await
        })
    }
}

/// The endpoint chosen for a request (a request extension from this layer on): a share of
/// the discovery snapshot it was chosen from, so choosing copies nothing.
#[derive(Debug, Clone)]
pub struct Picked {
    endpoints: Arc<ServiceEndpoints>,
    index: usize,
}

impl Picked {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoints.endpoints[self.index]
    }
}

/// One endpoint of `dst`, waiting (bounded) for the first discovery answer.
async fn pick(
    rx: &mut watch::Receiver<Option<Arc<ServiceEndpoints>>>,
    dst: &Destination,
) -> Result<Picked, ProxyError> {
    let current = rx.borrow().clone();
    let endpoints = match current {
        Some(e) => Some(e),
        None => match tokio::time::timeout(DISCOVERY_TIMEOUT, rx.wait_for(|v| v.is_some())).await {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        },
    };
    let Some(endpoints) = endpoints else {
        return Err(ProxyError::UnknownDestination {
            destination: dst.display(),
        });
    };
    if endpoints.endpoints.is_empty() {
        return Err(ProxyError::NoEndpoints {
            destination: dst.display(),
        });
    }
    let index = fastrand::usize(..endpoints.endpoints.len());
    Ok(Picked { endpoints, index })
}
