use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;
use weft_policy::routes::Timeouts;
use weft_policy::wire::Dur;

use super::*;
use crate::body::Body;
use crate::edge::proxy_error;
use crate::testing::{Handle, finish, request, route, rule, status};

/// A route whose request and per-try timeouts are these (in ms).
fn route_with(request_ms: Option<u64>, per_try_ms: Option<u64>) -> Arc<Route> {
    let mut r = rule("r", &[("api", 1)]);
    let ms = |v: Option<u64>| v.map(|ms| Dur(Duration::from_millis(ms)));
    r.timeouts = Some(Timeouts {
        request: ms(request_ms),
        backend_request: ms(per_try_ms),
    });
    route(&r)
}

/// Each layer with a route setting its timeout to 200 ms.
fn with_200ms() -> [(TimeoutLayer, Arc<Route>); 2] {
    [
        (TimeoutLayer::request(), route_with(Some(200), None)),
        (TimeoutLayer::per_try(), route_with(None, Some(200))),
    ]
}

/// Starts a request on `route` through `layer` over a mock; returns the call and the mock.
fn start(
    layer: TimeoutLayer,
    route: &Arc<Route>,
) -> (
    tokio::task::JoinHandle<Result<http::Response<Body>, BoxError>>,
    Handle,
) {
    let (inner, handle) = mock::pair();
    let call = tokio::spawn(layer.layer(inner).oneshot(request(route)));
    (call, handle)
}

#[tokio::test(start_paused = true)]
async fn a_route_timeout_fails_the_request_with_504_after_exactly_that_long() {
    for (layer, route) in with_200ms() {
        let t0 = Instant::now();
        let (call, mut handle) = start(layer, &route);
        // The service below gets the request and never answers.
        let (_req, _never) = handle.next_request().await.unwrap();
        let err = finish(call).await.unwrap_err();
        assert_eq!(t0.elapsed(), Duration::from_millis(200), "{layer:?}");
        let e = proxy_error(err.as_ref());
        assert_eq!((e.code(), e.status().as_u16()), ("timeout", 504));
        assert_eq!(
            e.to_string(),
            "weft: request to default/api timed out after 200 ms"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_its_timeout_a_request_waits() {
    // No timeouts at all, or only the other scope's.
    for (layer, route) in [
        (TimeoutLayer::request(), route(&rule("r", &[("api", 1)]))),
        (TimeoutLayer::request(), route_with(None, Some(200))),
        (TimeoutLayer::per_try(), route_with(Some(200), None)),
    ] {
        let (call, mut handle) = start(layer, &route);
        let (_req, send) = handle.next_request().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!call.is_finished(), "{layer:?}");
        send.send_response(status(200));
        assert_eq!(finish(call).await.unwrap().status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn a_fast_answer_passes() {
    for (layer, route) in with_200ms() {
        let t0 = Instant::now();
        let (call, mut handle) = start(layer, &route);
        let (_req, send) = handle.next_request().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        send.send_response(status(201));
        assert_eq!(finish(call).await.unwrap().status(), 201, "{layer:?}");
        assert_eq!(t0.elapsed(), Duration::from_millis(150));
    }
}
