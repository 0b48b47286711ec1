//! The last phase of [`build`](super::build): routes. Each `HTTPRoute` is checked (unique
//! name, known parents and backends, valid retry, circuit breaker and fault settings) and its
//! rules are appended to the routes of every parent service.

use std::collections::BTreeSet;

use super::Builder;
use crate::load::ValidationError;
use crate::load::parse::Origin;
use crate::resources::{Document, HttpRouteSpec, RuleSpec};
use crate::routes::{Backend, RouteRule, ServiceRoutes};

/// A route's parent: namespace, service, port.
type Parent = (String, String, Option<u16>);

impl Builder<'_> {
    /// Routes: unique names, known parents and backends, valid rules; each route's rules are
    /// appended to the routes of every parent.
    pub(super) fn routes(&mut self) {
        let p = self.parsed;
        let mut names = BTreeSet::new();
        for (o, d) in &p.routes {
            let Some(full) = self.first_named(&mut names, o, d, "an HTTPRoute") else {
                continue;
            };
            let parents = self.route_parents(o, d);
            let rules: Vec<(&RuleSpec, Vec<Backend>)> = d
                .spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| (r, self.route_rule(o, d, i, r)))
                .collect();
            self.attach_route(&full, &parents, &rules);
        }
    }

    /// The services a route attaches to (at least one, each known).
    fn route_parents(&mut self, o: &Origin, d: &Document<HttpRouteSpec>) -> Vec<Parent> {
        let ns = &d.metadata.namespace;
        if d.spec.parent_refs.is_empty() {
            self.errors.push(o.error(
                "spec.parentRefs",
                "a route needs at least one parent service",
            ));
        }
        let mut parents = Vec::new();
        for (i, parent) in d.spec.parent_refs.iter().enumerate() {
            let field = format!("spec.parentRefs[{i}].kind");
            if !self.service_kind(o, field, &parent.kind, "routes attach to a Service") {
                continue;
            }
            let pns = parent.namespace.clone().unwrap_or_else(|| ns.clone());
            let field = format!("spec.parentRefs[{i}].name");
            if self.service_ref(o, field, &pns, &parent.name, parent.port) {
                parents.push((pns, parent.name.clone(), parent.port));
            }
        }
        parents
    }

    /// Whether a reference's `kind` is left out or `Service`, the only kind it may name;
    /// otherwise the error at `field` that the kind is not supported, and `why`.
    fn service_kind(
        &mut self,
        o: &Origin,
        field: String,
        kind: &Option<String>,
        why: &str,
    ) -> bool {
        match kind {
            Some(kind) if kind != "Service" => {
                self.errors
                    .push(o.error(field, format!("`{kind}` is not supported: {why}")));
                false
            }
            _ => true,
        }
    }

    /// Rule `i` of a route checked; its known backends (weights adding up to more than 0).
    fn route_rule(
        &mut self,
        o: &Origin,
        d: &Document<HttpRouteSpec>,
        i: usize,
        r: &RuleSpec,
    ) -> Vec<Backend> {
        let mut backends = Vec::new();
        for (j, b) in r.backend_refs.iter().enumerate() {
            let field = format!("spec.rules[{i}].backendRefs[{j}].kind");
            if !self.service_kind(o, field, &b.kind, "backends are Services") {
                continue;
            }
            let bns = b
                .namespace
                .clone()
                .unwrap_or_else(|| d.metadata.namespace.clone());
            let field = format!("spec.rules[{i}].backendRefs[{j}].name");
            if self.service_ref(o, field, &bns, &b.name, b.port) {
                backends.push(Backend {
                    namespace: bns,
                    service: b.name.clone(),
                    port: b.port,
                    weight: b.weight,
                });
            }
        }
        if !r.backend_refs.is_empty() && r.backend_refs.iter().all(|b| b.weight == 0) {
            self.errors.push(o.error(
                format!("spec.rules[{i}].backendRefs"),
                "the weights add up to 0, so no backend would get traffic: give at least one backend a weight above 0",
            ));
        }
        check_rule(o, i, r, self.errors);
        backends
    }

    /// Appends the rules of the route `route` to each parent's routes; a rule without
    /// backends sends to the parent itself.
    fn attach_route(
        &mut self,
        route: &str,
        parents: &[Parent],
        rules: &[(&RuleSpec, Vec<Backend>)],
    ) {
        for (pns, pname, pport) in parents {
            let entry = self
                .config
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
                    route: route.to_string(),
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
}

/// The retry, circuit breaker and fault settings of rule `i` of a route.
fn check_rule(o: &Origin, i: usize, r: &RuleSpec, errors: &mut Vec<ValidationError>) {
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
