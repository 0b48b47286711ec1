//! The whole mesh as an operator runs it: `weft identity`, `weft policy` and `weft proxy`
//! processes on loopback, two tiny HTTP apps, real tokens, real mTLS, a policy on disk.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;
use weft_runtime::testing::{http, metric_sum};

struct ProxyAddrs {
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

fn proxy_env(
    dir: &Path,
    name: &str,
    identity: SocketAddr,
    policy: SocketAddr,
    app_port: u16,
) -> (Vec<(&'static str, String)>, ProxyAddrs) {
    let addrs = ProxyAddrs {
        inbound: free_addr(),
        outbound: free_addr(),
        admin: free_addr(),
    };
    let env = vec![
        (
            ENV_TOKEN_FILE,
            dir.join(format!("{name}.token")).display().to_string(),
        ),
        (ENV_IDENTITY_ADDR, identity.to_string()),
        (ENV_POLICY_ADDR, policy.to_string()),
        (proxy_config::ENV_INBOUND, addrs.inbound.to_string()),
        (proxy_config::ENV_OUTBOUND, addrs.outbound.to_string()),
        (proxy_config::ENV_ADMIN, addrs.admin.to_string()),
        (proxy_config::ENV_APP_PORT, app_port.to_string()),
    ];
    (env, addrs)
}

/// identity service, control plane with a resource directory, and proxies `api` (in front of
/// a tiny app), `web` and `other`, all as `weft` processes.
struct Fixture {
    dir: tempfile::TempDir,
    /// Kept so the identity service lives as long as the fixture.
    _identity: Child,
    id_api: SocketAddr,
    policy: Option<Child>,
    pol_api: SocketAddr,
    pol_admin: SocketAddr,
    resources: PathBuf,
    proxies: HashMap<&'static str, (Child, ProxyAddrs)>,
    port: u16,
}

impl Fixture {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let data = d.join("ca");
        let (identity, id_api, _) = start_identity(&d, &data);
        for (ns, w) in [
            ("weft", "policy"),
            ("default", "api"),
            ("default", "web"),
            ("default", "other"),
        ] {
            token(&data, ns, w, &d.join(format!("{w}.token")));
        }
        let port = app("api").port();
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        let mut f = Self {
            dir,
            _identity: identity,
            id_api,
            policy: None,
            pol_api: free_addr(),
            pol_admin: free_addr(),
            resources,
            proxies: HashMap::new(),
            port,
        };
        f.write_policy(&["web"]);
        let check = Command::new(WEFT)
            .args(["policy", "check"])
            .arg(&f.resources)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        f.start_policy();
        for (name, app_port) in [("api", port), ("web", 1), ("other", 1)] {
            let (env, addrs) = proxy_env(f.dir.path(), name, id_api, f.pol_api, app_port);
            let mut p = start_weft(f.dir.path(), name, &["proxy"], &env);
            p.wait_ready(addrs.admin);
            f.proxies.insert(name, (p, addrs));
        }
        f
    }

    fn start_policy(&mut self) {
        let d = self.dir.path();
        let mut policy = start_weft(
            d,
            "policy",
            &[
                "policy",
                "--dir",
                self.resources.to_str().unwrap(),
                "--listen",
                &self.pol_api.to_string(),
                "--admin-listen",
                &self.pol_admin.to_string(),
            ],
            &[
                (ENV_TOKEN_FILE, d.join("policy.token").display().to_string()),
                (ENV_IDENTITY_ADDR, self.id_api.to_string()),
            ],
        );
        policy.wait_ready(self.pol_admin);
        self.policy = Some(policy);
    }

    /// Writes the resources: services, and a policy letting only `allowed` call `api`.
    fn write_policy(&self, allowed: &[&str]) {
        let port = self.port;
        let ids: Vec<String> = allowed
            .iter()
            .map(|a| format!("\"spiffe://weft.local/ns/default/sa/{a}\""))
            .collect();
        let yaml = format!(
            "kind: Service\nmetadata: {{name: api, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n\
             kind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
             kind: Service\nmetadata: {{name: other, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
             kind: AuthorizationPolicy\nmetadata: {{name: api-from-web, namespace: default}}\nspec:\n  target: {{service: api, port: {port}}}\n  allow:\n    - identities: [{}]\n",
            ids.join(", ")
        );
        // Write then rename, as editors and config management do.
        let tmp = self.dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.resources.join("mesh.yaml")).unwrap();
    }

    /// Writes (or removes, with `None`) an `HTTPRoute` file beside the resources.
    fn write_routes(&self, yaml: Option<&str>) {
        let path = self.resources.join("routes.yaml");
        match yaml {
            Some(y) => {
                let tmp = self.dir.path().join("routes.yaml.tmp");
                std::fs::write(&tmp, y).unwrap();
                std::fs::rename(&tmp, path).unwrap();
            }
            None => std::fs::remove_file(path).unwrap(),
        }
    }

    fn get(&self, from: &str, path: &str) -> (u16, String) {
        let url = format!("http://api.default:{}{path}", self.port);
        let host = format!("api.default:{}", self.port);
        http(self.proxies[from].1.outbound, "GET", &url, &host).unwrap_or((0, "no answer".into()))
    }

    /// Waits (bounded) until `from` gets `status` from api.
    fn wait_status(&self, from: &str, status: u16, limit: Duration) -> (u16, String) {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.get(from, "/");
            if r.0 == status || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metrics(&self, proxy: &str) -> String {
        http(self.proxies[proxy].1.admin, "GET", "/metrics", "x")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

#[test]
fn two_workloads_through_real_proxies_with_a_policy_on_disk() {
    let mut f = Fixture::start();

    // web → api: allowed, over mTLS, once the registration shows up in discovery.
    let (status, body) = f.wait_status("web", 200, Duration::from_secs(30));
    assert_eq!(status, 200, "{body}\n{}", f.proxies["web"].0.logs());
    let (_, body) = f.get("web", "/hello");
    assert!(
        body.contains("hello from api: GET /hello HTTP/1.1"),
        "{body}"
    );

    // other → api: 403 naming the policy.
    let (status, body) = f.get("other", "/hello");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.to_lowercase().contains("weft-error: forbidden"),
        "{body}"
    );
    assert!(
        body.contains("spiffe://weft.local/ns/default/sa/other"),
        "{body}"
    );

    // The proxies' own metrics show the TLS 1.3 handshake between them and the deny.
    let api_metrics = f.metrics("api");
    assert!(
        metric_sum(
            &api_metrics,
            "weft_proxy_tls_handshakes_total",
            &[
                "peer=\"spiffe://weft.local/ns/default/sa/web\"",
                "tls_version=\"1.3\""
            ]
        ) >= 1.0,
        "{api_metrics}"
    );
    assert_eq!(
        metric_sum(
            &api_metrics,
            "weft_proxy_authz_total",
            &["decision=\"deny\""]
        ),
        1.0,
        "{api_metrics}"
    );
    assert!(
        f.proxies["api"].0.logs().contains("request denied"),
        "one log line per denied request"
    );

    // The policy is edited on disk while traffic flows: the decision changes within a second.
    let edited = Instant::now();
    f.write_policy(&["web", "other"]);
    let (status, _) = f.wait_status("other", 200, Duration::from_secs(5));
    let took = edited.elapsed();
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "the policy change took {took:?}"
    );
    assert_eq!(f.get("web", "/").0, 200);

    // Clean shutdown: every process exits 0 on SIGTERM.
    for name in ["web", "other", "api"] {
        let (p, _) = f.proxies.remove(name).unwrap();
        let status = p.terminate();
        assert!(status.success(), "{name} exited with {status}");
    }
    assert!(f.policy.take().unwrap().terminate().success());
}

#[test]
fn routes_written_on_disk_apply_live_in_the_callers_proxy() {
    let f = Fixture::start();
    assert_eq!(f.wait_status("web", 200, Duration::from_secs(30)).0, 200);
    f.write_routes(Some(
        r#"kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{name: api}]
  rules:
    - name: teapot
      matches: [{path: {type: PathPrefix, value: /teapot}}]
      fault: {abort: {httpStatus: 418, percentage: 100}}
    - name: slow
      matches: [{path: {type: PathPrefix, value: /slow}}]
      timeouts: {request: 300ms}
"#,
    ));
    // The control plane pushes the route to web's proxy: an injected 418, marked.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, rsp) = loop {
        let r = f.get("web", "/teapot");
        if r.0 == 418 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 418, "{rsp}\n{}", f.policy.as_ref().unwrap().logs());
    assert!(rsp.to_lowercase().contains("weft-fault: abort"), "{rsp}");
    // The app takes 1.5 s on /slow; the route gives it 300 ms.
    let start = Instant::now();
    let (status, rsp) = f.get("web", "/slow");
    let took = start.elapsed();
    assert_eq!(status, 504, "{rsp}");
    assert!(rsp.to_lowercase().contains("weft-error: timeout"), "{rsp}");
    assert!(took < Duration::from_millis(1200), "took {took:?}");
    // Other paths take the default route, labelled so.
    assert_eq!(f.get("web", "/other").0, 200);
    let m = f.metrics("web");
    for rule in ["teapot", "slow", "default"] {
        assert!(
            metric_sum(
                &m,
                "weft_route_requests_total",
                &[&format!("rule=\"{rule}\"")]
            ) >= 1.0,
            "{rule}: {m}"
        );
    }
    // Removed: back to the default route.
    f.write_routes(None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.get("web", "/teapot").0 != 200 {
        assert!(Instant::now() < deadline, "the route removal did not apply");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn weft_stat_reports_known_traffic() {
    let f = Fixture::start();
    assert_eq!(f.wait_status("web", 200, Duration::from_secs(30)).0, 200);
    // `weft stat` and `weft routes` sample for 8 s; the traffic goes in between their scrapes.
    let window = 8.0;
    let spawn = |cmd: &str| {
        let mut c = Command::new(WEFT)
            .args([cmd, "--window", "8s", "-o", "json", "--policy-admin"])
            .arg(f.pol_admin.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It says so once its first scrape is done.
        let mut err = std::io::BufReader::new(c.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(line.contains("sampling"), "{line}");
        c
    };
    let stat = spawn("stat");
    let routes = spawn("routes");
    let started = Instant::now();
    // 200 requests from web: 20 % fail with 503, 10 % take 80 ms, the rest are fast.
    for i in 0..200 {
        let path = match i % 10 {
            0 | 5 => "/fail",
            3 => "/sleep80",
            _ => "/",
        };
        f.get("web", path);
    }
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "the traffic must fit the window"
    );
    let json = |c: std::process::Child| -> serde_json::Value {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let stat = json(stat);
    let api = stat
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "default/api")
        .unwrap_or_else(|| panic!("{stat}"));
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert_eq!(num(api, "requests"), 200.0, "{api}");
    assert!(
        (num(api, "rps") - 200.0 / window).abs() < 0.1 * 200.0 / window,
        "{api}"
    );
    assert!((num(api, "success_rate") - 0.8).abs() < 1e-9, "{api}");
    assert_eq!(num(api, "tls_percent"), 100.0, "{api}");
    // p50: a fast request (under 10 ms); p99: in the histogram bucket of the 80 ms requests
    // (75-100 ms), interpolated as Prometheus does.
    assert!(num(api, "p50_ms") < 10.0, "{api}");
    let p99 = num(api, "p99_ms");
    assert!((75.0..=100.0).contains(&p99), "{api}");

    let routes = json(routes);
    let default = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "default/api" && r["rule"] == "default")
        .unwrap_or_else(|| panic!("{routes}"));
    assert_eq!(num(default, "requests"), 200.0, "{default}");
    assert!(
        (num(default, "success_rate") - 0.8).abs() < 1e-9,
        "{default}"
    );
}

#[test]
fn traffic_survives_a_control_plane_outage_and_the_proxy_converges() {
    let mut f = Fixture::start();
    assert_eq!(f.wait_status("web", 200, Duration::from_secs(30)).0, 200);
    // Both callers have resolved api (and been told the policy) before the outage.
    assert_eq!(f.get("other", "/").0, 403);

    // The control plane dies (SIGKILL): traffic keeps flowing on the proxies' last state.
    let mut policy = f.policy.take().unwrap();
    policy.kill().unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until && n < 2000 {
        let (status, body) = f.get("web", "/");
        assert_eq!(
            status, 200,
            "request {n} failed while the control plane was away: {body}"
        );
        assert_eq!(f.get("other", "/").0, 403, "the last policy still applies");
        n += 1;
    }
    assert!(n > 10);
    // Meanwhile the policy changes on disk; the control plane comes back and the proxies
    // converge on it without a restart.
    f.write_policy(&["web", "other"]);
    f.start_policy();
    // While the restarted control plane's registry fills again, no request fails; the
    // proxies converge on the new policy.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut converged = false;
    let mut n = 0;
    while Instant::now() < deadline && !converged {
        let (status, body) = f.get("web", "/");
        assert_eq!(status, 200, "request {n} failed after the restart: {body}");
        converged = f.get("other", "/").0 == 200;
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        converged,
        "the proxy did not converge:\n{}",
        f.proxies["api"].0.logs()
    );
    // Past the registry warm-up (default lease 30 s / 3 + 1 s), traffic still flows: the
    // proxies re-registered as soon as they reconnected.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let (status, body) = f.get("web", "/");
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_lets_requests_in_flight_complete() {
    let f = Fixture::start();
    assert_eq!(f.wait_status("web", 200, Duration::from_secs(30)).0, 200);
    let web_out = f.proxies["web"].1.outbound;
    let port = f.port;
    // Five slow requests (the app takes 1.5 s) in flight through both proxies...
    let inflight: Vec<_> = (0..5)
        .map(|_| {
            std::thread::spawn(move || {
                let url = format!("http://api.default:{port}/slow");
                http(web_out, "GET", &url, &format!("api.default:{port}"))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // ...when both proxies are told to stop.
    let mut f = f;
    let (api, _) = f.proxies.remove("api").unwrap();
    let (web, _) = f.proxies.remove("web").unwrap();
    let api_pid = api.pid();
    let web_pid = web.pid();
    Command::new("kill")
        .args(["-TERM", &api_pid.to_string(), &web_pid.to_string()])
        .status()
        .unwrap();
    for t in inflight {
        let (status, body) = t.join().unwrap().expect("an answer");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("GET /slow"), "{body}");
    }
    assert!(api.terminate().success());
    assert!(web.terminate().success());
}

#[test]
fn a_proxy_keeps_retrying_an_unreachable_identity_service_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("ca");
    token(&data, "default", "web", &d.join("web.token"));
    // Nothing listens at the identity address.
    let (env, addrs) = proxy_env(d, "web", free_addr(), free_addr(), 1);
    let p = start_weft(d, "web", &["proxy"], &env);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let live = http(addrs.admin, "GET", "/live", "x").map(|r| r.0);
        let ready = http(addrs.admin, "GET", "/ready", "x").map(|r| r.0);
        let logs = p.logs();
        if live == Some(200)
            && ready == Some(503)
            && logs.matches("is `weft identity` running?").count() >= 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "live={live:?} ready={ready:?}\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(p.terminate().success());
}

#[test]
fn a_proxy_without_its_token_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WEFT)
        .args(["proxy"])
        .env(ENV_TOKEN_FILE, dir.path().join("missing-token"))
        .env(proxy_config::ENV_INBOUND, free_addr().to_string())
        .env(proxy_config::ENV_OUTBOUND, free_addr().to_string())
        .env(proxy_config::ENV_ADMIN, free_addr().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the bootstrap token") && stderr.contains("weft token create"),
        "{stderr}"
    );
}
