//! The endpoint registry: workloads register (service, labels, inbound address, identity) with
//! a lease and renew it; a workload that stops renewing is dropped when its lease lapses.
//!
//! The registry is plain data with the time passed in, so its rules are tested without
//! waiting; [`crate::store`] drives it with the clock and publishes its changes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_identity::SpiffeId;

use crate::wire::Dur;

/// The label every workload carries with its service name, and the default selector of a
/// `Service` (`{app: <name>}`).
pub const APP_LABEL: &str = "app";

/// Where an endpoint comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSource {
    /// A workload registered it (and renews its lease).
    Registered,
    /// Listed in a `Service` resource.
    Static,
}

/// One endpoint of a service, as the proxy receives it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The identity the endpoint must prove (`None`: a workload without mesh TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub source: EndpointSource,
}

/// Every endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEndpoints {
    pub namespace: String,
    pub service: String,
    /// The service's declared ports (empty when it has no `Service` resource).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Those of its ports declared opaque (`appProtocol: opaque`): no protocol detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// Sorted by address. Each shared (`Arc`): a change to one endpoint of thousands makes a
    /// new list of the same endpoints, which costs a pointer each, not a copy.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The mesh knows no such service: no resource names it and no workload registered for
    /// it (as against a known service with no endpoints now). A proxy says so
    /// (`unknown_destination`) and keeps no metric series under the name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

/// What the mesh knows of one IP address (`GET /v1/address?ip=…`): the workloads registered
/// there and the static endpoints listed there, each with the service it belongs to. A proxy
/// that intercepted a connection to that IP (transparent mode) learns from it whether the
/// destination is meshed, which identity it must prove, and which service it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressInfo {
    pub ip: IpAddr,
    /// Sorted by namespace, service and address; empty when the mesh does not know the IP.
    pub endpoints: Vec<AddressEndpoint>,
}

/// One endpoint at an address, with its service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressEndpoint {
    pub namespace: String,
    pub service: String,
    pub endpoint: Endpoint,
    /// The service's ports declared opaque (`appProtocol: opaque`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

/// What a workload sends to register (`POST /v1/register`), and again to renew.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub service: String,
    /// Default: the namespace of the caller's identity (or `default` without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels such as `version`; `app: <service>` is added unless given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The workload's inbound address, as peers reach it.
    pub address: SocketAddr,
    /// Must equal the identity the client certificate proves; only used as such without mTLS
    /// (development mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    /// Requested lease; the control plane clamps it to its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Dur>,
    /// Where the workload's proxy serves `/metrics` (its admin address), so operators' tools
    /// (`weft stat`, the dashboard) find every proxy through the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// What the workload's proxy trusts, so operators' tools can tell which proxies follow a
    /// CA rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustReport>,
}

/// What a proxy trusts, as it reports it when it registers (and again when it changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustReport {
    /// SHA-256 fingerprints (`sha256:<hex>`) of the trust anchors it verifies peers with.
    pub anchors: Vec<String>,
    /// SHA-256 fingerprint of the issuer of its current certificate.
    pub issuer: String,
}

impl TrustReport {
    /// At most this many anchors in a report.
    pub const MAX_ANCHORS: usize = 16;

    /// What a workload holding `creds` trusts.
    pub fn of(creds: &weft_identity::tls::Credentials) -> Self {
        Self {
            anchors: creds.bundle.fingerprints(),
            issuer: weft_identity::client::leaf_issuer(creds),
        }
    }

    /// Whether the report is well-formed: a few fingerprints, each `sha256:` and 64 hex digits.
    pub fn check(&self) -> Result<(), String> {
        let fp = |f: &str| {
            f.strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        if self.anchors.len() > Self::MAX_ANCHORS {
            return Err(format!(
                "`trust.anchors` lists {} anchors; at most {} are taken",
                self.anchors.len(),
                Self::MAX_ANCHORS
            ));
        }
        if let Some(bad) = self
            .anchors
            .iter()
            .chain(std::iter::once(&self.issuer))
            .find(|f| !fp(f))
        {
            let shown: String = bad.chars().take(80).collect();
            return Err(format!(
                "`trust` holds `{shown}`, which is not a fingerprint (sha256:<64 hex digits>)"
            ));
        }
        Ok(())
    }
}

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    pub namespace: String,
    pub service: String,
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    /// The granted lease: renew well before it lapses (at a third of it, say).
    pub lease: Dur,
}

/// A registered workload (also as the control plane's admin `/workloads` lists it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub namespace: String,
    pub service: String,
    /// Including `app: <service>`.
    pub labels: BTreeMap<String, String>,
    pub address: SocketAddr,
    pub identity: Option<SpiffeId>,
    /// Its proxy's `/metrics` address, if it told.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// What its proxy trusts, if it told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustReport>,
}

impl Workload {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            identity: self.identity.clone(),
            labels: self.labels.clone(),
            source: EndpointSource::Registered,
        }
    }
}

/// Why a registration was refused by the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{address} in namespace {namespace} is registered by {holder} until its lease lapses; a workload can only renew its own registration"
)]
pub struct Conflict {
    pub namespace: String,
    pub address: SocketAddr,
    pub holder: String,
}

/// Why the registry refused a registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Taken(#[from] Conflict),
    #[error(
        "{identity} holds {limit} registrations, the most one identity may hold (--max-registrations-per-identity of the control plane): remove some, or let their leases lapse"
    )]
    TooMany { identity: SpiffeId, limit: usize },
}

type Key = (String, SocketAddr);

/// The leases.
#[derive(Debug)]
pub struct Registry {
    entries: HashMap<Key, (Workload, Instant)>,
    /// Live registrations one identity may hold (workloads without identity are not counted:
    /// only development mode has them).
    max_per_identity: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

/// What a registration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new workload, or one whose service, labels or identity changed.
    Changed,
    /// Only the lease was extended.
    Renewed,
}

impl Registry {
    /// An empty registry where one identity holds at most `max_per_identity` live
    /// registrations.
    pub fn new(max_per_identity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max_per_identity,
        }
    }

    /// Registers or renews `w` until `now + lease`. An address held by another identity (or
    /// another service) cannot be taken over before its lease lapses, and an identity holding
    /// its cap of registrations can only renew them.
    pub fn upsert(
        &mut self,
        w: Workload,
        lease: Duration,
        now: Instant,
    ) -> Result<Upsert, Refusal> {
        let key = (w.namespace.clone(), w.address);
        let expires = now + lease;
        match self.entries.get_mut(&key) {
            Some((old, old_expires)) if *old_expires > now => {
                if old.identity != w.identity {
                    return Err(Conflict {
                        namespace: w.namespace,
                        address: w.address,
                        holder: old.identity.as_ref().map_or_else(
                            || "a workload without identity".into(),
                            |i| i.to_string(),
                        ),
                    }
                    .into());
                }
                *old_expires = expires;
                if *old == w {
                    return Ok(Upsert::Renewed);
                }
                *old = w;
                Ok(Upsert::Changed)
            }
            _ => {
                if let Some(id) = &w.identity {
                    let held = self
                        .entries
                        .values()
                        .filter(|(o, e)| *e > now && o.identity.as_ref() == Some(id))
                        .count();
                    if held >= self.max_per_identity {
                        return Err(Refusal::TooMany {
                            identity: id.clone(),
                            limit: self.max_per_identity,
                        });
                    }
                }
                self.entries.insert(key, (w, expires));
                Ok(Upsert::Changed)
            }
        }
    }

    /// Removes the registration of `address` if `holder` holds it (`None`: whoever does).
    pub fn remove(
        &mut self,
        namespace: &str,
        address: SocketAddr,
        holder: Option<Option<&SpiffeId>>,
    ) -> bool {
        let key = (namespace.to_string(), address);
        match self.entries.get(&key) {
            Some((w, _)) if holder.is_none_or(|h| w.identity.as_ref() == h) => {
                self.entries.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Drops every lease that lapsed by `now`; returns the dropped workloads.
    pub fn expire(&mut self, now: Instant) -> Vec<Workload> {
        let mut gone = Vec::new();
        self.entries.retain(|_, (w, expires)| {
            if *expires <= now {
                gone.push(w.clone());
                false
            } else {
                true
            }
        });
        gone
    }

    /// When the next lease lapses.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries.values().map(|(_, e)| *e).min()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every live workload, sorted by namespace and address.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut all: Vec<Workload> = self.entries.values().map(|(w, _)| w.clone()).collect();
        all.sort_by(|a, b| (&a.namespace, a.address).cmp(&(&b.namespace, b.address)));
        all
    }
}

/// Whether `labels` carry every label of `selector`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(addr: &str, id: &str, version: &str) -> Workload {
        Workload {
            namespace: "default".into(),
            service: "api".into(),
            labels: [
                ("app".to_string(), "api".to_string()),
                ("version".into(), version.into()),
            ]
            .into(),
            address: addr.parse().unwrap(),
            identity: Some(SpiffeId::parse(id).unwrap()),
            metrics: None,
            trust: None,
        }
    }

    const API: &str = "spiffe://weft.local/ns/default/sa/api";
    const EVIL: &str = "spiffe://weft.local/ns/default/sa/evil";

    #[test]
    fn leases_renew_change_and_lapse() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(10);
        // `id` registers 10.0.0.1:80 as `version`, `secs` after t0, for `lease`.
        let upsert = |r: &mut Registry, id, version, secs| {
            let at = t0 + Duration::from_secs(secs);
            r.upsert(w("10.0.0.1:80", id, version), lease, at)
        };
        assert_eq!(upsert(&mut r, API, "v1", 0), Ok(Upsert::Changed));
        assert_eq!(upsert(&mut r, API, "v1", 5), Ok(Upsert::Renewed));
        assert_eq!(upsert(&mut r, API, "v2", 6), Ok(Upsert::Changed));
        // Another identity cannot take the address over while the lease runs...
        assert!(upsert(&mut r, EVIL, "v1", 7).is_err());
        assert!(!r.remove(
            "default",
            "10.0.0.1:80".parse().unwrap(),
            Some(Some(&SpiffeId::parse(EVIL).unwrap()))
        ));
        // ...and the lease runs from the last renewal.
        assert!(r.expire(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(16)));
        let gone = r.expire(t0 + Duration::from_secs(16));
        assert_eq!(gone.len(), 1);
        assert!(r.is_empty());
        // Once lapsed, the address is free.
        assert_eq!(upsert(&mut r, EVIL, "v1", 17), Ok(Upsert::Changed));
    }

    #[test]
    fn an_identity_holds_at_most_its_cap_of_registrations() {
        let mut r = Registry::new(2);
        let t0 = Instant::now();
        let lease = Duration::from_secs(10);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(r.upsert(w("10.0.0.1:80", API, "v1"), lease, at(0)).is_ok());
        assert!(r.upsert(w("10.0.0.2:80", API, "v1"), lease, at(1)).is_ok());
        let refused = r.upsert(w("10.0.0.3:80", API, "v1"), lease, at(2));
        assert!(
            matches!(&refused, Err(Refusal::TooMany { limit: 2, .. })),
            "{refused:?}"
        );
        // Renewals and changes of what it holds go on; another identity has its own cap.
        assert_eq!(
            r.upsert(w("10.0.0.1:80", API, "v2"), lease, at(3)),
            Ok(Upsert::Changed)
        );
        assert!(r.upsert(w("10.0.0.3:80", EVIL, "v1"), lease, at(3)).is_ok());
        // A lapsed lease frees its place.
        assert!(r.upsert(w("10.0.0.4:80", API, "v1"), lease, at(11)).is_ok());
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [
            ("app".into(), "api".into()),
            ("version".into(), "v1".into()),
        ]
        .into();
        assert!(selects(
            &[("app".to_string(), "api".to_string())].into(),
            &labels
        ));
        assert!(!selects(
            &[("version".to_string(), "v2".to_string())].into(),
            &labels
        ));
        assert!(selects(&BTreeMap::new(), &labels));
    }
}
