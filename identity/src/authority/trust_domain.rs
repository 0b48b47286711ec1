//! The trust domain a CA serves, recorded in its data directory (`trust-domain`): settled
//! when the CA is loaded, and refused when another is asked of it.

use std::fs;
use std::path::Path;

use x509_parser::prelude::*;

use super::{
    ANCHOR_CERT_FILE, AuthorityConfig, AuthorityError, TRUST_DOMAIN_FILE, corrupt, ensure_dir,
    write_file,
};
use crate::spiffe::TrustDomain;
use crate::tls;

/// The common name of an anchor weft creates, before `(<trust domain>)`.
pub(super) const ANCHOR_NAME: &str = "weft trust anchor";

/// The trust domain the CA in `cfg.data_dir` serves: what the directory records; for a
/// directory from before it recorded one, what its anchor's name says (weft names its anchors
/// after their trust domain); for a new CA, the one asked for or the default. Recorded in the
/// directory from then on. Asking for another than the recorded one is an error.
pub(super) fn settle_trust_domain(cfg: &AuthorityConfig) -> Result<TrustDomain, AuthorityError> {
    let dir = &cfg.data_dir;
    let path = dir.join(TRUST_DOMAIN_FILE);
    let recorded = match fs::read_to_string(&path) {
        Ok(text) => Some(TrustDomain::new(text.trim()).map_err(|e| corrupt(&path, e))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anchor_trust_domain(dir),
        Err(source) => return Err(AuthorityError::Unreadable { path, source }),
    };
    let settled = match (&cfg.trust_domain, recorded) {
        (Some(asked), Some(serves)) if *asked != serves => {
            return Err(AuthorityError::OtherTrustDomain {
                dir: dir.clone(),
                serves: serves.to_string(),
                asked: asked.to_string(),
            });
        }
        (_, Some(serves)) => serves,
        (Some(asked), None) => asked.clone(),
        (None, None) => TrustDomain::default(),
    };
    if !path.exists() {
        ensure_dir(dir)?;
        // Recorded from now on; a CA directory this process may not write (a token minted by
        // a reader of it) is left as it is.
        if let Err(e) = write_file(&path, format!("{settled}\n").as_bytes(), 0o644) {
            tracing::warn!(error = %e, "cannot record the trust domain in the CA's data directory");
        }
    }
    Ok(settled)
}

/// The trust domain in the name of the anchor weft created in `dir`, if it did.
fn anchor_trust_domain(dir: &Path) -> Option<TrustDomain> {
    let pem = fs::read(dir.join(ANCHOR_CERT_FILE)).ok()?;
    let der = tls::certs_from_pem(&pem).ok()?.into_iter().next()?;
    let (_, x) = X509Certificate::from_der(&der).ok()?;
    let cn = x
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let td = cn
        .strip_prefix(ANCHOR_NAME)?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?;
    TrustDomain::new(td).ok()
}
