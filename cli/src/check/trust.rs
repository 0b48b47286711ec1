//! What the proxies trust against what the CA serves: a proxy trusting an anchor the CA no
//! longer uses, or lacking one it does, fails; one whose certificate is from an issuer the
//! CA no longer signs with is a warning (it moves at its next renewal).

use weft_policy::registry::TrustReport;

use super::report::Check;
use crate::ca::{short, shorts};
use crate::stat::prom::Sample;

/// The CA as the identity service's metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaView {
    /// The anchors it serves.
    pub anchors: Vec<String>,
    /// The issuer it signs with.
    pub issuer: Option<String>,
}

const ANCHOR_INFO: &str = "weft_identity_trust_anchor";
const ISSUER_INFO: &str = "weft_identity_issuer";

/// The CA's anchors and issuer from its `/metrics` (`None` from a service that does not
/// export them).
pub fn ca_view(samples: &[Sample]) -> Option<CaView> {
    let held = |name: &str| -> Vec<String> {
        samples
            .iter()
            .filter(|s| s.name == name && s.value == 1.0)
            .map(|s| s.label("fingerprint").to_string())
            .collect()
    };
    let anchors = held(ANCHOR_INFO);
    if anchors.is_empty() {
        return None;
    }
    Some(CaView {
        anchors,
        issuer: held(ISSUER_INFO).into_iter().next(),
    })
}

/// One proxy's trust against the CA's.
pub fn proxy_trust(name: &str, trust: Option<&TrustReport>, ca: &CaView) -> Check {
    let what = format!("{name} trusts the CA's anchors");
    let Some(t) = trust else {
        return Check::warning(
            what,
            "it reports nothing about what it trusts",
            "upgrade the proxy to a weft version that reports it (in its registration)",
        );
    };
    let extra: Vec<&String> = t
        .anchors
        .iter()
        .filter(|a| !ca.anchors.contains(a))
        .collect();
    let missing: Vec<&String> = ca
        .anchors
        .iter()
        .filter(|a| !t.anchors.contains(a))
        .collect();
    let follow = "proxies follow the CA every --identity-trust-refresh (60 s by default); if this lasts, its log says why (look for `trust bundle refused` or failed requests to the identity service), and `weft ca status` shows any rotation under way";
    if !missing.is_empty() {
        return Check::failure(
            what,
            format!(
                "it lacks {} that the CA uses: it refuses peers whose certificates chain to it",
                shorts(missing)
            ),
            follow,
        );
    }
    if !extra.is_empty() {
        return Check::failure(
            what,
            format!(
                "it still trusts {}, which the CA no longer uses: certificates under it would be taken",
                shorts(extra)
            ),
            follow,
        );
    }
    match &ca.issuer {
        Some(issuer) if *issuer != t.issuer => Check::warning(
            format!("{name} certificate is from the CA's issuer"),
            format!(
                "it is from {}, the CA signs with {} now",
                short(&t.issuer),
                short(issuer)
            ),
            "it moves to the new issuer at its next renewal; `weft ca rotate issuer --reissue-within 10m` asks every proxy to move sooner",
        ),
        _ => Check::ok(what),
    }
}
