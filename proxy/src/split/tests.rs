use std::collections::BTreeMap;

use http::Response;
use tower::Layer;

use super::*;
use crate::body::{self, Body};
use crate::edge::proxy_error;
use crate::svc::BoxError;
use crate::testing::{call, request, route, rule};

/// Sends `n` requests on a rule to `backends` and counts them per backend service.
async fn split(backends: &[(&str, u32)], n: usize) -> BTreeMap<String, usize> {
    let inner = tower::service_fn(|req: Request<Body>| async move {
        let backend = req.extensions().get::<Arc<RouteBackend>>().unwrap().clone();
        let mut rsp = Response::new(body::empty());
        rsp.extensions_mut().insert(backend);
        Ok::<_, BoxError>(rsp)
    });
    let mut svc = SplitLayer::new(ChooseBackend).layer(inner);
    let route = route(&rule("split", backends));
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let rsp = call(&mut svc, request(&route)).await.unwrap();
        let backend = rsp.extensions().get::<Arc<RouteBackend>>().unwrap();
        *counts.entry(backend.service.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_90_10_split_lands_within_two_points() {
    let n = 10_000;
    let counts = split(&[("api-v1", 90), ("api-v2", 10)], n).await;
    assert_eq!(counts.values().sum::<usize>(), n);
    let share = counts["api-v2"] as f64 / n as f64;
    // Binomial: sigma = sqrt(0.1 × 0.9 / n) = 0.3 points; 5 sigma = 1.5 points.
    let five_sigma = 5.0 * (0.1 * 0.9 / n as f64).sqrt();
    assert!(five_sigma < 0.02);
    assert!((share - 0.10).abs() <= five_sigma, "{counts:?}");
}

#[tokio::test]
async fn a_backend_of_weight_0_gets_nothing() {
    let counts = split(&[("api-v1", 0), ("api-v2", 1), ("api-v3", 0)], 1_000).await;
    assert_eq!(counts, BTreeMap::from([("api-v2".to_string(), 1_000)]));
}

#[tokio::test]
async fn every_weight_0_is_no_endpoints_and_no_route_a_bad_request() {
    let (inner, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut svc = SplitLayer::new(ChooseBackend).layer(inner);

    let drained = route(&rule("drained", &[("api-v1", 0)]));
    let err = call(&mut svc, request(&drained)).await.unwrap_err();
    assert_eq!(proxy_error(err.as_ref()).code(), "no_endpoints");

    let mut req = request(&drained);
    req.extensions_mut().remove::<Arc<Route>>();
    let err = call(&mut svc, req).await.unwrap_err();
    let e = proxy_error(err.as_ref());
    assert_eq!((e.code(), e.status().as_u16()), ("bad_request", 400));
}
