//! The API over mesh TLS: callers are identified by their client certificates, and a
//! registration may only claim the identity (and namespace) its certificate proves.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use weft_identity::SpiffeId;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::tls::{self, CertStore, ClientAuth, Credentials};
use weft_policy::client::{ClientError, ClientTls, PolicyClient, service_identity};
use weft_policy::registry::Registration;
use weft_policy::server::{Security, Settings};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

struct Mesh {
    _ca_dir: tempfile::TempDir,
    ca: Authority,
    policy_id: SpiffeId,
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(&AuthorityConfig::new(dir.path())).unwrap();
        let policy_id = service_identity(ca.trust_domain()).unwrap();
        Self {
            _ca_dir: dir,
            ca,
            policy_id,
        }
    }

    fn settings(&self, dir: &std::path::Path) -> Settings {
        let serving = credentials(&self.ca, &self.policy_id);
        let tls = tls::server_config(
            CertStore::new(serving.certified_key().unwrap()),
            ClientAuth::Deferred,
            &[tls::ALPN_H2, tls::ALPN_HTTP11],
        )
        .unwrap();
        let mut s = Settings::insecure(dir);
        s.security = Security::Mtls {
            tls: Arc::new(tls),
            bundle: self.ca.bundle().clone(),
        };
        s
    }

    /// A client presenting `creds` (or nothing).
    fn client(&self, addr: std::net::SocketAddr, creds: Option<&Credentials>) -> PolicyClient {
        let certs: Option<Arc<dyn rustls::client::ResolvesClientCert>> =
            creds.map(|c| CertStore::new(c.certified_key().unwrap()) as _);
        let tls = ClientTls::mesh(self.ca.bundle(), self.policy_id.clone(), certs).unwrap();
        let mut s = fast_settings(addr.to_string());
        s.tls = Some(tls);
        PolicyClient::new(s)
    }
}

fn registration(identity: Option<&str>, namespace: Option<&str>) -> Registration {
    Registration {
        service: "api".into(),
        namespace: namespace.map(str::to_string),
        labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
        address: "127.0.0.1:7201".parse().unwrap(),
        identity: identity.map(id),
        lease: None,
        metrics: None,
    }
}

fn refusal(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Rejected { status, body }) => (status.as_u16(), body.error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_claims_only_the_proven_identity() {
    let mesh = Mesh::new();
    let (_dir, cp) = serve_resources(RESOURCES, |d| mesh.settings(d)).await;
    let api_id = id("spiffe://weft.local/ns/default/sa/api");
    let api_creds = credentials(&mesh.ca, &api_id);
    let client = mesh.client(cp.api, Some(&api_creds));

    // Watches work over TLS (h2 by ALPN).
    let mut endpoints = client.watch_endpoints("default", "api");
    wait_until(
        &mut endpoints,
        Duration::from_secs(5),
        "a snapshot over mTLS",
        |e| e.endpoints.is_empty(),
    )
    .await;

    // The identity comes from the certificate; claiming it explicitly is fine too.
    let granted = client.register(&registration(None, None)).await.unwrap();
    assert_eq!(granted.identity.as_ref(), Some(&api_id));
    assert_eq!(granted.namespace, "default");
    client
        .register(&registration(Some(api_id.as_str()), Some("default")))
        .await
        .unwrap();
    let got = wait_until(
        &mut endpoints,
        Duration::from_secs(2),
        "the registration",
        |e| e.endpoints.len() == 1,
    )
    .await;
    assert_eq!(got.endpoints[0].identity.as_ref(), Some(&api_id));

    // Claiming another identity, or another namespace, is refused.
    let r = client
        .register(&registration(
            Some("spiffe://weft.local/ns/default/sa/web"),
            None,
        ))
        .await;
    assert_eq!(refusal(r), (403, "identity_mismatch".into()));
    let r = client.register(&registration(None, Some("prod"))).await;
    assert_eq!(refusal(r), (403, "namespace_mismatch".into()));

    // Another workload cannot take over the address while the lease runs.
    let evil = credentials(&mesh.ca, &id("spiffe://weft.local/ns/default/sa/evil"));
    let r = mesh
        .client(cp.api, Some(&evil))
        .register(&registration(None, None))
        .await;
    assert_eq!(refusal(r), (409, "address_taken".into()));

    // No certificate: refused.
    let r = mesh
        .client(cp.api, None)
        .register(&registration(None, None))
        .await;
    assert_eq!(refusal(r), (401, "client_cert_required".into()));

    // A certificate from another CA (same trust domain and name): refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = Authority::load_or_create(&AuthorityConfig::new(other_dir.path())).unwrap();
    let forged = credentials(&other_ca, &api_id);
    let r = mesh
        .client(cp.api, Some(&forged))
        .register(&registration(None, None))
        .await;
    assert_eq!(refusal(r), (401, "client_cert_refused".into()));

    let (_, metrics) = cp.admin_get("/metrics").await;
    assert!(
        metrics.contains("weft_policy_registrations_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_policy_registrations_total{result=\"rejected\"} 3"),
        "{metrics}"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_control_plane_with_another_identity() {
    let mesh = Mesh::new();
    let (_dir, cp) = serve_resources(RESOURCES, |d| mesh.settings(d)).await;
    let creds = credentials(&mesh.ca, &id("spiffe://weft.local/ns/default/sa/api"));
    let certs: Arc<dyn rustls::client::ResolvesClientCert> =
        CertStore::new(creds.certified_key().unwrap());
    let tls = ClientTls::mesh(
        mesh.ca.bundle(),
        id("spiffe://weft.local/ns/weft/sa/impostor-check"),
        Some(certs),
    )
    .unwrap();
    let mut s = fast_settings(cp.api.to_string());
    s.tls = Some(tls);
    let err = PolicyClient::new(s)
        .register(&registration(None, None))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    cp.stop().await;
}
