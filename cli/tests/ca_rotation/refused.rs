//! A bundle that keeps none of the anchors a proxy trusts is refused and counted, and traffic
//! goes on over the bundle the proxy holds. It is served by an impostor among the identity
//! replicas: it holds a certificate of the mesh's CA for the identity service's SPIFFE ID (a
//! stolen key, or a replica restarted on another CA's bundle), so the proxy's TLS takes it,
//! and it answers `/v1/ca` with another CA's bundle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::server::CaInfo;
use weft_identity::tls::{self, CertStore, ClientAuth};
use weft_runtime::testing::http;

use super::support::{Traffic, admin_metric, app, wait};
use super::{EVERY, MAX, Mesh, trusts};

/// An HTTPS server as `spiffe://weft.local/ns/weft/sa/identity` (certified by `ca`) answering
/// `GET /v1/ca` with `foreign`'s bundle and everything else with 503. Runs until the process
/// ends.
fn impostor(ca: &Authority, foreign: &Authority) -> SocketAddr {
    let id = weft_identity::SpiffeId::parse("spiffe://weft.local/ns/weft/sa/identity").unwrap();
    let creds = ca.issue_credentials(&id).unwrap();
    let cfg = tls::server_config(
        CertStore::new(creds.certified_key().unwrap()),
        ClientAuth::Deferred,
        &[tls::ALPN_HTTP11],
    )
    .unwrap();
    let info = serde_json::to_vec(&CaInfo {
        trust_bundle: foreign.bundle().to_pem(),
        anchors: foreign.bundle().fingerprints(),
        issuer: foreign.issuer_fingerprint(),
        anchor_links: String::new(),
        reissue_before: None,
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, info) = (acceptor.clone(), info.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let rsp = if req.uri().path() == "/v1/ca" {
                            http::Response::new(Full::new(Bytes::from(info.clone())))
                        } else {
                            let mut r = http::Response::new(Full::new(Bytes::from_static(
                                br#"{"error":"unavailable","message":"impostor"}"#,
                            )));
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            r
                        };
                        async move { Ok::<_, std::convert::Infallible>(rsp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
    });
    addr
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn a_bundle_keeping_no_trusted_anchor_is_refused_and_traffic_goes_on() {
    // Leaves that outlive the test: nothing but the bundle changes.
    let mesh = Mesh::start("1h");
    let ca = mesh.ca();
    let other = tempfile::tempdir().unwrap();
    let foreign = Authority::load_or_create(&AuthorityConfig::new(other.path())).unwrap();
    let fake = impostor(&ca, &foreign);
    let api = mesh.start_proxy("api", app("api").port());
    let web = mesh.start_proxy_with(
        "web",
        app("web").port(),
        &format!("{},{fake}", mesh.identities[0].1),
    );
    let traffic = Traffic::start(web.outbound, "api.default", EVERY, MAX);
    let refused = |admin| {
        admin_metric(
            admin,
            "weft_identity_client_bundle_changes_total",
            &["result=\"refused\""],
        )
    };
    wait("a refused bundle", Duration::from_secs(30), || {
        refused(web.admin) >= 2.0
    });
    traffic.go_on_for(100);
    let anchor = ca.anchor_fingerprint();
    assert!(
        trusts(web.admin, &anchor),
        "web dropped the anchor it trusted"
    );
    assert!(
        !trusts(web.admin, &foreign.anchor_fingerprint()),
        "web took the foreign anchor"
    );
    let accepted = admin_metric(
        web.admin,
        "weft_identity_client_bundle_changes_total",
        &["result=\"accepted\""],
    );
    assert_eq!(accepted, 0.0);
    let (status, _) = http(api.outbound, "GET", "http://web.default/", "web.default").unwrap();
    assert_eq!(status, 200);
    let (failed, all) = traffic.finish();
    eprintln!(
        "refused bundles: {}; {all} requests, {} failed",
        refused(web.admin),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{:?}\n{}",
        &failed[..failed.len().min(5)],
        mesh.logs()
    );
}
