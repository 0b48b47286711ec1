//! Loading a resource directory: reading the YAML files, parsing every document with the field
//! path of any error, checking the references between resources, and compiling the result into
//! a [`Config`] (per-service inbound policies, routes and static endpoints).
//!
//! Either the whole directory is valid and becomes the new [`Config`], or the errors are
//! returned and nothing changes: a half-applied set never exists.
//!
//! # Layout
//! - `mod.rs` (here): what a load produces ([`Config`], [`ServiceDef`], [`Summary`],
//!   [`ValidationError`]) and the entry points [`load_dir`], [`check_dir`] and [`compile`],
//!   which runs the two steps below and stops after the first that finds errors.
//! - `parse.rs`: [`read_sources`] (the YAML files of a directory), [`sources_hash`], and
//!   parsing each document into its kind's shape, checking its name and namespace; every
//!   document keeps its origin (file, document, resource) for the errors of the next step.
//! - `build/mod.rs`: checking the references between resources and compiling them, in six
//!   phases (services, mesh config, servers, authorization policies, inbound policies,
//!   routes), one method each of a `Builder`; errors come out in that order.
//!   `build/routes.rs` holds the routes phase and the checks of a route rule's settings.
//! - `tests.rs`: each kind of mistake, and the message a user sees for it.

mod build;
mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use parse::{read_sources, sources_hash};

use crate::authz::{DefaultPolicy, InboundPolicy, WorkloadPolicy};
use crate::registry::{APP_LABEL, Endpoint};
use crate::routes::ServiceRoutes;

/// `namespace`, `name`.
pub type Name = (String, String);

/// A problem in a resource directory, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file, when the problem is in one.
    pub document: Option<usize>,
    /// `Kind namespace/name` of the resource, when known.
    pub resource: Option<String>,
    /// Path of the offending field, e.g. `spec.rules[0].timeouts.request`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ValidationError {}

/// Every error of a rejected load, one per line.
pub fn render_errors(errors: &[ValidationError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

/// A service as the resources define it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    pub ports: Vec<u16>,
    /// The ports whose `appProtocol` is `opaque` (or `tcp`).
    pub opaque_ports: Vec<u16>,
    pub selector: BTreeMap<String, String>,
    pub endpoints: Vec<std::sync::Arc<Endpoint>>,
}

/// What a valid directory defines, compiled for serving.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub services: BTreeMap<Name, ServiceDef>,
    /// Services with a `Server` or an `AuthorizationPolicy`.
    pub inbound: BTreeMap<Name, WorkloadPolicy>,
    /// Services with an `HTTPRoute`.
    pub routes: BTreeMap<Name, ServiceRoutes>,
    pub default_policy: DefaultPolicy,
    /// The identities a `MeshConfig` names as operators.
    pub operators: Vec<weft_identity::SpiffeId>,
    pub summary: Summary,
}

/// Counts and a content hash of a loaded directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub files: usize,
    pub documents: usize,
    /// Resources per kind.
    pub kinds: BTreeMap<String, usize>,
    /// FNV-1a of the file names and contents, hex.
    pub hash: String,
}

impl Config {
    /// The selector of a service: from its resource, or `{app: <name>}`.
    pub fn selector(&self, namespace: &str, service: &str) -> BTreeMap<String, String> {
        self.services
            .get(&(namespace.to_string(), service.to_string()))
            .map(|s| s.selector.clone())
            .unwrap_or_else(|| [(APP_LABEL.to_string(), service.to_string())].into())
    }

    /// The inbound policy of a service's workloads (the mesh default when nothing targets it).
    pub fn workload_policy(&self, namespace: &str, service: &str) -> WorkloadPolicy {
        let name = (namespace.to_string(), service.to_string());
        let mut policy = self
            .inbound
            .get(&name)
            .cloned()
            .unwrap_or_else(|| WorkloadPolicy {
                namespace: namespace.to_string(),
                service: service.to_string(),
                ports: BTreeMap::new(),
                default: InboundPolicy::default_policy(self.default_policy),
                opaque_ports: Vec::new(),
            });
        policy.opaque_ports = self.opaque_ports(namespace, service);
        policy
    }

    /// The ports of a service declared opaque (`appProtocol: opaque`).
    pub fn opaque_ports(&self, namespace: &str, service: &str) -> Vec<u16> {
        self.services
            .get(&(namespace.to_string(), service.to_string()))
            .map(|d| d.opaque_ports.clone())
            .unwrap_or_default()
    }

    /// The routes of a service (no rules when no `HTTPRoute` attaches to it).
    pub fn service_routes(&self, namespace: &str, service: &str) -> ServiceRoutes {
        self.routes
            .get(&(namespace.to_string(), service.to_string()))
            .cloned()
            .unwrap_or_else(|| ServiceRoutes {
                namespace: namespace.to_string(),
                service: service.to_string(),
                rules: vec![],
            })
    }
}

/// Validates the directory without serving it (`weft policy check DIR`).
pub fn check_dir(dir: &Path) -> Result<Summary, Vec<ValidationError>> {
    load_dir(dir, DefaultPolicy::default()).map(|c| c.summary)
}

/// Reads, validates and compiles a directory. `default_policy` applies unless a `MeshConfig`
/// sets one.
pub fn load_dir(dir: &Path, default_policy: DefaultPolicy) -> Result<Config, Vec<ValidationError>> {
    let sources = read_sources(dir).map_err(|e| vec![e])?;
    compile(&sources, default_policy)
}

/// Validates and compiles sources already read.
pub fn compile(
    sources: &[(PathBuf, String)],
    default_policy: DefaultPolicy,
) -> Result<Config, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let mut parsed = parse::Parsed::default();
    for (file, text) in sources {
        parse::parse_file(file, text, &mut parsed, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let config = build::build(&parsed, default_policy, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut config = config;
    config.summary = Summary {
        files: sources.len(),
        documents: parsed.documents,
        kinds: [
            ("Service", parsed.services.len()),
            ("Server", parsed.servers.len()),
            ("AuthorizationPolicy", parsed.policies.len()),
            ("HTTPRoute", parsed.routes.len()),
            ("MeshConfig", parsed.mesh.len()),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect(),
        hash: sources_hash(sources),
    };
    Ok(config)
}

#[cfg(test)]
mod tests;
