//! Prometheus compatibility: `promtool check metrics` (Prometheus' own linter) finds nothing on
//! the `/metrics` of a real mesh's proxies, identity service and control plane, and the shipped
//! example config, recording rules and Grafana dashboard (`docs/prometheus/`) are valid and
//! name only series weft defines.
//!
//! The mesh test is a system test: it runs when `WEFT_SYSTEM_TESTS=1` and then fails if
//! `promtool` (Debian package `prometheus`, installed by `.ci/run`) is missing.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use weft_runtime::child::Child;
use weft_runtime::testing::{http, metric_sum};

fn docs_prometheus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus")
}

/// Runs `promtool` with `args`, `stdin` on its standard input; returns whether it succeeded
/// and everything it printed. Panics if promtool is missing: system tests never skip silently.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it (Debian package `prometheus`, see .ci/run) \
                 or unset WEFT_SYSTEM_TESTS"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A one-line HTTP/1 app in a thread: every request gets `200 ok`, then the connection closes.
fn ok_app() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

/// Services api, web and other; only web may call api; an `HTTPRoute` on api with named rules,
/// one of which aborts with a 500.
fn resources(port: u16) -> String {
    format!(
        r#"kind: Service
metadata: {{name: api, namespace: default}}
spec: {{ports: [{{port: {port}}}]}}
---
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{ports: [{{port: 8080}}]}}
---
kind: Service
metadata: {{name: other, namespace: default}}
spec: {{ports: [{{port: 8080}}]}}
---
kind: AuthorizationPolicy
metadata: {{name: api-from-web, namespace: default}}
spec:
  target: {{service: api, port: {port}}}
  allow:
    - identities: ["spiffe://weft.local/ns/default/sa/web"]
---
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: api}}]
  rules:
    - name: boom
      matches: [{{path: {{type: PathPrefix, value: /boom}}}}]
      fault: {{abort: {{httpStatus: 500, percentage: 100}}}}
    - name: hello
      matches: [{{path: {{type: PathPrefix, value: /hello}}}}]
"#
    )
}

/// The outbound and admin addresses of a `weft proxy` process.
struct Sidecar {
    proc: Child,
    outbound: SocketAddr,
    admin: SocketAddr,
}

/// Where a sidecar finds the mesh: the test directory, the CA's data, identity and control plane.
struct Mesh<'a> {
    dir: &'a Path,
    data: &'a Path,
    identity: SocketAddr,
    policy: SocketAddr,
}

impl Mesh<'_> {
    /// `weft proxy` for workload `default/name` in front of the app on `app`, with its token.
    fn sidecar(&self, name: &str, app: u16) -> Sidecar {
        let (dir, identity, policy) = (self.dir, self.identity, self.policy);
        let token_file = dir.join(format!("{name}.token"));
        token(self.data, "default", name, &token_file);
        let (inbound, outbound, admin) = (free_addr(), free_addr(), free_addr());
        let flags = [
            ("--inbound-listen", inbound.to_string()),
            ("--outbound-listen", outbound.to_string()),
            ("--admin-listen", admin.to_string()),
            ("--identity-addr", identity.to_string()),
            ("--policy-addr", policy.to_string()),
            ("--token-file", token_file.display().to_string()),
            ("--app-port", app.to_string()),
        ];
        Sidecar {
            proc: start(dir, name, "proxy", &flags, admin),
            outbound,
            admin,
        }
    }
}

/// `weft <command> <flags>`, logging to `dir/name.log`, once its admin endpoint is ready.
fn start(
    dir: &Path,
    name: &str,
    command: &str,
    flags: &[(&str, String)],
    admin: SocketAddr,
) -> Child {
    let mut args = vec![command];
    args.extend(flags.iter().flat_map(|(f, v)| [*f, v.as_str()]));
    let mut proc = start_weft(dir, name, &args, &[]);
    proc.wait_ready(admin);
    proc
}

fn get(from: &Sidecar, port: u16, path: &str) -> (u16, String) {
    let host = format!("api.default:{port}");
    let url = format!("http://{host}{path}");
    http(from.outbound, "GET", &url, &host).unwrap_or((0, "no answer".into()))
}

fn scrape(admin: SocketAddr) -> String {
    let (status, rsp) = http(admin, "GET", "/metrics", "x").unwrap();
    assert_eq!(status, 200, "{rsp}");
    rsp.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn promtool_finds_nothing_on_any_metrics_endpoint_nor_in_the_shipped_config() {
    // promtool is here, and its findings reach us: a counter without `_total` or help is one.
    let (ok, out) = promtool(&["check", "metrics"], "# TYPE x counter\nx 1\n");
    assert!(
        !ok && out.contains("_total"),
        "promtool missed a finding: {out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("ca");
    let (_identity, id_api, id_admin) = start_identity(d, &data);
    token(&data, "weft", "policy", &d.join("policy.token"));
    let port = ok_app();
    let res = d.join("resources");
    std::fs::create_dir_all(&res).unwrap();
    std::fs::write(res.join("mesh.yaml"), resources(port)).unwrap();
    let (pol_api, pol_admin) = (free_addr(), free_addr());
    let pol_flags = [
        ("--dir", res.display().to_string()),
        ("--listen", pol_api.to_string()),
        ("--admin-listen", pol_admin.to_string()),
        ("--identity-addr", id_api.to_string()),
        ("--token-file", d.join("policy.token").display().to_string()),
    ];
    let policy = start(d, "policy", "policy", &pol_flags, pol_admin);
    let mesh = Mesh {
        dir: d,
        data: &data,
        identity: id_api,
        policy: pol_api,
    };
    let api = mesh.sidecar("api", port);
    let web = mesh.sidecar("web", 1);
    let other = mesh.sidecar("other", 1);

    // Traffic: allowed (200), denied (403), and an aborted route rule (500), once the route and
    // api's registration have reached the callers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&web, port, "/hello").0 != 200 || get(&web, port, "/boom").0 != 500 {
        assert!(
            Instant::now() < deadline,
            "web never reached api through the route: {:?}\n{}",
            get(&web, port, "/hello"),
            web.proc.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let denied = get(&other, port, "/hello");
    assert_eq!(denied.0, 403, "{}", denied.1);

    let web_metrics = scrape(web.admin);
    for series in [
        r#"weft_route_response_latency_seconds_bucket{"#,
        r#"weft_route_response_latency_seconds_sum{"#,
        r#"weft_route_response_latency_seconds_count{"#,
        r#"weft_proxy_response_latency_seconds_bucket{"#,
        r#"le="+Inf"} "#,
    ] {
        assert!(
            web_metrics.contains(series),
            "no {series} in\n{web_metrics}"
        );
    }
    assert!(!web_metrics.contains("quantile="), "{web_metrics}");
    for (rule, class) in [("hello", "2xx"), ("boom", "5xx")] {
        let labels = [
            &*format!("rule=\"{rule}\""),
            &*format!("status_class=\"{class}\""),
        ];
        let n = metric_sum(&web_metrics, "weft_route_responses_total", &labels);
        assert!(
            n >= 1.0,
            "no {rule} {class} route response in\n{web_metrics}"
        );
    }
    assert!(
        metric_sum(
            &scrape(api.admin),
            "weft_proxy_authz_total",
            &["decision=\"deny\""]
        ) >= 1.0
    );

    let endpoints = [
        ("proxy api", api.admin),
        ("proxy web", web.admin),
        ("proxy other", other.admin),
        ("identity", id_admin),
        ("control plane", pol_admin),
    ];
    let mut findings = Vec::new();
    for (what, admin) in endpoints {
        let text = scrape(admin);
        let (ok, out) = promtool(&["check", "metrics"], &text);
        if !ok || !out.trim().is_empty() {
            findings.push(format!(
                "{what} /metrics (ok: {ok}):\n{out}\n--- scraped:\n{text}"
            ));
        }
    }
    assert!(findings.is_empty(), "{}", findings.join("\n\n"));

    let docs = docs_prometheus();
    for (check, file) in [("config", "prometheus.yml"), ("rules", "rules.yml")] {
        let path = docs.join(file).display().to_string();
        let (ok, out) = promtool(&["check", check, &path], "");
        assert!(ok, "promtool check {check} {path}:\n{out}");
    }

    for p in [web, other, api] {
        assert!(p.proc.terminate().success());
    }
    assert!(policy.terminate().success());
}

/// Metric names a proxy exposes once it has seen a request and a route response, with the
/// `_bucket`, `_sum` and `_count` series of its histograms.
fn proxy_metric_names() -> BTreeSet<String> {
    use weft_proxy::metrics::{ProxyMetrics, RouteLabels};
    let m = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
    m.request("outbound", "p", "default/api", true);
    m.response("outbound", "p", "default/api", 200, 0.001);
    let l = RouteLabels {
        dst: "default/api",
        route: "api",
        rule: "hello",
        backend: "default/api",
    };
    m.route_response(l, 200, 0.001);
    let mut names = BTreeSet::new();
    for line in m.registry.render().lines() {
        let mut words = line.split(' ').skip(2);
        if !line.starts_with("# TYPE ") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The metric names in a PromQL expression: identifiers that start with `weft_` or contain a
/// colon (recorded series), outside label matchers' quoted values.
fn promql_names(expr: &str) -> Vec<String> {
    let mut unquoted = String::new();
    for (i, part) in expr.split('"').enumerate() {
        if i % 2 == 0 {
            unquoted.push_str(part);
        }
        unquoted.push(' ');
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("weft_") || (w.contains(':') && w.len() > 1))
        .map(str::to_string)
        .collect()
}

/// The PromQL of a Grafana dashboard: every panel target's `expr` (each non-row panel has
/// one at least) and every query variable's `query`.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string()),
        );
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            exprs.push(var["query"].as_str().unwrap().to_string());
        }
    }
    exprs
}

#[test]
fn dashboard_and_rules_name_only_series_the_proxy_defines() {
    let docs = docs_prometheus();
    let defined = proxy_metric_names();
    let rules = std::fs::read_to_string(docs.join("rules.yml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect();
    assert!(recorded.len() >= 6, "{recorded:?}");
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        rule_exprs.len(),
        recorded.len(),
        "one single-line expr per rule"
    );

    let text = std::fs::read_to_string(docs.join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 6, "{} panels", panels.len());
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "service"), "no $service");
    let exprs = dashboard_exprs(&dash);

    let mut unknown = Vec::new();
    for expr in rule_exprs.iter().chain(&exprs) {
        let names = promql_names(expr);
        assert!(!names.is_empty(), "no weft series in {expr}");
        for n in names {
            if !defined.contains(&n) && !recorded.contains(&n) {
                unknown.push(format!("{n} (in {expr})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "series neither a proxy defines ({defined:?}) nor rules.yml records:\n{}",
        unknown.join("\n")
    );
}
