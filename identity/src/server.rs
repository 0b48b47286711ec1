//! The identity service's HTTPS API.
//!
//! - `POST /v1/certify`: JSON `{"csr": "<PEM CSR>", "identity": "<optional SPIFFE ID>"}`,
//!   authenticated by `Authorization: Bearer <bootstrap token>` (first issuance) or by the
//!   caller's current certificate presented as a TLS client certificate (renewal). Answers
//!   `{"identity", "certificate", "chain", "trust_bundle", "not_before", "not_after",
//!   "not_after_unix"}` (PEM texts, RFC 3339 times).
//! - `GET /v1/trust-bundle`: the trust anchors, PEM.
//! - `GET /v1/ca`: what clients follow between renewals (JSON [`CaInfo`]): the bundle, the
//!   current issuer, the anchor links, and when leaves of other issuers should be re-issued.
//!
//! The CA's files are read again when they change (`follow_files`), so a rotation
//! (`weft ca rotate`) takes effect without a restart.
//!
//! Every refusal is a 4xx JSON `{"error": "<reason code>", "message": "<what to fix>"}`,
//! counted in `weft_identity_rejections_total{reason}`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use metrics::{Counter, Gauge, Histogram};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::authority::Authority;

mod reload;
mod running;

use crate::csr;
use crate::reject::{Reason, Rejection};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::{self, CertStore, ClientAuth};
use crate::token::TokenError;
pub use running::Running;
use weft_runtime::metrics::{Registry, unix_seconds};
use weft_runtime::serve::{self, ConnInfo, ErrorBody, FullResponse};

/// Largest request body accepted by `/v1/certify`.
pub const MAX_BODY: usize = 64 * 1024;
/// The namespace and workload name of the identity service's own SPIFFE ID.
pub const SERVICE_NAMESPACE: &str = "weft";
pub const SERVICE_WORKLOAD: &str = "identity";
/// Lifetime of the identity service's own serving certificate (renewed at 70%).
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub const CERTIFY_PATH: &str = "/v1/certify";
pub const TRUST_BUNDLE_PATH: &str = "/v1/trust-bundle";
pub const CA_PATH: &str = "/v1/ca";
/// How often the service looks whether the CA's files changed.
pub const CA_FILES_CHECK: Duration = Duration::from_secs(1);

/// The `/v1/ca` answer: what a client needs to follow the CA between renewals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaInfo {
    /// The trust anchors, PEM.
    pub trust_bundle: String,
    /// Their fingerprints.
    pub anchors: Vec<String>,
    /// The fingerprint of the issuer signing leaves now.
    pub issuer: String,
    /// Links from rotated-out anchors to their successors (PEM pairs; see
    /// `authority::links`), for clients whose token pins an anchor no longer in the bundle.
    #[serde(default)]
    pub anchor_links: String,
    /// Leaves from another issuer should be re-issued before this (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reissue_before: Option<u64>,
}

/// The SPIFFE ID the identity service proves to its clients.
pub fn service_identity(td: &TrustDomain) -> Result<SpiffeId, crate::spiffe::SpiffeIdError> {
    td.workload(SERVICE_NAMESPACE, SERVICE_WORKLOAD)
}

/// The `/v1/certify` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertifyRequest {
    /// PEM `CERTIFICATE REQUEST`.
    pub csr: String,
    /// The identity asked for; when given it must be the one the token or certificate proves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// The `/v1/certify` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertifyResponse {
    pub identity: SpiffeId,
    /// The leaf, PEM.
    pub certificate: String,
    /// The issuer chain above the leaf, PEM.
    pub chain: String,
    /// The trust anchors, PEM.
    pub trust_bundle: String,
    pub not_before: String,
    pub not_after: String,
    pub not_after_unix: u64,
}

struct Metrics {
    issued_token: Counter,
    issued_renewal: Counter,
    rejections: Vec<(Reason, Counter)>,
    latency: Histogram,
    issuer_expiry: Gauge,
    anchor_expiry: Gauge,
    reload_ok: Counter,
    reload_failed: Counter,
    rotated: Counter,
    rotation_failed: Counter,
    /// The anchors served (1) and served before (0); the issuer signing (1) and before (0).
    anchors: std::sync::Mutex<crate::info::InfoSeries>,
    issuers: std::sync::Mutex<crate::info::InfoSeries>,
}

impl Metrics {
    fn new(registry: &Registry, authority: &Authority) -> Self {
        const ISSUED: &str = "weft_identity_certificates_issued_total";
        const ISSUED_HELP: &str = "Workload certificates issued, by how the caller authenticated.";
        let rejections = Reason::ALL
            .iter()
            .map(|r| {
                (
                    *r,
                    registry.counter(
                        "weft_identity_rejections_total",
                        "Refused identity API requests, by reason.",
                        &[("reason", r.as_str())],
                    ),
                )
            })
            .collect();
        let issuer_expiry = registry.gauge(
            "weft_identity_issuer_expiry_timestamp_seconds",
            "When the issuer certificate expires, in Unix seconds.",
            &[],
        );
        let anchor_expiry = registry.gauge(
            "weft_identity_trust_anchor_expiry_timestamp_seconds",
            "When the earliest trust anchor expires, in Unix seconds.",
            &[],
        );
        const RELOADS: &str = "weft_identity_ca_reloads_total";
        const RELOADS_HELP: &str = "Times the CA's files changed and were read again, by result (error: the files in place now are refused, and the CA they replaced stays in use).";
        const ROTATIONS: &str = "weft_identity_issuer_rotations_total";
        const ROTATIONS_HELP: &str = "Issuer rotations the service made by itself (--rotate-at), by result (error: it is due but cannot be made, e.g. the anchor key is not in the data directory).";
        let metrics = Self {
            issued_token: registry.counter(ISSUED, ISSUED_HELP, &[("method", "token")]),
            issued_renewal: registry.counter(ISSUED, ISSUED_HELP, &[("method", "renewal")]),
            rejections,
            latency: registry.histogram(
                "weft_identity_issuance_duration_seconds",
                "Time to check a certify request and issue its certificate.",
                &[],
            ),
            issuer_expiry,
            anchor_expiry,
            reload_ok: registry.counter(RELOADS, RELOADS_HELP, &[("result", "ok")]),
            reload_failed: registry.counter(RELOADS, RELOADS_HELP, &[("result", "error")]),
            rotated: registry.counter(ROTATIONS, ROTATIONS_HELP, &[("result", "ok")]),
            rotation_failed: registry.counter(ROTATIONS, ROTATIONS_HELP, &[("result", "error")]),
            anchors: std::sync::Mutex::new(crate::info::InfoSeries::new(
                registry,
                "weft_identity_trust_anchor",
                "1 for each trust anchor the CA serves now (by SHA-256 fingerprint), 0 for those it served before.",
            )),
            issuers: std::sync::Mutex::new(crate::info::InfoSeries::new(
                registry,
                "weft_identity_issuer",
                "1 for the issuer signing leaves now (by SHA-256 fingerprint), 0 for earlier ones.",
            )),
        };
        metrics.show(authority);
        metrics
    }

    /// The gauges describing the CA in use.
    fn show(&self, authority: &Authority) {
        self.issuer_expiry
            .set(unix_seconds(authority.issuer_not_after()));
        self.anchor_expiry
            .set(unix_seconds(authority.anchor_not_after()));
        self.anchors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(&authority.bundle().fingerprints());
        self.issuers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(&[authority.issuer_fingerprint()]);
    }

    fn reject(&self, reason: Reason) {
        if let Some((_, c)) = self.rejections.iter().find(|(r, _)| *r == reason) {
            c.increment(1);
        }
    }
}

/// The running identity service.
pub struct IdentityService {
    authority: std::sync::RwLock<Arc<Authority>>,
    metrics: Metrics,
    serving: Arc<CertStore>,
    identity: SpiffeId,
    dns_names: Vec<String>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// How the caller proved who it is.
enum Proof {
    Token,
    Certificate,
}

impl IdentityService {
    /// Sets up the service: its serving certificate (for `dns_names` besides its SPIFFE ID,
    /// so `curl --cacert trust-anchor.pem https://localhost:8443/...` works) and its metrics.
    pub fn new(
        authority: Authority,
        registry: &Registry,
        dns_names: Vec<String>,
    ) -> Result<Arc<Self>, String> {
        let identity = service_identity(authority.trust_domain()).map_err(|e| e.to_string())?;
        let metrics = Metrics::new(registry, &authority);
        let svc = Arc::new(Self {
            authority: std::sync::RwLock::new(Arc::new(authority)),
            metrics,
            serving: CertStore::empty(),
            identity,
            dns_names,
        });
        svc.refresh_serving_cert()?;
        Ok(svc)
    }

    /// The CA as loaded now.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The service's TLS config: TLS 1.3, HTTP/2 or 1.1, client certificates asked for but
    /// checked by the renewal handler (so a bad one gets a clear JSON error, not an alert).
    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        tls::server_config(
            self.serving.clone(),
            ClientAuth::Deferred,
            &[tls::ALPN_H2, tls::ALPN_HTTP11],
        )
        .map(Arc::new)
        .map_err(|e| e.to_string())
    }

    fn refresh_serving_cert(&self) -> Result<(), String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let ca = self.authority();
        let issued = ca.issue_for(
            &key,
            &self.identity,
            &self.dns_names,
            SERVING_CERT_LIFETIME.min(ca.leaf_lifetime()),
        )?;
        let creds = tls::Credentials {
            identity: issued.identity,
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
            chain: issued.chain,
            bundle: ca.bundle().clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        };
        self.serving
            .set(creds.certified_key().map_err(|e| e.to_string())?);
        Ok(())
    }

    /// Serves the API on `listener` until `shutdown`.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let tls = match self.tls_config() {
            Ok(tls) => tls,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the identity service's TLS config");
                return;
            }
        };
        let refresher = {
            let svc = self.clone();
            tokio::spawn(async move {
                let period = SERVING_CERT_LIFETIME
                    .min(svc.authority().leaf_lifetime())
                    .mul_f64(0.7)
                    .max(Duration::from_secs(1));
                loop {
                    tokio::time::sleep(period).await;
                    if let Err(e) = svc.refresh_serving_cert() {
                        tracing::error!(error = %e, "renewing the identity service's own certificate failed");
                    }
                }
            })
        };
        let svc = self.clone();
        serve::serve(
            listener,
            Some(tls),
            move |req, info| {
                let svc = svc.clone();
                async move { svc.handle(req, info).await }
            },
            shutdown,
        )
        .await;
        refresher.abort();
    }

    async fn handle(&self, req: Request<Incoming>, info: Arc<ConnInfo>) -> FullResponse {
        let rsp = match (req.method(), req.uri().path()) {
            (&Method::POST, CERTIFY_PATH) => {
                let start = Instant::now();
                let rsp = self.handle_certify(req, &info).await;
                self.metrics.latency.record(start.elapsed().as_secs_f64());
                rsp
            }
            (&Method::GET, TRUST_BUNDLE_PATH) => Ok(serve::respond(
                StatusCode::OK,
                "application/x-pem-file",
                self.authority().bundle().to_pem(),
            )),
            (&Method::GET, CA_PATH) => Ok(serve::respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&self.ca_info()).unwrap_or_default(),
            )),
            (_, CERTIFY_PATH | TRUST_BUNDLE_PATH | CA_PATH) => Err(Rejection::new(
                Reason::MethodNotAllowed,
                format!("use POST {CERTIFY_PATH}, GET {TRUST_BUNDLE_PATH} or GET {CA_PATH}"),
            )),
            (_, path) => Err(Rejection::new(
                Reason::NotFound,
                format!(
                    "no such API: {path} (the identity service serves POST {CERTIFY_PATH}, GET {TRUST_BUNDLE_PATH} and GET {CA_PATH})"
                ),
            )),
        };
        rsp.unwrap_or_else(|rejection| {
            self.metrics.reject(rejection.reason);
            tracing::info!(
                client.addr = %info.remote,
                reason = rejection.reason.as_str(),
                message = %rejection.message,
                "identity request refused"
            );
            error_response(&rejection)
        })
    }

    async fn handle_certify(
        &self,
        req: Request<Incoming>,
        info: &ConnInfo,
    ) -> Result<FullResponse, Rejection> {
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer "))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Rejection::new(
                            Reason::TokenMalformed,
                            "the Authorization header must be `Bearer <bootstrap token>`",
                        )
                    })
            })
            .transpose()?;
        let body = read_body(req.into_body()).await?;
        let rsp = self.certify(&body, bearer.as_deref(), info.peer_certs.as_deref())?;
        let json = serde_json::to_vec(&rsp).map_err(|e| {
            Rejection::new(
                Reason::BodyMalformed,
                format!("cannot encode the answer: {e}"),
            )
        })?;
        Ok(serve::respond(StatusCode::OK, "application/json", json))
    }

    /// Checks a certify request and issues its certificate. `body` is the JSON request,
    /// `token` the bearer token if any, `peer_certs` the TLS client chain if any.
    pub fn certify(
        &self,
        body: &[u8],
        token: Option<&str>,
        peer_certs: Option<&[CertificateDer<'static>]>,
    ) -> Result<CertifyResponse, Rejection> {
        let req: CertifyRequest = serde_json::from_slice(body).map_err(|e| {
            Rejection::new(
                Reason::BodyMalformed,
                format!("the body must be JSON {{\"csr\": \"<PEM CSR>\"}}: {e}"),
            )
        })?;
        let now = SystemTime::now();
        let (proven, proof) = match (token, peer_certs) {
            (Some(token), _) => (self.check_token(token, now)?, Proof::Token),
            (None, Some(chain)) if !chain.is_empty() => {
                (self.check_client_cert(chain, now)?, Proof::Certificate)
            }
            _ => {
                return Err(Rejection::new(
                    Reason::Unauthenticated,
                    "present a bootstrap token (Authorization: Bearer <token>) or, to renew, your current certificate as a TLS client certificate",
                ));
            }
        };
        if let Some(asked) = &req.identity
            && asked != proven.as_str()
        {
            return Err(Rejection::new(
                match proof {
                    Proof::Token => Reason::TokenWrongIdentity,
                    Proof::Certificate => Reason::CsrWrongIdentity,
                },
                format!("the request asks for {asked}, but the caller proved {proven}"),
            ));
        }
        let checked = csr::check(req.csr.as_bytes(), &proven)?;
        let ca = self.authority();
        let issued = ca.issue(&checked, &proven).map_err(|e| {
            Rejection::new(
                Reason::CsrMalformed,
                format!("cannot issue for this CSR: {e}"),
            )
        })?;
        match proof {
            Proof::Token => self.metrics.issued_token.increment(1),
            Proof::Certificate => self.metrics.issued_renewal.increment(1),
        }
        tracing::debug!(identity = %proven, not_after = %crate::rfc3339(issued.not_after), "certificate issued");
        Ok(CertifyResponse {
            identity: issued.identity,
            certificate: tls::der_to_pem("CERTIFICATE", &issued.leaf),
            chain: issued.chain[1..]
                .iter()
                .map(|c| tls::der_to_pem("CERTIFICATE", c))
                .collect(),
            trust_bundle: ca.bundle().to_pem(),
            not_before: crate::rfc3339(issued.not_before),
            not_after: crate::rfc3339(issued.not_after),
            not_after_unix: issued
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
        })
    }

    fn check_token(&self, token: &str, now: SystemTime) -> Result<SpiffeId, Rejection> {
        let ca = self.authority();
        let claims = ca.token_key().verify(token, now).map_err(|e| {
            let reason = match e {
                TokenError::Malformed(_) => Reason::TokenMalformed,
                TokenError::Forged(_) => Reason::TokenForged,
                TokenError::Tampered => Reason::TokenTampered,
                TokenError::Expired(_) => Reason::TokenExpired,
            };
            Rejection::new(reason, e.to_string())
        })?;
        if claims.sub.trust_domain() != ca.trust_domain().as_str() {
            return Err(Rejection::new(
                Reason::TokenWrongIdentity,
                format!(
                    "the token is for {}, outside this trust domain ({})",
                    claims.sub,
                    ca.trust_domain()
                ),
            ));
        }
        Ok(claims.sub)
    }

    fn check_client_cert(
        &self,
        chain: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> Result<SpiffeId, Rejection> {
        use crate::tls::PeerCertError as E;
        let ca = self.authority();
        let id = tls::verify_client_chain(ca.bundle(), chain, now).map_err(|e| {
            let reason = match e {
                E::Expired | E::NotYetValid => Reason::ClientCertExpired,
                E::Untrusted => Reason::ClientCertUntrusted,
                E::WrongUsage | E::Malformed | E::NoIdentity(_) => Reason::ClientCertInvalid,
            };
            let hint = match reason {
                Reason::ClientCertExpired => {
                    ": an expired certificate cannot be renewed; bootstrap again with a token"
                }
                Reason::ClientCertUntrusted => ": it was not issued by this identity service",
                _ => "",
            };
            Rejection::new(reason, format!("client certificate refused: {e}{hint}"))
        })?;
        if id.trust_domain() != ca.trust_domain().as_str() {
            return Err(Rejection::new(
                Reason::ClientCertInvalid,
                format!("the client certificate is for {id}, outside this trust domain"),
            ));
        }
        Ok(id)
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Rejection> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::new(
            Reason::BodyTooLarge,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(Rejection::new(
            Reason::BodyMalformed,
            format!("reading the request body failed: {e}"),
        )),
    }
}

fn error_response(rejection: &Rejection) -> FullResponse {
    let body = ErrorBody {
        error: rejection.reason.as_str().to_string(),
        message: rejection.message.clone(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    serve::respond(rejection.reason.status(), "application/json", json)
}
