use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_test::mock;

use super::*;
use crate::body;

fn metrics() -> Arc<ProxyMetrics> {
    ProxyMetrics::new(weft_runtime::metrics::Registry::new())
}

#[tokio::test]
async fn errors_below_become_their_response_and_are_counted() {
    let m = metrics();
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = EdgeLayer::new("outbound", None, m.clone()).layer(svc);
    let call = tokio::spawn(svc.oneshot(Request::get("/").body(body::empty()).unwrap()));
    let (req, send) = handle.next_request().await.unwrap();
    // A layer below learnt the destination before failing.
    Labels::set_dst(&req, || Arc::from("default/api"));
    // Wrapped in another error: the edge finds it in the source chain.
    #[derive(Debug)]
    struct Wrapper(ProxyError);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("while balancing")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    send.send_error(Wrapper(ProxyError::NoEndpoints {
        destination: "api.default:80".into(),
    }));
    let rsp = call.await.unwrap().unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rsp.headers()[crate::error::ERROR_HEADER], "no_endpoints");
    let text = m.registry.render();
    for want in [
        r#"weft_proxy_errors_total{direction="outbound",reason="no_endpoints"} 1"#,
        r#"weft_proxy_responses_total{direction="outbound",peer="none",dst_service="default/api",status_class="5xx"} 1"#,
        r#"weft_proxy_requests_total{direction="outbound",peer="none",dst_service="default/api",tls="false"} 1"#,
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
}

#[tokio::test]
async fn answered_requests_are_counted_with_what_layers_below_learnt() {
    let m = metrics();
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = EdgeLayer::new("inbound", Some(Arc::from("default/api")), m.clone()).layer(svc);
    let call = tokio::spawn(svc.oneshot(Request::get("/").body(body::empty()).unwrap()));
    let (req, send) = handle.next_request().await.unwrap();
    Labels::set_peer(
        &req,
        || Arc::from("spiffe://weft.local/ns/default/sa/web"),
        true,
    );
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = StatusCode::NOT_FOUND;
    send.send_response(rsp);
    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::NOT_FOUND);
    let text = m.registry.render();
    let want = r#"weft_proxy_responses_total{direction="inbound",peer="spiffe://weft.local/ns/default/sa/web",dst_service="default/api",status_class="4xx"} 1"#;
    assert!(text.contains(want), "{text}");
    assert!(text.contains(r#"tls="true""#), "{text}");
}

#[test]
fn unknown_errors_are_upstream_failures_with_their_chain() {
    let io = std::io::Error::other("reset by peer");
    let e = proxy_error(&io);
    assert_eq!(e.code(), "upstream_failed");
    assert!(e.to_string().contains("reset by peer"), "{e}");
}

#[tokio::test]
async fn a_request_dropped_unanswered_is_the_clients_499_noted_before_the_layers_below_go() {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Held by the layer below; looks at the labels when dropped.
    struct Below {
        labels: Arc<Labels>,
        saw_fault: Arc<AtomicBool>,
    }
    impl Drop for Below {
        fn drop(&mut self) {
            let noted = self
                .labels
                .client_fault()
                .is_some_and(|e| e.code() == "client_closed");
            self.saw_fault.store(noted, Ordering::SeqCst);
        }
    }
    let m = metrics();
    let saw_fault = Arc::new(AtomicBool::new(false));
    let seen = saw_fault.clone();
    let below = tower::service_fn(move |req: Request<Body>| {
        let below = Below {
            labels: req.extensions().get::<Arc<Labels>>().unwrap().clone(),
            saw_fault: seen.clone(),
        };
        async move {
            let _held = below;
            std::future::pending::<Result<Response<Body>, BoxError>>().await
        }
    });
    use tower::Service;
    let mut svc = EdgeLayer::new("outbound", None, m.clone()).layer(below);
    let fut = svc.call(Request::get("/").body(body::empty()).unwrap());
    let mut fut = Box::pin(fut);
    // Polled once (the layer below holds its state), then the client goes away.
    assert!(futures_poll_once(&mut fut).await.is_none());
    drop(fut);
    assert!(
        saw_fault.load(Ordering::SeqCst),
        "the layer below did not see the 499 first"
    );
    let text = m.registry.render();
    for want in [
        r#"weft_proxy_errors_total{direction="outbound",reason="client_closed"} 1"#,
        r#"status_class="4xx"} 1"#,
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
}

#[tokio::test]
async fn oversized_requests_and_responses_are_refused_at_the_edge() {
    let m = metrics();
    let svc = tower::service_fn(|req: Request<Body>| async move {
        let mut rsp = Response::new(body::empty());
        if req.uri().path() == "/big" {
            let big = http::HeaderValue::from_str(&"b".repeat(70 * 1024)).unwrap();
            rsp.headers_mut().insert("x-big", big);
        }
        Ok::<_, BoxError>(rsp)
    });
    let svc = EdgeLayer::new("inbound", Some(Arc::from("default/api")), m.clone()).layer(svc);
    let big = Request::get("/")
        .header("x-big", "a".repeat(70 * 1024))
        .body(body::empty())
        .unwrap();
    let rsp = svc.clone().oneshot(big).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        rsp.headers()[crate::error::ERROR_HEADER],
        "headers_too_large"
    );
    let rsp = svc
        .oneshot(Request::get("/big").body(body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        rsp.headers()[crate::error::ERROR_HEADER],
        "response_headers_too_large"
    );
}

/// Polls `fut` once: its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A gRPC client gets the proxy's own answers as gRPC statuses (trailers-only), counted under
/// the HTTP status the error stands for.
#[tokio::test]
async fn a_grpc_call_gets_a_grpc_status_for_each_proxy_error() {
    let cases = [
        (
            ProxyError::Timeout {
                destination: "api.default:80".into(),
                after_ms: 100,
            },
            "4",
            "5xx",
        ),
        (
            ProxyError::NoEndpoints {
                destination: "api.default:80".into(),
            },
            "14",
            "5xx",
        ),
        (
            ProxyError::Forbidden {
                policy: "default/api-from-web".into(),
                reason: "not allowed: 100%".into(),
                peer: "spiffe://weft.local/ns/default/sa/db".into(),
            },
            "7",
            "4xx",
        ),
    ];
    for (error, status, class) in cases {
        let m = metrics();
        let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let svc = EdgeLayer::new("outbound", None, m.clone()).layer(svc);
        let req = Request::post("/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc+proto")
            .body(body::empty())
            .unwrap();
        let call = tokio::spawn(svc.oneshot(req));
        let (_, send) = handle.next_request().await.unwrap();
        let message = error.to_string();
        send.send_error(error.clone());
        let rsp = call.await.unwrap().unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "{error:?}");
        let h = rsp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], status, "{error:?}");
        assert_eq!(h[crate::error::ERROR_HEADER], error.code());
        let grpc_message = h["grpc-message"].to_str().unwrap();
        assert_eq!(
            grpc_message.replace("%25", "%"),
            message,
            "percent-encoded only where it must be"
        );
        use http_body::Body as _;
        assert!(rsp.body().is_end_stream(), "trailers-only: no body");
        let text = m.registry.render();
        let want = format!("status_class=\"{class}\"}} 1");
        assert!(text.contains(&want), "{want} in\n{text}");
    }
    // gRPC-Web and other content types get the plain answer.
    let web = Request::post("/x")
        .header("content-type", "application/grpc-web+proto")
        .body(())
        .unwrap();
    assert!(!crate::error::is_grpc(&web));
}
