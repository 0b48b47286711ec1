use http::Response;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::body::{self, Body};
use crate::edge::proxy_error;

#[test]
fn parses_destinations() {
    let d = |s: &str| Destination::parse(&s.parse().unwrap(), "default");
    let api = d("api:8080").unwrap();
    assert_eq!(
        (api.namespace.as_str(), api.service.as_str(), api.port),
        ("default", "api", 8080)
    );
    assert_eq!(api.authority.as_str(), "api:8080");
    assert_eq!(d("api.prod").unwrap().namespace, "prod");
    assert_eq!(d("api.prod").unwrap().port, 80);
    assert_eq!(d("api.prod.svc.cluster.local:9000").unwrap().service, "api");
    assert_eq!(d("10.0.0.1:80"), None);
    assert_eq!(d("[::1]:80"), None);
}

#[tokio::test]
async fn requests_carry_their_destination_from_host_or_absolute_uri() {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut svc = FindDestinationLayer::new(Destinations::new("default")).layer(svc);
    for req in [
        Request::get("http://api.prod:9000/x")
            .body(body::empty())
            .unwrap(),
        Request::get("/x")
            .header("host", "api.prod:9000")
            .body(body::empty())
            .unwrap(),
    ] {
        let call = svc.ready().await.unwrap().call(req);
        let (seen, send) = handle.next_request().await.unwrap();
        let dst = seen.extensions().get::<Destination>().unwrap();
        assert_eq!(&**dst.label(), "prod/api");
        assert_eq!(dst.port, 9000);
        send.send_response(Response::new(body::empty()));
        call.await.unwrap();
    }
}

#[tokio::test]
async fn a_request_without_destination_fails_clearly() {
    let (svc, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = FindDestinationLayer::new(Destinations::new("default")).layer(svc);
    let err = svc
        .oneshot(Request::get("/x").body(body::empty()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(proxy_error(err.as_ref()).code(), "bad_request");

    let (svc, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let svc = FindDestinationLayer::new(Destinations::new("default")).layer(svc);
    let err = svc
        .oneshot(
            Request::get("http://10.1.2.3/")
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap_err();
    let e = proxy_error(err.as_ref());
    assert_eq!(e.code(), "unknown_destination");
    assert!(e.to_string().contains("10.1.2.3"), "{e}");
}
