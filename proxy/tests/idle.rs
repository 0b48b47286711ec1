//! Idle HTTP/1 client connections through real proxies on loopback (`web`'s outbound → mTLS →
//! `api`'s inbound → app): between requests a keep-alive connection is parked without hyper's
//! buffers, and whatever the client sends next (a head in pieces, pipelined requests, a body
//! after a pause that looks like a request) is served as it would be on a connection that never
//! parked.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_runtime::testing::{eventually, metric_sum};

const WAIT: Duration = Duration::from_secs(20);

/// A client connection to the proxy, reading whole responses.
struct Client {
    tcp: TcpStream,
    /// Bytes read past the last response (a pipelined one's).
    buf: Vec<u8>,
}

impl Client {
    async fn connect(proxy: &TestProxy) -> Self {
        let tcp = TcpStream::connect(proxy.outbound).await.unwrap();
        Client {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.tcp.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// The next response with a `content-length` or chunked body, whole.
    async fn response(&mut self) -> String {
        let read = async {
            loop {
                if let Some(end) = complete(&self.buf) {
                    let rest = self.buf.split_off(end);
                    return std::mem::replace(&mut self.buf, rest);
                }
                let mut chunk = [0u8; 4096];
                let n = self.tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before a whole response: {:?}", self.buf);
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        let got = tokio::time::timeout(WAIT, read).await.expect("no response");
        String::from_utf8(got).unwrap()
    }

    async fn get(&mut self, path: &str) -> String {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: api\r\n\r\n"))
            .await;
        self.response().await
    }
}

/// The length of the first whole response in `buf`, if there is one.
fn complete(buf: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(buf).ok()?;
    let head_end = text.find("\r\n\r\n")? + 4;
    let head = text[..head_end].to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap())
    {
        return (buf.len() >= head_end + len).then_some(head_end + len);
    }
    if head.contains("transfer-encoding: chunked") {
        return text[head_end..].find("0\r\n\r\n").map(|i| head_end + i + 5);
    }
    Some(head_end)
}

fn idle(proxy: &TestProxy) -> f64 {
    metric_sum(
        &proxy.metrics(),
        "weft_proxy_http1_idle_connections",
        &["direction=\"outbound\""],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_parked_and_serve_their_next_requests() {
    let (_mesh, _app, _api, web) = api_and_web(Duration::from_secs(3600)).await;
    let mut conns = Vec::new();
    for i in 0..40 {
        let mut client = Client::connect(&web).await;
        let answer = client.get(&format!("/first/{i}")).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains(&format!("GET /first/{i} ")), "{answer}");
        conns.push(client);
    }
    assert!(
        eventually(WAIT, || idle(&web) == 40.0).await,
        "{}",
        web.metrics()
    );
    // Each serves again, several times. Woken within a second of parking, a connection
    // counts as busy: it parks again only after a second with no request.
    for round in 0..3 {
        for (i, client) in conns.iter_mut().enumerate() {
            let answer = client.get(&format!("/again/{round}/{i}")).await;
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
            assert!(
                answer.contains(&format!("GET /again/{round}/{i} ")),
                "{answer}"
            );
        }
    }
    assert!(
        eventually(WAIT, || idle(&web) == 40.0).await,
        "{}",
        web.metrics()
    );
    // Clients closing their idle connections are noticed.
    conns.truncate(10);
    assert!(
        eventually(WAIT, || idle(&web) == 10.0).await,
        "{}",
        web.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_and_bodies_split_by_pauses_and_pipelined_requests_are_served_in_order() {
    let (_mesh, _app, _api, web) = api_and_web(Duration::from_secs(3600)).await;
    let mut c = Client::connect(&web).await;
    assert!(c.get("/warm").await.starts_with("HTTP/1.1 200 "));
    assert!(eventually(WAIT, || idle(&web) == 1.0).await);

    // A head in two pieces, the connection idle in between.
    c.send("GET /split HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send("st: api\r\n\r\n").await;
    let answer = c.response().await;
    assert!(answer.contains("GET /split "), "{answer}");

    // Two requests in one write: two answers, in order.
    c.send("GET /p1 HTTP/1.1\r\nHost: api\r\n\r\nGET /p2 HTTP/1.1\r\nHost: api\r\n\r\n")
        .await;
    let first = c.response().await;
    let second = c.response().await;
    assert!(first.contains("GET /p1 "), "{first}");
    assert!(second.contains("GET /p2 "), "{second}");

    // A body sent after a pause, which reads like a request: it is the body (echoed back),
    // never a request of its own.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n";
    let head = format!(
        "POST /stream HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    c.send(&head).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(smuggled).await;
    let echoed = c.response().await;
    assert!(echoed.starts_with("HTTP/1.1 200 "), "{echoed}");
    assert!(echoed.contains(smuggled), "{echoed}");
    let after = c.get("/after").await;
    assert!(after.contains("GET /after "), "{after}");
    assert!(!after.contains("/smuggled"), "{after}");
    // warm, split, p1, p2, stream, after: no more.
    let m = web.metrics();
    assert_eq!(
        metric_sum(&m, "weft_proxy_requests_total", &["direction=\"outbound\""]),
        6.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_when_the_proxy_shuts_down() {
    let (_mesh, _app, _api, web) = api_and_web(Duration::from_secs(3600)).await;
    let mut c = Client::connect(&web).await;
    assert!(c.get("/").await.starts_with("HTTP/1.1 200 "));
    assert!(eventually(WAIT, || idle(&web) == 1.0).await);
    tokio::time::timeout(WAIT, web.stop())
        .await
        .expect("the proxy waited for an idle connection");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, c.tcp.read(&mut buf))
        .await
        .expect("the idle connection stayed open")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", &buf[..n]);
}
