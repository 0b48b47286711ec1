//! One bad request never hurts another, through real proxies on loopback (`web`'s outbound →
//! mTLS, one shared HTTP/2 connection → `api`'s inbound → app): a header block over the mesh's
//! limits is refused by the proxy it enters, and the requests sharing the connection go on;
//! a client's malformed or abandoned body is the client's fault, not the endpoint's.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::AsyncWriteExt;
use weft_runtime::testing::{eventually, metric_sum};

const LIMIT: Duration = Duration::from_secs(120);

/// An app that answers `/` after `delay`, and `/big-response` at once with a 100 KiB header.
async fn app_with_big_responses(delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let started = Arc::new(AtomicU64::new(0));
    let count = started.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let mut rsp = http::Response::builder().header("x-app", "api");
                            if req.uri().path() == "/big-response" {
                                rsp = rsp.header("x-big", "b".repeat(100 * 1024));
                            } else if req.uri().path() == "/hang" {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                            } else if req.uri().path() == "/upload-stalls" {
                                // Never reads the upload (nor answers, within the test).
                                tokio::time::sleep(Duration::from_secs(60)).await;
                            } else if req.uri().path() == "/download" {
                                let body = Bytes::from(vec![b'd'; 16 << 20]);
                                return Ok::<_, Infallible>(rsp.body(Full::new(body)).unwrap());
                            } else {
                                count.fetch_add(1, Ordering::Relaxed);
                                // Reads what it is sent before answering, as servers that keep
                                // their connections do: one answering early and closing with
                                // the body unread resets the connection, and the answer may be
                                // lost with it (TCP drops unread data on a reset).
                                let _ = req.into_body().collect().await;
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(rsp.body(Full::new(Bytes::from("ok"))).unwrap())
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, started)
}

fn request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_where_they_enter_and_the_shared_connection_lives_on() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let (app, started) = app_with_big_responses(Duration::from_millis(1500)).await;
    let api = mesh.open_proxy("api", app.port()).await;
    mesh.resolver.set_proxies("api", [&api]);
    let web = mesh.client_proxy("web").await;
    // One request opens the connection between the proxies that all the others share.
    let first = drive(web.outbound, "http://api/", 1, 1, &[], LIMIT).await;
    assert_eq!(first[0].status, 200, "{first:?}");

    // 30 requests in flight on it.
    let load = tokio::spawn(drive(web.outbound, "http://api/", 30, 30, &[], LIMIT));
    assert!(
        eventually(Duration::from_secs(20), || started.load(Ordering::Relaxed)
            >= 31)
        .await,
        "the 30 requests did not reach the app"
    );
    // A 100 KiB header (over the limit, and over four times HTTP/2's default list size, at
    // which a receiver ends the whole connection): the client's own proxy answers 431.
    let big = request("/", &format!("x-big: {}\r\n", "a".repeat(100 * 1024)));
    let answer = raw_exchange(web.outbound, &big).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{}", &answer[..200]);
    assert!(answer.contains("weft-error: headers_too_large"), "{answer}");
    // More header fields than the limit: the HTTP/1 parser's own 431, at the same proxy.
    let fields: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw_exchange(web.outbound, &request("/", &fields)).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // A response with a 100 KiB header: refused by the proxy of the app that made it.
    let answer = raw_exchange(web.outbound, &request("/big-response", "")).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(
        answer.contains("weft-error: response_headers_too_large"),
        "{answer}"
    );

    let replies = load.await.unwrap();
    assert_eq!(count(&replies, |r| r.status == 200), 30, "{replies:?}");
    // One set of limits: 40 KiB of headers (over HTTP/2's default of 16 KiB, under the
    // mesh's 64 KiB) cross the mesh.
    let mid = request("/", &format!("x-mid: {}\r\n", "m".repeat(40 * 1024)));
    assert!(
        raw_exchange(web.outbound, &mid)
            .await
            .starts_with("HTTP/1.1 200 ")
    );

    let (web_m, api_m) = (web.metrics(), api.metrics());
    let errors = |m: &str, dir: &str, reason: &str| {
        metric_sum(
            m,
            "weft_proxy_errors_total",
            &[
                &format!("direction=\"{dir}\""),
                &format!("reason=\"{reason}\""),
            ],
        )
    };
    assert_eq!(
        errors(&web_m, "outbound", "headers_too_large"),
        2.0,
        "{web_m}"
    );
    assert_eq!(
        errors(&api_m, "inbound", "response_headers_too_large"),
        1.0,
        "{api_m}"
    );
    assert_eq!(
        errors(&web_m, "outbound", "upstream_failed"),
        0.0,
        "{web_m}"
    );
    // The oversized requests never reached api: it saw the 31, the big response's and the
    // 40 KiB one.
    let seen = metric_sum(
        &api_m,
        "weft_proxy_requests_total",
        &["direction=\"inbound\""],
    );
    assert_eq!(seen, 33.0, "{api_m}");
    web.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_bad_or_abandoned_body_is_its_own_fault_and_ejects_no_endpoint() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = test_app("api", Duration::from_millis(50), 0).await;
    let (api, web) = api_with_rule(
        &mesh,
        &[&app],
        "all",
        "\n  circuitBreaker: {consecutiveFailures: 3, ejectionTime: 30s}",
    )
    .await;
    let first = drive(web.outbound, "http://api/", 1, 1, &[], LIMIT).await;
    assert_eq!(first[0].status, 200, "{first:?}");

    // A malformed chunked body (chunk size `ZZZZ`), five times: the client's 400.
    for _ in 0..5 {
        let answer = raw_exchange(
            web.outbound,
            "POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\nZZZZ\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains("weft-error: bad_request_body"), "{answer}");
    }
    // A body cut short by a client that goes away, five times.
    for _ in 0..5 {
        let mut tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
        tcp.write_all(b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 1000\r\n\r\nshort")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tcp);
    }
    let counted = |reason: &str| {
        metric_sum(
            &web.metrics(),
            "weft_proxy_errors_total",
            &["direction=\"outbound\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || counted("client_closed") >= 5.0).await,
        "{}",
        web.metrics()
    );
    assert_eq!(counted("bad_request_body"), 5.0, "{}", web.metrics());
    assert_eq!(counted("upstream_failed"), 0.0, "{}", web.metrics());

    // The endpoint was not ejected: every request goes through, and nobody blamed it.
    let replies = drive(web.outbound, "http://api/", 20, 2, &[], LIMIT).await;
    assert_eq!(count(&replies, |r| r.status == 200), 20, "{replies:?}");
    let web_m = web.metrics();
    assert_eq!(
        metric_sum(&web_m, "weft_balance_ejections_total", &[]),
        0.0,
        "{web_m}"
    );
    let api_m = api[0].metrics();
    assert_eq!(
        metric_sum(
            &api_m,
            "weft_proxy_errors_total",
            &["reason=\"app_unavailable\""]
        ),
        0.0,
        "{api_m}"
    );
    // The clients' failures are in the metrics as theirs: 4xx, not 5xx.
    assert_eq!(
        metric_sum(
            &web_m,
            "weft_proxy_responses_total",
            &["direction=\"outbound\"", "status_class=\"5xx\""]
        ),
        0.0,
        "{web_m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_or_wait_long_do_not_stall_the_shared_connection() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let (app, _) = app_with_big_responses(Duration::ZERO).await;
    let api = mesh.open_proxy("api", app.port()).await;
    mesh.resolver.set_proxies("api", [&api]);
    let web = mesh.client_proxy("web").await;
    let first = drive(web.outbound, "http://api/", 1, 1, &[], LIMIT).await;
    assert_eq!(first[0].status, 200, "{first:?}");
    // Eight clients ask for 16 MiB each and never read it: their responses stop on the
    // shared connection once their socket buffers are full.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
        tcp.write_all(request("/download", "").as_bytes())
            .await
            .unwrap();
        stalled.push(tcp);
    }
    // Time for the downloads to fill every buffer on the way (no condition to wait on: what
    // is tested is that nothing else waits).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replies = drive(
        web.outbound,
        "http://api/",
        20,
        4,
        &[],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(count(&replies, |r| r.status == 200), 20, "{replies:?}");

    // The other way: eight clients upload 16 MiB each to an app that never reads them.
    let mut uploads = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
        uploads.push(tokio::spawn(async move {
            let head =
                "POST /upload-stalls HTTP/1.1\r\nHost: api\r\nContent-Length: 16777216\r\n\r\n";
            tcp.write_all(head.as_bytes()).await.unwrap();
            let _ = tcp.write_all(&vec![b'u'; 16 << 20]).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Other clients' uploads still go through.
    for _ in 0..5 {
        let post =
            "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n";
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            raw_exchange(web.outbound, &format!("{post}{}", "p".repeat(100_000))),
        )
        .await
        .expect("an upload waited for the stalled ones");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    for u in uploads {
        u.abort();
    }

    // 300 requests that wait for a long time (long polls): more than hyper's default limit
    // of requests in flight on one connection, which made the next ones queue behind them.
    let mut polls = Vec::new();
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(web.outbound).await.unwrap();
        tcp.write_all(request("/hang", "").as_bytes())
            .await
            .unwrap();
        polls.push(tcp);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replies = drive(
        web.outbound,
        "http://api/",
        10,
        2,
        &[],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(count(&replies, |r| r.status == 200), 10, "{replies:?}");
    drop(polls);
    drop(stalled);
    web.stop().await;
    api.stop().await;
}
