//! The stack scenario (`weft-bench stack`): what the outbound proxy's full stack costs against
//! its minimal stack, in one invocation on one mesh (the `mesh` scenario's processes):
//!
//! - direct: load generator → app;
//! - minimal: through the mesh with no HTTPRoute for `api`: web's outbound takes the service's
//!   default route (to `api` itself, default settings);
//! - full: through the mesh with the HTTPRoute of [`route_yaml`], which configures every
//!   layer without changing what a request gets: a header rule the load does not match, and
//!   the rule the load takes with a 50/50 split over two backends (`api-v1`, `api-v2`, both
//!   selecting the one api workload), timeouts, retries with a budget, a circuit breaker, and
//!   abort and delay faults at 0 %.
//!
//! Only the route changes between minimal and full: the route file is written to (or removed
//! from) the control plane's resource directory while everything runs, and each run waits
//! until the change shows, first in the control plane's `/status`, then in web's
//! `weft_route_requests_total` (probes through web grow the route's series, or no longer do).
//! Without that metric (a proxy that does not export it), a fixed bounded wait, said in the
//! log and the report. Each repeat runs the three paths in turn, reversed every other repeat
//! (D M F, F M D, …), so drift over the run weighs on all of them alike and the route changes
//! once per repeat. All runs are open loop at the fixed rate.

use std::time::{Duration, Instant};

use weft_runtime::testing::metric_series;

use crate::Error;
use crate::mesh::{Harness, Load, Mesh, MeshConfig};
use crate::report::{RouteSwitch, Scenario, StackReport};

/// The full-stack `HTTPRoute`'s name (in namespace `default`).
pub const ROUTE_NAME: &str = "stack-full";
/// Its file in the control plane's resource directory.
pub const ROUTE_FILE: &str = "stack-route.yaml";
/// The route's backend services, there from the start, so only the route changes.
pub const BACKENDS_FILE: &str = "stack-backends.yaml";
/// The web proxy's counter of requests by route (labels `dst_service, route, rule, backend`).
pub const ROUTE_METRIC: &str = "weft_route_requests_total";
/// How long the control plane may take to load a change (it polls every 200 ms).
const CONTROL_PLANE_WAIT: Duration = Duration::from_secs(10);
/// How long, after the control plane loaded a change, web may take to show it in
/// `ROUTE_METRIC`; also the fixed wait when web does not export it.
const PROXY_WAIT: Duration = Duration::from_secs(5);
/// Requests sent through web per look at its metrics.
const PROBES: usize = 3;

/// Services `api-v1`, `api-v2` and `api-v3` on the app's port, each selecting the workloads
/// labelled `app: api`: the one api workload registered, so every backend reaches the same
/// proxy and app.
pub fn backends_yaml(port: u16) -> String {
    ["api-v1", "api-v2", "api-v3"]
        .iter()
        .map(|name| {
            format!(
                "kind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
                 spec: {{ports: [{{port: {port}}}], selector: {{app: api}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The full-stack route: every layer configured, no request's outcome changed. The load
/// (`user-agent: weft-bench`, `GET /`) does not match rule `mobile` and takes rule `split`.
pub fn route_yaml(port: u16) -> String {
    format!(
        r#"kind: HTTPRoute
metadata: {{name: {ROUTE_NAME}, namespace: default}}
spec:
  parentRefs: [{{name: api, port: {port}}}]
  rules:
    - name: mobile
      matches: [{{headers: [{{name: user-agent, type: RegularExpression, value: ".*[Mm]obile.*"}}]}}]
      backendRefs: [{{name: api-v3, port: {port}}}]
    - name: split
      matches: [{{path: {{type: PathPrefix, value: /}}}}]
      backendRefs: [{{name: api-v1, port: {port}, weight: 50}}, {{name: api-v2, port: {port}, weight: 50}}]
      timeouts: {{request: 2s, backendRequest: 1s}}
      retry: {{attempts: 2, codes: [503], conditions: [connect-failure], perTryTimeout: 1s,
              budget: {{ratio: 0.2, minPerSecond: 10, ttl: 10s}}}}
      circuitBreaker: {{consecutiveFailures: 5, ejectionTime: 5s}}
      fault: {{abort: {{httpStatus: 503, percentage: 0}}, delay: {{fixedDelay: 1ms, percentage: 0}}}}
"#
    )
}

/// Starts the mesh, runs direct, minimal and full `repeat` times, and reports.
pub fn run(cfg: &MeshConfig) -> Result<StackReport, Error> {
    let h = Harness::start(cfg, |port| vec![(BACKENDS_FILE, backends_yaml(port))])?;
    let route = route_yaml(h.mesh.app.port());
    let inbound_before = h.mesh.inbound_mtls_requests()?;

    let mut runs = Vec::new();
    let mut switches = Vec::new();
    let mut full_now = false;
    for repeat in 0..cfg.repeat.max(1) {
        let mut order = [Scenario::Direct, Scenario::Minimal, Scenario::Full];
        if repeat % 2 == 1 {
            order.reverse();
        }
        for scenario in order {
            let want_full = scenario == Scenario::Full;
            if scenario != Scenario::Direct && want_full != full_now {
                switches.push(switch_route(&h.mesh, want_full.then_some(route.as_str()))?);
                full_now = want_full;
            }
            runs.push(h.measure(cfg, repeat, scenario, Load::Rate(cfg.rate))?);
        }
    }
    let mtls = h.mesh.mtls_check(inbound_before, &runs)?;
    Ok(StackReport::new(
        h.settings(cfg),
        route,
        runs,
        switches,
        mtls,
    ))
}

/// Writes the route (`Some`) or removes it (`None`), then waits until the control plane has
/// loaded the change and web's route metric shows it (bounded; a fixed wait without the
/// metric).
fn switch_route(mesh: &Mesh, route: Option<&str>) -> Result<RouteSwitch, Error> {
    let full = route.is_some();
    let to = if full {
        Scenario::Full
    } else {
        Scenario::Minimal
    };
    let started = Instant::now();
    mesh.set_resource(ROUTE_FILE, route)?;

    let want = u64::from(full);
    let deadline = started + CONTROL_PLANE_WAIT;
    loop {
        let status = mesh.policy_status()?;
        if http_routes_loaded(&status) == Some(want) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the control plane did not load the {} stack's route change within \
                 {CONTROL_PLANE_WAIT:?} (want {want} HTTPRoute): is the route valid? \
                 (`weft policy check DIR`); its /status: {status}\nits log:\n{}",
                if full { "full" } else { "minimal" },
                mesh.policy.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let control_plane_seconds = started.elapsed().as_secs_f64();

    let deadline = Instant::now() + PROXY_WAIT;
    let mut route_metric = false;
    let mut last_status = None;
    let proxy_seconds = loop {
        let before = route_requests(&mesh.web_metrics()?, ROUTE_NAME);
        for _ in 0..PROBES {
            last_status = mesh.probe();
        }
        let after = route_requests(&mesh.web_metrics()?, ROUTE_NAME);
        route_metric |= after.is_some();
        if shows(full, before, after) && last_status == Some(200) {
            break Some(started.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if last_status != Some(200) {
        return Err(format!(
            "GET / through web ({}) answered {last_status:?} after the switch to the {to:?} \
             stack, not 200; web's log:\n{}",
            mesh.web.outbound,
            mesh.web.proc.logs()
        ));
    }
    match (proxy_seconds, route_metric) {
        (Some(s), _) => eprintln!(
            "route switched to the {to:?} stack: control plane {control_plane_seconds:.2} s, \
             web's {ROUTE_METRIC} {s:.2} s"
        ),
        (None, false) => eprintln!(
            "route switched to the {to:?} stack: control plane {control_plane_seconds:.2} s; \
             web exports no {ROUTE_METRIC}, so it got a fixed wait of {PROXY_WAIT:?} instead \
             (whether it applied the route is not verified)"
        ),
        (None, true) => eprintln!(
            "warning: route switched to the {to:?} stack: control plane \
             {control_plane_seconds:.2} s, but web's {ROUTE_METRIC}{{route=\"{ROUTE_NAME}\"}} \
             did not show it within {PROXY_WAIT:?}; measuring anyway"
        ),
    }
    Ok(RouteSwitch {
        to,
        control_plane_seconds,
        proxy_seconds,
        route_metric,
    })
}

/// Whether requests counted for the route between two looks (`before`, `after`: the
/// route's total, `None` when the metric is absent) show the stack wanted: the full stack
/// counts them, the minimal one no longer does.
pub fn shows(full: bool, before: Option<f64>, after: Option<f64>) -> bool {
    match (full, after) {
        (_, None) => false,
        (true, Some(a)) => a > before.unwrap_or(0.0),
        (false, Some(a)) => before == Some(a),
    }
}

/// The requests web counted for the route `name` (label `route` is `name` or
/// `<namespace>/name`), summed over rules and backends; `None` when the page has no series
/// of `ROUTE_METRIC` at all, Some(0) when it has some but none of this route's.
pub fn route_requests(metrics: &str, name: &str) -> Option<f64> {
    let mut any = false;
    let mut sum = 0.0;
    for (labels, value) in metric_series(metrics, ROUTE_METRIC) {
        any = true;
        let route = label(labels, "route");
        if route.is_some_and(|r| r == name || r.rsplit_once('/').is_some_and(|(_, n)| n == name)) {
            sum += value;
        }
    }
    any.then_some(sum)
}

/// The value of label `key` in `{k="v",...}` (values without escaped quotes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let inner = labels.strip_prefix('{')?.strip_suffix('}')?;
    inner.split("\",").find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim_start_matches('"').trim_end_matches('"'))
    })
}

/// `config.summary.kinds.HTTPRoute` of the control plane's `/status` (0 when absent);
/// `None` when the page is not the expected JSON.
fn http_routes_loaded(status: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(status).ok()?;
    let kinds = v.get("config")?.get("summary")?.get("kinds")?;
    Some(kinds.get("HTTPRoute").and_then(|n| n.as_u64()).unwrap_or(0))
}

#[cfg(test)]
mod tests;
