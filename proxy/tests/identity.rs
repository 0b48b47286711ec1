//! Who may talk through a proxy, over real proxies on loopback: the inbound policy by
//! identity, certificates the inbound port refuses (another CA, expired, another identity), a
//! peer proving the wrong identity, and certificates rotating under load.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use weft_runtime::testing::{eventually, metric_sum};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_web_may_call_api() {
    let (mesh, app, api, web) = api_and_web(Duration::from_secs(3600)).await;
    let other = mesh.client_proxy("other").await;
    let url = format!("http://api.default:{}/v1/data", app.port());

    let (status, _, _) = get_via(web.outbound, &url).await;
    assert_eq!(status, 200);
    let (status, headers, body) = get_via(other.outbound, &url).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers.get("weft-error").unwrap(), "forbidden");
    assert!(
        body.contains("server:default/api"),
        "the body names the policy: {body}"
    );
    assert!(
        body.contains("spiffe://weft.local/ns/default/sa/other"),
        "and the peer: {body}"
    );
    let m = api.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "weft_proxy_authz_total",
            &[
                "decision=\"deny\"",
                "peer=\"spiffe://weft.local/ns/default/sa/other\""
            ]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "weft_proxy_errors_total",
            &["direction=\"inbound\"", "reason=\"forbidden\""]
        ),
        1.0,
        "{m}"
    );

    // A policy change applies at once to the next request.
    api.policy
        .send_replace(Some(Arc::new(allow_only(&["web", "other"]))));
    let (status, _, _) = get_via(other.outbound, &url).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_at_the_inbound_port_and_good_ones_keep_working() {
    let (mesh, app, api, web) = api_and_web(Duration::from_secs(3600)).await;
    let url = format!("http://api.default:{}/", app.port());
    let ok = || async { get_via(web.outbound, &url).await.0 };
    assert_eq!(ok().await, 200);

    // 1. Plaintext from outside the mesh: no identity, so the policy (web only) denies it.
    let (status, headers, body) = http1_get(api.inbound, "/", &format!("api:{}", app.port())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers.get("weft-error").unwrap(), "forbidden");
    assert!(body.contains("no mesh identity"), "{body}");
    assert_eq!(ok().await, 200);

    // 2. A certificate from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = weft_identity::authority::Authority::load_or_create(
        &weft_identity::authority::AuthorityConfig::new(other_dir.path()),
    )
    .unwrap();
    let foreign = issue(&other_ca, "web");
    assert_refused(&mesh, &api, &foreign, "untrusted_peer").await;
    assert_eq!(ok().await, 200);

    // 3. An expired certificate from the right CA.
    let mut short = mesh.authority_cfg.clone();
    short.leaf_lifetime = Duration::from_secs(1);
    short.clock_skew = Duration::ZERO;
    let expired = issue(
        &weft_identity::authority::Authority::load_or_create(&short).unwrap(),
        "web",
    );
    assert!(
        eventually(Duration::from_secs(5), || std::time::SystemTime::now()
            > expired.not_after + Duration::from_secs(1))
        .await
    );
    assert_refused(&mesh, &api, &expired, "certificate_expired").await;
    assert_eq!(ok().await, 200);

    // 4. The right CA but another SPIFFE ID: authenticated, then denied by policy.
    let mallory = issue(&mesh.authority(), "mallory");
    let (status, body) = tls_get(&mesh, api.inbound, &mallory).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("spiffe://weft.local/ns/default/sa/mallory"),
        "{body}"
    );
    assert_eq!(ok().await, 200);
}

/// `api`'s inbound port refuses a handshake with `client` credentials, and counts the failure
/// under `reason`.
async fn assert_refused(
    mesh: &Mesh,
    api: &TestProxy,
    client: &weft_identity::tls::Credentials,
    reason: &str,
) {
    assert!(tls_get(mesh, api.inbound, client).await.is_err());
    assert!(
        eventually(Duration::from_secs(5), || metric_sum(
            &api.metrics(),
            "weft_proxy_tls_handshake_failures_total",
            &[&format!("reason=\"{reason}\"")]
        ) >= 1.0)
        .await,
        "{}",
        api.metrics()
    );
}

fn issue(a: &weft_identity::authority::Authority, name: &str) -> weft_identity::tls::Credentials {
    let identity = id(name);
    let (key, csr) = weft_identity::client::generate_csr(&identity).unwrap();
    let checked = weft_identity::csr::check(csr.as_bytes(), &identity).unwrap();
    let issued = a.issue(&checked, &identity).unwrap();
    weft_identity::tls::Credentials {
        identity,
        key: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        chain: issued.chain,
        bundle: a.bundle().clone(),
        not_before: issued.not_before,
        not_after: issued.not_after,
    }
}

/// An mTLS connection (ALPN h2) to a proxy's inbound port with `client` credentials, verifying
/// the proxy as `api`.
async fn connect_as(
    mesh: &Mesh,
    addr: std::net::SocketAddr,
    client: &weft_identity::tls::Credentials,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let bundle = mesh.authority().bundle().clone();
    let certs = weft_identity::tls::CertStore::new(client.certified_key().unwrap());
    let cfg = weft_identity::tls::client_config(&bundle, id("api"), Some(certs), &[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(weft_identity::tls::server_name(&id("api")), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// An HTTP/2 GET over mTLS with `client` credentials to a proxy's inbound port, verifying the
/// proxy as `api`. In TLS 1.3 a refused client certificate shows on the first exchange.
async fn tls_get(
    mesh: &Mesh,
    addr: std::net::SocketAddr,
    client: &weft_identity::tls::Credentials,
) -> Result<(u16, String), String> {
    let tls = connect_as(mesh, addr, client).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("http://api.default/")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_identity_is_refused_and_counted() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = http_app("api").await;
    let api = mesh.open_proxy("api", app.port()).await;
    let web = mesh.client_proxy("web").await;
    // Discovery says the endpoint is `db`, but the proxy there proves `api`.
    mesh.resolver.set("db", vec![(api.inbound, Some(id("db")))]);
    let (status, headers, body) =
        get_via(web.outbound, &format!("http://db.default:{}/", app.port())).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers.get("weft-error").unwrap(), "identity_mismatch");
    assert!(
        body.contains("spiffe://weft.local/ns/default/sa/api")
            && body.contains("spiffe://weft.local/ns/default/sa/db"),
        "{body}"
    );
    let m = web.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "weft_proxy_tls_handshake_failures_total",
            &["direction=\"outbound\"", "reason=\"identity_mismatch\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "weft_proxy_errors_total",
            &["direction=\"outbound\"", "reason=\"identity_mismatch\""]
        ),
        1.0,
        "{m}"
    );

    // No endpoints, unknown service: 503 / 502 with their reasons.
    mesh.resolver.set("empty", vec![]);
    let (status, headers, _) = get_via(web.outbound, "http://empty.default:80/").await;
    assert_eq!(
        (status, headers.get("weft-error").unwrap().to_str().unwrap()),
        (503, "no_endpoints")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_with_zero_failed_requests() {
    // Certificates live 3 s: the proxies renew every ~2 s while traffic flows.
    let (mesh, app, api, web) = api_and_web(Duration::from_secs(3)).await;
    let url = format!("http://api.default:{}/load", app.port());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut load = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        let outbound = web.outbound;
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Bounded in time and count.
            while tokio::time::Instant::now() < deadline && ok < 20_000 {
                let (status, _, body) = get_via(outbound, &url).await;
                if status == 200 {
                    ok += 1;
                } else {
                    failed.push(format!("{status}: {body}"));
                }
            }
            (ok, failed)
        }));
    }
    // Meanwhile, new handshakes to the api proxy see its new certificates.
    let web_creds = issue(&mesh.authority(), "web");
    let mut leaves = std::collections::HashSet::new();
    while tokio::time::Instant::now() < deadline {
        if let Some(leaf) = server_leaf(&mesh, api.inbound, &web_creds).await {
            leaves.insert(leaf);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut total = 0;
    for t in load {
        let (ok, failed) = t.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during rotation: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 100, "only {total} requests ran");
    assert!(
        leaves.len() >= 3,
        "new handshakes should see new certificates, saw {}",
        leaves.len()
    );
    let renewals = metric_sum(
        &api.metrics(),
        "weft_identity_client_certify_total",
        &["kind=\"renewal\"", "result=\"ok\""],
    );
    assert!(renewals >= 2.0, "api renewed {renewals} times");
    let renewals = metric_sum(
        &web.metrics(),
        "weft_identity_client_certify_total",
        &["kind=\"renewal\"", "result=\"ok\""],
    );
    assert!(renewals >= 2.0, "web renewed {renewals} times");
}

/// The leaf certificate a proxy's inbound port presents to a new mTLS handshake.
async fn server_leaf(
    mesh: &Mesh,
    addr: std::net::SocketAddr,
    client: &weft_identity::tls::Credentials,
) -> Option<Vec<u8>> {
    let tls = connect_as(mesh, addr, client).await.ok()?;
    tls.get_ref()
        .1
        .peer_certificates()?
        .first()
        .map(|c| c.to_vec())
}
