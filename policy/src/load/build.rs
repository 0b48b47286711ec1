//! Checking the references between parsed resources and compiling them into a [`Config`]:
//! services, the mesh config, servers, authorization policies, the compiled inbound policies,
//! routes, in that order (which is also the order in which errors are reported).

use std::collections::{BTreeMap, BTreeSet};

use weft_identity::SpiffeId;

use super::parse::{Origin, Parsed};
use super::{Config, Name, ServiceDef, ValidationError};
use crate::authz::{AllowRule, DefaultPolicy, InboundPolicy, InboundPolicySpec, WorkloadPolicy};
use crate::registry::{APP_LABEL, Endpoint, EndpointSource};
use crate::resources::{AppProtocol, Document};
use crate::routes::{Backend, RouteRule, ServiceRoutes};

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

pub(super) fn build(
    p: &Parsed,
    fallback: DefaultPolicy,
    errors: &mut Vec<ValidationError>,
) -> Config {
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
