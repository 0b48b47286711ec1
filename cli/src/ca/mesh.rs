//! What the mesh holds, as the control plane knows it: each registered proxy's anchors and
//! leaf issuer (`/workloads`), and each control-plane replica's own (`/trust`).

use weft_policy::registry::{TrustReport, Workload};

use super::{short, shorts};

/// A part of the mesh that must follow a rotation.
#[derive(Debug, Clone)]
pub struct Holder {
    /// How an operator finds it: `proxy default/web at 10.0.0.3:4143 (spiffe://…)`.
    pub name: String,
    pub trust: Option<TrustReport>,
}

/// What a step needs every holder to have.
#[derive(Debug, Clone)]
pub enum Need {
    /// The anchor (fingerprint) among those it trusts.
    Anchor(String),
    /// A leaf from this issuer (and the anchor above it trusted).
    Issuer { issuer: String, anchor: String },
}

impl Need {
    pub fn describe(&self) -> String {
        match self {
            Need::Anchor(a) => format!("trusts the new anchor {}", short(a)),
            Need::Issuer { issuer, .. } => {
                format!("holds a certificate from the new issuer {}", short(issuer))
            }
        }
    }
}

/// The proxies registered with the control plane replicas at `admins`, and the replicas
/// themselves.
pub fn holders(admins: &[String]) -> Result<Vec<Holder>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<(String, std::net::SocketAddr)> = Vec::new();
    for admin in admins {
        let workloads = crate::stat::workloads(admin)?;
        for w in workloads {
            let key = (w.namespace.clone(), w.address);
            if !seen.contains(&key) {
                seen.push(key);
                out.push(proxy(&w));
            }
        }
        let (status, body) = crate::admin::get(admin, weft_policy::server::TRUST_PATH)
            .map_err(|e| format!("cannot ask the control plane at {admin} what it trusts: {e}"))?;
        match status {
            200 => out.push(Holder {
                name: format!("control plane at {admin}"),
                trust: Some(serde_json::from_str(&body).map_err(|e| {
                    format!("the control plane at {admin} answered /trust with something unexpected: {e}")
                })?),
            }),
            // Development mode: no mTLS, nothing to follow.
            404 => {}
            s => {
                return Err(format!(
                    "the control plane at {admin} answered /trust with HTTP {s}"
                ));
            }
        }
    }
    Ok(out)
}

fn proxy(w: &Workload) -> Holder {
    let who = w
        .identity
        .as_ref()
        .map(|i| format!(" ({i})"))
        .unwrap_or_default();
    Holder {
        name: format!("proxy {}/{} at {}{who}", w.namespace, w.service, w.address),
        trust: w.trust.clone(),
    }
}

/// The holders that do not have what `need` asks, each with what it has instead.
pub fn lagging(holders: &[Holder], need: &Need) -> Vec<String> {
    holders
        .iter()
        .filter_map(|h| {
            let Some(t) = &h.trust else {
                return Some(format!(
                    "{}: reports nothing about its trust (a proxy from before weft reported it?)",
                    h.name
                ));
            };
            let anchors = || shorts(&t.anchors);
            match need {
                Need::Anchor(a) if !t.anchors.contains(a) => {
                    Some(format!("{}: trusts only {}", h.name, anchors()))
                }
                Need::Issuer { issuer, anchor }
                    if t.issuer != *issuer || !t.anchors.contains(anchor) =>
                {
                    Some(format!(
                        "{}: certificate from issuer {}, trusts {}",
                        h.name,
                        short(&t.issuer),
                        anchors()
                    ))
                }
                _ => None,
            }
        })
        .collect()
}
