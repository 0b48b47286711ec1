use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use tower::{Layer, ServiceExt};
use tower_test::mock;
use weft_policy::routes::{Retry, RetryBudget};
use weft_policy::wire::Dur;

use super::*;
use crate::testing::{
    Handle, call, finish, metric, metrics, no_request, request, route, rule, status,
};

/// A route retrying `attempts` times on the default conditions (5xx, connect failures), with
/// Linkerd's default budget unless `budget` is given.
fn retrying(attempts: u32, budget: Option<RetryBudget>) -> Arc<Route> {
    let mut r = rule("r", &[("api", 1)]);
    r.retry = Some(Retry {
        attempts,
        codes: Vec::new(),
        conditions: Vec::new(),
        per_try_timeout: None,
        budget,
    });
    route(&r)
}

fn retries_counted(metrics: &ProxyMetrics, outcome: &str) -> u64 {
    metric(
        metrics,
        "weft_route_retries_total",
        &[
            ("dst_service", "default/api"),
            ("route", "default/api"),
            ("rule", "r"),
            ("backend", "default/api"),
            ("outcome", outcome),
        ],
    )
}

/// Starts `req` through the retry layer over a mock.
fn start(
    metrics: &Arc<ProxyMetrics>,
    req: Request<Body>,
) -> (
    tokio::task::JoinHandle<Result<Response<Body>, BoxError>>,
    Handle,
) {
    let (inner, handle) = mock::pair();
    let svc = RetryFailuresLayer::new(metrics.clone()).layer(inner);
    (tokio::spawn(svc.oneshot(req)), handle)
}

/// An attempt as the service below saw it: method, headers, body and trailers.
#[derive(Debug, PartialEq)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

/// Takes the next attempt and answers it with `rsp`.
async fn answer(handle: &mut Handle, rsp: Response<Body>) -> Seen {
    let (req, send) = handle.next_request().await.unwrap();
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.unwrap();
    send.send_response(rsp);
    Seen {
        method: parts.method,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        data: collected.to_bytes(),
    }
}

fn grpc(code: &'static str) -> Response<Body> {
    let mut rsp = status(200);
    rsp.headers_mut()
        .insert("grpc-status", HeaderValue::from_static(code));
    rsp
}

#[tokio::test(start_paused = true)]
async fn a_get_answered_503_is_sent_again_and_succeeds() {
    let m = metrics();
    let mut req = request(&retrying(2, None));
    req.headers_mut()
        .insert("x-request-id", HeaderValue::from_static("abc"));
    *req.body_mut() = body::full("q=1");
    let (call, mut handle) = start(&m, req);
    let first = answer(&mut handle, status(503)).await;
    let second = answer(&mut handle, status(200)).await;
    assert_eq!(finish(call).await.unwrap().status(), 200);
    assert_eq!(first, second);
    assert_eq!(first.headers["x-request-id"], "abc");
    assert_eq!(first.data, "q=1");
    assert_eq!(retries_counted(&m, "taken"), 1);
    assert!(no_request(&mut handle));
}

#[tokio::test(start_paused = true)]
async fn a_post_answered_503_is_not_retried() {
    let m = metrics();
    let mut req = request(&retrying(2, None));
    *req.method_mut() = Method::POST;
    *req.body_mut() = body::full("order");
    let (call, mut handle) = start(&m, req);
    answer(&mut handle, status(503)).await;
    assert_eq!(finish(call).await.unwrap().status(), 503);
    assert!(no_request(&mut handle));
    assert_eq!(retries_counted(&m, "taken"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_post_whose_connection_failed_is_retried() {
    let m = metrics();
    // A route without retry settings: connect failures, once.
    let mut req = request(&route(&rule("r", &[("api", 1)])));
    *req.method_mut() = Method::POST;
    *req.body_mut() = body::full("order");
    let (call, mut handle) = start(&m, req);
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_error(ProxyError::ConnectFailed {
        endpoint: "10.0.0.7:4143".into(),
        detail: "connection refused".into(),
    });
    let second = answer(&mut handle, status(201)).await;
    assert_eq!(second.method, Method::POST);
    assert_eq!(second.data, "order");
    assert_eq!(finish(call).await.unwrap().status(), 201);
    assert_eq!(retries_counted(&m, "taken"), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_is_retried() {
    let m = metrics();
    let mut req = request(&retrying(2, None));
    *req.method_mut() = Method::POST;
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    *req.body_mut() = body::full(&b"\0\0\0\0\x02hi"[..]);
    let (call, mut handle) = start(&m, req);
    let first = answer(&mut handle, grpc("14")).await;
    let second = answer(&mut handle, grpc("0")).await;
    assert_eq!(first, second);
    let rsp = finish(call).await.unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "0");

    // Another gRPC error is the application's answer: not retried.
    let mut req = request(&retrying(2, None));
    *req.method_mut() = Method::POST;
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc+proto"),
    );
    let (call, mut handle) = start(&m, req);
    answer(&mut handle, grpc("5")).await;
    assert_eq!(finish(call).await.unwrap().headers()["grpc-status"], "5");
    assert!(no_request(&mut handle));
}

#[tokio::test(start_paused = true)]
async fn attempts_are_capped() {
    let m = metrics();
    let (call, mut handle) = start(&m, request(&retrying(2, None)));
    for _ in 0..3 {
        answer(&mut handle, status(503)).await;
    }
    assert_eq!(finish(call).await.unwrap().status(), 503);
    assert!(no_request(&mut handle));
    assert_eq!(retries_counted(&m, "taken"), 2);
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_of_a_failing_backend() {
    let m = metrics();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let failing = tower::service_fn(move |_req: Request<Body>| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, BoxError>(status(503)) }
    });
    let mut svc = RetryFailuresLayer::new(m.clone()).layer(failing);
    let route = retrying(
        1,
        Some(RetryBudget {
            ratio: 0.2,
            min_per_second: 1,
            ttl: Dur(Duration::from_secs(10)),
        }),
    );
    let n = 100;
    for _ in 0..n {
        let rsp = call(&mut svc, request(&route)).await.unwrap();
        // The failure goes back as it is.
        assert_eq!(rsp.status(), 503);
    }
    let calls = calls.load(Ordering::Relaxed) as u64;
    // 20 % of the requests plus the reserve of 1/s over 10 s.
    assert!(calls <= n + n / 5 + 10, "{calls}");
    let taken = retries_counted(&m, "taken");
    assert_eq!(calls, n + taken);
    assert!(taken >= n / 5, "{taken}");
    // Each request wanted one retry: the ones not taken were refused by the budget.
    assert_eq!(retries_counted(&m, "skipped_budget"), n - taken);
}

/// A body of unknown length: a stream with no size hint.
fn streamed(chunks: &[&'static str]) -> Body {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test(start_paused = true)]
async fn a_body_it_cannot_replay_is_sent_once() {
    let oversized = || body::full(vec![b'x'; MAX_REPLAY_BYTES as usize + 1]);
    for (name, make) in [
        (
            "unknown length",
            Box::new(|| streamed(&["a", "b"])) as Box<dyn Fn() -> Body>,
        ),
        ("over the cap", Box::new(oversized)),
    ] {
        let m = metrics();
        let mut req = request(&retrying(2, None));
        *req.method_mut() = Method::PUT;
        *req.body_mut() = make();
        let (call, mut handle) = start(&m, req);
        let seen = answer(&mut handle, status(503)).await;
        assert_eq!(
            seen.data,
            make().collect().await.unwrap().to_bytes(),
            "{name}"
        );
        assert_eq!(finish(call).await.unwrap().status(), 503, "{name}");
        assert!(no_request(&mut handle), "{name}");
        assert_eq!(retries_counted(&m, "skipped_body"), 1, "{name}");
        assert_eq!(retries_counted(&m, "taken"), 0, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_small_body_is_replayed_byte_identical_with_its_trailers() {
    let m = metrics();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
    let sent = trailers.clone();
    let mut req = request(&retrying(2, None));
    *req.method_mut() = Method::PUT;
    *req.body_mut() = body::boxed(
        Full::new(Bytes::from_static(b"\x00payload\xff"))
            .with_trailers(async move { Some(Ok::<_, Infallible>(sent)) }),
    );
    let (call, mut handle) = start(&m, req);
    let first = answer(&mut handle, status(503)).await;
    let second = answer(&mut handle, status(200)).await;
    assert_eq!(finish(call).await.unwrap().status(), StatusCode::OK);
    assert_eq!(first.data, Bytes::from_static(b"\x00payload\xff"));
    assert_eq!(first.trailers.as_ref(), Some(&trailers));
    assert_eq!(first, second);
    assert_eq!(retries_counted(&m, "skipped_body"), 0);
}
