//! The resources operators write, as YAML documents: their shapes follow Kubernetes Gateway API
//! (`HTTPRoute`) and Linkerd's policy resources (`Server`, `AuthorizationPolicy`), so their
//! users read them without docs. Every struct denies unknown fields, so a typo is an error
//! that names the field, not a silently ignored setting.
//!
//! These are the written shapes only; [`crate::load`] checks references between them and
//! compiles them into what the API serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use weft_identity::SpiffeId;

use crate::authz::{AuthzRoute, DefaultPolicy};
use crate::routes::{CircuitBreaker, Fault, RequestMatch, Retry, Timeouts};

/// The namespace of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of resource, by their `kind:` value.
pub const KINDS: &[&str] = &[
    "Service",
    "Server",
    "AuthorizationPolicy",
    "HTTPRoute",
    "MeshConfig",
];

/// `metadata:` of every resource.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// A whole document: `apiVersion` (optional, informative), `kind`, `metadata`, `spec`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    #[serde(default)]
    pub api_version: Option<String>,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

/// `kind: Service`: a named set of workloads and their ports.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Labels a registered workload must carry to belong to the service; default
    /// `{app: <service name>}`.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Endpoints of workloads without a proxy (they never register).
    #[serde(default)]
    pub endpoints: Vec<StaticEndpoint>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    #[serde(default)]
    pub name: Option<String>,
    /// What the port speaks (Kubernetes' `appProtocol`): `opaque` (or `tcp`) makes every
    /// proxy skip protocol detection on it; `http` (the default) lets them detect.
    #[serde(default)]
    pub app_protocol: Option<AppProtocol>,
}

/// A `Service` port's `appProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP, or anything protocol detection tells apart by itself (the default).
    Http,
    /// Opaque TCP: no detection, so a server that speaks first (SMTP, MySQL) is not held up
    /// waiting for the client's first bytes.
    Opaque,
    /// The same as `opaque` (Istio's name).
    Tcp,
}

/// A static endpoint listed in a `Service`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticEndpoint {
    pub address: SocketAddr,
    /// The identity the endpoint proves, if it speaks mesh TLS.
    #[serde(default)]
    pub identity: Option<SpiffeId>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `kind: Server`: a port of a service's workloads that policies target (Linkerd `Server`).
/// A port with a `Server` and no `AuthorizationPolicy` falls back to its `accessPolicy`
/// (default `deny`), not to the mesh default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    pub service: String,
    pub port: u16,
    #[serde(default)]
    pub access_policy: Option<DefaultPolicy>,
}

/// `kind: AuthorizationPolicy`: who may reach a target.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target: Target,
    pub allow: Vec<AllowSpec>,
}

/// What an `AuthorizationPolicy` applies to: a `Server` by name, or a service's port (every
/// port of the service when `port` is left out).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Target {
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

/// One allow rule: the peers (any of the listed kinds) and optionally the routes.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowSpec {
    /// Exact SPIFFE IDs; `"*"` means any authenticated peer.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Any identity in these namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Any mesh identity.
    #[serde(default)]
    pub authenticated: bool,
    /// Anyone, even without mTLS.
    #[serde(default)]
    pub unauthenticated: bool,
    #[serde(default)]
    pub routes: Vec<AuthzRoute>,
}

/// `kind: HTTPRoute` (Gateway API).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// The service a route attaches to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Only `Service` is supported (the Gateway API default for mesh routes).
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<RequestMatch>,
    /// Default: the parent service itself.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    #[serde(default)]
    pub retry: Option<Retry>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default)]
    pub fault: Option<Fault>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

fn one() -> u32 {
    1
}

/// `kind: MeshConfig` (at most one): mesh-wide settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// The policy of ports no `Server` or `AuthorizationPolicy` covers.
    #[serde(default)]
    pub default_inbound_policy: Option<DefaultPolicy>,
    /// The identities (SPIFFE IDs) that may change the resources through the control plane's
    /// API (`weft apply`, `weft delete`), besides the bootstrap operator
    /// `spiffe://<trust-domain>/ns/weft-system/sa/operator`.
    #[serde(default)]
    pub operators: Vec<String>,
}
