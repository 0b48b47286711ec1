//! Following the CA between renewals: every `trust_refresh` the client asks the identity
//! service (verified by the bundle it holds) for the CA's bundle and issuer. A new bundle is
//! taken when it keeps an anchor trusted now (see [`accept_bundle`]); a note that leaves of
//! other issuers should be re-issued brings the next renewal forward. What the client trusts
//! is reported as metrics, and on the credentials watch for the proxy to tell the control
//! plane.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{ClientError, fetch_ca};
use crate::info::InfoSeries;
use crate::tls::{Credentials, TrustBundle, fingerprint};
use weft_runtime::metrics::Registry;

/// Whether a trust bundle `offered` (by a renewal's answer or by `/v1/ca`) may replace
/// `trusted`: it must keep at least one of the anchors trusted now. It arrived over TLS that
/// `trusted` verified, from the identity service; a rotation adds the new anchor before it
/// drops the old one, so each of its steps keeps one. A bundle that keeps none (another CA's,
/// or an anchor file replaced at once) would cut this workload off from every peer still on
/// the old anchor: refused. `Ok(true)` when it changes the bundle.
pub(crate) fn accept_bundle(
    trusted: &TrustBundle,
    offered: &TrustBundle,
) -> Result<bool, ClientError> {
    let (now, new) = (trusted.fingerprints(), offered.fingerprints());
    if now == new {
        return Ok(false);
    }
    if new.iter().any(|f| now.contains(f)) {
        return Ok(true);
    }
    Err(ClientError::BundleRefused {
        trusted: now,
        offered: new,
    })
}

/// The fingerprint of the certificate that issued `creds`' leaf.
pub fn leaf_issuer(creds: &Credentials) -> String {
    creds
        .chain
        .get(1)
        .map(|c| fingerprint(c))
        .unwrap_or_default()
}

/// What one look at the CA found.
pub(super) struct Followed {
    /// The bundle it serves (to be judged by [`accept_bundle`]).
    pub bundle: TrustBundle,
    /// When the current leaf should be replaced early (its issuer is no longer the CA's).
    pub reissue_by: Option<SystemTime>,
}

/// Asks the CA what it serves now and compares it with `creds`.
pub(super) async fn look(addr: &str, creds: &Credentials) -> Result<Followed, ClientError> {
    let info = fetch_ca(addr, &creds.bundle, &creds.identity).await?;
    let bundle = TrustBundle::from_pem(info.trust_bundle.as_bytes())
        .map_err(|e| ClientError::BadResponse(e.to_string()))?;
    let reissue_by = match info.reissue_before {
        Some(before) if leaf_issuer(creds) != info.issuer => {
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(before))
        }
        _ => None,
    };
    Ok(Followed { bundle, reissue_by })
}

/// A point in time spread uniformly between now and `by` (now when `by` has passed), so a
/// fleet told to re-issue does not all come at once.
pub(super) fn spread_until(by: SystemTime) -> SystemTime {
    let now = SystemTime::now();
    let window = by.duration_since(now).unwrap_or_default();
    now + window.mul_f64(fastrand::f64())
}

/// The series saying what a workload trusts and which issuer signed its leaf: 1 for what holds
/// now, 0 for what held before.
pub(super) struct TrustMetrics {
    anchors: InfoSeries,
    issuers: InfoSeries,
}

impl TrustMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            anchors: InfoSeries::new(
                registry,
                "weft_identity_client_trust_anchor",
                "1 for each trust anchor this workload trusts now (by SHA-256 fingerprint), 0 for those it trusted before.",
            ),
            issuers: InfoSeries::new(
                registry,
                "weft_identity_client_leaf_issuer",
                "1 for the issuer (by SHA-256 fingerprint) of this workload's current certificate, 0 for earlier ones.",
            ),
        }
    }

    pub fn report(&mut self, creds: &Credentials) {
        self.anchors.set(&creds.bundle.fingerprints());
        self.issuers.set(&[leaf_issuer(creds)]);
    }
}

/// The credentials `creds` with another bundle.
pub(super) fn with_bundle(creds: &Credentials, bundle: TrustBundle) -> Arc<Credentials> {
    let mut next = creds.clone();
    next.bundle = bundle;
    Arc::new(next)
}
