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

/// ALPN id of an opaque TCP tunnel between proxies. The client's first two bytes are the
/// destination port ([`opaque_header`]); the server answers with a [`TunnelReply`] once the
/// tunnel's far end (its application) is connected, or refused, before any tunnelled byte.
pub const ALPN_OPAQUE: &[u8] = b"weft.opaque/2";
/// The first version of the opaque tunnel: the same without the reply, so a `CONNECT` was
/// answered before its far end was reached. Still accepted, and offered after
/// [`ALPN_OPAQUE`], so proxies of both versions tunnel to each other during an upgrade.
pub const ALPN_OPAQUE_V1: &[u8] = b"weft.opaque/1";
/// What a client offers for an opaque tunnel, preferred first.
pub const ALPN_OPAQUE_ANY: &[&[u8]] = &[ALPN_OPAQUE, ALPN_OPAQUE_V1];

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

/// The server's answer on an opaque tunnel ([`ALPN_OPAQUE`]): a status byte, then the length
/// (big-endian `u16`) and UTF-8 text of what refused it (empty when connected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelReply {
    /// The far end is connected: tunnelled bytes follow.
    Connected,
    /// The receiving proxy's policy denies the tunnel; the text names the policy.
    Forbidden(String),
    /// The far end could not be reached (its application refused or did not answer).
    Unavailable(String),
}

/// The longest reply text read; longer is cut.
const MAX_REPLY_TEXT: usize = 1024;

impl TunnelReply {
    pub fn encode(&self) -> Vec<u8> {
        let (status, text) = match self {
            TunnelReply::Connected => (0u8, ""),
            TunnelReply::Forbidden(t) => (1, t.as_str()),
            TunnelReply::Unavailable(t) => (2, t.as_str()),
        };
        let mut end = text.len().min(MAX_REPLY_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text.as_bytes()[..end];
        let mut out = Vec::with_capacity(3 + text.len());
        out.push(status);
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text);
        out
    }

    /// Reads a reply off the front of `io`; an unknown status or an over-long text is an
    /// `InvalidData` error.
    pub async fn read<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Self> {
        let mut head = [0u8; 3];
        io.read_exact(&mut head).await?;
        let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if len > MAX_REPLY_TEXT {
            return Err(invalid("tunnel reply text too long"));
        }
        let mut text = vec![0u8; len];
        io.read_exact(&mut text).await?;
        let text = String::from_utf8_lossy(&text).into_owned();
        match head[0] {
            0 => Ok(TunnelReply::Connected),
            1 => Ok(TunnelReply::Forbidden(text)),
            2 => Ok(TunnelReply::Unavailable(text)),
            _ => Err(invalid("unknown tunnel reply status")),
        }
    }
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
    clients: HashMap<(SpiffeId, &'static [&'static [u8]]), Arc<ClientConfig>>,
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
                &[tls::ALPN_H2, tls::ALPN_HTTP11, ALPN_OPAQUE, ALPN_OPAQUE_V1],
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

    /// A client config that accepts only a peer proving `expected`, offering `alpn` (preferred
    /// first).
    pub fn client_config(
        &self,
        expected: &SpiffeId,
        alpn: &'static [&'static [u8]],
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
        let cfg =
            tls::client_config(&bundle, expected.clone(), Some(self.certs.clone()), alpn).ok()?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn tunnel_replies_read_back_as_written_and_bad_ones_are_refused() {
        for reply in [
            TunnelReply::Connected,
            TunnelReply::Forbidden("default/api-from-web".into()),
            TunnelReply::Unavailable("connecting to 127.0.0.1:9: refused".into()),
        ] {
            let bytes = reply.encode();
            let mut io: &[u8] = &[bytes.as_slice(), b"tunnelled"].concat();
            assert_eq!(TunnelReply::read(&mut io).await.unwrap(), reply);
            assert_eq!(io, b"tunnelled", "nothing after the reply is consumed");
        }
        // Text is cut at the limit, on a character boundary.
        let long = TunnelReply::Unavailable("é".repeat(MAX_REPLY_TEXT));
        let bytes = long.encode();
        assert_eq!(bytes.len(), 3 + MAX_REPLY_TEXT);
        let TunnelReply::Unavailable(text) =
            TunnelReply::read(&mut bytes.as_slice()).await.unwrap()
        else {
            panic!("not unavailable");
        };
        assert_eq!(text.chars().count(), MAX_REPLY_TEXT / 2);
        // An unknown status, a length over the limit, or a stream cut short: errors.
        for bad in [&[9u8, 0, 0][..], &[1, 0xff, 0xff], &[2, 0, 5, b'a']] {
            assert!(TunnelReply::read(&mut &bad[..]).await.is_err(), "{bad:?}");
        }
    }
}
