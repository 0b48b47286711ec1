//! Input the fuzz targets (`fuzz/`) found or aim at, sent to a real control plane over
//! HTTP/1.1: refused with a 400 and a message, never a dropped connection.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_policy::server::Settings;

/// `POST /v1/register` with `body` on a fresh connection: the whole answer, as text.
async fn post_register(api: SocketAddr, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(api).await.unwrap();
    let req = format!(
        "POST /v1/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the control plane answers within 5 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A lease past `Duration::MAX` panicked in the request's task (the connection closed with
/// no answer): the duration parser used `Duration::from_secs_f64`.
#[tokio::test]
async fn a_lease_too_long_is_a_400_not_a_dropped_connection() {
    let (_dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let body = r#"{"service":"api","address":"127.0.0.1:9000","lease":"99999999999999999999999s"}"#;
    let answer = post_register(cp.api, body).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(
        answer.contains("bad_registration") && answer.contains("too long"),
        "{answer}"
    );
    // A sane lease on the same server is granted.
    let body = r#"{"service":"api","address":"127.0.0.1:9000","lease":"30s"}"#;
    let answer = post_register(cp.api, body).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    cp.stop().await;
}
