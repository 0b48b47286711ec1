//! The proxy's TLS state, following its identity client: the certificate it presents (swapped
//! on every renewal: new handshakes use the new one, open connections keep theirs), the server
//! config of the inbound listener, and one client config per peer identity it expects.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_identity::tls::{self, CertStore, ClientAuth, Credentials};

/// ALPN id of an opaque TCP tunnel between proxies; the first two bytes on the tunnel are the
/// destination port (big-endian).
pub const ALPN_OPAQUE: &[u8] = b"weft.opaque/1";

/// The header of an opaque tunnel ([`ALPN_OPAQUE`]): the destination port, big-endian.
pub fn opaque_header(port: u16) -> [u8; 2] {
    port.to_be_bytes()
}

/// Reads an opaque tunnel's header ([`opaque_header`]) off the front of `io`, leaving the
/// tunnelled bytes after it; fails if the stream ends first.
pub async fn read_opaque_header<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<u16> {
    let mut port = [0u8; 2];
    io.read_exact(&mut port).await?;
    Ok(u16::from_be_bytes(port))
}

/// Current TLS material of a proxy.
#[derive(Debug)]
pub struct MeshTls {
    certs: Arc<CertStore>,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    identity: Option<SpiffeId>,
    anchors: Vec<String>,
    server: Option<Arc<ServerConfig>>,
    clients: HashMap<(SpiffeId, &'static [u8]), Arc<ClientConfig>>,
    bundle: Option<tls::TrustBundle>,
}

impl MeshTls {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            certs: CertStore::empty(),
            state: RwLock::new(State::default()),
        })
    }

    /// Installs new credentials. Configs are rebuilt only when the trust bundle changes; a
    /// plain renewal only swaps the certificate.
    pub fn update(&self, creds: &Credentials) -> Result<(), String> {
        let key = creds.certified_key().map_err(|e| e.to_string())?;
        self.certs.set(key);
        let anchors = creds.bundle.fingerprints();
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.identity = Some(creds.identity.clone());
        if st.anchors != anchors || st.server.is_none() {
            let server = tls::server_config(
                self.certs.clone(),
                ClientAuth::Required(creds.bundle.clone()),
                &[tls::ALPN_H2, tls::ALPN_HTTP11, ALPN_OPAQUE],
            )
            .map_err(|e| e.to_string())?;
            st.server = Some(Arc::new(server));
            st.clients.clear();
            st.anchors = anchors;
            st.bundle = Some(creds.bundle.clone());
        }
        Ok(())
    }

    /// The certificate the proxy presents, for other clients of the mesh (the control plane).
    pub fn cert_store(&self) -> Arc<CertStore> {
        self.certs.clone()
    }

    /// The proxy's own identity, once it has a certificate.
    pub fn identity(&self) -> Option<SpiffeId> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .identity
            .clone()
    }

    /// The inbound listener's config (mTLS required), once there is a certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .server
            .clone()
    }

    /// A client config that accepts only a peer proving `expected`, offering `alpn`.
    pub fn client_config(
        &self,
        expected: &SpiffeId,
        alpn: &'static [u8],
    ) -> Option<Arc<ClientConfig>> {
        let key = (expected.clone(), alpn);
        {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = st.clients.get(&key) {
                return Some(c.clone());
            }
        }
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let bundle = st.bundle.clone()?;
        let cfg = tls::client_config(&bundle, expected.clone(), Some(self.certs.clone()), &[alpn])
            .ok()?;
        let cfg = Arc::new(cfg);
        st.clients.insert(key, cfg.clone());
        Some(cfg)
    }

    /// Follows an identity client's credentials until the sender goes away.
    pub fn follow(
        self: Arc<Self>,
        mut rx: watch::Receiver<Option<Arc<Credentials>>>,
        on_update: impl Fn(&Credentials) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let current = rx.borrow_and_update().clone();
                if let Some(creds) = current {
                    match self.update(&creds) {
                        Ok(()) => on_update(&creds),
                        Err(e) => tracing::error!(error = %e, "cannot install the new certificate"),
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}
