//! weft's identity layer: SPIFFE IDs, mesh TLS, the certificate authority (`weft identity`) and
//! the client every workload uses to get and renew its certificate.
//!
//! The control plane and the proxy build on it for their TLS configs and SPIFFE verification;
//! the process plumbing it shares with them (accept loop, admin endpoint, metrics registry,
//! start-up and shutdown) is in `weft-runtime`.
//!
//! # Layout
//! - [`spiffe`]: the `spiffe://<trust-domain>/ns/<ns>/sa/<name>` identity type.
//! - [`tls`]: the one crypto provider (ring) and TLS 1.3-only configs (`tls/config.rs`), SPIFFE
//!   peer verification (`tls/verify.rs`), the trust bundle and PEM helpers (`tls/bundle.rs`),
//!   swappable certificates ([`tls::CertStore`]) and [`tls::Credentials`]
//!   (`tls/credentials.rs`).
//! - [`authority`]: the CA's files (trust anchor, issuer, token key), their checks at start-up,
//!   and issuing X.509-SVIDs.
//! - [`csr`]: checking a PKCS#10 request against the identity the caller proved.
//! - [`token`]: bootstrap tokens (create, verify, decode).
//! - [`reject`]: the reason codes of refused requests.
//! - [`server`]: the HTTPS API (`/v1/certify`, `/v1/trust-bundle`) and its metrics.
//! - [`client`]: bootstrap and certify (`client/certify.rs`), and the renewal loop publishing
//!   credentials on a watch (`client/renew.rs`).
//! - [`config`]: command-line/environment settings of `weft identity`, `weft token`, `weft cert`.

pub mod authority;
pub mod client;
pub mod config;
pub mod csr;
mod info;
pub mod reject;
pub mod server;
pub mod spiffe;
pub mod tls;
pub mod token;

pub use spiffe::{SpiffeId, TrustDomain};

/// RFC 3339 (UTC, seconds) rendering of a time, for messages and API answers.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}
