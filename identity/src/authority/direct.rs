//! Credentials straight from the CA, without the API: for what holds the CA's files and needs
//! an identity of its own at once (the demo's bootstrap operator, benchmarks, tests).

use rustls::pki_types::PrivatePkcs8KeyDer;

use super::Authority;
use crate::spiffe::SpiffeId;
use crate::tls::Credentials;

impl Authority {
    /// A fresh key and a certificate for `identity`, issued as the API issues one (through a
    /// CSR, checked), with this CA's bundle.
    pub fn issue_credentials(&self, identity: &SpiffeId) -> Result<Credentials, String> {
        let (key, csr) = crate::client::generate_csr(identity).map_err(|e| e.to_string())?;
        let checked = crate::csr::check(csr.as_bytes(), identity).map_err(|e| e.to_string())?;
        let issued = self.issue(&checked, identity)?;
        Ok(Credentials {
            identity: identity.clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            chain: issued.chain,
            bundle: self.bundle().clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        })
    }
}
