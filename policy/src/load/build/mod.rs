//! Checking the references between parsed resources and compiling them into a [`Config`].
//!
//! [`build`] runs six phases, each a method of [`Builder`]: services, the mesh config, servers,
//! authorization policies, compiling the inbound policies, routes. A phase relies on what the
//! earlier ones produced (a `Server` names a known service, a policy may target a known
//! `Server`), so the order is fixed; it is also the order in which errors are reported.
//! The first five are here, the routes phase is in `routes.rs`.

mod routes;

use std::collections::{BTreeMap, BTreeSet};

use weft_identity::SpiffeId;

use super::parse::{Origin, Parsed};
use super::{Config, Name, ServiceDef, ValidationError};
use crate::authz::{AllowRule, DefaultPolicy, InboundPolicy, InboundPolicySpec, WorkloadPolicy};
use crate::registry::{APP_LABEL, Endpoint, EndpointSource};
use crate::resources::{
    AllowSpec, AppProtocol, AuthorizationPolicySpec, Document, ServerSpec, ServiceSpec,
};

/// Checks and compiles parsed resources. What is wrong goes to `errors`; the returned
/// [`Config`] means something only when nothing was. `fallback` is the default inbound policy
/// unless a `MeshConfig` sets one.
pub(super) fn build(
    parsed: &Parsed,
    fallback: DefaultPolicy,
    errors: &mut Vec<ValidationError>,
) -> Config {
    let mut b = Builder::new(parsed, fallback, errors);
    b.services();
    b.mesh_config();
    b.servers();
    b.policies();
    b.compile_inbound();
    b.routes();
    b.config
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

/// What the phases of [`build`] share.
struct Builder<'a> {
    parsed: &'a Parsed,
    errors: &'a mut Vec<ValidationError>,
    /// The result: services first, then the default policy, inbound policies and routes.
    config: Config,
    /// Per service, the `Server`s on its ports and the rules policies give it: filled by
    /// [`Builder::servers`] and [`Builder::policies`], compiled by
    /// [`Builder::compile_inbound`].
    authz: BTreeMap<Name, ServiceAuthz>,
    /// Per `Server` name, the service and port it stands for.
    servers: BTreeMap<Name, (Name, u16)>,
}

impl<'a> Builder<'a> {
    fn new(
        parsed: &'a Parsed,
        fallback: DefaultPolicy,
        errors: &'a mut Vec<ValidationError>,
    ) -> Self {
        Builder {
            parsed,
            errors,
            config: Config {
                default_policy: fallback,
                ..Config::default()
            },
            authz: BTreeMap::new(),
            servers: BTreeMap::new(),
        }
    }

    /// Services: unique per namespace and name, each compiled into a [`ServiceDef`].
    fn services(&mut self) {
        let p = self.parsed;
        let mut seen: BTreeMap<Name, &Origin> = BTreeMap::new();
        for (o, d) in &p.services {
            if let Some(first) = seen.get(&name_of(d)) {
                self.errors.push(o.error(
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
        for (o, d) in &p.services {
            let def = self.service(o, d);
            self.config.services.insert(name_of(d), def);
        }
    }

    /// One service: its ports (none twice, no port 0), its selector (not empty), its static
    /// endpoints.
    fn service(&mut self, o: &Origin, d: &Document<ServiceSpec>) -> ServiceDef {
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
                self.errors
                    .push(o.error(format!("spec.ports[{i}].port"), "port 0 is not a port"));
            } else if ports.contains(&port.port) {
                self.errors.push(o.error(
                    format!("spec.ports[{i}].port"),
                    format!("port {} is listed twice", port.port),
                ));
            }
            ports.push(port.port);
        }
        let selector = match &d.spec.selector {
            Some(s) if s.is_empty() => {
                self.errors.push(o.error(
                    "spec.selector",
                    "an empty selector would select every workload: list labels, or leave it out for {app: <name>}",
                ));
                s.clone()
            }
            Some(s) => s.clone(),
            None => [(APP_LABEL.to_string(), d.metadata.name.clone())].into(),
        };
        let mut endpoints: Vec<std::sync::Arc<Endpoint>> = d
            .spec
            .endpoints
            .iter()
            .map(|e| {
                std::sync::Arc::new(Endpoint {
                    address: e.address,
                    identity: e.identity.clone(),
                    labels: e.labels.clone(),
                    source: EndpointSource::Static,
                })
            })
            .collect();
        endpoints.sort_by_key(|e| e.address);
        ServiceDef {
            ports,
            opaque_ports,
            selector,
            endpoints,
        }
    }

    /// Whether the service `ns/name` exists and, when `port` is given and the service lists
    /// its ports, has that port; when not, the error is reported at `field` (the reference).
    fn service_ref(
        &mut self,
        o: &Origin,
        field: String,
        ns: &str,
        name: &str,
        port: Option<u16>,
    ) -> bool {
        match self
            .config
            .services
            .get(&(ns.to_string(), name.to_string()))
        {
            None => {
                self.errors.push(o.error(
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
                    self.errors.push(o.error(
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
    }

    /// The mesh config: at most one, and its default inbound policy replaces the fallback.
    fn mesh_config(&mut self) {
        let p = self.parsed;
        if p.mesh.len() > 1 {
            for (o, _) in &p.mesh[1..] {
                self.errors.push(o.error(
                    "kind",
                    format!(
                        "only one MeshConfig may exist; the first is in {}",
                        p.mesh[0].0.file.display()
                    ),
                ));
            }
        }
        let Some((o, m)) = p.mesh.first() else {
            return;
        };
        if let Some(d) = m.spec.default_inbound_policy {
            self.config.default_policy = d;
        }
        for (i, op) in m.spec.operators.iter().enumerate() {
            match weft_identity::SpiffeId::parse(op) {
                Ok(id) => self.config.operators.push(id),
                Err(e) => self.errors.push(o.error(
                    format!("spec.operators[{i}]"),
                    format!("`{op}` is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<name>): {e}"),
                )),
            }
        }
    }

    /// Servers: each on a known service port, one per port, unique names.
    fn servers(&mut self) {
        let p = self.parsed;
        for (o, d) in &p.servers {
            self.server(o, d);
        }
    }

    fn server(&mut self, o: &Origin, d: &Document<ServerSpec>) {
        let ns = &d.metadata.namespace;
        let field = "spec.service".into();
        if !self.service_ref(o, field, ns, &d.spec.service, Some(d.spec.port)) {
            return;
        }
        let svc = (ns.clone(), d.spec.service.clone());
        let entry = self.authz.entry(svc.clone()).or_default();
        if let Some((other, _)) = entry.servers.get(&d.spec.port) {
            self.errors.push(o.error(
                "spec.port",
                format!(
                    "port {} of {}/{} already has the Server {other}",
                    d.spec.port, ns, d.spec.service
                ),
            ));
            return;
        }
        if self.servers.contains_key(&name_of(d)) {
            self.errors.push(o.error(
                "metadata.name",
                format!("a Server named {ns}/{} is already defined", d.metadata.name),
            ));
            return;
        }
        entry.servers.insert(
            d.spec.port,
            (
                format!("{ns}/{}", d.metadata.name),
                d.spec.access_policy.unwrap_or(DefaultPolicy::Deny),
            ),
        );
        self.servers.insert(name_of(d), (svc, d.spec.port));
    }

    /// `d`'s `namespace/name` if no earlier resource of its kind (`an HTTPRoute`, say) in
    /// `names` has it; otherwise the error that it is already defined.
    fn first_named<S>(
        &mut self,
        names: &mut BTreeSet<String>,
        o: &Origin,
        d: &Document<S>,
        kind: &str,
    ) -> Option<String> {
        let full = format!("{}/{}", d.metadata.namespace, d.metadata.name);
        if names.insert(full.clone()) {
            return Some(full);
        }
        self.errors.push(o.error(
            "metadata.name",
            format!("{kind} named {full} is already defined"),
        ));
        None
    }

    /// Authorization policies: unique names, a known target, valid allow rules.
    fn policies(&mut self) {
        let p = self.parsed;
        let mut names = BTreeSet::new();
        for (o, d) in &p.policies {
            let Some(full) = self.first_named(&mut names, o, d, "an AuthorizationPolicy") else {
                continue;
            };
            let Some((svc, port)) = self.policy_target(o, d) else {
                continue;
            };
            let rules: Vec<AllowRule> = d
                .spec
                .allow
                .iter()
                .enumerate()
                .map(|(i, a)| self.allow_rule(o, i, a, &full))
                .collect();
            let entry = self.authz.entry(svc).or_default();
            match port {
                Some(port) => entry.ports.entry(port).or_default().extend(rules),
                None => entry.all_ports.extend(rules),
            }
        }
    }

    /// The service a policy applies to, and the port when it is only one; `None` after
    /// reporting a bad target.
    fn policy_target(
        &mut self,
        o: &Origin,
        d: &Document<AuthorizationPolicySpec>,
    ) -> Option<(Name, Option<u16>)> {
        let ns = &d.metadata.namespace;
        let t = &d.spec.target;
        match (&t.server, &t.service) {
            (Some(server), None) => {
                if t.port.is_some() {
                    self.errors.push(o.error(
                        "spec.target.port",
                        "a Server target names its port already: leave `port` out",
                    ));
                    return None;
                }
                match self.servers.get(&(ns.clone(), server.clone())) {
                    Some((svc, port)) => Some((svc.clone(), Some(*port))),
                    None => {
                        self.errors.push(o.error(
                            "spec.target.server",
                            format!("refers to the Server {ns}/{server}, which does not exist"),
                        ));
                        None
                    }
                }
            }
            (None, Some(service)) => {
                let field = "spec.target.service".into();
                if !self.service_ref(o, field, ns, service, t.port) {
                    return None;
                }
                Some(((ns.clone(), service.clone()), t.port))
            }
            _ => {
                self.errors.push(o.error(
                    "spec.target",
                    "name exactly one of `server` or `service` (with an optional `port`)",
                ));
                None
            }
        }
    }

    /// Allow rule `i` of the policy `policy`: SPIFFE IDs parsed, some peer named.
    fn allow_rule(&mut self, o: &Origin, i: usize, a: &AllowSpec, policy: &str) -> AllowRule {
        let mut rule = AllowRule {
            policy: policy.to_string(),
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
                Err(e) => self.errors.push(o.error(
                    format!("spec.allow[{i}].identities[{j}]"),
                    format!("`{id}` is not a SPIFFE ID: {e}"),
                )),
            }
        }
        for (j, n) in a.namespaces.iter().enumerate() {
            if n.is_empty() {
                self.errors.push(o.error(
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
            self.errors.push(o.error(
                format!("spec.allow[{i}]"),
                "the rule names no peers: give `identities`, `namespaces`, `authenticated: true` or `unauthenticated: true`",
            ));
        }
        rule
    }

    /// The inbound policy of every service a `Server` or policy targets: per port, the
    /// port's rules plus the all-ports rules (a `Server` without rules falls back to its
    /// access policy); on other ports, the all-ports rules or the mesh default.
    fn compile_inbound(&mut self) {
        for ((ns, svc), a) in std::mem::take(&mut self.authz) {
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
                InboundPolicy::default_policy(self.config.default_policy)
            } else {
                InboundPolicy::new(InboundPolicySpec {
                    name: format!("service:{ns}/{svc}"),
                    rules: a.all_ports.clone(),
                })
            };
            self.config.inbound.insert(
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
    }
}
