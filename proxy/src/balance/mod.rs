//! Endpoint choice: the endpoints of the request's backend (the service its route's split
//! chose, or its destination), as discovery reports them now, and the least loaded of two
//! picked at random (power of two choices over peak-EWMA latency times requests in flight,
//! [`ewma`]), skipping endpoints the circuit breaker ejected ([`breaker`]).
//!
//! Discovery is a watch per backend that the control plane keeps current, so endpoints added
//! or removed apply to the next request, and requests in flight keep the endpoint they have;
//! an endpoint that stays keeps its load and its health. A request waits (bounded by
//! [`DISCOVERY_TIMEOUT`]) only for the first answer about a backend. What the balancer knows
//! of each backend lives in a discovery [`Cache`] ([`Backends`]): a backend no request used
//! for a while is forgotten, watch, loads and health together, and so are the least recently
//! used ones past the cache's capacity, backends without endpoints first.

pub mod breaker;
pub mod ewma;
mod layer;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tokio::sync::watch;
use weft_policy::registry::{Endpoint, ServiceEndpoints};

use self::breaker::{Admission, Health, Outcome};
use self::ewma::Load;
pub use self::layer::BalanceLayer;
use crate::body::Body;
use crate::destination::Destination;
use crate::discovery::cache::{Cache, Followed, Shared};
use crate::discovery::{DISCOVERY_TIMEOUT, Limits, Resolve};
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::retry::Tried;
use crate::route::{Route, RouteBackend};
use crate::svc::{BoxError, BoxFuture, Labels};

/// Picks an endpoint of the request's backend and attaches it to the request.
#[derive(Clone)]
pub struct Balance<S> {
    inner: S,
    backends: Backends,
    metrics: Option<Arc<ProxyMetrics>>,
}

/// Every backend's endpoints, loads and health, by `<namespace>/<service>`: the balancer's
/// discovery cache, shared by all its clones and by the switch of intercepted traffic
/// ([`crate::unmeshed`]), which asks whether a name has endpoints.
#[derive(Clone)]
pub struct Backends {
    resolver: Arc<dyn Resolve>,
    dsts: Shared<Arc<str>, Dst>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Backends {
    pub fn new(resolver: Arc<dyn Resolve>, limits: Limits) -> Self {
        Self {
            resolver,
            dsts: Cache::shared(limits),
        }
    }

    /// Whether `dst` has endpoints, waiting (bounded by [`DISCOVERY_TIMEOUT`]) for the first
    /// answer about it.
    pub async fn have_endpoints(&self, dst: &Destination) -> bool {
        let mut rx = lock(&self.dsts).with(
            dst.label(),
            now(),
            || Dst::new(self.resolver.resolve(&dst.namespace, &dst.service)),
            |d| d.rx.clone(),
        );
        let answered = tokio::time::timeout(DISCOVERY_TIMEOUT, rx.wait_for(|v| v.is_some())).await;
        match answered {
            Ok(Ok(eps)) => eps.as_ref().is_some_and(|e| !e.endpoints.is_empty()),
            _ => false,
        }
    }
}

/// What the balancer knows of one endpoint, kept across discovery updates.
#[derive(Debug)]
pub struct EndpointState {
    pub load: Arc<Load>,
    pub health: Mutex<Health>,
}

/// What the balancer knows of one backend.
struct Dst {
    rx: watch::Receiver<Option<Arc<ServiceEndpoints>>>,
    /// The snapshot the states belong to (`None` before the first answer).
    snapshot: Option<Arc<ServiceEndpoints>>,
    /// One per endpoint of the snapshot, in its order.
    states: Vec<Arc<EndpointState>>,
    /// How many of `states` are ejected now.
    ejected: Arc<AtomicUsize>,
    /// The peer label of each endpoint of the snapshot (its identity, or `none`), made once
    /// per snapshot rather than per request.
    peers: Vec<Arc<str>>,
}

impl Followed for Dst {
    fn is_empty(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|e| e.endpoints.is_empty())
    }
}

impl Dst {
    fn new(rx: watch::Receiver<Option<Arc<ServiceEndpoints>>>) -> Self {
        Self {
            rx,
            snapshot: None,
            states: Vec::new(),
            ejected: Arc::default(),
            peers: Vec::new(),
        }
    }

    /// Follows discovery: a new snapshot keeps the load and health of every endpoint still
    /// in it.
    fn refresh(&mut self, now: Instant) {
        if !self.rx.has_changed().unwrap_or(false) && self.snapshot.is_some() {
            return;
        }
        let Some(next) = self.rx.borrow_and_update().clone() else {
            return;
        };
        let old: HashMap<SocketAddr, Arc<EndpointState>> = match &self.snapshot {
            Some(s) => s
                .endpoints
                .iter()
                .map(|e| e.address)
                .zip(self.states.drain(..))
                .collect(),
            None => HashMap::new(),
        };
        // A new endpoint starts at the mean estimate of the ones that stay measured.
        let mean = (!old.is_empty())
            .then(|| old.values().map(|s| s.load.estimate(now)).sum::<f64>() / old.len() as f64);
        self.states = next
            .endpoints
            .iter()
            .map(|e| match old.get(&e.address) {
                Some(s) => s.clone(),
                None => Arc::new(EndpointState {
                    load: Arc::new(match mean {
                        Some(m) => Load::with_estimate(m, now),
                        None => Load::new(now),
                    }),
                    health: Mutex::new(Health::default()),
                }),
            })
            .collect();
        let ejected = self
            .states
            .iter()
            .filter(|s| lock(&s.health).is_ejected())
            .count();
        self.ejected.store(ejected, Ordering::Relaxed);
        self.peers = next
            .endpoints
            .iter()
            .map(|e| {
                e.identity
                    .as_ref()
                    .map_or_else(|| Arc::from("none"), |i| Arc::from(i.as_str()))
            })
            .collect();
        self.snapshot = Some(next);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S> std::fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance").finish_non_exhaustive()
    }
}

impl<S> tower::Service<Request<Body>> for Balance<S>
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

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let ext = req.extensions();
        let backend = match (ext.get::<Arc<RouteBackend>>(), ext.get::<Destination>()) {
            (Some(b), _) => b.clone(),
            (None, Some(dst)) => Arc::new(RouteBackend::of(dst)),
            (None, None) => {
                return crate::svc::fail(ProxyError::BadRequest {
                    detail: "no destination".into(),
                });
            }
        };
        let route = ext.get::<Arc<Route>>().cloned();
        let tried = ext.get::<Tried>().cloned();
        // The inner service was made ready for this call: take it, leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let backends = self.backends.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let breaker = route.as_ref().and_then(|r| r.breaker.as_ref());
            let (picked, state, ejected, peer) =
                pick(&backends, &backend, breaker.is_some(), tried.as_ref()).await?;
            let n = picked.endpoints.endpoints.len();
            let ep = picked.endpoint();
            Labels::set_peer(&req, || peer, ep.identity.is_some());
            req.extensions_mut().insert(picked);
            // With a circuit breaker, the outcome counts towards the endpoint's health, also
            // if the request is dropped unanswered, unless the client went away.
            let labels = req.extensions().get::<Arc<Labels>>().cloned();
            let mut outcome =
                breaker.map(|b| Outcome::new(b, state.clone(), ejected, n, labels.clone()));
            let _in_flight = state.load.start();
            let start = now();
            let res = crate::svc::call_boxed(&mut inner, req).await;
            let end = now();
            // What the client caused (its body malformed or cut short, it went away) says
            // nothing of the endpoint: no latency sample, no health record.
            let client_fault = labels.as_ref().is_some_and(|l| l.client_fault().is_some())
                || res
                    .as_ref()
                    .is_err_and(|e| crate::edge::proxy_error(e.as_ref()).is_client_fault());
            if client_fault {
                if let Some(o) = outcome.take() {
                    o.discard();
                }
                return res;
            }
            let ok = match &res {
                Ok(rsp) => {
                    state
                        .load
                        .observe(end.saturating_duration_since(start), end);
                    !rsp.status().is_server_error()
                }
                Err(_) => false,
            };
            if let Some(o) = outcome.as_mut()
                && o.record(ok, tokio::time::Instant::now())
                && let Some(m) = &metrics
            {
                m.ejection(backend.label());
            }
            res
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
    /// The endpoint at `index` of `endpoints`, chosen by the caller (`None` when there is no
    /// such endpoint): a request for a meshed workload's address goes to that workload.
    pub fn new(endpoints: Arc<ServiceEndpoints>, index: usize) -> Option<Self> {
        (index < endpoints.endpoints.len()).then_some(Self { endpoints, index })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoints.endpoints[self.index]
    }
}

/// The clock of latency estimates: tokio's, so tests with paused time measure virtual time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The endpoint, its state, the backend's ejection count and the endpoint's peer label.
type Choice = (Picked, Arc<EndpointState>, Arc<AtomicUsize>, Arc<str>);

/// The endpoint of `backend` with the lower load of two random ones (skipping ejected ones
/// when `breaker`, an ejected one whose ejection ended going first as the probe; and skipping
/// the endpoints `tried` lists while others remain), waiting (bounded) for the first
/// discovery answer.
async fn pick(
    backends: &Backends,
    backend: &RouteBackend,
    breaker: bool,
    tried: Option<&Tried>,
) -> Result<Choice, ProxyError> {
    // The watch waited on, which follows the backend again if the cache let it go meanwhile.
    let mut waited: Option<watch::Receiver<Option<Arc<ServiceEndpoints>>>> = None;
    loop {
        let now = now();
        // Keyed by the label the backend already holds: no key is built per request.
        let step = lock(&backends.dsts).with(
            backend.label(),
            now,
            || {
                Dst::new(match &waited {
                    Some(rx) => rx.clone(),
                    None => backends
                        .resolver
                        .resolve(&backend.namespace, &backend.service),
                })
            },
            |state| {
                state.refresh(now);
                state
                    .choose(now, backend, breaker, tried)
                    .ok_or_else(|| state.rx.clone())
            },
        );
        let mut rx = match step {
            Ok(chosen) => return chosen,
            Err(rx) => rx,
        };
        // No answer yet about this backend: wait for one, once.
        if waited.is_some()
            || !matches!(
                tokio::time::timeout(DISCOVERY_TIMEOUT, rx.wait_for(|v| v.is_some())).await,
                Ok(Ok(_))
            )
        {
            return Err(ProxyError::UnknownDestination {
                destination: backend.display(),
            });
        }
        waited = Some(rx);
    }
}

impl Dst {
    /// The choice among the endpoints of the current snapshot (see [`pick`]); `None` before
    /// the first answer.
    fn choose(
        &self,
        now: Instant,
        backend: &RouteBackend,
        breaker: bool,
        tried: Option<&Tried>,
    ) -> Option<Result<Choice, ProxyError>> {
        let snapshot = self.snapshot.as_ref()?;
        if snapshot.unknown {
            return Some(Err(ProxyError::UnknownDestination {
                destination: backend.display(),
            }));
        }
        if snapshot.endpoints.is_empty() {
            return Some(Err(ProxyError::NoEndpoints {
                destination: backend.display(),
            }));
        }
        let states = &self.states;
        let avoid = tried.and_then(Tried::get).unwrap_or_default();
        let breaking = breaker && self.ejected.load(Ordering::Relaxed) > 0;
        let index = if breaking || !avoid.is_empty() {
            let addr = |i: usize| snapshot.endpoints[i].address;
            let at = tokio::time::Instant::now();
            let chosen = choose_healthy(states, at, breaking, |i| !avoid.contains(&addr(i)))
                .or_else(|| choose_healthy(states, at, breaking, |_| true));
            match chosen {
                Some(i) => i,
                None => {
                    return Some(Err(ProxyError::EndpointsEjected {
                        destination: backend.display(),
                    }));
                }
            }
        } else {
            ewma::p2c(
                states.len(),
                |i| states[i].load.cost(now),
                |n| fastrand::usize(..n),
            )
        };
        if let Some(t) = tried {
            t.record(snapshot.endpoints[index].address);
        }
        let picked = Picked {
            endpoints: snapshot.clone(),
            index,
        };
        let peer = self.peers[index].clone();
        Some(Ok((
            picked,
            states[index].clone(),
            self.ejected.clone(),
            peer,
        )))
    }
}

/// Among the endpoints `allowed` lets through, and with `breaking` only those the circuit
/// breaker admits (an endpoint whose ejection ended goes first: it becomes the one probe):
/// the cheaper of two random ones; `None` when no endpoint is left.
fn choose_healthy(
    states: &[Arc<EndpointState>],
    at: tokio::time::Instant,
    breaking: bool,
    allowed: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut in_service = Vec::with_capacity(states.len());
    for (i, s) in states.iter().enumerate().filter(|&(i, _)| allowed(i)) {
        if !breaking {
            in_service.push(i);
            continue;
        }
        match lock(&s.health).admit(at) {
            Admission::Probe => return Some(i),
            Admission::In => in_service.push(i),
            Admission::Out => {}
        }
    }
    if in_service.is_empty() {
        return None;
    }
    let now = now();
    let i = ewma::p2c(
        in_service.len(),
        |i| states[in_service[i]].load.cost(now),
        |n| fastrand::usize(..n),
    );
    Some(in_service[i])
}
