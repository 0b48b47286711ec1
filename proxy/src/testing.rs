//! What the unit tests of the outbound layers share: a rule and its compiled route, a request
//! as the layers above a layer leave it, responses, and metric values as a scrape shows them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tokio::sync::watch;
use tower::ServiceExt;
use tower_test::mock;
use weft_policy::routes::{self, RouteRule};

use crate::body::{self, Body};
use crate::destination::Destination;
use crate::metrics::ProxyMetrics;
use crate::route::{Route, RouteBackend};
use crate::svc::BoxError;

pub type Mock = mock::Mock<Request<Body>, Response<Body>>;
pub type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// A rule of the route `default/api` to `backends` (service, weight), matching every request
/// and setting nothing else.
pub fn rule(name: &str, backends: &[(&str, u32)]) -> RouteRule {
    RouteRule {
        route: "default/api".into(),
        name: name.into(),
        matches: Vec::new(),
        backends: backends
            .iter()
            .map(|&(service, weight)| routes::Backend {
                namespace: "default".into(),
                service: service.into(),
                port: None,
                weight,
            })
            .collect(),
        timeouts: None,
        retry: None,
        circuit_breaker: None,
        fault: None,
    }
}

/// A rule, compiled on its own (no prior version).
pub fn route(rule: &RouteRule) -> Arc<Route> {
    Arc::new(Route::compile(rule, None))
}

/// `<service>:80` in namespace `default`.
pub fn destination(service: &str) -> Destination {
    Destination::parse(&format!("{service}:80").parse().unwrap(), "default").unwrap()
}

/// A `GET /` to `api` on `route`, sent to the backend `default/api`: what the router and the
/// split leave for the layers below them.
pub fn request(route: &Arc<Route>) -> Request<Body> {
    let mut req = Request::get("/").body(body::empty()).unwrap();
    let ext = req.extensions_mut();
    ext.insert(destination("api"));
    ext.insert(route.clone());
    ext.insert(Arc::new(RouteBackend::new("default", "api")));
    req
}

/// An empty response with `status`.
pub fn status(status: u16) -> Response<Body> {
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
    rsp
}

pub fn metrics() -> Arc<ProxyMetrics> {
    ProxyMetrics::new(weft_runtime::metrics::Registry::new())
}

/// The sum of the series of `name` whose labels include `labels`, as a scrape shows them
/// (0 when there is none).
pub fn metric(metrics: &ProxyMetrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = metrics.registry.render();
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            labels.iter().all(|(k, v)| {
                let pair = format!("{k}=\"{v}\"");
                l.contains(&format!("{{{pair}")) || l.contains(&format!(",{pair}"))
            })
        })
        .map(|l| {
            let value = l.rsplit(' ').next().unwrap();
            value.parse::<f64>().unwrap() as u64
        })
        .sum()
}

/// Whether the service behind `handle` has no request waiting (none was sent since the last
/// one taken).
pub fn no_request(handle: &mut Handle) -> bool {
    !matches!(handle.poll_request(), std::task::Poll::Ready(Some(_)))
}

/// The outcome of a spawned call. A call that never ends fails the test instead of hanging
/// it: at once, with paused time.
pub async fn finish<T>(call: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(3600), call)
        .await
        .expect("the call never ended")
        .unwrap()
}

/// Calls `svc` once it is ready.
pub async fn call<S>(svc: &mut S, req: Request<Body>) -> Result<Response<Body>, BoxError>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

/// One watch per service (its endpoints, its routes), driven by the test: `None` until the
/// test sends a value.
pub struct Watches<T>(Mutex<BTreeMap<String, watch::Sender<Option<Arc<T>>>>>);

impl<T> Default for Watches<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> Watches<T> {
    pub fn sender(&self, service: &str) -> watch::Sender<Option<Arc<T>>> {
        self.0
            .lock()
            .unwrap()
            .entry(service.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    pub fn subscribe(&self, service: &str) -> watch::Receiver<Option<Arc<T>>> {
        self.sender(service).subscribe()
    }
}
