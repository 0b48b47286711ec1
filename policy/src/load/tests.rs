//! Loading: a full example compiles; each kind of mistake is reported with the file, the
//! document and the field.

use weft_identity::SpiffeId;

use super::*;
use crate::authz::{Decision, authorize};

const GOOD: &str = r#"
kind: Service
metadata: {name: api, namespace: default}
spec: {ports: [{port: 8080}], selector: {app: api}}
---
kind: Service
metadata: {name: api-v1}
spec: {ports: [{port: 8080}], selector: {app: api, version: v1}}
---
kind: Service
metadata: {name: api-v2}
spec: {ports: [{port: 8080}], selector: {app: api, version: v2}}
---
kind: Service
metadata: {name: api-v3}
spec:
  ports: [{port: 8080}]
  endpoints: [{address: "10.0.0.9:8080", labels: {version: v3}}]
---
kind: Server
metadata: {name: api-http}
spec: {service: api, port: 8080}
---
kind: AuthorizationPolicy
metadata: {name: api-from-web, namespace: default}
spec:
  target: {server: api-http}
  allow:
    - identities: ["spiffe://weft.local/ns/default/sa/web"]
      routes: [{path: {type: PathPrefix, value: /v1/}, methods: [GET, POST]}]
---
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: api, port: 8080}]
  rules:
    - name: mobile
      matches: [{headers: [{name: user-agent, type: RegularExpression, value: ".*[Mm]obile.*"}]}]
      backendRefs: [{name: api-v3, port: 8080}]
    - name: default
      backendRefs: [{name: api-v1, port: 8080, weight: 90}, {name: api-v2, port: 8080, weight: 10}]
      timeouts: {request: 2s}
      retry: {attempts: 2, codes: [502, 503], perTryTimeout: 500ms, budget: {ratio: 0.2, minPerSecond: 10}}
      circuitBreaker: {consecutiveFailures: 5, ejectionTime: 30s}
      fault: {abort: {httpStatus: 503, percentage: 1}, delay: {fixedDelay: 50ms, percentage: 5}}
"#;

fn load(files: &[(&str, &str)]) -> Result<Config, Vec<ValidationError>> {
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    compile(&sources, DefaultPolicy::AllAuthenticated)
}

/// Loads GOOD plus `extra` (in a second file) and returns the one error.
fn error_with(extra: &str) -> ValidationError {
    let errors = load(&[("a.yaml", GOOD), ("b.yaml", extra)]).expect_err("should be rejected");
    assert_eq!(errors.len(), 1, "{}", render_errors(&errors));
    errors.into_iter().next().unwrap()
}

fn assert_names(e: &ValidationError, field: &str, words: &[&str]) {
    let text = e.to_string();
    assert_eq!(e.field, field, "{text}");
    assert_eq!(e.file, PathBuf::from("b.yaml"), "{text}");
    assert!(text.contains(field), "the message names the field: {text}");
    assert!(
        text.starts_with("b.yaml: document "),
        "the message names file and document: {text}"
    );
    for w in words {
        assert!(text.contains(w), "expected `{w}` in: {text}");
    }
}

#[test]
fn full_example_compiles() {
    let c = load(&[("a.yaml", GOOD)]).unwrap_or_else(|e| panic!("{}", render_errors(&e)));
    assert_eq!(c.summary.documents, 7);
    let routes = c.service_routes("default", "api");
    assert_eq!(routes.rules.len(), 2);
    let split = routes.rules[1].split();
    assert_eq!(split.total(), 100);
    assert_eq!(
        routes.rules[1]
            .retry
            .as_ref()
            .unwrap()
            .per_try_timeout
            .unwrap()
            .0,
        std::time::Duration::from_millis(500)
    );
    let policy = c.workload_policy("default", "api");
    let web = SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap();
    assert_eq!(
        authorize(policy.port(8080), Some(&web), &http::Method::GET, "/v1/x"),
        Decision::Allow {
            policy: "default/api-from-web".into()
        }
    );
    assert!(!authorize(policy.port(8080), Some(&web), &http::Method::GET, "/admin").is_allowed());
    // Other ports of the service, and other services, get the mesh default.
    assert!(authorize(policy.port(9999), Some(&web), &http::Method::GET, "/").is_allowed());
    assert!(!authorize(policy.port(9999), None, &http::Method::GET, "/").is_allowed());
    assert_eq!(
        c.workload_policy("default", "other").default.name(),
        "default:all-authenticated"
    );
    assert_eq!(
        c.services[&("default".to_string(), "api-v3".to_string())]
            .endpoints
            .len(),
        1
    );
}

#[test]
fn unknown_field_is_named() {
    let e = error_with(
        "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - backendRefs: [{name: api-v1, wieght: 3}]\n",
    );
    assert_names(
        &e,
        "spec.rules[0].backendRefs[0].wieght",
        &["unknown field `wieght`", "HTTPRoute default/r2"],
    );
}

#[test]
fn bad_duration_is_named() {
    let e = error_with(
        "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - timeouts: {request: 2x}\n",
    );
    assert_names(
        &e,
        "spec.rules[0].timeouts.request",
        &["bad duration", "2x"],
    );
}

/// A duration past `Duration::MAX` panicked while loading (found by review beside the fuzz
/// targets: `parse_duration` used `Duration::from_secs_f64`).
#[test]
fn a_duration_too_long_is_named_not_a_panic() {
    let e = error_with(
        "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - timeouts: {request: 99999999999999999999999s}\n",
    );
    assert_names(&e, "spec.rules[0].timeouts.request", &["too long"]);
}

#[test]
fn zero_weight_sum_is_named() {
    let e = error_with(
        "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - backendRefs: [{name: api-v1, weight: 0}, {name: api-v2, weight: 0}]\n",
    );
    assert_names(&e, "spec.rules[0].backendRefs", &["weights add up to 0"]);
}

#[test]
fn bad_regex_is_named() {
    let e = error_with(
        "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - matches: [{headers: [{name: x-user, type: RegularExpression, value: \"(unclosed\"}]}]\n",
    );
    assert_names(
        &e,
        "spec.rules[0].matches[0].headers[0]",
        &["does not compile", "(unclosed"],
    );
    let e = error_with(
        "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  target: {service: api}\n  allow: [{authenticated: true, routes: [{path: {type: RegularExpression, value: \"[a-\"}}]}]\n",
    );
    assert_names(&e, "spec.allow[0].routes[0].path", &["does not compile"]);
}

#[test]
fn missing_service_is_named() {
    let e = error_with(
        "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - backendRefs: [{name: api-v9, port: 8080}]\n",
    );
    assert_names(
        &e,
        "spec.rules[0].backendRefs[0].name",
        &["default/api-v9", "does not exist"],
    );
    let e =
        error_with("kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: nope}]\n");
    assert_names(
        &e,
        "spec.parentRefs[0].name",
        &["default/nope", "does not exist"],
    );
    let e = error_with("kind: Server\nmetadata: {name: s2}\nspec: {service: nope, port: 80}\n");
    assert_names(&e, "spec.service", &["does not exist"]);
    let e = error_with(
        "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  target: {service: nope}\n  allow: [{authenticated: true}]\n",
    );
    assert_names(&e, "spec.target.service", &["does not exist"]);
    let e = error_with(
        "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  target: {server: nope}\n  allow: [{authenticated: true}]\n",
    );
    assert_names(&e, "spec.target.server", &["does not exist"]);
}

#[test]
fn other_mistakes_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "kind: Servce\nmetadata: {name: x}\nspec: {}\n",
            "kind",
            "unknown kind `Servce`",
        ),
        ("metadata: {name: x}\nspec: {}\n", "kind", "missing"),
        (
            "kind: Service\nmetadata: {name: Bad_Name}\nspec: {}\n",
            "metadata.name",
            "not a valid name",
        ),
        (
            "kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: notaport}]}\n",
            "spec.ports[0].port",
            "invalid",
        ),
        (
            "kind: Service\nmetadata: {name: api}\nspec: {}\n",
            "metadata.name",
            "already defined",
        ),
        (
            "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  target: {service: api}\n  allow: [{identities: [\"spiffe://weft.local/web\"]}]\n",
            "spec.allow[0].identities[0]",
            "not a SPIFFE ID",
        ),
        (
            "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  target: {service: api}\n  allow: [{routes: [{methods: [get]}]}]\n",
            "spec.allow[0].routes[0].methods[0]",
            "uppercase",
        ),
        (
            "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  target: {service: api}\n  allow: [{}]\n",
            "spec.allow[0]",
            "names no peers",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - fault: {abort: {httpStatus: 503, percentage: 150}}\n",
            "spec.rules[0].fault.abort.percentage",
            "not a percentage",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - retry: {attempts: 2, codes: [999]}\n",
            "spec.rules[0].retry.codes[0]",
            "not an HTTP status",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - retry: {attempts: 2, conditions: [sometimes]}\n",
            "spec.rules[0].retry.conditions[0]",
            "unknown variant",
        ),
        (
            "kind: HTTPRoute\nmetadata: {name: r2}\nspec:\n  parentRefs: [{name: api, port: 9}]\n",
            "spec.parentRefs[0].port",
            "has no port 9",
        ),
        (
            "kind: MeshConfig\nmetadata: {name: m}\nspec: {defaultInboundPolicy: allow-all}\n",
            "spec.defaultInboundPolicy",
            "unknown variant",
        ),
    ];
    for (doc, field, words) in cases {
        let e = error_with(doc);
        assert_names(&e, field, &[words]);
    }
}

#[test]
fn yaml_syntax_errors_name_the_place() {
    let errors = load(&[
        ("a.yaml", GOOD),
        ("b.yaml", "kind: Service\nmetadata: {name: [x\n"),
    ])
    .unwrap_err();
    let text = render_errors(&errors);
    assert!(
        text.starts_with("b.yaml: document 1: not valid YAML"),
        "{text}"
    );
    assert!(text.contains("line"), "{text}");
}

#[test]
fn several_errors_are_all_reported_and_nothing_is_applied() {
    let errors = load(&[
        ("a.yaml", GOOD),
        ("b.yaml", "kind: Server\nmetadata: {name: s2}\nspec: {service: nope, port: 80}\n---\nkind: Service\nmetadata: {name: q}\nspec: {prots: []}\n"),
    ])
    .unwrap_err();
    assert_eq!(
        errors.len(),
        1,
        "parse errors stop before reference checks: {}",
        render_errors(&errors)
    );
    assert_eq!(errors[0].document, Some(2));
}

#[test]
fn mesh_config_sets_the_default_and_servers_default_to_deny() {
    let c = load(&[(
        "a.yaml",
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec: {defaultInboundPolicy: all-unauthenticated}\n---\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432}, {port: 9000}]}\n---\nkind: Server\nmetadata: {name: db}\nspec: {service: db, port: 5432}\n",
    )])
    .unwrap();
    let p = c.workload_policy("default", "db");
    assert_eq!(p.port(5432).name(), "server:default/db");
    assert!(!authorize(p.port(5432), None, &http::Method::GET, "/").is_allowed());
    assert!(authorize(p.port(9000), None, &http::Method::GET, "/").is_allowed());
}

#[test]
fn check_dir_reads_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), GOOD).unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::write(
        dir.path().join("more/extra.yml"),
        "kind: Service\nmetadata: {name: extra}\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not yaml").unwrap();
    let summary = check_dir(dir.path()).unwrap();
    assert_eq!(summary.files, 2);
    assert_eq!(summary.kinds["Service"], 5);
    std::fs::write(
        dir.path().join("more/extra.yml"),
        "kind: Service\nmetadata: {name: extra}\nspec: {nope: 1}\n",
    )
    .unwrap();
    let errors = check_dir(dir.path()).unwrap_err();
    assert!(
        errors[0].to_string().contains(
            "extra.yml: document 1 (Service default/extra): spec.nope: unknown field `nope`"
        ),
        "{}",
        errors[0]
    );
}

/// A cheap fuzz: thousands of random byte mutations of a valid directory never panic, and
/// every rejection names the file.
#[test]
fn mutated_documents_never_panic() {
    let mut rng = fastrand::Rng::with_seed(42);
    let alphabet = b" :-[]{}#\n\"'*&!|>0123456789abcxyz./\\%@`";
    for _ in 0..3000 {
        let mut bytes = GOOD.as_bytes().to_vec();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..bytes.len());
            match rng.u8(..3) {
                0 => bytes[i] = alphabet[rng.usize(..alphabet.len())],
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, alphabet[rng.usize(..alphabet.len())]),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Err(errors) = load(&[("m.yaml", &text)]) {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.to_string().starts_with("m.yaml"), "{e}");
            }
        }
    }
}

#[test]
fn opaque_ports_reach_the_workload_policy() {
    let c = load(&[(
        "a.yaml",
        "kind: Service\nmetadata: {name: mail}\nspec:\n  ports:\n    - {port: 8080, appProtocol: http}\n    - {port: 25, appProtocol: opaque}\n    - {port: 3306, appProtocol: tcp}\n    - {port: 9000}\n",
    )])
    .unwrap_or_else(|e| panic!("{}", render_errors(&e)));
    assert_eq!(c.opaque_ports("default", "mail"), [25, 3306]);
    assert_eq!(
        c.workload_policy("default", "mail").opaque_ports,
        [25, 3306]
    );
    assert!(
        c.workload_policy("default", "other")
            .opaque_ports
            .is_empty()
    );
}

#[test]
fn an_unknown_app_protocol_is_named() {
    let e = error_with(
        "kind: Service\nmetadata: {name: mail}\nspec: {ports: [{port: 25, appProtocol: smtp}]}\n",
    );
    assert_names(
        &e,
        "spec.ports[0].appProtocol",
        &["unknown variant `smtp`", "`opaque`"],
    );
}
