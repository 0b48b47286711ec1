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

use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::spiffe::SpiffeId;

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

/// The trust anchors a mesh part verifies peers against.
#[derive(Clone)]
pub struct TrustBundle {
    certs: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let certs = certs_from_pem(pem)?;
        Self::from_der(certs)
    }

    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(" in the trust bundle".into()));
        }
        let mut roots = RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(TlsError::BadAnchor)?;
        }
        Ok(Self {
            certs,
            roots: Arc::new(roots),
        })
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    pub fn to_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }

    /// `sha256:<hex>` of each anchor's DER, as carried in bootstrap tokens.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs.iter().map(|c| fingerprint(c)).collect()
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("anchors", &self.fingerprints())
            .finish()
    }
}

/// `sha256:<lowercase hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// All certificates in a PEM text, in order.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))
}

/// A PEM block of the given label.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A workload's TLS identity: its key (which never leaves the process), its certificate chain
/// (leaf first, then issuers) and the trust bundle it verifies peers with.
pub struct Credentials {
    pub identity: SpiffeId,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub bundle: TrustBundle,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            key: self.key.clone_key(),
            chain: self.chain.clone(),
            bundle: self.bundle.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl Credentials {
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(self.key.clone_key()))
            .map_err(TlsError::BadKey)?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), key)))
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The certificate a listener or client presents, swappable at run time: new handshakes use the
/// newest one, connections already established keep theirs.
#[derive(Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertStore {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Some(key)),
        })
    }

    pub fn empty() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.get().is_some())
            .finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// How a server treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A client certificate chaining to the bundle is required (mesh mTLS).
    Required(TrustBundle),
    /// A client certificate is asked for but optional, and if given only its possession is
    /// proven during the handshake; the application verifies the chain itself with
    /// [`verify_client_chain`] so it can answer with a clear error instead of a TLS alert.
    Deferred,
}

/// A TLS 1.3 server config presenting `certs` and treating client certificates per `auth`.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let verifier: Arc<dyn ClientCertVerifier> = match auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Required(bundle) => {
            WebPkiClientVerifier::builder_with_provider(bundle.roots(), provider())
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?
        }
        ClientAuth::Deferred => Arc::new(DeferredClientVerifier),
    };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A TLS 1.3 client config that accepts only a server proving `expected`, and presents
/// `client_cert` when one is given.
pub fn client_config(
    bundle: &TrustBundle,
    expected: SpiffeId,
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(bundle, expected)?);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// The SNI name a client sends when it expects `id`: a DNS-shaped rendering of the identity,
/// `<workload>.<namespace>.sa.<trust-domain>`. It is only a hint and a resumption-cache key;
/// the identity itself is checked by [`SpiffeServerVerifier`].
pub fn server_name(id: &SpiffeId) -> ServerName<'static> {
    let name = format!(
        "{}.{}.sa.{}",
        id.workload(),
        id.namespace(),
        id.trust_domain()
    )
    .to_ascii_lowercase()
    .replace('_', "-");
    // Names that are not DNS-shaped get no SNI at all (an IP server name is never sent).
    ServerName::try_from(name)
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// Verifies a server's chain against the trust bundle, then requires its SPIFFE ID to be
/// exactly the expected one. Hostnames play no part.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: &TrustBundle, expected: SpiffeId) -> Result<Self, TlsError> {
        Ok(Self {
            roots: bundle.roots(),
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
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
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
/// chain to the application ([`ClientAuth::Deferred`]).
#[derive(Debug)]
struct DeferredClientVerifier;

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

/// Builds a rustls config for the bootstrap fetch of a trust bundle: the server is not verified
/// during the handshake; the caller must check what it fetched against a pinned fingerprint.
pub(crate) fn unverified_client_config() -> Result<ClientConfig, TlsError> {
    #[derive(Debug)]
    struct AcceptAny;
    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
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
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(cfg)
}
