use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::Response;
use tokio::time::{Instant, sleep_until};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;
use weft_policy::registry::EndpointSource;

use super::*;
use crate::body::{self, Body};
use crate::edge::proxy_error;
use crate::testing::{Watches, call};

/// One endpoints watch per service, driven by the test.
#[derive(Default)]
struct Table(Watches<ServiceEndpoints>);

impl Table {
    fn set(&self, service: &str, addrs: &[&str]) {
        let endpoints = addrs
            .iter()
            .map(|a| {
                std::sync::Arc::new(Endpoint {
                    address: a.parse().unwrap(),
                    identity: None,
                    labels: BTreeMap::new(),
                    source: EndpointSource::Static,
                })
            })
            .collect();
        self.0
            .sender(service)
            .send_replace(Some(Arc::new(ServiceEndpoints {
                namespace: "default".into(),
                service: service.into(),
                ports: vec![],
                opaque_ports: vec![],
                endpoints,
                unknown: false,
            })));
    }
}

impl Resolve for Table {
    fn resolve(&self, _ns: &str, service: &str) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        self.0.subscribe(service)
    }
}

fn request(service: &str) -> Request<Body> {
    let mut req = Request::get("/").body(body::empty()).unwrap();
    let dst = Destination::parse(&format!("{service}:80").parse().unwrap(), "default").unwrap();
    req.extensions_mut().insert(dst);
    req
}

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// Answers the next request and returns the endpoint it was sent to.
async fn serve_one(handle: &mut Handle) -> SocketAddr {
    let (req, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(body::empty()));
    req.extensions().get::<Picked>().unwrap().endpoint().address
}

/// Endpoints that answer in 1 ms, or 10 ms for `slow` (paused time: no real waiting); the
/// response carries the endpoint's address.
fn endpoints_answering(
    slow: Option<SocketAddr>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<Body>| async move {
        let addr = req.extensions().get::<Picked>().unwrap().endpoint().address;
        let ms = if Some(addr) == slow { 10 } else { 1 };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let mut rsp = Response::new(body::empty());
        rsp.extensions_mut().insert(addr);
        Ok::<_, BoxError>(rsp)
    })
}

/// Sends `rounds` rounds of `concurrency` concurrent requests; counts them per endpoint.
async fn send<S>(svc: &mut S, rounds: usize, concurrency: usize) -> BTreeMap<SocketAddr, usize>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    let mut counts = BTreeMap::new();
    for _ in 0..rounds {
        let mut calls = Vec::new();
        for _ in 0..concurrency {
            calls.push(tokio::spawn(
                svc.ready().await.unwrap().call(request("api")),
            ));
        }
        for c in calls {
            let rsp = c.await.unwrap().unwrap();
            *counts
                .entry(*rsp.extensions().get::<SocketAddr>().unwrap())
                .or_default() += 1;
        }
    }
    counts
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn requests_spread_over_the_current_endpoints_and_follow_changes() {
    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    let mut svc = BalanceLayer::new(table.clone()).layer(endpoints_answering(None));
    let seen = send(&mut svc, 200, 1).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n > 20), "{seen:?}");

    table.set("api", &["127.0.0.1:4"]);
    let seen = send(&mut svc, 20, 1).await;
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        [addr("127.0.0.1:4")]
    );
}

/// A dead endpoint fails at once and so looks cheap: a request's retry still goes to another
/// endpoint, because the attempts share what they tried.
#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_an_endpoint_the_request_has_not_tried() {
    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    let dead = addr("127.0.0.1:3");
    let inner = tower::service_fn(move |req: Request<Body>| async move {
        let a = req.extensions().get::<Picked>().unwrap().endpoint().address;
        if a == dead {
            return Err::<Response<Body>, BoxError>(
                crate::error::ProxyError::ConnectFailed {
                    endpoint: a.to_string(),
                    detail: "connection refused".into(),
                }
                .into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(Response::new(body::empty()))
    });
    let mut svc = BalanceLayer::new(table).layer(inner);
    let mut failed_first = 0;
    for _ in 0..300 {
        let tried = Tried::default();
        let attempt = || {
            let mut req = request("api");
            req.extensions_mut().insert(tried.clone());
            req
        };
        if svc.ready().await.unwrap().call(attempt()).await.is_err() {
            failed_first += 1;
            let retry = svc.ready().await.unwrap().call(attempt()).await;
            assert!(retry.is_ok(), "the retry went to the dead endpoint again");
        }
    }
    // The dead endpoint does look cheap: it takes first attempts.
    assert!(failed_first > 0);
    // With every endpoint tried, any endpoint will do.
    let tried = Tried::default();
    for _ in 0..4 {
        let mut req = request("api");
        req.extensions_mut().insert(tried.clone());
        let _ = svc.ready().await.unwrap().call(req).await;
    }
}

#[tokio::test]
async fn no_endpoints_fails_fast_naming_the_destination() {
    let table = Arc::new(Table::default());
    table.set("api", &[]);
    let (svc, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let err = BalanceLayer::new(table)
        .layer(svc)
        .oneshot(request("api"))
        .await
        .unwrap_err();
    let e = proxy_error(err.as_ref());
    assert_eq!(e.code(), "no_endpoints");
    assert!(e.to_string().contains("api.default"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn waits_for_the_first_answer_but_not_forever() {
    let table = Arc::new(Table::default());
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut svc = BalanceLayer::new(table.clone()).layer(svc);

    // Nobody ever answers about `ghost`: unknown after the discovery timeout.
    let start = tokio::time::Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request("ghost"))
        .await
        .unwrap_err();
    assert_eq!(proxy_error(err.as_ref()).code(), "unknown_destination");
    assert_eq!(start.elapsed(), DISCOVERY_TIMEOUT);

    // The answer about `api` comes while the request waits.
    let call = svc.ready().await.unwrap().call(request("api"));
    let call = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(500)).await;
    table.set("api", &["127.0.0.1:7"]);
    assert_eq!(serve_one(&mut handle).await, "127.0.0.1:7".parse().unwrap());
    call.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_gets_fewer_requests_and_loads_survive_updates() {
    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    let slow = addr("127.0.0.1:3");
    let mut svc = BalanceLayer::new(table.clone()).layer(endpoints_answering(Some(slow)));
    let counts = send(&mut svc, 50, 4).await;
    let fast = counts[&addr("127.0.0.1:1")].min(counts[&addr("127.0.0.1:2")]);
    let slow_n = counts.get(&slow).copied().unwrap_or(0);
    assert!(slow_n * 3 < fast, "{counts:?}");

    // An update that keeps the slow endpoint keeps what was learnt about it; the new one
    // starts at the others' mean and gets its share at once.
    table.set(
        "api",
        &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
    );
    let after = send(&mut svc, 50, 4).await;
    let new = after.get(&addr("127.0.0.1:4")).copied().unwrap_or(0);
    assert!(
        after.get(&slow).copied().unwrap_or(0) * 3 < new,
        "{after:?}"
    );
}

// The circuit breaker.

/// How an endpoint of [`Endpoints`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
    Hang,
    /// The client's body fails while the request is sent (as `Connect` reports it).
    ClientFault,
}

/// Endpoints that answer 200 or 500 after 1 ms, or never, as the test sets them; every request
/// is logged. (Answering in a fixed time keeps the endpoints' loads equal: p2c then spreads
/// requests evenly over the endpoints in service.)
#[derive(Clone, Default)]
struct Endpoints {
    modes: Arc<std::sync::Mutex<BTreeMap<SocketAddr, Mode>>>,
    seen: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

impl Endpoints {
    fn set(&self, addr: &str, mode: Mode) {
        self.modes.lock().unwrap().insert(self::addr(addr), mode);
    }

    /// Requests `addr` got since the last call.
    fn take(&self, addr: &str) -> usize {
        let addr = self::addr(addr);
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        seen.iter().filter(|a| **a == addr).count()
    }

    fn service(&self) -> crate::svc::HttpService {
        let this = self.clone();
        crate::svc::HttpService::new(tower::service_fn(move |req: Request<Body>| {
            let addr = req.extensions().get::<Picked>().unwrap().endpoint().address;
            this.seen.lock().unwrap().push(addr);
            let mode = this.modes.lock().unwrap().get(&addr).copied();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                match mode.unwrap_or(Mode::Ok) {
                    Mode::Ok => Ok::<_, BoxError>(crate::testing::status(200)),
                    Mode::Fail => Ok(crate::testing::status(500)),
                    Mode::Hang => std::future::pending().await,
                    Mode::ClientFault => Err(ProxyError::BadRequestBody {
                        detail: "invalid chunk size".into(),
                    }
                    .into()),
                }
            }
        }))
    }
}

/// A request to `api` on a route that ejects an endpoint after 3 consecutive failures for
/// 1 s, at most `max_percent` of the endpoints at once.
fn breaker_request(max_percent: f64) -> Request<Body> {
    let mut rule = crate::testing::rule("r", &[("api", 1)]);
    rule.circuit_breaker = Some(weft_policy::routes::CircuitBreaker {
        consecutive_failures: 3,
        ejection_time: weft_policy::wire::Dur(Duration::from_secs(1)),
        max_ejection_percent: max_percent,
    });
    crate::testing::request(&crate::testing::route(&rule))
}

/// Sends `n` requests one after the other; every one is answered.
async fn send_breaker<S>(svc: &mut S, n: usize, max_percent: f64)
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    for _ in 0..n {
        call(svc, breaker_request(max_percent)).await.unwrap();
    }
}

fn ejections(metrics: &ProxyMetrics) -> u64 {
    crate::testing::metric(
        metrics,
        "weft_balance_ejections_total",
        &[("backend", "default/api")],
    )
}

const BAD: &str = "127.0.0.1:2";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Three endpoints, `BAD` answering 500, sent requests until its third failure ejects it.
async fn with_bad_endpoint_ejected() -> (
    impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    Endpoints,
    Arc<ProxyMetrics>,
) {
    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1", BAD, "127.0.0.1:3"]);
    let eps = Endpoints::default();
    eps.set(BAD, Mode::Fail);
    let metrics = crate::testing::metrics();
    let mut svc = BalanceLayer::new(table)
        .with_metrics(metrics.clone())
        .layer(eps.service());
    let mut failures = 0;
    for _ in 0..1_000 {
        send_breaker(&mut svc, 1, 100.0).await;
        failures += eps.take(BAD);
        if failures == 3 {
            break;
        }
    }
    assert_eq!(failures, 3);
    (svc, eps, metrics)
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_an_endpoint_until_a_probe_succeeds() {
    let (mut svc, eps, metrics) = with_bad_endpoint_ejected().await;
    let ejected = Instant::now();
    assert_eq!(ejections(&metrics), 1);
    send_breaker(&mut svc, 100, 100.0).await;
    assert_eq!(eps.take(BAD), 0, "ejected");
    // Each request takes 1 ms: these end before 0.9 s, the shortest jittered ejection.
    sleep_until(ejected + ms(890)).await;
    send_breaker(&mut svc, 5, 100.0).await;
    assert_eq!(eps.take(BAD), 0, "ejected for at least 0.9 s");

    // The ejection (1 s ± 10 %) has ended: exactly one request is its probe, which fails.
    sleep_until(ejected + ms(1_100)).await;
    let failed = Instant::now() + ms(1);
    send_breaker(&mut svc, 50, 100.0).await;
    assert_eq!(eps.take(BAD), 1, "one probe");

    // Out again, for about twice as long: 2 s ± 10 %.
    sleep_until(failed + ms(1_750)).await;
    send_breaker(&mut svc, 20, 100.0).await;
    assert_eq!(eps.take(BAD), 0, "still ejected after 1.77 s");
    sleep_until(failed + ms(2_200)).await;
    let failed = Instant::now() + ms(1);
    send_breaker(&mut svc, 20, 100.0).await;
    assert_eq!(eps.take(BAD), 1, "probed again after 2.2 s");

    // It recovers: the next probe (after 4 s ± 10 %) brings it back into service.
    eps.set(BAD, Mode::Ok);
    sleep_until(failed + ms(4_400)).await;
    send_breaker(&mut svc, 150, 100.0).await;
    let back = eps.take(BAD);
    // A fair share is 50 of 150; 15 is 6 sigma below it.
    assert!(back >= 15, "{back}");
    // Re-ejections after failed probes are not new ejections.
    assert_eq!(ejections(&metrics), 1);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_unanswered_counts_as_failed() {
    let (mut svc, eps, _metrics) = with_bad_endpoint_ejected().await;
    let ejected = Instant::now();
    eps.set(BAD, Mode::Hang);
    sleep_until(ejected + ms(1_100)).await;
    // The probe hangs: while it is in flight, no other request goes to the endpoint.
    let mut probe = Box::pin(svc.ready().await.unwrap().call(breaker_request(100.0)));
    assert!(futures_util::FutureExt::now_or_never(&mut probe).is_none());
    assert_eq!(eps.take(BAD), 1);
    send_breaker(&mut svc, 50, 100.0).await;
    assert_eq!(eps.take(BAD), 0);
    // The caller gives up on it: ejected again (2 s ± 10 %), not stuck waiting for it.
    drop(probe);
    let dropped = Instant::now();
    send_breaker(&mut svc, 50, 100.0).await;
    assert_eq!(eps.take(BAD), 0);
    eps.set(BAD, Mode::Ok);
    sleep_until(dropped + ms(2_200)).await;
    send_breaker(&mut svc, 150, 100.0).await;
    let back = eps.take(BAD);
    assert!(back >= 15, "{back}");
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_client_went_away_is_released_not_failed() {
    let (mut svc, eps, _metrics) = with_bad_endpoint_ejected().await;
    let ejected = Instant::now();
    eps.set(BAD, Mode::Hang);
    sleep_until(ejected + ms(1_100)).await;
    let req = breaker_request(100.0);
    let labels = Arc::new(crate::svc::Labels::default());
    let mut req = req;
    req.extensions_mut().insert(labels.clone());
    let mut probe = Box::pin(svc.ready().await.unwrap().call(req));
    assert!(futures_util::FutureExt::now_or_never(&mut probe).is_none());
    assert_eq!(eps.take(BAD), 1);
    // Its client goes away (the edge notes it before the layers below are dropped).
    let _ = labels.client_fault.set(ProxyError::ClientClosed {
        detail: "gone".into(),
    });
    drop(probe);
    // Not ejected again: the next request is the probe, and it succeeds.
    eps.set(BAD, Mode::Ok);
    send_breaker(&mut svc, 150, 100.0).await;
    let back = eps.take(BAD);
    assert!(back >= 15, "{back}");
}

#[tokio::test(start_paused = true)]
async fn failures_the_client_caused_never_eject_an_endpoint() {
    let table = Arc::new(Table::default());
    table.set("api", &[BAD]);
    let eps = Endpoints::default();
    eps.set(BAD, Mode::ClientFault);
    let metrics = crate::testing::metrics();
    let mut svc = BalanceLayer::new(table)
        .with_metrics(metrics.clone())
        .layer(eps.service());
    for _ in 0..10 {
        let err = call(&mut svc, breaker_request(100.0)).await.unwrap_err();
        assert_eq!(proxy_error(err.as_ref()).code(), "bad_request_body");
    }
    assert_eq!(ejections(&metrics), 0);
    eps.set(BAD, Mode::Ok);
    send_breaker(&mut svc, 5, 100.0).await;
    assert_eq!(eps.take(BAD), 15);
}

#[tokio::test(start_paused = true)]
async fn every_endpoint_ejected_fails_at_once_with_503() {
    use futures_util::FutureExt;

    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1", "127.0.0.1:2"]);
    let eps = Endpoints::default();
    eps.set("127.0.0.1:1", Mode::Fail);
    eps.set("127.0.0.1:2", Mode::Fail);
    let mut svc = BalanceLayer::new(table).layer(eps.service());
    // Three failures each eject both: the seventh request finds none in service.
    send_breaker(&mut svc, 6, 100.0).await;
    let call = svc.ready().await.unwrap().call(breaker_request(100.0));
    let err = call.now_or_never().expect("fails at once").unwrap_err();
    let e = proxy_error(err.as_ref());
    assert_eq!((e.code(), e.status().as_u16()), ("endpoints_ejected", 503));
    assert!(e.to_string().contains("api.default"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn at_most_max_ejection_percent_of_the_endpoints_are_ejected() {
    let table = Arc::new(Table::default());
    let all = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
    table.set("api", &all);
    let eps = Endpoints::default();
    for a in all {
        eps.set(a, Mode::Fail);
    }
    let metrics = crate::testing::metrics();
    let mut svc = BalanceLayer::new(table)
        .with_metrics(metrics.clone())
        .layer(eps.service());
    // 50 % of 3 endpoints: 1.
    send_breaker(&mut svc, 100, 50.0).await;
    assert_eq!(ejections(&metrics), 1);
    eps.seen.lock().unwrap().clear();
    send_breaker(&mut svc, 100, 50.0).await;
    let still: BTreeMap<SocketAddr, usize> =
        eps.seen
            .lock()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, a| {
                *m.entry(*a).or_default() += 1;
                m
            });
    assert_eq!(still.len(), 2, "{still:?}");
    assert_eq!(ejections(&metrics), 1);
}

#[test]
fn ejections_double_up_to_the_cap() {
    let base = Duration::from_secs(1);
    let secs = |n| Health::backoff(base, n, 1.0).as_secs_f64();
    assert_eq!(secs(1), 1.0);
    assert_eq!(secs(2), 2.0);
    assert_eq!(secs(3), 4.0);
    let cap = f64::from(1u32 << breaker::MAX_BACKOFF_DOUBLINGS);
    assert_eq!(secs(breaker::MAX_BACKOFF_DOUBLINGS + 1), cap);
    assert_eq!(secs(breaker::MAX_BACKOFF_DOUBLINGS + 2), cap);
    assert_eq!(secs(u32::MAX), cap);
    // The jitter scales the whole backoff.
    assert_eq!(Health::backoff(base, 2, 0.9), Duration::from_millis(1_800));
    assert_eq!(
        Health::backoff(Duration::from_millis(100), 3, 1.1),
        Duration::from_millis(440)
    );
}

/// A backend no request used for the idle timeout is forgotten, its watch dropped (which ends
/// it at the control plane) with its loads and health; its next request follows it again.
/// Past the capacity, the least recently used backend goes.
#[tokio::test(start_paused = true)]
async fn an_idle_backend_is_forgotten_and_found_again() {
    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1"]);
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        capacity: 2,
    };
    let watchers = || table.0.sender("api").receiver_count();
    let backends = Backends::new(table.clone(), limits);
    let mut svc = BalanceLayer::over(backends).layer(endpoints_answering(None));
    send(&mut svc, 1, 1).await;
    assert_eq!(watchers(), 1);
    tokio::time::sleep(Duration::from_secs(20)).await;
    send(&mut svc, 1, 1).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(watchers(), 1, "used 20 s ago: kept");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(watchers(), 0, "idle 35 s: released");
    assert_eq!(send(&mut svc, 1, 1).await.len(), 1);
    assert_eq!(watchers(), 1);

    // Two other backends fill the cache: `api`, used least recently, goes.
    for other in ["web", "db"] {
        table.set(other, &["127.0.0.1:2"]);
        call(&mut svc, request(other)).await.unwrap();
    }
    assert_eq!(watchers(), 0);
}
