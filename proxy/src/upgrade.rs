//! HTTP/1.1 upgrades (RFC 9110 §7.8): WebSocket, and any other protocol a client switches to.
//!
//! An upgrade request (HTTP/1.1, `Connection: upgrade` and an `Upgrade` header) goes through
//! the whole stack as any other request does: routing, authorization by the receiving proxy,
//! timeouts until the answer, metrics (its `101` counted as a 1xx). Its `Connection` and
//! `Upgrade` headers, hop-by-hop, are renewed at every hop rather than dropped. It then takes a
//! connection of its own at each hop, never the shared HTTP/2 connection between proxies:
//! the client's proxy opens an mTLS connection to the peer proxy speaking HTTP/1.1 (ALPN
//! `http/1.1`; an endpoint without a proxy gets plaintext), and the peer proxy opens one to its
//! application. So an upgraded stream, however long it lives or slowly it is read, holds no
//! window and no stream that other requests share, and any upgrade token passes.
//!
//! When the server answers `101 Switching Protocols`, each proxy hands the answer to its client
//! and relays the bytes between the client's upgraded connection and the server's, counted in
//! `weft_proxy_tcp_bytes_total`; any other answer is an ordinary response on that connection.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{self, Body};
use crate::http::strip_hop_by_hop;
use crate::metrics::ProxyMetrics;

/// Whether `req` asks to switch protocols on its connection (a `CONNECT` tunnel is not this).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && req.headers().contains_key(header::UPGRADE)
        && connection_names(req.headers(), "upgrade")
}

/// Whether the `Connection` header lists `token`.
fn connection_names(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the hop-by-hop headers but the upgrade's: `Upgrade` is kept, and `Connection`
/// names only `upgrade`.
pub fn strip_keeping_upgrade(headers: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = headers.get_all(header::UPGRADE).iter().cloned().collect();
    strip_hop_by_hop(headers);
    for v in upgrade {
        headers.append(header::UPGRADE, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Sends `req` (origin-form, with its `Host`, its headers ready for the hop) on a new
/// HTTP/1.1 connection over `io`, which can then switch protocols.
pub async fn send<I>(io: I, mut req: Request<Body>) -> Result<Response<Incoming>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    *req.version_mut() = Version::HTTP_11;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    sender.send_request(req).await
}

/// The answer to give the client whose pending upgrade is `client`: on a `101`, the bytes of
/// both upgraded connections are relayed (and counted under `direction`) once the client has
/// it; any other answer is an ordinary response.
pub fn answer(
    client: OnUpgrade,
    mut rsp: Response<Incoming>,
    direction: &'static str,
    metrics: &Arc<ProxyMetrics>,
) -> Response<Body> {
    if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return crate::http::forwarded(rsp);
    }
    let server = hyper::upgrade::on(&mut rsp);
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client, server) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(direction, error = %e, "upgrade not completed");
                return;
            }
        };
        let _open = metrics.tcp_open(direction, "upgraded");
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        crate::tcp::relay(&mut client, &mut server, direction, &metrics).await;
    });
    let (mut parts, body) = rsp.into_parts();
    strip_keeping_upgrade(&mut parts.headers);
    Response::from_parts(parts, body::boxed(body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn get(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/chat");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn an_upgrade_is_told_by_both_headers() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        assert!(is_upgrade(&get(&ws)));
        assert!(!is_upgrade(&get(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&get(&[("connection", "upgrade")])));
        let mut h2 = get(&ws);
        *h2.version_mut() = Version::HTTP_2;
        assert!(!is_upgrade(&h2));
        let mut connect = get(&ws);
        *connect.method_mut() = Method::CONNECT;
        assert!(!is_upgrade(&connect));
    }

    #[test]
    fn only_the_upgrade_survives_of_the_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "keep-alive, Upgrade, x-private".parse().unwrap(),
        );
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        strip_keeping_upgrade(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }
}
