//! SPIFFE peer verification: the server verifier that requires one exact identity, the
//! deferred client verifier, and reading the identity a certificate proves.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::{TlsError, TrustBundle, TrustSource, algorithms, provider, refuse_tls12, verify_tls13};
use crate::spiffe::SpiffeId;

/// Verifies a server's chain against the trust bundle, then requires its SPIFFE ID to be
/// exactly the expected one. Hostnames play no part.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: TrustSource,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    /// Verifies against whatever bundle `trust` holds at the time of each handshake.
    pub fn new(trust: impl Into<TrustSource>, expected: SpiffeId) -> Result<Self, TlsError> {
        Ok(Self {
            trust: trust.into(),
            expected,
        })
    }
}

/// Raised (as `rustls::Error::InvalidCertificate(Other)`) when the peer proves another identity.
#[derive(Debug, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, peer presented {found}")]
pub struct IdentityMismatch {
    pub expected: SpiffeId,
    pub found: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let roots: Arc<RootCertStore> = self.trust.current().roots();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let found = match peer_identity(end_entity) {
            Ok(id) => id,
            Err(e) => {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(IdentityMismatch {
                        expected: self.expected.clone(),
                        found: e.to_string(),
                    })),
                )));
            }
        };
        if found != self.expected {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch {
                    expected: self.expected.clone(),
                    found: found.to_string(),
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Asks for a client certificate, proves only that the client holds its key, and leaves the
/// chain to the application ([`ClientAuth::Deferred`](super::ClientAuth::Deferred)).
#[derive(Debug)]
pub(super) struct DeferredClientVerifier;

impl ClientCertVerifier for DeferredClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Why a peer certificate does not give a usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertError {
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the certificate was not issued by this mesh's trust anchors")]
    Untrusted,
    #[error("the certificate is not usable for this purpose")]
    WrongUsage,
    #[error("the certificate cannot be parsed")]
    Malformed,
    #[error("the certificate has no SPIFFE ID: {0}")]
    NoIdentity(String),
}

/// Verifies a client certificate chain against `bundle` at `now` and returns its SPIFFE ID.
pub fn verify_client_chain(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<SpiffeId, PeerCertError> {
    let (end_entity, intermediates) = chain.split_first().ok_or(PeerCertError::Malformed)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(bundle.roots(), provider())
        .build()
        .map_err(|_| PeerCertError::Untrusted)?;
    verifier
        .verify_client_cert(
            end_entity,
            intermediates,
            UnixTime::since_unix_epoch(unix(now)),
        )
        .map_err(|e| classify_cert_error(&e))?;
    peer_identity(end_entity)
}

/// Maps rustls' certificate errors onto the few reasons an operator needs. A certificate from
/// another CA with the same issuer name fails with `BadSignature`, not `UnknownIssuer`: both
/// mean "untrusted".
pub fn classify_cert_error(e: &rustls::Error) -> PeerCertError {
    match e {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                PeerCertError::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                PeerCertError::NotYetValid
            }
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                PeerCertError::Untrusted
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                PeerCertError::WrongUsage
            }
            CertificateError::BadEncoding => PeerCertError::Malformed,
            _ => PeerCertError::Untrusted,
        },
        _ => PeerCertError::Malformed,
    }
}

fn unix(t: SystemTime) -> std::time::Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// The one SPIFFE ID in a certificate's URI SANs. A certificate with none, several, or one that
/// is not a valid weft SPIFFE ID gives no identity.
pub fn peer_identity(cert: &[u8]) -> Result<SpiffeId, PeerCertError> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert).map_err(|_| PeerCertError::Malformed)?;
    let san = x509
        .subject_alternative_name()
        .map_err(|_| PeerCertError::Malformed)?
        .ok_or_else(|| PeerCertError::NoIdentity("no subjectAltName".into()))?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris
        .next()
        .ok_or_else(|| PeerCertError::NoIdentity("no URI SAN".into()))?;
    if uris.next().is_some() {
        return Err(PeerCertError::NoIdentity("more than one URI SAN".into()));
    }
    SpiffeId::parse(first).map_err(|e| PeerCertError::NoIdentity(format!("`{first}`: {e}")))
}

/// Whether a TLS error means the peer proved an identity other than the expected one, and if
/// so, the details.
pub fn identity_mismatch(e: &rustls::Error) -> Option<&IdentityMismatch> {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<IdentityMismatch>()
        }
        _ => None,
    }
}

/// A server-side TLS acceptor helper: the SPIFFE ID of the client of an established connection.
pub fn client_identity(conn: &rustls::ServerConnection) -> Option<SpiffeId> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| peer_identity(c).ok())
}
