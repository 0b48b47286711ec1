//! A workload's credentials, and the certificate store that hands them to handshakes.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{TlsError, TrustBundle, provider};
use crate::spiffe::SpiffeId;

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
