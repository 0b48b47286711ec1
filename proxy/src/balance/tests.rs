use std::collections::{BTreeMap, HashSet};
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

#[tokio::test]
async fn requests_spread_over_the_current_endpoints_and_follow_changes() {
    let table = Arc::new(Table::default());
    table.set("api", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut svc = BalanceLayer::new(table.clone()).layer(svc);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let call = tokio::spawn(svc.ready().await.unwrap().call(request("api")));
        seen.insert(serve_one(&mut handle).await);
        call.await.unwrap().unwrap();
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    table.set("api", &["127.0.0.1:4"]);
    for _ in 0..20 {
        let call = tokio::spawn(svc.ready().await.unwrap().call(request("api")));
        assert_eq!(serve_one(&mut handle).await, "127.0.0.1:4".parse().unwrap());
        call.await.unwrap().unwrap();
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
    assert!(e.to_string().contains("api.default:80"), "{e}");
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
