//! Inbound authorization: the policy of one workload port and the pure decision function the
//! proxy calls for every request ([`authorize`]).
//!
//! A port's [`InboundPolicy`] is a list of allow rules (from `AuthorizationPolicy` resources, or
//! synthesized from a default policy). A request is allowed when one rule accepts both its peer
//! and its route; otherwise it is denied with the policy's name and the reason. Matchers are
//! compiled when the policy is built (regexes, identity and namespace indexes), so a decision is
//! a couple of hash lookups and a few comparisons, whatever the number of rules.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_identity::SpiffeId;

use crate::wire::{Method, PathMatch};

/// What applies to a port no `Server`/`AuthorizationPolicy` talks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Any peer with a mesh identity (mTLS) is allowed.
    #[default]
    AllAuthenticated,
    /// Anyone, with or without mTLS, is allowed.
    AllUnauthenticated,
    /// Nobody is allowed.
    Deny,
}

impl DefaultPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::Deny => "deny",
        }
    }
}

impl std::str::FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all-authenticated" => Ok(Self::AllAuthenticated),
            "all-unauthenticated" => Ok(Self::AllUnauthenticated),
            "deny" => Ok(Self::Deny),
            other => Err(format!(
                "`{other}` is not a default policy: use all-authenticated, all-unauthenticated or deny"
            )),
        }
    }
}

/// The route part of an allow rule: a path and/or methods (empty = any).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthzRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Method>,
}

impl AuthzRoute {
    fn matches(&self, method: &http::Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.0 == *method))
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
}

/// One allow rule: which peers, on which routes (no routes = every route).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// The `AuthorizationPolicy` (`namespace/name`) this rule comes from, or `default:<policy>`.
    pub policy: String,
    /// Exact SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<SpiffeId>,
    /// Any identity in these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Any mesh identity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authenticated: bool,
    /// Anyone, even without mTLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<AuthzRoute>,
}

/// The written (and wire) form of an [`InboundPolicy`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPolicySpec {
    /// What governs the port: `server:<namespace>/<name>`, or `default:<policy>`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AllowRule>,
}

/// A port's compiled inbound policy. Serializes as its [`InboundPolicySpec`].
#[derive(Clone)]
pub struct InboundPolicy {
    spec: InboundPolicySpec,
    name: Arc<str>,
    rules: Vec<Compiled>,
    by_identity: HashMap<String, Vec<usize>>,
    by_namespace: HashMap<String, Vec<usize>>,
    authenticated: Vec<usize>,
    unauthenticated: Vec<usize>,
}

#[derive(Clone)]
struct Compiled {
    policy: Arc<str>,
    routes: Vec<AuthzRoute>,
}

impl InboundPolicy {
    pub fn new(spec: InboundPolicySpec) -> Self {
        let mut by_identity: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        let mut authenticated = Vec::new();
        let mut unauthenticated = Vec::new();
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (i, r) in spec.rules.iter().enumerate() {
            rules.push(Compiled {
                policy: Arc::from(r.policy.as_str()),
                routes: r.routes.clone(),
            });
            for id in &r.identities {
                by_identity
                    .entry(id.as_str().to_string())
                    .or_default()
                    .push(i);
            }
            for ns in &r.namespaces {
                by_namespace.entry(ns.clone()).or_default().push(i);
            }
            if r.authenticated {
                authenticated.push(i);
            }
            if r.unauthenticated {
                unauthenticated.push(i);
            }
        }
        Self {
            name: Arc::from(spec.name.as_str()),
            spec,
            rules,
            by_identity,
            by_namespace,
            authenticated,
            unauthenticated,
        }
    }

    /// The policy a default applies.
    pub fn default_policy(policy: DefaultPolicy) -> Self {
        let name = format!("default:{}", policy.as_str());
        let rule = |authenticated, unauthenticated| AllowRule {
            policy: name.clone(),
            authenticated,
            unauthenticated,
            ..AllowRule::default()
        };
        let rules = match policy {
            DefaultPolicy::AllAuthenticated => vec![rule(true, false)],
            DefaultPolicy::AllUnauthenticated => vec![rule(false, true)],
            DefaultPolicy::Deny => vec![],
        };
        Self::new(InboundPolicySpec { name, rules })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn spec(&self) -> &InboundPolicySpec {
        &self.spec
    }
}

impl fmt::Debug for InboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundPolicy")
            .field("name", &self.name)
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl PartialEq for InboundPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Serialize for InboundPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.spec.serialize(s)
    }
}

impl<'de> Deserialize<'de> for InboundPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        InboundPolicySpec::deserialize(d).map(Self::new)
    }
}

/// Why a request was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The policy allows nobody (`deny`, or a `Server` without authorizations).
    NoAuthorization,
    /// The peer has no mesh identity and no rule admits unauthenticated peers.
    Unauthenticated,
    /// No rule admits this peer's identity.
    IdentityNotAllowed,
    /// Rules admit the peer, but none on this method and path.
    RouteNotAllowed,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoAuthorization => "no_authorization",
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::IdentityNotAllowed => "identity_not_allowed",
            DenyReason::RouteNotAllowed => "route_not_allowed",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::NoAuthorization => "the policy authorizes no one",
            DenyReason::Unauthenticated => "the peer has no mesh identity (no mTLS)",
            DenyReason::IdentityNotAllowed => "no rule authorizes the peer's identity",
            DenyReason::RouteNotAllowed => "no rule authorizes the peer on this method and path",
        })
    }
}

/// The outcome of [`authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule from `policy` (an `AuthorizationPolicy` or `default:<policy>`).
    Allow { policy: Arc<str> },
    /// Denied under `policy` (the port's governing policy) for `reason`.
    Deny {
        policy: Arc<str>,
        reason: DenyReason,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Decides whether `peer` (its mesh identity, `None` without mTLS) may send `method path`
/// to the port governed by `policy`. Pure and allocation-free.
pub fn authorize(
    policy: &InboundPolicy,
    peer: Option<&SpiffeId>,
    method: &http::Method,
    path: &str,
) -> Decision {
    let mut candidates = false;
    let groups: [Option<&Vec<usize>>; 4] = match peer {
        None => [Some(&policy.unauthenticated), None, None, None],
        Some(id) => [
            Some(&policy.unauthenticated),
            Some(&policy.authenticated),
            policy.by_identity.get(id.as_str()),
            policy.by_namespace.get(id.namespace()),
        ],
    };
    for group in groups.into_iter().flatten() {
        for &i in group {
            candidates = true;
            let rule = &policy.rules[i];
            if rule.routes.is_empty() || rule.routes.iter().any(|r| r.matches(method, path)) {
                return Decision::Allow {
                    policy: rule.policy.clone(),
                };
            }
        }
    }
    let reason = if policy.rules.is_empty() {
        DenyReason::NoAuthorization
    } else if candidates {
        DenyReason::RouteNotAllowed
    } else if peer.is_none() {
        DenyReason::Unauthenticated
    } else {
        DenyReason::IdentityNotAllowed
    };
    Decision::Deny {
        policy: policy.name.clone(),
        reason,
    }
}

/// The inbound policy of every port of a workload (the workloads of one service).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPolicy {
    pub namespace: String,
    pub service: String,
    /// Ports with a `Server` or an `AuthorizationPolicy`.
    #[serde(default)]
    pub ports: BTreeMap<u16, InboundPolicy>,
    /// Every other port.
    pub default: InboundPolicy,
    /// The service's ports declared opaque (`appProtocol: opaque`): the proxy forwards
    /// connections to them without protocol detection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

impl WorkloadPolicy {
    /// The policy governing `port`.
    pub fn port(&self, port: u16) -> &InboundPolicy {
        self.ports.get(&port).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests;
