//! Mesh TLS: one crypto provider, TLS 1.3 only, peers verified by SPIFFE ID.
//!
//! Every TLS config in weft is built here so that the rules hold everywhere:
//! - the `ring` provider, passed explicitly (never the process default), see
//!   `docs/architecture.md` for why ring;
//! - TLS 1.3 only;
//! - a client names the exact SPIFFE ID it expects and accepts no other, after the chain
//!   verified against the trust bundle ([`SpiffeServerVerifier`]);
//! - a server learns the client's SPIFFE ID from its verified certificate
//!   ([`peer_identity`]).
//!
//! # Layout
//! - this module: the provider, the ALPN ids, [`TlsError`];
//! - `bundle`: [`TrustBundle`] and PEM/DER helpers;
//! - `credentials`: [`Credentials`] and the swappable [`CertStore`];
//! - `config`: the server and client configs, [`ClientAuth`], SNI names;
//! - `trust`: [`TrustSource`], the bundle a long-lived config verifies with, fixed or live;
//! - `verify`: the SPIFFE verifiers, [`verify_client_chain`], [`peer_identity`].

use std::sync::{Arc, OnceLock};

use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::CertificateDer;

mod bundle;
mod config;
mod credentials;
mod trust;
mod verify;

pub use bundle::{TrustBundle, certs_from_pem, der_to_pem, fingerprint};
pub(crate) use config::unverified_client_config;
pub use config::{ClientAuth, client_config, server_config, server_name};
pub use credentials::{CertStore, Credentials};
pub use trust::TrustSource;
pub use verify::{
    IdentityMismatch, PeerCertError, SpiffeServerVerifier, classify_cert_error, client_identity,
    identity_mismatch, peer_identity, verify_client_chain,
};

/// ALPN protocol ids offered between mesh parts.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider of the whole workspace: rustls' `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Every verifier here refuses TLS 1.2: mesh parts speak TLS 1.3 only.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Checks a TLS 1.3 handshake signature (proof that the peer holds its certificate's key).
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
}

/// Errors building TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate found{0}")]
    NoCertificate(String),
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("the trust bundle has no usable anchor: {0}")]
    BadAnchor(rustls::Error),
    #[error("the private key is not usable for TLS: {0}")]
    BadKey(rustls::Error),
    #[error("rustls rejected the configuration: {0}")]
    Config(rustls::Error),
}
