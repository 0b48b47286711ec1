//! The demo's resource directory: the services, the `api` route and the authorization
//! policies, as YAML files the user can edit while the demo runs.

use std::path::Path;

/// Every service listens on port 80 as the callers name it (`http://api/`): a request that
/// names no port goes, on the callee's side, to the port its sidecar was given as the app's
/// (`--app-port`), so each demo app keeps its own free loopback port.
pub const SERVICE_PORT: u16 = 80;

/// The share of `api-v2`'s answers its app fails with 503 (a buggy release): the route
/// retries them, so callers rarely see them.
pub const API_V2_FAIL_PERCENT: u8 = 20;

/// The services: `web`, `api` (the routed parent), its versions and `db`.
fn services() -> String {
    let mut out = String::from(
        "# The demo's services. A sidecar registers its workload with `app: <service>` plus its\n\
         # labels (`version`); a service's endpoints are the workloads its selector matches.\n",
    );
    let svc = |name: &str, selector: &str| {
        format!(
            "---\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{ports: [{{port: {SERVICE_PORT}, name: http}}], selector: {selector}}}\n"
        )
    };
    out += &svc("web", "{app: web}");
    out += &svc("api", "{app: api}");
    for v in ["v1", "v2", "v3"] {
        out += &svc(&format!("api-{v}"), &format!("{{app: api, version: {v}}}"));
    }
    out += &svc("db", "{app: db}");
    out
}

/// The route of calls to `api`: mobile clients to `api-v3`, everyone else split 90/10 between
/// `api-v1` and `api-v2`, with retries under a budget, a timeout and a little injected failure.
fn routes() -> String {
    format!(
        r#"# Calls to api. Edit and save: the callers' sidecars apply a valid change within a second
# (try the weights, or the fault percentage).
kind: HTTPRoute
metadata: {{name: api, namespace: default}}
spec:
  parentRefs: [{{name: api, port: {p}}}]
  rules:
    - name: mobile
      matches: [{{headers: [{{name: user-agent, type: RegularExpression, value: ".*[Mm]obile.*"}}]}}]
      backendRefs: [{{name: api-v3, port: {p}}}]
      timeouts: {{request: 2s}}
    - name: split
      backendRefs: [{{name: api-v1, port: {p}, weight: 90}}, {{name: api-v2, port: {p}, weight: 10}}]
      timeouts: {{request: 2s}}
      # api-v2's app fails {API_V2_FAIL_PERCENT}% of its requests with 503: retried away.
      retry: {{attempts: 2, codes: [503], perTryTimeout: 500ms, budget: {{ratio: 0.2, minPerSecond: 10}}}}
      # A little chaos that callers do see (injected faults are never retried).
      fault: {{abort: {{httpStatus: 503, percentage: 2}}}}
"#,
        p = SERVICE_PORT
    )
}

/// Who may call whom: loadgen → web → api → db, nothing else.
fn policies(trust_domain: &str) -> String {
    let policy = |name: &str, target: &str, client: &str| {
        format!(
            "---\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  target: {{service: {target}}}\n  allow:\n    - identities: \
             [\"spiffe://{trust_domain}/ns/default/sa/{client}\"]\n"
        )
    };
    let mut out = String::from(
        "# Only the caller each tier expects gets in (every port of the target service); the\n\
         # demo's load generator also knocks on db directly and is refused (403).\n",
    );
    out += &policy("web-from-loadgen", "web", "loadgen");
    out += &policy("api-from-web", "api", "web");
    out += &policy("db-from-api", "db", "api");
    out
}

/// Writes the resource files into `dir` (created if needed).
pub fn write(dir: &Path, trust_domain: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (file, text) in [
        ("services.yaml", services()),
        ("routes.yaml", routes()),
        ("policies.yaml", policies(trust_domain)),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use weft_policy::authz::{Decision, authorize};
    use weft_policy::load::load_dir;

    fn config() -> weft_policy::load::Config {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "weft.local").unwrap();
        load_dir(dir.path(), Default::default())
            .map_err(|e| weft_policy::load::render_errors(&e))
            .unwrap()
    }

    fn id(sa: &str) -> weft_identity::SpiffeId {
        format!("spiffe://weft.local/ns/default/sa/{sa}")
            .parse()
            .unwrap()
    }

    /// `examples/demo` is what the demo serves (with the trust domain `weft.local`), so the
    /// example a user copies is the one they watched working.
    #[test]
    fn the_demo_directory_is_the_example() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "weft.local").unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
        let mut files: Vec<String> = std::fs::read_dir(&example)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["policies.yaml", "routes.yaml", "services.yaml"]);
        for file in files {
            let demo = std::fs::read_to_string(dir.path().join(&file)).unwrap();
            let copy = std::fs::read_to_string(example.join(&file)).unwrap();
            assert_eq!(
                copy, demo,
                "examples/demo/{file} is not what the demo writes: copy it from a running demo's directory"
            );
        }
    }

    #[test]
    fn the_demo_directory_loads_and_routes_api() {
        let config = config();
        let routes = config.service_routes("default", "api");
        let names: Vec<_> = routes.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mobile", "split"]);
        let backends = |i: usize| -> Vec<(String, u32)> {
            routes.rules[i]
                .backends
                .iter()
                .map(|b| (b.service.clone(), b.weight))
                .collect()
        };
        assert_eq!(backends(0), [("api-v3".to_string(), 1)]);
        assert_eq!(
            backends(1),
            [("api-v1".to_string(), 90), ("api-v2".to_string(), 10)]
        );
        let selector = config.selector("default", "api-v2");
        assert_eq!(selector.get("version").map(String::as_str), Some("v2"));
    }

    #[test]
    fn only_api_reaches_db_on_whatever_port_its_app_has() {
        let config = config();
        // The sidecar authorizes on its app's port, which the resources do not name.
        let db = config.workload_policy("default", "db");
        let get = hyper::Method::GET;
        let allowed = |policy: &weft_policy::authz::WorkloadPolicy, sa: &str| {
            authorize(policy.port(41234), Some(&id(sa)), &get, "/").is_allowed()
        };
        assert!(allowed(&db, "api"));
        assert!(!allowed(&db, "web"));
        assert!(!allowed(&db, "loadgen"));
        assert!(matches!(
            authorize(db.port(41234), None, &get, "/"),
            Decision::Deny { .. }
        ));
        let api = config.workload_policy("default", "api");
        assert!(allowed(&api, "web"));
        assert!(!allowed(&api, "loadgen"));
        let web = config.workload_policy("default", "web");
        assert!(allowed(&web, "loadgen"));
    }
}
