//! Routing: which rule of the destination's `HTTPRoute`s a request takes.
//!
//! The router follows each destination's routes from discovery (a watch per destination, kept
//! in a discovery cache while requests use it, [`crate::discovery::cache`]) and compiles every rule once per change into a [`Route`]: its
//! backends as a weighted split, its timeouts, retry policy and budget, circuit breaker and
//! faults. A request takes the most specific matching rule (Gateway API precedence,
//! [`ServiceRoutes::find_index`]); a request no rule matches, or any request to a service
//! without routes, takes the service's default route: to the service itself, with default
//! settings. The route travels in the request's extensions for the layers below.
//!
//! A rule's retry budget survives route updates that leave the rule's budget unchanged, so
//! editing a route does not hand out a fresh budget.

pub mod budget;
mod layer;
pub mod metrics;
mod retry_policy;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use tokio::sync::watch;
use weft_policy::routes::{CircuitBreaker, Fault, RouteRule, ServiceRoutes};
use weft_policy::split::WeightedSplit;

pub use self::budget::Budget;
pub use self::layer::RouterLayer;
pub use self::retry_policy::{DEFAULT_BUDGET, RetryPolicy};
use crate::destination::Destination;
use crate::discovery::Resolve;
use crate::discovery::cache::{Followed, Shared, lock, now};
use crate::error::ProxyError;
use crate::metrics::RouteLabels;
use crate::svc::{BoxError, BoxFuture};

/// How long a request waits for the first answer about its destination's routes. With none
/// by then, it takes the default route (the control plane may be away: the service itself is
/// the safe choice).
pub const ROUTES_TIMEOUT: Duration = crate::discovery::DISCOVERY_TIMEOUT;

/// The name of the default route and its rule in metrics.
pub const DEFAULT_ROUTE: &str = "default";

/// A rule, compiled: everything the layers below need to serve a request on it.
#[derive(Debug)]
pub struct Route {
    /// The `HTTPRoute` (`namespace/name`), or `default`.
    pub route: Arc<str>,
    /// The rule's name (or index), or `default`.
    pub rule: Arc<str>,
    /// Where the rule sends requests, by weight.
    pub backends: WeightedSplit<Arc<RouteBackend>>,
    /// The whole request, retries and injected delays included.
    pub request_timeout: Option<Duration>,
    /// One attempt.
    pub per_try_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub breaker: Option<CircuitBreaker>,
    pub fault: Option<Fault>,
}

impl Route {
    /// The default route of `namespace/service`: to itself, with default settings.
    pub fn default_for(namespace: &str, service: &str, retry: RetryPolicy) -> Self {
        Self {
            route: Arc::from(DEFAULT_ROUTE),
            rule: Arc::from(DEFAULT_ROUTE),
            backends: WeightedSplit::new([(Arc::new(RouteBackend::new(namespace, service)), 1)]),
            request_timeout: None,
            per_try_timeout: None,
            retry,
            breaker: None,
            fault: None,
        }
    }

    /// Compiles a rule; `prior` finds the retry budget of the rule's previous version.
    pub fn compile(rule: &RouteRule, prior: Option<&Route>) -> Self {
        let retry = RetryPolicy::from_spec(rule.retry.as_ref(), prior.map(|p| &p.retry));
        let timeouts = rule.timeouts.as_ref();
        Self {
            route: Arc::from(rule.route.as_str()),
            rule: Arc::from(rule.name.as_str()),
            backends: WeightedSplit::new(rule.backends.iter().map(|b| {
                (
                    Arc::new(RouteBackend::new(&b.namespace, &b.service)),
                    b.weight,
                )
            })),
            request_timeout: timeouts.and_then(|t| t.request).map(|d| d.0),
            // The retry's own per-try timeout, else the route's backend request timeout.
            per_try_timeout: rule
                .retry
                .as_ref()
                .and_then(|r| r.per_try_timeout)
                .or_else(|| timeouts.and_then(|t| t.backend_request))
                .map(|d| d.0),
            retry,
            breaker: rule.circuit_breaker.clone(),
            fault: rule
                .fault
                .clone()
                .filter(|f| f.abort.is_some() || f.delay.is_some()),
        }
    }

    /// The labels of this route's series for a request to `dst` sent to `backend`.
    pub fn labels<'a>(&'a self, dst: &'a str, backend: &'a str) -> RouteLabels<'a> {
        RouteLabels {
            dst,
            route: &self.route,
            rule: &self.rule,
            backend,
        }
    }
}

/// The destination and backend labels of a request's route series, as the layers above set
/// them (`unknown` where none did, as in a layer's unit test).
pub fn target_labels(ext: &http::Extensions) -> (Arc<str>, Arc<str>) {
    let unknown = || Arc::from("unknown");
    (
        ext.get::<Destination>()
            .map_or_else(unknown, |d| d.label().clone()),
        ext.get::<Arc<RouteBackend>>()
            .map_or_else(unknown, |b| b.label().clone()),
    )
}

/// A service a rule sends requests to, compiled from the rule's `weft_policy::routes::Backend`:
/// the balancer's destination from the split on.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteBackend {
    pub namespace: String,
    pub service: String,
    /// `<namespace>/<service>`: the metric label and the balancer's key.
    label: Arc<str>,
}

impl RouteBackend {
    pub fn new(namespace: &str, service: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            service: service.to_string(),
            label: Arc::from(format!("{namespace}/{service}")),
        }
    }

    /// The backend of a request that names only its destination (no route layer above).
    pub fn of(dst: &Destination) -> Self {
        Self::new(&dst.namespace, &dst.service)
    }

    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// `<service>.<namespace>`, for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.service, self.namespace)
    }
}

/// A destination's routes, compiled.
#[derive(Debug)]
struct Compiled {
    spec: Arc<ServiceRoutes>,
    /// One per rule of `spec`, in its order.
    rules: Vec<Arc<Route>>,
    default: Arc<Route>,
}

impl Compiled {
    fn new(spec: Arc<ServiceRoutes>, prior: Option<&Compiled>) -> Self {
        let find_prior = |rule: &RouteRule| {
            prior.and_then(|p| {
                p.rules
                    .iter()
                    .find(|r| *r.route == *rule.route && *r.rule == *rule.name)
                    .map(|r| &**r)
            })
        };
        let rules = spec
            .rules
            .iter()
            .map(|r| Arc::new(Route::compile(r, find_prior(r))))
            .collect();
        let default = match prior {
            Some(p) => p.default.clone(),
            None => Arc::new(Route::default_for(
                &spec.namespace,
                &spec.service,
                RetryPolicy::default_route(),
            )),
        };
        Self {
            spec,
            rules,
            default,
        }
    }

    fn pick<B>(&self, req: &Request<B>) -> Arc<Route> {
        self.spec
            .find_index(req.method(), req.uri().path(), req.headers())
            .and_then(|i| self.rules.get(i))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// What the router knows of one destination.
struct DstRoutes {
    rx: watch::Receiver<Option<Arc<ServiceRoutes>>>,
    compiled: Option<Compiled>,
}

impl Followed for DstRoutes {
    fn is_empty(&self) -> bool {
        self.rx
            .borrow()
            .as_ref()
            .is_some_and(|r| r.rules.is_empty())
    }
}

impl DstRoutes {
    fn refresh(&mut self) {
        if !self.rx.has_changed().unwrap_or(false) && self.compiled.is_some() {
            return;
        }
        let Some(next) = self.rx.borrow_and_update().clone() else {
            return;
        };
        if let Some(c) = &self.compiled
            && Arc::ptr_eq(&c.spec, &next)
        {
            return;
        }
        self.compiled = Some(Compiled::new(next, self.compiled.as_ref()));
    }
}

/// The routes of the destinations in use, shared by all clones of the router.
type Table = Shared<Arc<str>, DstRoutes>;

/// Picks the route of each request and attaches it ([`Arc<Route>`] extension).
#[derive(Clone)]
pub struct Router<S> {
    inner: S,
    resolver: Arc<dyn Resolve>,
    table: Table,
}

impl<S> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl<S, B> tower::Service<Request<B>> for Router<S>
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
        let Some(dst) = req.extensions().get::<Destination>() else {
            return crate::svc::fail(ProxyError::BadRequest {
                detail: "no destination".into(),
            });
        };
        // Known routes: pick now, no await.
        let rx = match pick(&self.table, &*self.resolver, dst, &req, None) {
            Ok(route) => {
                req.extensions_mut().insert(route);
                return Box::pin(self.inner.call(req));
            }
            Err(rx) => rx,
        };
        // The destination's first request: wait (bounded) for its routes.
        let dst = dst.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let table = self.table.clone();
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let mut rx = rx;
            let answered = matches!(
                tokio::time::timeout(ROUTES_TIMEOUT, rx.wait_for(|v| v.is_some())).await,
                Ok(Ok(_))
            );
            let route = match answered.then(|| pick(&table, &*resolver, &dst, &req, Some(&rx)).ok())
            {
                Some(Some(route)) => route,
                _ => {
                    tracing::debug!(dst = %dst.display(), "no routes known yet: default route");
                    Arc::new(Route::default_for(
                        &dst.namespace,
                        &dst.service,
                        RetryPolicy::default_route(),
                    ))
                }
            };
            req.extensions_mut().insert(route);
            inner.call(req).await
        })
    }
}

/// The route of `req` if its destination's routes are known, else the watch to wait on.
/// `waited`: the watch a request waited on, which follows the destination again if the cache
/// let it go meanwhile.
fn pick<B>(
    table: &Table,
    resolver: &dyn Resolve,
    dst: &Destination,
    req: &Request<B>,
    waited: Option<&watch::Receiver<Option<Arc<ServiceRoutes>>>>,
) -> Result<Arc<Route>, watch::Receiver<Option<Arc<ServiceRoutes>>>> {
    lock(table).with(
        dst.label(),
        now(),
        || DstRoutes {
            rx: waited
                .cloned()
                .unwrap_or_else(|| resolver.routes(&dst.namespace, &dst.service)),
            compiled: None,
        },
        |state| {
            state.refresh();
            match &state.compiled {
                Some(c) => Ok(c.pick(req)),
                None => Err(state.rx.clone()),
            }
        },
    )
}
