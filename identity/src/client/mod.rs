//! The identity client a workload (its proxy, or `weft cert issue`) uses.
//!
//! Holding nothing but a bootstrap token, it:
//! 1. reads its identity and the anchor fingerprint from the token;
//! 2. fetches the trust bundle and checks it against that fingerprint;
//! 3. generates an ECDSA P-256 key in memory (it never leaves the process) and a CSR;
//! 4. asks the identity service (verified as `spiffe://<td>/ns/weft/sa/identity`) to certify it;
//! 5. renews at ~70% of the lifetime (jittered), with a fresh key, authenticating with its
//!    current certificate; on failure it keeps the current certificate and retries with
//!    jittered exponential back-off; if the certificate expired meanwhile it bootstraps again
//!    with the token.
//!
//! The current credentials are published on a `tokio::sync::watch`, so TLS configs can swap
//! them atomically.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use metrics::{Counter, Gauge};
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::server::{
    CERTIFY_PATH, CertifyRequest, CertifyResponse, TRUST_BUNDLE_PATH, service_identity,
};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::{self, CertStore, Credentials, TrustBundle};
use crate::token::{self, Claims, TokenError};
use weft_runtime::metrics::{Registry, unix_seconds};
use weft_runtime::serve::ErrorBody;

/// How long one request to the identity service may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Renew when this fraction of the certificate's lifetime has passed.
pub const RENEW_FRACTION: f64 = 0.7;
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a request to the identity service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "connection to the identity service at {addr} failed: {source}: is `weft identity` running?"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with the identity service at {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("HTTP exchange with the identity service at {addr} failed: {detail}")]
    Http { addr: String, detail: String },
    #[error("the identity service at {addr} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("the identity service refused: {} ({}, HTTP {status})", body.message, body.error)]
    Rejected { status: StatusCode, body: ErrorBody },
    #[error("the identity service answered something unusable: {0}")]
    BadResponse(String),
    #[error(
        "the trust bundle at {addr} does not contain the anchor pinned by the token ({pinned}): this is not the identity service that created the token"
    )]
    AnchorMismatch { addr: String, pinned: String },
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("cannot create a key or CSR: {0}")]
    Key(String),
}

impl ClientError {
    /// The refusal reason code, when the service refused.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Rejected { body, .. } => Some(&body.error),
            _ => None,
        }
    }
}

/// Where the identity service is and how this workload authenticates to it.
#[derive(Clone)]
pub struct ClientSettings {
    /// `host:port` of the identity service.
    pub addr: String,
    /// The bootstrap token (its text).
    pub token: String,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("addr", &self.addr)
            .field("token", &"<secret>")
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl ClientSettings {
    pub fn new(addr: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            token: token.into().trim().to_string(),
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// The token's claims (unverified: only the identity service can verify them).
    pub fn claims(&self) -> Result<Claims, TokenError> {
        token::decode_unverified(&self.token)
    }
}

/// Fetches the trust bundle and accepts it only if it holds the anchor `pinned`
/// (`sha256:<hex>`).
pub async fn fetch_trust_bundle(addr: &str, pinned: &str) -> Result<TrustBundle, ClientError> {
    let cfg = tls::unverified_client_config().map_err(|e| ClientError::Tls {
        addr: addr.to_string(),
        detail: e.to_string(),
    })?;
    let name = rustls::pki_types::ServerName::try_from("identity.weft.invalid")
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let (status, body) = request(
        addr,
        Arc::new(cfg),
        name,
        Method::GET,
        TRUST_BUNDLE_PATH,
        None,
        Bytes::new(),
    )
    .await?;
    if status != StatusCode::OK {
        return Err(ClientError::BadResponse(format!(
            "GET {TRUST_BUNDLE_PATH} answered {status}"
        )));
    }
    let bundle =
        TrustBundle::from_pem(&body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    if !bundle.fingerprints().iter().any(|f| f == pinned) {
        return Err(ClientError::AnchorMismatch {
            addr: addr.to_string(),
            pinned: pinned.to_string(),
        });
    }
    Ok(bundle)
}

/// How a certify request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    Token(&'a str),
    Certificate(&'a Credentials),
}

/// Generates a key and CSR for `identity`, has them certified, and returns the credentials.
pub async fn certify(
    addr: &str,
    bundle: &TrustBundle,
    identity: &SpiffeId,
    auth: Auth<'_>,
) -> Result<Credentials, ClientError> {
    let (key, csr_pem) = generate_csr(identity)?;
    let server_id = service_identity(
        &TrustDomain::new(identity.trust_domain()).map_err(|e| ClientError::Key(e.to_string()))?,
    )
    .map_err(|e| ClientError::Key(e.to_string()))?;
    let client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>> = match auth {
        Auth::Token(_) => None,
        Auth::Certificate(creds) => Some(CertStore::new(
            creds
                .certified_key()
                .map_err(|e| ClientError::Key(e.to_string()))?,
        )),
    };
    let cfg = tls::client_config(bundle, server_id.clone(), client_cert, &[tls::ALPN_HTTP11])
        .map_err(|e| ClientError::Tls {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?;
    let body = serde_json::to_vec(&CertifyRequest {
        csr: csr_pem,
        identity: Some(identity.to_string()),
    })
    .map_err(|e| ClientError::Key(e.to_string()))?;
    let bearer = match auth {
        Auth::Token(t) => Some(format!("Bearer {t}")),
        Auth::Certificate(_) => None,
    };
    let (status, body) = request(
        addr,
        Arc::new(cfg),
        tls::server_name(&server_id),
        Method::POST,
        CERTIFY_PATH,
        bearer.as_deref(),
        Bytes::from(body),
    )
    .await?;
    if !status.is_success() {
        let body: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
            error: "unknown".into(),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
        return Err(ClientError::Rejected { status, body });
    }
    let rsp: CertifyResponse =
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    credentials_from(rsp, key, identity)
}

fn credentials_from(
    rsp: CertifyResponse,
    key: rcgen::KeyPair,
    identity: &SpiffeId,
) -> Result<Credentials, ClientError> {
    let bad = |e: &dyn std::fmt::Display| ClientError::BadResponse(e.to_string());
    if &rsp.identity != identity {
        return Err(ClientError::BadResponse(format!(
            "asked for {identity}, got a certificate for {}",
            rsp.identity
        )));
    }
    let mut chain = tls::certs_from_pem(rsp.certificate.as_bytes()).map_err(|e| bad(&e))?;
    chain.extend(tls::certs_from_pem(rsp.chain.as_bytes()).map_err(|e| bad(&e))?);
    if chain.is_empty() {
        return Err(ClientError::BadResponse(
            "no certificate in the answer".into(),
        ));
    }
    let bundle = TrustBundle::from_pem(rsp.trust_bundle.as_bytes()).map_err(|e| bad(&e))?;
    // Never trust a certificate the bundle does not verify, nor one for another identity.
    let verified =
        tls::verify_client_chain(&bundle, &chain, SystemTime::now()).map_err(|e| bad(&e))?;
    if &verified != identity {
        return Err(ClientError::BadResponse(format!(
            "the certificate proves {verified}, not {identity}"
        )));
    }
    let (not_before, not_after) = validity(&chain[0]).map_err(|e| bad(&e))?;
    Ok(Credentials {
        identity: identity.clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        chain,
        bundle,
        not_before,
        not_after,
    })
}

/// The validity window of a DER certificate.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::prelude::*;
    let (_, x) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok((
        crate::authority::asn1_to_system(x.validity().not_before),
        crate::authority::asn1_to_system(x.validity().not_after),
    ))
}

/// A fresh ECDSA P-256 key and a PEM CSR for it naming `identity` as its one URI SAN.
pub fn generate_csr(identity: &SpiffeId) -> Result<(rcgen::KeyPair, String), ClientError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(identity.to_string())
        .map_err(|e| ClientError::Key(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| ClientError::Key(e.to_string()))?;
    let pem = csr.pem().map_err(|e| ClientError::Key(e.to_string()))?;
    Ok((key, pem))
}

/// Bootstraps once with the token: fetch and check the bundle, then certify.
pub async fn bootstrap(settings: &ClientSettings) -> Result<Credentials, ClientError> {
    let claims = settings.claims()?;
    let bundle = fetch_trust_bundle(&settings.addr, &claims.anchor).await?;
    certify(
        &settings.addr,
        &bundle,
        &claims.sub,
        Auth::Token(&settings.token),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn request(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), ClientError> {
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Tls {
                addr: addr.to_string(),
                detail: e.to_string(),
            })?;
        let http_err = |e: &dyn std::fmt::Display| ClientError::Http {
            addr: addr.to_string(),
            detail: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| http_err(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(a) = authorization {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        let req = req.body(Full::new(body)).map_err(|e| http_err(&e))?;
        let rsp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_string(),
        })?
}

/// Jittered exponential back-off.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay: uniformly in [½, 1] × min·2ⁿ, capped at max.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// When to renew credentials received at `received` and valid until `not_after`: after
/// [`RENEW_FRACTION`] of the time left at receipt (the back-dated part of the validity, there
/// for peers' clock skew, does not count), jittered by ±5% so a fleet started together does
/// not renew together.
pub fn renewal_time(received: SystemTime, not_after: SystemTime) -> SystemTime {
    let left = not_after.duration_since(received).unwrap_or_default();
    let fraction = RENEW_FRACTION + (fastrand::f64() - 0.5) * 0.1;
    received + left.mul_f64(fraction)
}

struct ClientMetrics {
    ok_bootstrap: Counter,
    ok_renewal: Counter,
    failed: Counter,
    expiry: Gauge,
    failing: Gauge,
}

impl ClientMetrics {
    fn new(registry: &Registry) -> Self {
        const NAME: &str = "weft_identity_client_certify_total";
        const HELP: &str = "Certificate requests this workload made, by kind and result.";
        Self {
            ok_bootstrap: registry.counter(NAME, HELP, &[("kind", "bootstrap"), ("result", "ok")]),
            ok_renewal: registry.counter(NAME, HELP, &[("kind", "renewal"), ("result", "ok")]),
            failed: registry.counter(NAME, HELP, &[("kind", "any"), ("result", "error")]),
            expiry: registry.gauge(
                "weft_identity_client_certificate_expiry_timestamp_seconds",
                "When this workload's current certificate expires, in Unix seconds.",
                &[],
            ),
            failing: registry.gauge(
                "weft_identity_client_consecutive_failures",
                "Certificate requests that failed in a row since the last success.",
                &[],
            ),
        }
    }
}

/// A running identity client.
#[derive(Debug)]
pub struct IdentityClient {
    creds: watch::Receiver<Option<Arc<Credentials>>>,
    task: tokio::task::JoinHandle<()>,
}

impl IdentityClient {
    /// Starts bootstrapping and renewing in the background. The watch holds `None` until the
    /// first certificate arrives.
    pub fn start(settings: ClientSettings, registry: &Registry) -> Self {
        let (tx, rx) = watch::channel(None);
        let metrics = ClientMetrics::new(registry);
        let task = tokio::spawn(maintain(settings, tx, metrics));
        Self { creds: rx, task }
    }

    pub fn credentials(&self) -> watch::Receiver<Option<Arc<Credentials>>> {
        self.creds.clone()
    }

    /// Waits for the first certificate.
    pub async fn ready(&mut self) -> Arc<Credentials> {
        loop {
            if let Some(c) = self.creds.borrow_and_update().clone() {
                return c;
            }
            if self.creds.changed().await.is_err() {
                // The task only ends when aborted; wait forever like a pending certificate.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for IdentityClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn maintain(
    settings: ClientSettings,
    tx: watch::Sender<Option<Arc<Credentials>>>,
    metrics: ClientMetrics,
) {
    let mut backoff = Backoff::new(settings.min_backoff, settings.max_backoff);
    let mut bundle: Option<TrustBundle> = None;
    let mut current: Option<Arc<Credentials>> = None;
    let mut due = SystemTime::now();
    let mut failures = 0u64;
    loop {
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let now = SystemTime::now();
        let result = match &current {
            Some(creds) if now < creds.not_after => {
                let r = certify(
                    &settings.addr,
                    &creds.bundle,
                    &creds.identity,
                    Auth::Certificate(creds),
                )
                .await;
                match r {
                    // The service no longer accepts our certificate: fall back to the token.
                    Err(ClientError::Rejected { ref body, .. })
                        if body.error.starts_with("client_cert_") =>
                    {
                        tracing::warn!(reason = %body.error, "renewal with the current certificate refused; bootstrapping again with the token");
                        bootstrap_cached(&settings, &mut bundle)
                            .await
                            .map(|c| (c, true))
                    }
                    r => r.map(|c| (c, false)),
                }
            }
            _ => bootstrap_cached(&settings, &mut bundle)
                .await
                .map(|c| (c, true)),
        };
        match result {
            Ok((creds, bootstrapped)) => {
                if bootstrapped {
                    metrics.ok_bootstrap.increment(1);
                } else {
                    metrics.ok_renewal.increment(1);
                }
                failures = 0;
                metrics.failing.set(0.0);
                metrics.expiry.set(unix_seconds(creds.not_after));
                tracing::info!(
                    identity = %creds.identity,
                    not_after = %crate::rfc3339(creds.not_after),
                    "certificate {}", if bootstrapped { "obtained" } else { "renewed" }
                );
                let creds = Arc::new(creds);
                due = renewal_time(SystemTime::now(), creds.not_after);
                current = Some(creds.clone());
                backoff.reset();
                tx.send_replace(Some(creds));
            }
            Err(e) => {
                failures += 1;
                metrics.failed.increment(1);
                metrics.failing.set(failures as f64);
                let mut delay = backoff.next_delay();
                // Near expiry, do not sleep past a good part of what is left.
                if let Some(c) = &current
                    && let Ok(left) = c.not_after.duration_since(SystemTime::now())
                {
                    delay = delay.min((left / 4).max(settings.min_backoff));
                }
                let expired = current
                    .as_ref()
                    .is_none_or(|c| SystemTime::now() >= c.not_after);
                tracing::warn!(
                    error = %e,
                    failures,
                    retry_in = ?delay,
                    holding_valid_certificate = !expired,
                    "certificate request failed; retrying"
                );
                due = SystemTime::now() + delay;
            }
        }
    }
}

async fn bootstrap_cached(
    settings: &ClientSettings,
    bundle: &mut Option<TrustBundle>,
) -> Result<Credentials, ClientError> {
    let claims = settings.claims()?;
    let b = match bundle {
        Some(b) => b.clone(),
        None => {
            let b = fetch_trust_bundle(&settings.addr, &claims.anchor).await?;
            *bundle = Some(b.clone());
            b
        }
    };
    certify(
        &settings.addr,
        &b,
        &claims.sub,
        Auth::Token(&settings.token),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[2] >= Duration::from_millis(200) && delays[2] <= Duration::from_millis(400));
        for d in &delays[4..] {
            assert!(
                *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn renewal_is_due_at_about_seventy_percent_of_what_is_left() {
        let now = SystemTime::now();
        let not_after = now + Duration::from_secs(1000);
        for _ in 0..200 {
            let due = renewal_time(now, not_after).duration_since(now).unwrap();
            assert!(
                due >= Duration::from_secs(650) && due <= Duration::from_secs(750),
                "{due:?}"
            );
        }
        // Already expired: due at once.
        assert_eq!(renewal_time(not_after, now), not_after);
    }
}
