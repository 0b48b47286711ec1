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
