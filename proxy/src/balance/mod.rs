//! Endpoint choice: the endpoints of the request's destination, as discovery reports them now,
//! and the least loaded of two picked at random (power of two choices over peak-EWMA latency
//! times requests in flight, [`ewma`]).
//!
//! Discovery is a watch per destination that the control plane keeps current, so endpoints
//! added or removed apply to the next request, and requests in flight keep the endpoint they
//! have; an endpoint that stays keeps its load. A request waits (bounded by
//! [`DISCOVERY_TIMEOUT`]) only for the first answer about a destination.

pub mod ewma;
mod layer;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use tokio::sync::watch;
use weft_policy::registry::{Endpoint, ServiceEndpoints};

use self::ewma::Load;
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
    /// answer arrives. Called once per destination: the balancer keeps the watch.
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
    /// Every destination's endpoints and their loads, shared by all clones.
    dsts: Arc<Mutex<HashMap<Arc<str>, Dst>>>,
}

/// What the balancer knows of one destination.
struct Dst {
    rx: watch::Receiver<Option<Arc<ServiceEndpoints>>>,
    /// The snapshot the loads belong to (`None` before the first answer).
    snapshot: Option<Arc<ServiceEndpoints>>,
    /// One per endpoint of the snapshot, in its order.
    loads: Vec<Arc<Load>>,
}

impl Dst {
    /// Follows discovery: a new snapshot keeps the load of every endpoint still in it.
    fn refresh(&mut self, now: Instant) {
        if !self.rx.has_changed().unwrap_or(false) && self.snapshot.is_some() {
            return;
        }
        let Some(next) = self.rx.borrow_and_update().clone() else {
            return;
        };
        let old: HashMap<SocketAddr, Arc<Load>> = match &self.snapshot {
            Some(s) => s
                .endpoints
                .iter()
                .map(|e| e.address)
                .zip(self.loads.drain(..))
                .collect(),
            None => HashMap::new(),
        };
        // A new endpoint starts at the mean estimate of the ones that stay measured.
        let mean = (!old.is_empty())
            .then(|| old.values().map(|l| l.estimate(now)).sum::<f64>() / old.len() as f64);
        self.loads = next
            .endpoints
            .iter()
            .map(|e| match old.get(&e.address) {
                Some(l) => l.clone(),
                None => Arc::new(match mean {
                    Some(m) => Load::with_estimate(m, now),
                    None => Load::new(now),
                }),
            })
            .collect();
        self.snapshot = Some(next);
    }
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
            return crate::svc::fail(ProxyError::BadRequest {
                detail: "no destination".into(),
            });
        };
        // The inner service was made ready for this call: take it, leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let dsts = self.dsts.clone();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let (picked, load) = pick(&dsts, &*resolver, &dst).await?;
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
            let _in_flight = load.start();
            let start = now();
            let rsp = inner.call(req).await?;
            let end = now();
            load.observe(end.saturating_duration_since(start), end);
            Ok(rsp)
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

/// The clock of latency estimates: tokio's, so tests with paused time measure virtual time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The endpoint of `dst` with the lower load of two random ones, waiting (bounded) for the
/// first discovery answer.
async fn pick(
    dsts: &Mutex<HashMap<Arc<str>, Dst>>,
    resolver: &dyn Resolve,
    dst: &Destination,
) -> Result<(Picked, Arc<Load>), ProxyError> {
    let mut waited = false;
    loop {
        let mut rx = {
            let mut dsts = dsts.lock().unwrap_or_else(|e| e.into_inner());
            // Keyed by the label the destination already holds: no key is built per request.
            let state = dsts.entry(dst.label().clone()).or_insert_with(|| Dst {
                rx: resolver.resolve(&dst.namespace, &dst.service),
                snapshot: None,
                loads: Vec::new(),
            });
            let now = now();
            state.refresh(now);
            if let Some(snapshot) = &state.snapshot {
                if snapshot.endpoints.is_empty() {
                    return Err(ProxyError::NoEndpoints {
                        destination: dst.display(),
                    });
                }
                let loads = &state.loads;
                let index = ewma::p2c(
                    loads.len(),
                    |i| loads[i].cost(now),
                    |n| fastrand::usize(..n),
                );
                let picked = Picked {
                    endpoints: snapshot.clone(),
                    index,
                };
                return Ok((picked, loads[index].clone()));
            }
            state.rx.clone()
        };
        // No answer yet about this destination: wait for one, once.
        if waited
            || !matches!(
                tokio::time::timeout(DISCOVERY_TIMEOUT, rx.wait_for(|v| v.is_some())).await,
                Ok(Ok(_))
            )
        {
            return Err(ProxyError::UnknownDestination {
                destination: dst.display(),
            });
        }
        waited = true;
    }
}
