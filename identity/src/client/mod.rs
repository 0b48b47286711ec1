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
//!
//! # Layout
//! - this module: the settings ([`ClientSettings`]) and [`ClientError`];
//! - `certify`: one exchange with the service: fetching the trust bundle, certifying a fresh key
//!   ([`certify`], [`bootstrap`]);
//! - `follow`: between renewals, following the CA's bundle and issuer (`GET /v1/ca`), and
//!   the metrics of what the client trusts;
//! - `renew`: the background client ([`IdentityClient`]): the renewal loop, its back-off and
//!   its metrics.

use std::time::Duration;

use http::StatusCode;

use crate::token::{self, Claims, TokenError};
use weft_runtime::serve::ErrorBody;

mod certify;
mod follow;
mod renew;

pub use certify::{Auth, bootstrap, certify, fetch_ca, fetch_trust_bundle, generate_csr, validity};
pub use follow::leaf_issuer;
pub use renew::{Backoff, IdentityClient, renewal_time};

/// How long one request to the identity service may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Renew when this fraction of the certificate's lifetime has passed.
pub const RENEW_FRACTION: f64 = 0.7;
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often a client asks the CA for its bundle between renewals.
pub const DEFAULT_TRUST_REFRESH: Duration = Duration::from_secs(60);

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
    #[error(
        "the identity service sent a trust bundle that keeps none of the anchors this workload trusts (it trusts {trusted:?}, it was sent {offered:?}): refused; the current bundle and certificate stay in use. A rotation adds the new anchor first and drops the old one only later"
    )]
    BundleRefused {
        trusted: Vec<String>,
        offered: Vec<String>,
    },
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
    /// How often the client asks the CA for its bundle and issuer between renewals (jittered),
    /// so a rotation reaches it in about this long.
    pub trust_refresh: Duration,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("addr", &self.addr)
            .field("token", &"<secret>")
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("trust_refresh", &self.trust_refresh)
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
            trust_refresh: DEFAULT_TRUST_REFRESH,
        }
    }

    /// The token's claims (unverified: only the identity service can verify them).
    pub fn claims(&self) -> Result<Claims, TokenError> {
        token::decode_unverified(&self.token)
    }
}
