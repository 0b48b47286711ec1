//! Shared helpers for the identity integration tests: a CA in a temp dir, direct issuance, and
//! a raw HTTPS client that can send anything to the API.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use weft_identity::SpiffeId;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::tls::{self, CertStore, Credentials, TrustBundle};

pub fn authority(dir: &Path) -> Authority {
    Authority::load_or_create(&AuthorityConfig::new(dir)).unwrap()
}

pub fn id(name: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://weft.local/ns/default/sa/{name}")).unwrap()
}

pub fn token(a: &Authority, name: &str, ttl: Duration) -> String {
    a.token_key()
        .create(&id(name), &a.anchor_fingerprint(), SystemTime::now(), ttl)
        .unwrap()
}

/// Issues credentials for `identity` straight from the authority (no API).
pub fn issue_direct(a: &Authority, identity: &SpiffeId) -> Credentials {
    a.issue_credentials(identity).unwrap()
}

/// The answer of a raw API call: status and JSON (or text) body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn reason(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends one request to the identity API over TLS 1.3, verifying the service's identity, with
/// an optional bearer token and client certificate.
pub async fn call(
    addr: std::net::SocketAddr,
    bundle: &TrustBundle,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
    bearer: Option<&str>,
    client: Option<&Credentials>,
) -> Answer {
    let server_id = SpiffeId::parse("spiffe://weft.local/ns/weft/sa/identity").unwrap();
    let resolver: Option<Arc<dyn rustls::client::ResolvesClientCert>> =
        client.map(|c| CertStore::new(c.certified_key().unwrap()) as _);
    let cfg = tls::client_config(bundle, server_id.clone(), resolver, &[tls::ALPN_HTTP11]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(tls::server_name(&server_id), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let rsp = sender
        .send_request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn certify_body(csr_pem: &str) -> String {
    serde_json::json!({ "csr": csr_pem }).to_string()
}

/// Runs `openssl` with `args`, failing the test loudly if it is missing.
pub fn openssl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for this test (apt-get install openssl): {e}")
        })
}

/// The value of one series in Prometheus text, e.g. `name{label="x"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
