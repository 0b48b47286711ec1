//! Checking a PKCS#10 certificate signing request before anything is issued for it.
//!
//! A CSR is accepted only when it parses, carries an ECDSA P-256 key, is signed by that key,
//! and asks for no name other than the identity the caller proved (it may ask for none: the
//! identity comes from the proof, not from the CSR).

use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::*;

use crate::reject::{Reason, Rejection};
use crate::spiffe::SpiffeId;

/// Largest CSR accepted (a P-256 CSR is a few hundred bytes).
pub const MAX_CSR_LEN: usize = 16 * 1024;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// A CSR that passed every check.
#[derive(Debug)]
pub struct CheckedCsr {
    pub public_key: rcgen::SubjectPublicKeyInfo,
}

/// Checks a PEM (`CERTIFICATE REQUEST`) or DER CSR against the identity the caller proved.
pub fn check(csr: &[u8], proven: &SpiffeId) -> Result<CheckedCsr, Rejection> {
    if csr.len() > MAX_CSR_LEN {
        return Err(Rejection::new(
            Reason::CsrMalformed,
            format!("the CSR is larger than {MAX_CSR_LEN} bytes"),
        ));
    }
    let der;
    let bytes: &[u8] = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        der = CertificateSigningRequestDer::from_pem_slice(csr).map_err(|e| {
            Rejection::new(
                Reason::CsrMalformed,
                format!("the CSR is not a PEM `CERTIFICATE REQUEST`: {e}"),
            )
        })?;
        der.as_ref()
    } else {
        csr
    };
    let (rest, req) = X509CertificationRequest::from_der(bytes).map_err(|e| {
        Rejection::new(
            Reason::CsrMalformed,
            format!("the CSR is not a PKCS#10 certification request: {e}"),
        )
    })?;
    if !rest.is_empty() {
        return Err(Rejection::new(
            Reason::CsrMalformed,
            "the CSR has trailing bytes",
        ));
    }
    let info = &req.certification_request_info;
    let spki = &info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if alg != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        let what = match (alg.as_str(), curve.as_deref()) {
            ("1.2.840.113549.1.1.1", _) => "an RSA key".to_string(),
            (OID_EC_PUBLIC_KEY, Some(c)) => format!("an EC key on curve {}", curve_name(c)),
            (a, _) => format!("a key of algorithm {a}"),
        };
        return Err(Rejection::new(
            Reason::CsrUnsupportedKey,
            format!("the CSR carries {what}: weft issues certificates only for ECDSA P-256 keys"),
        ));
    }
    req.verify_signature().map_err(|_| {
        Rejection::new(
            Reason::CsrBadSignature,
            "the CSR's signature does not verify with its own key",
        )
    })?;
    if let Some(exts) = req.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => check_sans(san, proven)?,
                ParsedExtension::UnsupportedExtension { .. }
                | ParsedExtension::ParseError { .. } => {
                    return Err(Rejection::new(
                        Reason::CsrMalformed,
                        "the CSR requests an extension weft cannot parse",
                    ));
                }
                // Requested usages and constraints are ignored: the issued certificate's
                // extensions are always set by the CA.
                _ => {}
            }
        }
    }
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| {
        Rejection::new(
            Reason::CsrMalformed,
            format!("the CSR's public key is unusable: {e}"),
        )
    })?;
    Ok(CheckedCsr { public_key })
}

fn check_sans(san: &SubjectAlternativeName<'_>, proven: &SpiffeId) -> Result<(), Rejection> {
    let mut uris = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            other => {
                return Err(Rejection::new(
                    Reason::CsrExtraSans,
                    format!(
                        "the CSR asks for the name {other}: workload certificates carry exactly one URI SAN (the SPIFFE ID) and nothing else"
                    ),
                ));
            }
        }
    }
    match uris.as_slice() {
        [] => Ok(()),
        [uri] if *uri == proven.as_str() => Ok(()),
        [uri] => Err(Rejection::new(
            Reason::CsrWrongIdentity,
            format!(
                "the CSR asks for {uri}, but the caller proved {proven}: a workload can only be certified as itself"
            ),
        )),
        _ => Err(Rejection::new(
            Reason::CsrExtraSans,
            format!(
                "the CSR asks for {} URI SANs: workload certificates carry exactly one",
                uris.len()
            ),
        )),
    }
}

fn curve_name(oid: &str) -> &str {
    match oid {
        "1.3.132.0.34" => "P-384",
        "1.3.132.0.35" => "P-521",
        "1.3.132.0.10" => "secp256k1",
        other => other,
    }
}
