//! Requests through real proxies on loopback: app → outbound proxy → mTLS → inbound proxy → app.
//! Who may talk through a proxy (policy, refused certificates, rotation) is in `identity.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_runtime::testing::{eventually, metric_sum};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_through_both_proxies_over_mtls() {
    let (_mesh, app, api, web) = api_and_web(Duration::from_secs(3600)).await;

    let url = format!("http://api.default:{}/hello", app.port());
    for _ in 0..3 {
        let (status, headers, body) = get_via(web.outbound, &url).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers.get("x-app").unwrap(), "api");
        assert_eq!(
            body,
            format!(
                "hello from api: GET /hello via HTTP/1.1 host=api.default:{}",
                app.port()
            )
        );
    }
    // Both sides saw a TLS 1.3 handshake with the other's certificate, and one pooled
    // connection carried all three requests.
    let api_m = api.metrics();
    let web_m = web.metrics();
    let inbound_hs = metric_sum(
        &api_m,
        "weft_proxy_tls_handshakes_total",
        &[
            "direction=\"inbound\"",
            "peer=\"spiffe://weft.local/ns/default/sa/web\"",
            "tls_version=\"1.3\"",
        ],
    );
    let outbound_hs = metric_sum(
        &web_m,
        "weft_proxy_tls_handshakes_total",
        &[
            "direction=\"outbound\"",
            "peer=\"spiffe://weft.local/ns/default/sa/api\"",
            "tls_version=\"1.3\"",
        ],
    );
    assert_eq!(inbound_hs, 1.0, "{api_m}");
    assert_eq!(outbound_hs, 1.0, "{web_m}");
    assert_eq!(
        metric_sum(
            &api_m,
            "weft_proxy_requests_total",
            &["direction=\"inbound\"", "tls=\"true\""]
        ),
        3.0,
        "{api_m}"
    );
    assert_eq!(
        metric_sum(
            &web_m,
            "weft_proxy_responses_total",
            &[
                "direction=\"outbound\"",
                "dst_service=\"default/api\"",
                "status_class=\"2xx\""
            ]
        ),
        3.0,
        "{web_m}"
    );
    assert_eq!(
        metric_sum(&api_m, "weft_proxy_authz_total", &["decision=\"allow\""]),
        3.0
    );

    // Host-based routing (origin-form with Host) works too, as for HTTP_PROXY-less clients.
    let (status, _, body) =
        http1_get(web.outbound, "/origin-form", &format!("api:{}", app.port())).await;
    assert_eq!(status, 200);
    assert!(body.contains("GET /origin-form"));

    web.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_grpc_streaming_with_trailers_and_opaque_tcp_pass_intact() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = http_app("api").await;
    let echo = echo_app().await;
    let api = mesh.open_proxy("api", app.port()).await;
    let echo_proxy = mesh.open_proxy("echo", echo.port()).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver.set_proxies("api", [&api]);
    mesh.resolver.set_proxies("echo", [&echo_proxy]);

    // HTTP/2 with prior knowledge, a streamed body with trailers, like a gRPC call.
    let tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "t1".parse().unwrap());
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(
            b"\x00\x00\x00\x00\x05hello",
        ))),
        Ok(hyper::body::Frame::data(Bytes::from_static(
            b"\x00\x00\x00\x00\x05world",
        ))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::post(format!("http://api.default:{}/stream", app.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.version(), http::Version::HTTP_2);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-client-trailer").unwrap(), "t1");
    assert_eq!(
        &collected.to_bytes()[..],
        b"\x00\x00\x00\x00\x05hello\x00\x00\x00\x00\x05world"
    );

    // Opaque TCP: a CONNECT tunnel through both proxies to a line echo server.
    let mut tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
    let target = format!("echo.default:{}", echo.port());
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for line in ["ping\n", "a longer line with bytes \u{1f600}\n"] {
        tcp.write_all(line.as_bytes()).await.unwrap();
        let mut back = vec![0u8; line.len()];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(back, line.as_bytes());
    }
    drop(tcp);
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &echo_proxy.metrics(),
            "weft_proxy_tcp_bytes_total",
            &["direction=\"inbound\"", "flow=\"to_server\""]
        ) > 0.0)
        .await,
        "{}",
        echo_proxy.metrics()
    );
    let m = echo_proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "weft_proxy_tls_handshakes_total",
            &[
                "peer=\"spiffe://weft.local/ns/default/sa/web\"",
                "tls_version=\"1.3\""
            ]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_change_live_and_unmeshed_endpoints_get_labelled_plaintext() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let a1 = http_app("api-1").await;
    let a2 = http_app("api-2").await;
    let api1 = mesh.open_proxy("api", a1.port()).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver.set_proxies("api", [&api1]);
    let (status, _, body) = get_via(web.outbound, &format!("http://api:{}/", a1.port())).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from api-1"), "{body}");

    // The endpoint set changes: the next request goes to the new endpoint, no restart.
    let api2 = mesh.open_proxy("api", a2.port()).await;
    mesh.resolver.set_proxies("api", [&api2]);
    let (status, _, body) = get_via(web.outbound, &format!("http://api:{}/", a2.port())).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from api-2"), "{body}");

    // A static endpoint without a proxy: plaintext straight to the app, labelled tls="false".
    let legacy = http_app("legacy").await;
    mesh.resolver.set("legacy", vec![(legacy, None)]);
    let (status, _, body) = get_via(
        web.outbound,
        &format!("http://legacy:{}/old", legacy.port()),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("hello from legacy: GET /old via HTTP/1.1"),
        "{body}"
    );
    let m = web.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "weft_proxy_requests_total",
            &[
                "dst_service=\"default/legacy\"",
                "tls=\"false\"",
                "peer=\"none\""
            ]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_two_host_headers_is_refused_at_the_edge() {
    let (_mesh, app, api, web) = api_and_web(Duration::from_secs(3600)).await;
    let port = app.port();
    // RFC 9112 §3.2: more than one Host field line is a 400, whether they differ or not.
    for second in [
        format!("evil.example:{port}"),
        format!("api.default:{port}"),
    ] {
        let answer = raw_exchange(
            web.outbound,
            &format!(
                "GET /x HTTP/1.1\r\nHost: api.default:{port}\r\nHost: {second}\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("weft-error: bad_request"), "{answer}");
        assert!(answer.contains("2 Host headers"), "{answer}");
    }
    let web_m = web.metrics();
    assert_eq!(
        metric_sum(
            &web_m,
            "weft_proxy_errors_total",
            &["direction=\"outbound\"", "reason=\"bad_request\""]
        ),
        2.0,
        "{web_m}"
    );
    // Nothing reached api; the next, well-formed request on the same proxy goes through.
    let api_m = api.metrics();
    assert_eq!(
        metric_sum(&api_m, "weft_proxy_requests_total", &[]),
        0.0,
        "{api_m}"
    );
    let answer = raw_exchange(
        web.outbound,
        &format!("GET /x HTTP/1.1\r\nHost: api.default:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    web.stop().await;
    api.stop().await;
}

/// A proxy keeps a connection to a peer proxy only while it is used: the connection to an
/// endpoint that went away leaves, and one no request took for the idle timeout closes. (The
/// soak of issue 16 found a proxy holding on to every endpoint it ever reached, and endpoints
/// come back at new addresses.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_peers_that_went_away_or_sat_idle_are_closed() {
    let mut mesh = Mesh::new(Duration::from_secs(3600)).await;
    mesh.discovery.idle_timeout = Duration::from_secs(2);
    let app = http_app("api").await;
    let first = mesh.open_proxy("api", app.port()).await;
    let second = mesh.open_proxy("api", app.port()).await;
    let web = mesh.client_proxy("web").await;
    let url = format!("http://api.default:{}/", app.port());
    let peers = |p: &TestProxy| metric_sum(&p.metrics(), "weft_proxy_peer_connections", &[]);
    let inbound_open = |p: &TestProxy| {
        metric_sum(
            &p.metrics(),
            "weft_proxy_tcp_open_connections",
            &["direction=\"inbound\""],
        )
    };

    mesh.resolver.set_proxies("api", [&first]);
    assert_eq!(get_via(web.outbound, &url).await.0, 200);
    assert_eq!((peers(&web), inbound_open(&first)), (1.0, 1.0));

    // The first endpoint goes away; the second, at another address, takes its place.
    mesh.resolver.set_proxies("api", [&second]);
    first.stop().await;
    assert_eq!(get_via(web.outbound, &url).await.0, 200);
    let one = eventually(Duration::from_secs(10), || {
        peers(&web) == 1.0 && inbound_open(&second) == 1.0
    });
    assert!(one.await, "one connection, to the second: {}", peers(&web));

    // Unused for the idle timeout, it is closed on both sides.
    let closed = eventually(Duration::from_secs(10), || {
        peers(&web) == 0.0 && inbound_open(&second) == 0.0
    });
    assert!(closed.await, "the idle connection closed: {}", peers(&web));
    // And the next request connects again.
    assert_eq!(get_via(web.outbound, &url).await.0, 200);
    assert_eq!((peers(&web), inbound_open(&second)), (1.0, 1.0));
}
