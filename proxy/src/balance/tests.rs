use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use http::Response;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;
use weft_policy::registry::EndpointSource;

use super::*;
use crate::body::{self, Body};
use crate::edge::proxy_error;

/// One watch per service, driven by the test.
#[derive(Default)]
struct Table(std::sync::Mutex<BTreeMap<String, watch::Sender<Option<Arc<ServiceEndpoints>>>>>);

impl Table {
    fn sender(&self, service: &str) -> watch::Sender<Option<Arc<ServiceEndpoints>>> {
        self.0
            .lock()
            .unwrap()
            .entry(service.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    fn set(&self, service: &str, addrs: &[&str]) {
        let endpoints = addrs
            .iter()
            .map(|a| Endpoint {
                address: a.parse().unwrap(),
                identity: None,
                labels: BTreeMap::new(),
                source: EndpointSource::Static,
            })
            .collect();
        self.sender(service)
            .send_replace(Some(Arc::new(ServiceEndpoints {
                namespace: "default".into(),
                service: service.into(),
                ports: vec![],
                endpoints,
            })));
    }
}

impl Resolve for Table {
    fn resolve(&self, _ns: &str, service: &str) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        self.sender(service).subscribe()
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
