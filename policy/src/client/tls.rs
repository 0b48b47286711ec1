//! How the client reaches the control plane over mesh TLS.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use weft_identity::SpiffeId;
use weft_identity::tls::{self, TrustSource};

/// How the client reaches the control plane over TLS.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// The client's certificates, as its handshakes present them: when they change (a
    /// renewal), new requests go on a new connection, which presents the new one.
    pub certs: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
}

impl ClientTls {
    /// The certificate a handshake would present now.
    pub(super) fn current_cert(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.certs
            .as_ref()
            .and_then(|c| c.resolve(&[], &[rustls::SignatureScheme::ECDSA_NISTP256_SHA256]))
    }
}

impl ClientTls {
    /// Mesh TLS: the control plane must prove `expected`, verified against the bundle `bundle`
    /// holds at each handshake; the client presents the certificate `certs` resolves (its
    /// workload identity, needed to register).
    pub fn mesh(
        bundle: impl Into<TrustSource>,
        expected: SpiffeId,
        certs: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    ) -> Result<Self, String> {
        let server_name = tls::server_name(&expected);
        // Without session resumption (`tls::client_config`): a resumed session would present
        // the certificate of the session it resumes again after a renewal.
        let config = tls::client_config(bundle, expected, certs.clone(), &[tls::ALPN_H2])
            .map_err(|e| e.to_string())?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
            certs,
        })
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}
