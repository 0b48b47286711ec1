//! The TLS 1.3 server and client configs every mesh part uses.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use super::verify::DeferredClientVerifier;
use super::{
    ALPN_HTTP11, SpiffeServerVerifier, TlsError, TrustBundle, TrustSource, algorithms, provider,
    refuse_tls12, verify_tls13,
};
use crate::spiffe::SpiffeId;

/// How a server treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A client certificate chaining to the bundle is required (mesh mTLS).
    Required(TrustBundle),
    /// A client certificate is asked for but optional, and if given only its possession is
    /// proven during the handshake; the application verifies the chain itself with
    /// [`verify_client_chain`](super::verify_client_chain) so it can answer with a clear error
    /// instead of a TLS alert.
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
    // No session resumption, here or in any client config (see `client_config`).
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A TLS 1.3 client config that accepts only a server proving `expected`, and presents
/// `client_cert` when one is given. The server's chain is verified against the bundle `trust`
/// holds at the time of each handshake.
pub fn client_config(
    trust: impl Into<TrustSource>,
    expected: SpiffeId,
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(trust, expected)?);
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
    // No session resumption in the mesh, on either side:
    // - A resumed session skips the certificates: the server takes the client's identity from
    //   the session resumed, not from a certificate checked now, so a peer could go on
    //   connecting on a leaf it no longer holds, or one that has expired, for as long as its
    //   ticket lives; and a client would present its old certificate after a renewal.
    // - Mesh connections live long (pooled, reused for every request), so a full handshake
    //   is rare and resumption saves little.
    // - The caches cost memory that grows with the peers seen (256 sessions, each holding a
    //   certificate chain, per server config and per client config).
    cfg.resumption = rustls::client::Resumption::disabled();
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
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}
