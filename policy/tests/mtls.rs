//! The API over mesh TLS: callers are identified by their client certificates, and a
//! registration may only claim the identity (and namespace) its certificate proves.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use support::*;
use weft_identity::SpiffeId;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::tls::{self, CertStore, ClientAuth, Credentials};
use weft_policy::client::{ClientError, ClientTls, PolicyClient, service_identity};
use weft_policy::registry::Registration;
use weft_policy::server::{Security, Settings};
use weft_runtime::testing::{eventually_some, metric_sum};

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
            bundle: self.ca.bundle().clone().into(),
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
        trust: None,
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

/// A request body that stays open until its sender is used or dropped: keeps a request in
/// flight.
struct Open(tokio::sync::oneshot::Receiver<()>);

impl http_body::Body for Open {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.0).poll(cx).map(|_| None)
    }
}

type Sender = SendRequest<BoxBody<Bytes, Infallible>>;

/// A raw HTTP/2 connection over mesh TLS presenting `creds`: to see the answers the client
/// library retries quietly.
async fn h2(mesh: &Mesh, addr: std::net::SocketAddr, creds: &Credentials) -> Sender {
    let certs: Arc<dyn rustls::client::ResolvesClientCert> =
        CertStore::new(creds.certified_key().unwrap());
    let tls = ClientTls::mesh(mesh.ca.bundle(), mesh.policy_id.clone(), Some(certs)).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET path` on `sender`'s connection: the answer, its body unread (a watch streams).
async fn get(sender: &Sender, path: &str) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::get(format!("https://policy{path}"))
        .body(Empty::new().boxed())
        .unwrap();
    sender.clone().send_request(req).await.unwrap()
}

/// The status of an answer and the error code of its body (empty for a 200).
async fn refusal_of(rsp: http::Response<hyper::body::Incoming>) -> (u16, String, String) {
    let status = rsp.status().as_u16();
    if status == 200 {
        return (status, String::new(), String::new());
    }
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let e: weft_runtime::serve::ErrorBody = serde_json::from_slice(&body).unwrap();
    (status, e.error, e.message)
}

/// Asks `path` until the status is `want` (at most 5 s): the last answer.
async fn until_status(sender: &Sender, path: &str, want: u16) -> (u16, String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = refusal_of(get(sender, path).await).await;
        if got.0 == want || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_has_its_own_caps_on_watches_and_requests() {
    let mesh = Mesh::new();
    let (_dir, cp) = serve_resources(RESOURCES, |d| {
        let mut s = mesh.settings(d);
        s.api.max_watches_per_identity = 3;
        s.api.max_requests_per_identity = 2;
        s
    })
    .await;
    let web_id = id("spiffe://weft.local/ns/default/sa/web");
    let web_creds = credentials(&mesh.ca, &web_id);
    let web = h2(&mesh, cp.api, &web_creds).await;
    let api = h2(
        &mesh,
        cp.api,
        &credentials(&mesh.ca, &id("spiffe://weft.local/ns/default/sa/api")),
    )
    .await;
    let watch = |name: &str| format!("/v1/endpoints?service={name}&watch=true");

    // web opens its three watches (on names that do not exist: they count all the same)...
    let mut open = Vec::new();
    for i in 0..3 {
        let rsp = get(&web, &watch(&format!("nothing-{i}"))).await;
        assert_eq!(rsp.status(), 200);
        let mut body = rsp.into_body();
        body.frame().await.unwrap().unwrap(); // the snapshot: the stream is live
        open.push(body);
    }
    // ...and a fourth is refused, also on another connection of the same identity.
    let (status, error, message) = refusal_of(get(&web, &watch("api")).await).await;
    assert_eq!(
        (status, error.as_str()),
        (429, "too_many_watches"),
        "{message}"
    );
    assert!(
        message.contains("spiffe://weft.local/ns/default/sa/web has 3 watches open"),
        "{message}"
    );
    let web2 = h2(&mesh, cp.api, &web_creds).await;
    assert_eq!(refusal_of(get(&web2, &watch("api")).await).await.0, 429);
    // Another identity is not affected.
    assert_eq!(refusal_of(get(&api, &watch("api")).await).await.0, 200);
    // The client library retries a refused watch with back-off, and gets its snapshot once
    // a place is free: closing one watch frees it.
    let library = mesh.client(cp.api, Some(&web_creds));
    let mut endpoints = library.watch_endpoints("default", "api-v1");
    let refused = |m: &str| {
        metric_sum(
            m,
            "weft_policy_requests_refused_total",
            &["reason=\"too_many_watches\""],
        )
    };
    eventually_some(
        Duration::from_secs(5),
        "the library's watch refused",
        || async {
            let (_, page) = cp.admin_get("/metrics").await;
            (refused(&page) >= 3.0).then_some(())
        },
    )
    .await;
    assert!(endpoints.borrow().is_none());
    drop(open.pop());
    wait_until(
        &mut endpoints,
        Duration::from_secs(5),
        "the watch once a place is free",
        |e| e.endpoints.is_empty(),
    )
    .await;
    assert_eq!(refusal_of(get(&web, &watch("api")).await).await.0, 429);

    // Requests in flight: web holds two registrations whose bodies never end...
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let req = http::Request::post("https://policy/v1/register")
            .body(Open(rx).boxed())
            .unwrap();
        tokio::spawn(web.clone().send_request(req));
        senders.push(tx);
    }
    // ...so its next request is refused, once both have reached the control plane.
    let (status, error, message) = until_status(&web, "/v1/routes?service=api", 429).await;
    assert_eq!(
        (status, error.as_str()),
        (429, "too_many_requests"),
        "{message}"
    );
    assert_eq!(
        refusal_of(get(&api, "/v1/routes?service=api").await)
            .await
            .0,
        200
    );
    drop(senders);
    let (status, _, message) = until_status(&web, "/v1/routes?service=api", 200).await;
    assert_eq!(
        status, 200,
        "answered requests did not free their places: {message}"
    );

    let (_, metrics) = cp.admin_get("/metrics").await;
    assert!(refused(&metrics) >= 4.0, "{metrics}");
    let in_flight = metric_sum(
        &metrics,
        "weft_policy_requests_refused_total",
        &["reason=\"too_many_requests\""],
    );
    assert!(in_flight >= 1.0, "{metrics}");
    drop((open, web, web2, api));
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_holds_at_most_its_cap_of_registrations() {
    let mesh = Mesh::new();
    let (_dir, cp) = serve_resources(RESOURCES, |d| {
        let mut s = mesh.settings(d);
        s.api.max_registrations_per_identity = 2;
        s
    })
    .await;
    let at = |port: u16| {
        let mut r = registration(None, None);
        r.address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        r
    };
    let web = mesh.client(
        cp.api,
        Some(&credentials(
            &mesh.ca,
            &id("spiffe://weft.local/ns/default/sa/web"),
        )),
    );
    web.register(&at(7401)).await.unwrap();
    web.register(&at(7402)).await.unwrap();
    let r = web.register(&at(7403)).await;
    assert_eq!(refusal(r), (429, "too_many_registrations".into()));
    // Renewing what it holds goes on; another identity has its own cap.
    web.register(&at(7401)).await.unwrap();
    let api = mesh.client(
        cp.api,
        Some(&credentials(
            &mesh.ca,
            &id("spiffe://weft.local/ns/default/sa/api"),
        )),
    );
    api.register(&at(7403)).await.unwrap();
    // Removing one frees its place.
    web.deregister("default", at(7402).address).await.unwrap();
    web.register(&at(7404)).await.unwrap();
    let (_, metrics) = cp.admin_get("/metrics").await;
    assert!(
        metrics.contains("weft_policy_requests_refused_total{reason=\"too_many_registrations\"} 1"),
        "{metrics}"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_goes_on_registering_after_its_first_certificate_expires() {
    let mesh = Mesh::new();
    let (_dir, cp) = serve_resources(RESOURCES, |d| mesh.settings(d)).await;
    let api_id = id("spiffe://weft.local/ns/default/sa/api");
    // The same CA, issuing certificates that live 2 s: the client's first one.
    let mut short = AuthorityConfig::new(mesh._ca_dir.path());
    short.leaf_lifetime = Duration::from_secs(2);
    let short = Authority::load_or_create(&short).unwrap();
    let first = credentials(&short, &api_id);
    let store = CertStore::new(first.certified_key().unwrap());
    let certs: Arc<dyn rustls::client::ResolvesClientCert> = store.clone();
    let tls = ClientTls::mesh(mesh.ca.bundle(), mesh.policy_id.clone(), Some(certs)).unwrap();
    let mut s = fast_settings(cp.api.to_string());
    s.tls = Some(tls);
    let client = PolicyClient::new(s);
    client.register(&registration(None, None)).await.unwrap();
    let mut watch = client.watch_endpoints("default", "api");
    wait_until(&mut watch, Duration::from_secs(5), "api registered", |e| {
        e.endpoints.len() == 1
    })
    .await;

    // Renewed (as the identity client does, well before expiry); then the first expires.
    store.set(credentials(&mesh.ca, &api_id).certified_key().unwrap());
    // (Validity is checked to the second.)
    let expired = first.not_after + Duration::from_millis(1_500);
    if let Ok(wait) = expired.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    // The connection made with the first certificate is not used for new requests: the
    // control plane checks the certificate at every request and would refuse it (401).
    let renewed = client.register(&registration(None, None)).await;
    assert!(renewed.is_ok(), "{renewed:?}");
    assert_eq!(client.connections(), 2);
    // The watch moved to the new connection, and the old one closed: one connection from
    // the client, not one more per renewal.
    eventually_some(
        Duration::from_secs(10),
        "one connection to the control plane",
        || {
            let open = established_to(cp.api.port());
            async move { (open == 1).then_some(()) }
        },
    )
    .await;
    let mut second = registration(None, None);
    second.address = "127.0.0.1:7202".parse().unwrap();
    client.register(&second).await.unwrap();
    // Updates still arrive, on the new connection (after the control plane's registry
    // warm-up, which holds a resumed watch's endpoints for its first seconds).
    wait_until(
        &mut watch,
        Duration::from_secs(30),
        "the second address",
        |e| e.endpoints.iter().any(|e| e.address == second.address),
    )
    .await;
    cp.stop().await;
}

/// Established TCP connections (IPv4) from this process to local port `port`.
fn established_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            f[3] == "01" && u16::from_str_radix(remote_port, 16).unwrap() == port
        })
        .count()
}
