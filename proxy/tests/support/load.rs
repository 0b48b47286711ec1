//! Clients for the proxy's integration tests: load through a proxy ([`drive`]), raw bytes on a
//! connection ([`raw_exchange`]), and the `api` workloads with one route rule that the
//! resilience tests send it to.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_policy::routes::RouteRule;

use super::{Mesh, TestApp, TestProxy};

/// What a client got for one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `x-app` of the app that answered.
    pub app: Option<String>,
    /// `weft-fault` values.
    pub faults: Vec<String>,
    /// `weft-error`.
    pub error: Option<String>,
    pub elapsed: Duration,
}

/// Sends `n` GETs of `url` through `proxy` (as its HTTP proxy) over `concurrency` keep-alive
/// connections, with `headers`; bounded by `limit` overall.
pub async fn drive(
    proxy: SocketAddr,
    url: &str,
    n: usize,
    concurrency: usize,
    headers: &[(&'static str, &'static str)],
    limit: Duration,
) -> Vec<Reply> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let uri: http::Uri = url.parse().unwrap();
    let headers: Vec<(&'static str, &'static str)> = headers.to_vec();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, uri, headers) = (next.clone(), uri.clone(), headers.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
                    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let s = sender.as_mut().unwrap();
                s.ready().await.unwrap();
                let mut req = http::Request::get(uri.clone())
                    .header("host", uri.authority().unwrap().as_str());
                for (k, v) in &headers {
                    req = req.header(*k, *v);
                }
                let start = std::time::Instant::now();
                let rsp = s
                    .send_request(req.body(Full::new(Bytes::new())).unwrap())
                    .await
                    .unwrap();
                let elapsed = start.elapsed();
                let h = rsp.headers();
                let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
                let reply = Reply {
                    status: rsp.status().as_u16(),
                    app: get("x-app"),
                    faults: h
                        .get_all("weft-fault")
                        .iter()
                        .map(|v| v.to_str().unwrap().to_string())
                        .collect(),
                    error: get("weft-error"),
                    elapsed,
                };
                rsp.into_body().collect().await.unwrap();
                out.push(reply);
            }
            out
        }));
    }
    let all = tokio::time::timeout(limit, futures_util::future::join_all(workers))
        .await
        .expect("the load did not finish in time");
    all.into_iter().flat_map(|r| r.unwrap()).collect()
}

/// How many replies satisfy `f`.
pub fn count(replies: &[Reply], f: impl Fn(&Reply) -> bool) -> usize {
    replies.iter().filter(|r| f(r)).count()
}

/// Route rules from YAML, in the form the control plane serves them.
pub fn rules(yaml: &str) -> Vec<RouteRule> {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// Sends `request` as it is on a new connection to `addr`; the whole answer (the proxy
/// closes after it: `Connection: close`).
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes within 10 s")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// One `api` workload (proxy + app) per app, registered as `service`.
pub async fn api_endpoints(mesh: &Mesh, service: &str, apps: &[&TestApp]) -> Vec<TestProxy> {
    let mut proxies = Vec::new();
    for app in apps {
        proxies.push(mesh.open_proxy("api", app.addr.port()).await);
    }
    mesh.resolver.set_proxies(service, &proxies);
    proxies
}

/// The `api` workloads in front of `apps` (as `api_endpoints`), then `web`'s proxy, then
/// `api`'s single route rule `rule` with `settings` (as `one_rule`).
pub async fn api_with_rule(
    mesh: &Mesh,
    apps: &[&TestApp],
    rule: &str,
    settings: &str,
) -> (Vec<TestProxy>, TestProxy) {
    let api = api_endpoints(mesh, "api", apps).await;
    let web = mesh.client_proxy("web").await;
    mesh.resolver
        .set_routes("api", one_rule("api", rule, settings));
    (api, web)
}

/// The single route rule `name` of `service`, sending all of it to `service` itself, with the
/// rule's `settings` (YAML lines: retry, timeouts, fault...).
pub fn one_rule(service: &str, name: &str, settings: &str) -> Vec<RouteRule> {
    rules(&format!(
        r#"
- route: default/{service}
  name: {name}
  backends: [{{namespace: default, service: {service}, weight: 1}}]{settings}"#
    ))
}
