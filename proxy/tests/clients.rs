//! What real clients do on their first day, through real proxies on loopback (app → outbound
//! proxy → mTLS → inbound proxy → app), each compared with the same request to the app
//! directly: an HTTP/1.1 upgrade (WebSocket's handshake, then bytes both ways), a client that
//! half-closes after its request, HTTP/1.1 response trailers. The same cases with third-party
//! clients (python `websockets`, curl, ...) are in `cli/tests/compat.rs`.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_runtime::testing::{eventually, metric_sum};

/// The longest any step may take.
const STEP: Duration = Duration::from_secs(10);

/// An app that switches protocols on any upgrade request (answering with the token asked
/// for) and then echoes every byte; anything else gets `426 Upgrade Required`. Also serves
/// `/trailers`: a chunked body declaring and sending a trailer field, and `/hello`. It
/// answers a client that half-closed after its request, as most servers do.
async fn upgrade_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let svc = hyper::service::service_fn(
                |mut req: http::Request<hyper::body::Incoming>| async move {
                    match req.uri().path() {
                        "/trailers" => return Ok::<_, Infallible>(trailers_response()),
                        // Refuses an upload before reading it (as a server over its size limit).
                        "/upload" => {
                            let body = http_body_util::Full::new(Bytes::from_static(b"too large"));
                            return Ok(response(413, BodyExt::boxed(body)));
                        }
                        // Reads the body (hyper then says `100 Continue`) and counts it.
                        "/count" => {
                            let n = req
                                .into_body()
                                .collect()
                                .await
                                .map_or(0, |b| b.to_bytes().len());
                            let body = http_body_util::Full::new(Bytes::from(format!("{n} bytes")));
                            return Ok(response(200, BodyExt::boxed(body)));
                        }
                        "/hello" => {
                            let body =
                                http_body_util::Full::new(Bytes::from_static(b"hello from api"));
                            return Ok(response(200, BodyExt::boxed(body)));
                        }
                        _ => {}
                    }
                    let Some(token) = req.headers().get("upgrade").cloned() else {
                        return Ok(response(426, http_body_util::Empty::new().boxed()));
                    };
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                    let mut rsp = response(101, http_body_util::Empty::new().boxed());
                    rsp.headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    rsp.headers_mut().insert("upgrade", token);
                    rsp.headers_mut().insert(
                        "sec-websocket-accept",
                        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
                    );
                    Ok(rsp)
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// The mesh in front of [`upgrade_app`], api's policy letting only `allowed` in: the mesh, the
/// app, api's proxy, web's proxy.
async fn mesh_allowing(allowed: &str) -> (Mesh, SocketAddr, TestProxy, TestProxy) {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = upgrade_app().await;
    let api = mesh.proxy("api", app.port(), allow_only(&[allowed])).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver.set_proxies("api", [&api]);
    (mesh, app, api, web)
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn response(status: u16, body: BoxBody) -> http::Response<BoxBody> {
    let mut rsp = http::Response::new(body);
    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    rsp
}

/// `hello` in a chunked body, then the trailer `x-checksum: 5`, declared in `Trailer`.
fn trailers_response() -> http::Response<BoxBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "5".parse().unwrap());
    let frames = vec![
        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"hello"))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut rsp = response(200, BodyExt::boxed(body));
    rsp.headers_mut()
        .insert("trailer", "x-checksum".parse().unwrap());
    rsp
}

/// Reads an HTTP/1 response head from `io`, byte by byte (nothing after it is consumed).
async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, io.read(&mut byte))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(
            n == 1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Sends a WebSocket-shaped upgrade request for `target` (`Host: host`) on a new connection
/// to `addr`: the connection and the response head.
async fn upgrade(addr: SocketAddr, target: &str, host: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (tcp, head)
}

/// 100 small messages echoed one by one, then 1 MB echoed while it is written.
async fn echo_both_ways(tcp: TcpStream) {
    let (mut r, mut w) = tcp.into_split();
    for i in 0..100 {
        let msg = format!("message {i:03}");
        w.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(STEP, r.read_exact(&mut got))
            .await
            .expect("an echo in time")
            .unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(STEP, r.read_to_end(&mut got))
        .await
        .expect("1 MB echoed in time")
        .unwrap();
    writer.await.unwrap();
    assert!(got == big, "{} bytes back of {}", got.len(), big.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upgrade_crosses_the_mesh_and_bytes_flow_both_ways() {
    let (_mesh, app, api, web) = mesh_allowing("web").await;
    let authority = format!("api.default:{}", app.port());

    // Directly, the app switches protocols.
    let (tcp, head) = upgrade(app, "/chat", "localhost").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo_both_ways(tcp).await;

    // Through the mesh, with the Host header and in absolute form (an HTTP proxy's client).
    for target in ["/chat".to_string(), format!("http://{authority}/chat")] {
        let (tcp, head) = upgrade(web.outbound, &target, &authority).await;
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 101"), "{target}: {head}");
        assert!(lower.contains("upgrade: websocket"), "{head}");
        assert!(lower.contains("connection: upgrade"), "{head}");
        assert!(lower.contains("sec-websocket-accept: "), "{head}");
        echo_both_ways(tcp).await;
    }

    // Counted: the upgrade requests as 1xx answers on both sides, the relayed bytes (100
    // messages and 1 MB, each way) under each proxy's direction once the connections ended.
    let bytes = |p: &TestProxy, dir: &str| {
        metric_sum(
            &p.metrics(),
            "weft_proxy_tcp_bytes_total",
            &[&format!("direction=\"{dir}\""), "flow=\"to_client\""],
        )
    };
    let counted = eventually(STEP, || {
        bytes(&web, "outbound") >= 2.0 * f64::from(1 << 20)
            && bytes(&api, "inbound") >= 2.0 * f64::from(1 << 20)
    });
    assert!(counted.await, "{}\n{}", web.metrics(), api.metrics());
    for (p, dir) in [(&web, "outbound"), (&api, "inbound")] {
        let m = p.metrics();
        let switched = metric_sum(
            &m,
            "weft_proxy_responses_total",
            &[&format!("direction=\"{dir}\""), "status_class=\"1xx\""],
        );
        assert_eq!(switched, 2.0, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_policy_denies_gets_403_and_never_reaches_the_app() {
    let (_mesh, app, _api, web) = mesh_allowing("admin").await;
    let authority = format!("api.default:{}", app.port());
    let (mut tcp, head) = upgrade(web.outbound, "/chat", &authority).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("weft-error: forbidden"),
        "{head}"
    );
    // The connection is not switched: after the 403's body it takes another request.
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("denied by policy"));
    let req = format!("GET /chat HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

/// `shutdown(SHUT_WR)` after the request, as netcat and scripts do: the answer still comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let (_mesh, app, _api, web) = mesh_allowing("web").await;
    for (addr, host) in [
        (app, "localhost".to_string()),
        (web.outbound, format!("api.default:{}", app.port())),
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rsp = Vec::new();
        tokio::time::timeout(STEP, tcp.read_to_end(&mut rsp))
            .await
            .expect("the answer in time")
            .unwrap();
        let rsp = String::from_utf8_lossy(&rsp);
        let via = if addr == app {
            "directly"
        } else {
            "through the mesh"
        };
        assert!(rsp.starts_with("HTTP/1.1 200"), "{via}: {rsp:?}");
        assert!(rsp.contains("hello from api"), "{rsp}");
    }
}

/// An HTTP/1.1 response's trailer fields reach an HTTP/1.1 client as the app sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_response_trailers_arrive_as_sent() {
    let (_mesh, app, _api, web) = mesh_allowing("web").await;
    let authority = format!("api.default:{}", app.port());
    for (addr, host) in [(app, "localhost"), (web.outbound, authority.as_str())] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/trailers")
            .header("host", host)
            .header("te", "trailers")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let body = tokio::time::timeout(STEP, rsp.into_body().collect())
            .await
            .unwrap()
            .unwrap();
        let trailers = body.trailers().cloned();
        assert_eq!(body.to_bytes(), "hello");
        let trailers = trailers.unwrap_or_else(|| panic!("{addr}: no trailers"));
        assert_eq!(trailers["x-checksum"], "5", "{addr}");
    }
}

/// Sends `CONNECT authority` on a new connection to `proxy`: the connection, the response
/// head and how long it took.
async fn connect(proxy: SocketAddr, authority: &str) -> (TcpStream, String, Duration) {
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (tcp, head, started.elapsed())
}

/// `CONNECT` answers 200 only once the tunnel's far end, the application behind the peer
/// proxy, is connected: a closed port gets a prompt 502 naming why; an open one a 200, then
/// the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_answers_200_only_once_the_far_end_is_connected() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let echo = echo_app().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = mesh.proxy("api", echo.port(), allow_only(&["web"])).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver.set_proxies("api", [&api]);

    let (_, head, took) = connect(web.outbound, &format!("api.default:{closed}")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("weft-error: app_unavailable"), "{head}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let (mut tcp, head, _) = connect(web.outbound, &format!("api.default:{}", echo.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"ping\n").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(STEP, tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping\n");
    // The tunnel is counted as what it is, opaque TCP, by both proxies: outbound only once it
    // is open; inbound every tunnel that arrived, the refused one too.
    let tunnels = |p: &TestProxy, direction: &str| {
        metric_sum(
            &p.metrics(),
            "weft_proxy_tcp_connections_total",
            &[&format!("direction=\"{direction}\""), "protocol=\"opaque\""],
        )
    };
    assert_eq!(tunnels(&web, "outbound"), 1.0, "{}", web.metrics());
    assert_eq!(tunnels(&api, "inbound"), 2.0, "{}", api.metrics());

    // A tunnel the receiving proxy's policy denies: 403, naming the policy.
    let denied = mesh.proxy("api", echo.port(), allow_only(&["admin"])).await;
    mesh.resolver.set_proxies("api", [&denied]);
    let (_, head, _) = connect(web.outbound, &format!("api.default:{}", echo.port())).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("weft-error: forbidden"), "{head}");
}

/// Sends the head of a `PUT` of `length` bytes with `Expect: 100-continue` on a new connection
/// to `addr`: the connection and the first response head (interim or final).
async fn expect_continue(
    addr: SocketAddr,
    host: &str,
    path: &str,
    length: usize,
) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let first = read_head(&mut tcp).await;
    (tcp, first)
}

/// `Expect: 100-continue`: the `100 Continue` comes from the server, so a server that refuses
/// an upload before reading it answers before the client sends any of it; one that reads it
/// gets it after its own `100`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_100_continue_comes_from_the_server() {
    let (_mesh, app, _api, web) = mesh_allowing("web").await;
    let authority = format!("api.default:{}", app.port());
    for (addr, host, via) in [
        (app, "localhost", "directly"),
        (web.outbound, authority.as_str(), "through the mesh"),
    ] {
        // 10 MB announced, refused: the 413 is the first thing the client hears, all of it.
        let (mut tcp, first) = expect_continue(addr, host, "/upload", 10 << 20).await;
        assert!(first.starts_with("HTTP/1.1 413"), "{via}: {first}");
        let mut body = [0u8; 9];
        tokio::time::timeout(STEP, tcp.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&body, b"too large", "{via}");

        // Accepted: `100 Continue`, then the body, then the answer.
        let (mut tcp, first) = expect_continue(addr, host, "/count", 1000).await;
        assert!(first.starts_with("HTTP/1.1 100"), "{via}: {first}");
        tcp.write_all(&[b'x'; 1000]).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{via}: {head}");
        let mut body = [0u8; 10];
        tokio::time::timeout(STEP, tcp.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&body, b"1000 bytes", "{via}");
    }
}

/// An HTTP/1.1 app that writes its responses itself: `/unary`, `hello` and the trailer
/// `x-checksum: 5`, undeclared (no `Trailer` header: RFC 9110 only asks a sender to declare);
/// `/stream`, a gRPC-shaped response whose trailers (`grpc-status: 0`) follow 200 ms after its
/// first message, undeclared too.
async fn undeclared_trailers_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                let stream = head.starts_with("GET /stream");
                let content_type = if stream {
                    "application/grpc"
                } else {
                    "text/plain"
                };
                let first = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n"
                );
                let _ = tcp.write_all(first.as_bytes()).await;
                let last = if stream {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "0\r\ngrpc-status: 0\r\n\r\n"
                } else {
                    "0\r\nx-checksum: 5\r\n\r\n"
                };
                let _ = tcp.write_all(last.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// Trailers an app sends without declaring them in `Trailer` reach an HTTP/1.1 client that
/// takes trailers (`TE: trailers`) as they do directly: a complete body's, and a streaming
/// gRPC response's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_trailers_arrive_as_sent() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = undeclared_trailers_app().await;
    let api = mesh.proxy("api", app.port(), allow_only(&["web"])).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver.set_proxies("api", [&api]);
    let authority = format!("api.default:{}", app.port());
    for (addr, host) in [(app, "localhost"), (web.outbound, authority.as_str())] {
        for (path, name, value) in [
            ("/unary", "x-checksum", "5"),
            ("/stream", "grpc-status", "0"),
        ] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = http::Request::get(path)
                .header("host", host)
                .header("te", "trailers")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let rsp = sender.send_request(req).await.unwrap();
            assert_eq!(rsp.status(), 200, "{addr}{path}");
            let body = tokio::time::timeout(STEP, rsp.into_body().collect())
                .await
                .unwrap()
                .unwrap();
            let trailers = body.trailers().cloned();
            assert_eq!(body.to_bytes(), "hello", "{addr}{path}");
            let trailers = trailers.unwrap_or_else(|| panic!("{addr}{path}: no trailers"));
            assert_eq!(trailers[name], value, "{addr}{path}");
        }
    }
}

/// An HTTP/2 client (prior knowledge) whose requests reach an HTTP/1-only app is told so:
/// `502 protocol_mismatch`, not a frame error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_to_an_http1_only_app_is_told_of_the_mismatch() {
    let (_mesh, app, api, web) = mesh_allowing("web").await;
    let tcp = TcpStream::connect(web.outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://api.default:{}/hello", app.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let rsp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(parts.status, 502, "{text}");
    assert_eq!(parts.headers["weft-error"], "protocol_mismatch", "{text}");
    assert!(text.contains("speaks HTTP/2"), "{text}");
    let mismatches = metric_sum(
        &api.metrics(),
        "weft_proxy_errors_total",
        &["direction=\"inbound\"", "reason=\"protocol_mismatch\""],
    );
    assert_eq!(mismatches, 1.0, "{}", api.metrics());
}
