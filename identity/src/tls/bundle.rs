//! The trust bundle, and the PEM/DER helpers around it.

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::TlsError;

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
