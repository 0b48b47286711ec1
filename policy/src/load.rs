//! Loading a resource directory: reading the YAML files, parsing every document with the field
//! path of any error, checking the references between resources, and compiling the result into
//! a [`Config`] (per-service inbound policies, routes and static endpoints).
//!
//! Either the whole directory is valid and becomes the new [`Config`], or the errors are
//! returned and nothing changes: a half-applied set never exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use weft_identity::SpiffeId;

use crate::authz::{AllowRule, DefaultPolicy, InboundPolicy, InboundPolicySpec, WorkloadPolicy};
use crate::registry::{APP_LABEL, Endpoint, EndpointSource};
use crate::resources::{
    AppProtocol, AuthorizationPolicySpec, Document, HttpRouteSpec, KINDS, MeshConfigSpec,
    ServerSpec, ServiceSpec,
};
use crate::routes::{Backend, RouteRule, ServiceRoutes};
use crate::wire::fnv1a;

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
    pub endpoints: Vec<Endpoint>,
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

/// The YAML files of a directory (`*.yaml`, `*.yml`, recursively, hidden entries skipped),
/// sorted, with their contents.
pub fn read_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, ValidationError> {
    let io_err = |path: &Path, e: std::io::Error| ValidationError {
        file: path.to_path_buf(),
        document: None,
        resource: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| io_err(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&d, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
            if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| match std::fs::read_to_string(&p) {
            Ok(text) => Ok((p, text)),
            Err(e) => Err(io_err(&p, e)),
        })
        .collect()
}

/// The content hash of a set of sources.
pub fn sources_hash(sources: &[(PathBuf, String)]) -> String {
    let mut all = Vec::new();
    for (p, text) in sources {
        all.extend_from_slice(p.to_string_lossy().as_bytes());
        all.push(0);
        all.extend_from_slice(text.as_bytes());
        all.push(0);
    }
    format!("{:016x}", fnv1a(&all))
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

/// Where a resource was written.
#[derive(Debug, Clone)]
struct Origin {
    file: PathBuf,
    document: usize,
    resource: String,
}

impl Origin {
    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ValidationError {
        ValidationError {
            file: self.file.clone(),
            document: Some(self.document),
            resource: Some(self.resource.clone()),
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Default)]
struct Parsed {
    services: Vec<(Origin, Document<ServiceSpec>)>,
    servers: Vec<(Origin, Document<ServerSpec>)>,
    policies: Vec<(Origin, Document<AuthorizationPolicySpec>)>,
    routes: Vec<(Origin, Document<HttpRouteSpec>)>,
    mesh: Vec<(Origin, Document<MeshConfigSpec>)>,
    documents: usize,
}

/// Validates and compiles sources already read.
pub fn compile(
    sources: &[(PathBuf, String)],
    default_policy: DefaultPolicy,
) -> Result<Config, Vec<ValidationError>> {
    let mut errors = Vec::new();
    let mut parsed = Parsed::default();
    for (file, text) in sources {
        parse_file(file, text, &mut parsed, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let config = build(&parsed, default_policy, &mut errors);
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

fn parse_file(file: &Path, text: &str, out: &mut Parsed, errors: &mut Vec<ValidationError>) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let located = |field: &str, message: String| ValidationError {
            file: file.to_path_buf(),
            document: Some(document),
            resource: None,
            field: field.to_string(),
            message,
        };
        let value = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(located("", format!("not valid YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                return;
            }
        };
        if value.is_null() {
            continue; // An empty document (`---` at the end of a file).
        }
        out.documents += 1;
        let Some(kind) = value
            .get("kind")
            .and_then(|k| k.as_str())
            .map(str::to_string)
        else {
            errors.push(located(
                "kind",
                format!(
                    "missing: every document needs `kind:` (one of {})",
                    KINDS.join(", ")
                ),
            ));
            continue;
        };
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("?");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or(crate::resources::DEFAULT_NAMESPACE);
        let origin = Origin {
            file: file.to_path_buf(),
            document,
            resource: format!("{kind} {ns}/{name}"),
        };
        match kind.as_str() {
            "Service" => push(&origin, value, &mut out.services, errors),
            "Server" => push(&origin, value, &mut out.servers, errors),
            "AuthorizationPolicy" => push(&origin, value, &mut out.policies, errors),
            "HTTPRoute" => push(&origin, value, &mut out.routes, errors),
            "MeshConfig" => push(&origin, value, &mut out.mesh, errors),
            other => errors.push(origin.error(
                "kind",
                format!("unknown kind `{other}`: use one of {}", KINDS.join(", ")),
            )),
        }
    }
}

fn push<S: DeserializeOwned>(
    origin: &Origin,
    value: serde_yaml_ng::Value,
    out: &mut Vec<(Origin, Document<S>)>,
    errors: &mut Vec<ValidationError>,
) {
    match serde_path_to_error::deserialize::<_, Document<S>>(value) {
        Ok(doc) => {
            if let Err((field, msg)) = check_metadata(&doc.metadata) {
                errors.push(origin.error(field, msg));
            } else {
                out.push((origin.clone(), doc));
            }
        }
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            errors.push(origin.error(field, e.into_inner().to_string()));
        }
    }
}

fn check_metadata(m: &crate::resources::Metadata) -> Result<(), (&'static str, String)> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    if !ok(&m.name) {
        return Err((
            "metadata.name",
            format!(
                "`{}` is not a valid name: use lowercase letters, digits, `-` and `.`",
                m.name
            ),
        ));
    }
    if !ok(&m.namespace) {
        return Err((
            "metadata.namespace",
            format!(
                "`{}` is not a valid namespace: use lowercase letters, digits, `-` and `.`",
                m.namespace
            ),
        ));
    }
    Ok(())
}

fn name_of<S>(d: &Document<S>) -> Name {
    (d.metadata.namespace.clone(), d.metadata.name.clone())
}

/// Rules of one service: per port, and for every port.
#[derive(Default)]
struct ServiceAuthz {
    ports: BTreeMap<u16, Vec<AllowRule>>,
    all_ports: Vec<AllowRule>,
    servers: BTreeMap<u16, (String, DefaultPolicy)>,
}

fn build(p: &Parsed, fallback: DefaultPolicy, errors: &mut Vec<ValidationError>) -> Config {
    let mut config = Config {
        default_policy: fallback,
        ..Config::default()
    };
    // Services are unique per namespace and name.
    let mut seen: BTreeMap<Name, &Origin> = BTreeMap::new();
    for (o, d) in &p.services {
        if let Some(first) = seen.get(&name_of(d)) {
            errors.push(o.error(
                "metadata.name",
                format!(
                    "a Service named {}/{} is already defined in {} (document {})",
                    d.metadata.namespace,
                    d.metadata.name,
                    first.file.display(),
                    first.document
                ),
            ));
        }
        seen.entry(name_of(d)).or_insert(o);
    }

    // Services.
    for (o, d) in &p.services {
        let mut ports = Vec::new();
        let opaque_ports: Vec<u16> = d
            .spec
            .ports
            .iter()
            .filter(|p| matches!(p.app_protocol, Some(AppProtocol::Opaque | AppProtocol::Tcp)))
            .map(|p| p.port)
            .collect();
        for (i, port) in d.spec.ports.iter().enumerate() {
            if port.port == 0 {
                errors.push(o.error(format!("spec.ports[{i}].port"), "port 0 is not a port"));
            } else if ports.contains(&port.port) {
                errors.push(o.error(
                    format!("spec.ports[{i}].port"),
                    format!("port {} is listed twice", port.port),
                ));
            }
            ports.push(port.port);
        }
        let selector = match &d.spec.selector {
            Some(s) if s.is_empty() => {
                errors.push(o.error(
                    "spec.selector",
                    "an empty selector would select every workload: list labels, or leave it out for {app: <name>}",
                ));
                s.clone()
            }
            Some(s) => s.clone(),
            None => [(APP_LABEL.to_string(), d.metadata.name.clone())].into(),
        };
        let mut endpoints: Vec<Endpoint> = d
            .spec
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: e.address,
                identity: e.identity.clone(),
                labels: e.labels.clone(),
                source: EndpointSource::Static,
            })
            .collect();
        endpoints.sort_by_key(|e| e.address);
        config.services.insert(
            name_of(d),
            ServiceDef {
                ports,
                opaque_ports,
                selector,
                endpoints,
            },
        );
    }
    let services = config.services.clone();
    let service_ref = |o: &Origin,
                       field: String,
                       ns: &str,
                       name: &str,
                       port: Option<u16>,
                       errors: &mut Vec<ValidationError>|
     -> bool {
        match services.get(&(ns.to_string(), name.to_string())) {
            None => {
                errors.push(o.error(
                    field,
                    format!("refers to the service {ns}/{name}, which does not exist: define a Service named {name} in namespace {ns}"),
                ));
                false
            }
            Some(s) => {
                if let Some(port) = port
                    && !s.ports.is_empty()
                    && !s.ports.contains(&port)
                {
                    errors.push(o.error(
                        field.replace(".name", ".port").replace(".service", ".port"),
                        format!(
                            "the service {ns}/{name} has no port {port} (its ports: {:?})",
                            s.ports
                        ),
                    ));
                    return false;
                }
                true
            }
        }
    };

    // Mesh config.
    if p.mesh.len() > 1 {
        for (o, _) in &p.mesh[1..] {
            errors.push(o.error(
                "kind",
                format!(
                    "only one MeshConfig may exist; the first is in {}",
                    p.mesh[0].0.file.display()
                ),
            ));
        }
    }
    if let Some((_, m)) = p.mesh.first()
        && let Some(d) = m.spec.default_inbound_policy
    {
        config.default_policy = d;
    }

    // Servers.
    let mut authz: BTreeMap<Name, ServiceAuthz> = BTreeMap::new();
    let mut servers: BTreeMap<Name, (Name, u16)> = BTreeMap::new();
    for (o, d) in &p.servers {
        let ns = &d.metadata.namespace;
        if !service_ref(
            o,
            "spec.service".into(),
            ns,
            &d.spec.service,
            Some(d.spec.port),
            errors,
        ) {
            continue;
        }
        let svc = (ns.clone(), d.spec.service.clone());
        let entry = authz.entry(svc.clone()).or_default();
        if let Some((other, _)) = entry.servers.get(&d.spec.port) {
            errors.push(o.error(
                "spec.port",
                format!(
                    "port {} of {}/{} already has the Server {other}",
                    d.spec.port, ns, d.spec.service
                ),
            ));
            continue;
        }
        if servers.contains_key(&name_of(d)) {
            errors.push(o.error(
                "metadata.name",
                format!("a Server named {ns}/{} is already defined", d.metadata.name),
            ));
            continue;
        }
        entry.servers.insert(
            d.spec.port,
            (
                format!("{ns}/{}", d.metadata.name),
                d.spec.access_policy.unwrap_or(DefaultPolicy::Deny),
            ),
        );
        servers.insert(name_of(d), (svc, d.spec.port));
    }

    // Authorization policies.
    let mut policy_names = BTreeSet::new();
    for (o, d) in &p.policies {
        let ns = &d.metadata.namespace;
        let full = format!("{ns}/{}", d.metadata.name);
        if !policy_names.insert(full.clone()) {
            errors.push(o.error(
                "metadata.name",
                format!("an AuthorizationPolicy named {full} is already defined"),
            ));
            continue;
        }
        let t = &d.spec.target;
        let (svc, port) = match (&t.server, &t.service) {
            (Some(server), None) => {
                if t.port.is_some() {
                    errors.push(o.error(
                        "spec.target.port",
                        "a Server target names its port already: leave `port` out",
                    ));
                    continue;
                }
                match servers.get(&(ns.clone(), server.clone())) {
                    Some((svc, port)) => (svc.clone(), Some(*port)),
                    None => {
                        errors.push(o.error(
                            "spec.target.server",
                            format!("refers to the Server {ns}/{server}, which does not exist"),
                        ));
                        continue;
                    }
                }
            }
            (None, Some(service)) => {
                if !service_ref(o, "spec.target.service".into(), ns, service, t.port, errors) {
                    continue;
                }
                ((ns.clone(), service.clone()), t.port)
            }
            _ => {
                errors.push(o.error(
                    "spec.target",
                    "name exactly one of `server` or `service` (with an optional `port`)",
                ));
                continue;
            }
        };
        let mut rules = Vec::new();
        for (i, a) in d.spec.allow.iter().enumerate() {
            let mut rule = AllowRule {
                policy: full.clone(),
                namespaces: a.namespaces.clone(),
                authenticated: a.authenticated,
                unauthenticated: a.unauthenticated,
                routes: a.routes.clone(),
                ..AllowRule::default()
            };
            for (j, id) in a.identities.iter().enumerate() {
                if id == "*" {
                    rule.authenticated = true;
                    continue;
                }
                match SpiffeId::parse(id) {
                    Ok(id) => rule.identities.push(id),
                    Err(e) => errors.push(o.error(
                        format!("spec.allow[{i}].identities[{j}]"),
                        format!("`{id}` is not a SPIFFE ID: {e}"),
                    )),
                }
            }
            for (j, n) in a.namespaces.iter().enumerate() {
                if n.is_empty() {
                    errors.push(o.error(
                        format!("spec.allow[{i}].namespaces[{j}]"),
                        "empty namespace",
                    ));
                }
            }
            if a.identities.is_empty()
                && a.namespaces.is_empty()
                && !a.authenticated
                && !a.unauthenticated
            {
                errors.push(o.error(
                    format!("spec.allow[{i}]"),
                    "the rule names no peers: give `identities`, `namespaces`, `authenticated: true` or `unauthenticated: true`",
                ));
            }
            rules.push(rule);
        }
        let entry = authz.entry(svc).or_default();
        match port {
            Some(port) => entry.ports.entry(port).or_default().extend(rules),
            None => entry.all_ports.extend(rules),
        }
    }

    // Compile the inbound policies.
    for ((ns, svc), a) in authz {
        let ports: BTreeSet<u16> = a.ports.keys().chain(a.servers.keys()).copied().collect();
        let mut compiled = BTreeMap::new();
        for port in ports {
            let mut rules: Vec<AllowRule> = a.ports.get(&port).cloned().unwrap_or_default();
            rules.extend(a.all_ports.iter().cloned());
            let (name, rules) = match a.servers.get(&port) {
                Some((server, access)) if rules.is_empty() => (
                    format!("server:{server}"),
                    InboundPolicy::default_policy(*access).spec().rules.clone(),
                ),
                Some((server, _)) => (format!("server:{server}"), rules),
                None => (format!("service:{ns}/{svc}:{port}"), rules),
            };
            compiled.insert(port, InboundPolicy::new(InboundPolicySpec { name, rules }));
        }
        let default = if a.all_ports.is_empty() {
            InboundPolicy::default_policy(config.default_policy)
        } else {
            InboundPolicy::new(InboundPolicySpec {
                name: format!("service:{ns}/{svc}"),
                rules: a.all_ports.clone(),
            })
        };
        config.inbound.insert(
            (ns.clone(), svc.clone()),
            WorkloadPolicy {
                namespace: ns,
                service: svc,
                ports: compiled,
                default,
                opaque_ports: Vec::new(),
            },
        );
    }

    // Routes.
    let mut route_names = BTreeSet::new();
    for (o, d) in &p.routes {
        let ns = &d.metadata.namespace;
        let full = format!("{ns}/{}", d.metadata.name);
        if !route_names.insert(full.clone()) {
            errors.push(o.error(
                "metadata.name",
                format!("an HTTPRoute named {full} is already defined"),
            ));
            continue;
        }
        if d.spec.parent_refs.is_empty() {
            errors.push(o.error(
                "spec.parentRefs",
                "a route needs at least one parent service",
            ));
        }
        let mut parents = Vec::new();
        for (i, parent) in d.spec.parent_refs.iter().enumerate() {
            if let Some(kind) = &parent.kind
                && kind != "Service"
            {
                errors.push(o.error(
                    format!("spec.parentRefs[{i}].kind"),
                    format!("`{kind}` is not supported: routes attach to a Service"),
                ));
                continue;
            }
            let pns = parent.namespace.clone().unwrap_or_else(|| ns.clone());
            if service_ref(
                o,
                format!("spec.parentRefs[{i}].name"),
                &pns,
                &parent.name,
                parent.port,
                errors,
            ) {
                parents.push((pns, parent.name.clone(), parent.port));
            }
        }
        let mut rules = Vec::new();
        for (i, r) in d.spec.rules.iter().enumerate() {
            let mut backends = Vec::new();
            for (j, b) in r.backend_refs.iter().enumerate() {
                if let Some(kind) = &b.kind
                    && kind != "Service"
                {
                    errors.push(o.error(
                        format!("spec.rules[{i}].backendRefs[{j}].kind"),
                        format!("`{kind}` is not supported: backends are Services"),
                    ));
                    continue;
                }
                let bns = b.namespace.clone().unwrap_or_else(|| ns.clone());
                if service_ref(
                    o,
                    format!("spec.rules[{i}].backendRefs[{j}].name"),
                    &bns,
                    &b.name,
                    b.port,
                    errors,
                ) {
                    backends.push(Backend {
                        namespace: bns,
                        service: b.name.clone(),
                        port: b.port,
                        weight: b.weight,
                    });
                }
            }
            if !r.backend_refs.is_empty() && r.backend_refs.iter().all(|b| b.weight == 0) {
                errors.push(o.error(
                    format!("spec.rules[{i}].backendRefs"),
                    "the weights add up to 0, so no backend would get traffic: give at least one backend a weight above 0",
                ));
            }
            check_rule(o, i, r, errors);
            rules.push((r, backends));
        }
        for (pns, pname, pport) in &parents {
            let entry = config
                .routes
                .entry((pns.clone(), pname.clone()))
                .or_insert_with(|| ServiceRoutes {
                    namespace: pns.clone(),
                    service: pname.clone(),
                    rules: vec![],
                });
            for (i, (r, backends)) in rules.iter().enumerate() {
                let backends = if r.backend_refs.is_empty() {
                    vec![Backend {
                        namespace: pns.clone(),
                        service: pname.clone(),
                        port: *pport,
                        weight: 1,
                    }]
                } else {
                    backends.clone()
                };
                entry.rules.push(RouteRule {
                    route: full.clone(),
                    name: r.name.clone().unwrap_or_else(|| i.to_string()),
                    matches: r.matches.clone(),
                    backends,
                    timeouts: r.timeouts.clone(),
                    retry: r.retry.clone(),
                    circuit_breaker: r.circuit_breaker.clone(),
                    fault: r.fault.clone(),
                });
            }
        }
    }
    config
}

fn check_rule(
    o: &Origin,
    i: usize,
    r: &crate::resources::RuleSpec,
    errors: &mut Vec<ValidationError>,
) {
    let pct = |v: f64| (0.0..=100.0).contains(&v);
    if let Some(retry) = &r.retry {
        for (k, code) in retry.codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                errors.push(o.error(
                    format!("spec.rules[{i}].retry.codes[{k}]"),
                    format!("{code} is not an HTTP status (100-599)"),
                ));
            }
        }
        if let Some(b) = &retry.budget
            && !(b.ratio.is_finite() && b.ratio >= 0.0)
        {
            errors.push(o.error(
                format!("spec.rules[{i}].retry.budget.ratio"),
                format!(
                    "{} is not a ratio: use e.g. 0.2 for 20% extra load",
                    b.ratio
                ),
            ));
        }
    }
    if let Some(cb) = &r.circuit_breaker {
        if cb.consecutive_failures == 0 {
            errors.push(o.error(
                format!("spec.rules[{i}].circuitBreaker.consecutiveFailures"),
                "must be at least 1",
            ));
        }
        if !pct(cb.max_ejection_percent) {
            errors.push(o.error(
                format!("spec.rules[{i}].circuitBreaker.maxEjectionPercent"),
                format!("{} is not a percentage (0-100)", cb.max_ejection_percent),
            ));
        }
    }
    if let Some(f) = &r.fault {
        if let Some(a) = &f.abort {
            if !(200..=599).contains(&a.http_status) {
                errors.push(o.error(
                    format!("spec.rules[{i}].fault.abort.httpStatus"),
                    format!("{} is not an HTTP status (200-599)", a.http_status),
                ));
            }
            if !pct(a.percentage) {
                errors.push(o.error(
                    format!("spec.rules[{i}].fault.abort.percentage"),
                    format!("{} is not a percentage (0-100)", a.percentage),
                ));
            }
        }
        if let Some(d) = &f.delay
            && !pct(d.percentage)
        {
            errors.push(o.error(
                format!("spec.rules[{i}].fault.delay.percentage"),
                format!("{} is not a percentage (0-100)", d.percentage),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
