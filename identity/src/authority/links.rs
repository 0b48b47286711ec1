//! Anchor links: how a workload whose bootstrap token pins an anchor that has since been
//! rotated out still finds its way to the current bundle.
//!
//! When an anchor rotation starts, the old anchor's key signs a cross-certificate: the new
//! anchor's subject and public key, issued by the old anchor. The link is the pair (old anchor
//! certificate, cross-certificate), kept in `anchor-links.pem` and served with the bundle. A
//! client holding a pin that is no longer in the bundle accepts the bundle when a chain of
//! links leads from the pinned anchor (checked by its hash) to an anchor in it (checked by
//! signature). This trusts nothing more than the pin already did: whoever holds the pinned
//! anchor's key could serve a bundle with that anchor in it anyway.

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::tls::{TrustBundle, der_to_pem, fingerprint};

pub const LINKS_FILE: &str = "anchor-links.pem";

/// A retired anchor and the cross-certificate it signed for its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorLink {
    pub from: CertificateDer<'static>,
    pub cross: CertificateDer<'static>,
}

/// The links in a PEM text (pairs of certificates, in order).
pub fn links_from_pem(pem: &[u8]) -> Result<Vec<AnchorLink>, String> {
    let certs = crate::tls::certs_from_pem(pem).map_err(|e| e.to_string())?;
    if certs.len() % 2 != 0 {
        return Err(format!(
            "it holds {} certificates; links come in pairs (anchor, cross-certificate)",
            certs.len()
        ));
    }
    Ok(certs
        .chunks(2)
        .map(|p| AnchorLink {
            from: p[0].clone(),
            cross: p[1].clone(),
        })
        .collect())
}

pub fn links_to_pem(links: &[AnchorLink]) -> String {
    links
        .iter()
        .flat_map(|l| [&l.from, &l.cross])
        .map(|c| der_to_pem("CERTIFICATE", c))
        .collect()
}

/// Whether the anchor pinned (`sha256:<hex>`) is in `bundle`, or leads to one of its anchors
/// through `links`.
pub fn pin_reaches(pinned: &str, bundle: &TrustBundle, links: &[AnchorLink]) -> bool {
    let in_bundle = bundle.fingerprints();
    let mut reached = vec![pinned.to_string()];
    // Every anchor a link may lead to: those of the bundle and those of other links.
    let candidates: Vec<&CertificateDer<'static>> = bundle
        .certs()
        .iter()
        .chain(links.iter().map(|l| &l.from))
        .collect();
    let mut grew = true;
    while grew {
        grew = false;
        if reached.iter().any(|r| in_bundle.contains(r)) {
            return true;
        }
        for link in links {
            if !reached.contains(&fingerprint(&link.from)) {
                continue;
            }
            for next in candidates.iter().filter(|c| vouches(link, c)) {
                let fp = fingerprint(next);
                if !reached.contains(&fp) {
                    reached.push(fp);
                    grew = true;
                }
            }
        }
    }
    reached.iter().any(|r| in_bundle.contains(r))
}

/// Whether `link`'s cross-certificate, signed by its `from` anchor, names `anchor`'s subject and
/// key.
fn vouches(link: &AnchorLink, anchor: &CertificateDer<'_>) -> bool {
    let (Ok((_, from)), Ok((_, cross)), Ok((_, to))) = (
        X509Certificate::from_der(&link.from),
        X509Certificate::from_der(&link.cross),
        X509Certificate::from_der(anchor),
    ) else {
        return false;
    };
    cross.issuer() == from.subject()
        && cross.verify_signature(Some(from.public_key())).is_ok()
        && cross.subject() == to.subject()
        && cross.public_key().raw == to.public_key().raw
}
