//! The control plane beyond one machine, with real processes on loopback: three etcd
//! members, two `weft policy` replicas over them, two `weft identity` replicas over the same
//! CA material (certificates living 8 s, so they rotate every few seconds), and proxies with
//! traffic at a steady rate through a route with a split. Parts are killed one after the
//! other, and not one request fails:
//! - one etcd member: a route change applied now reaches the proxies;
//! - the replica the client's proxy is connected to: the proxies are on the other within
//!   5 s, and a change applied through the survivor reaches them;
//! - etcd's quorum: `weft apply` fails naming the store; once it is back, the change applied
//!   afterwards arrives;
//! - an identity replica, while certificates rotate: renewals go on through the other.
//!
//! A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs `etcd`, failing loudly
//! without it.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;
use weft_runtime::etcd::EtcdCluster;
use weft_runtime::testing::http;

struct Mesh {
    dir: tempfile::TempDir,
    etcd: EtcdCluster,
    identities: Vec<(Option<Child>, SocketAddr)>,
    policies: Vec<(Option<Child>, SocketAddr, SocketAddr)>,
    proxies: Vec<(Child, SocketAddr)>,
}

impl Mesh {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let etcd = EtcdCluster::start(&d.join("etcd"), 3).unwrap();
        let data = d.join("ca");
        // Two identity replicas over the same CA (the first creates it).
        let mut identities = Vec::new();
        for name in ["identity-a", "identity-b"] {
            let (api, admin) = (free_addr(), free_addr());
            let mut p = start_weft(
                &d,
                name,
                &[
                    "identity",
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--listen",
                    &api.to_string(),
                    "--admin-listen",
                    &admin.to_string(),
                    "--leaf-lifetime",
                    "8s",
                ],
                &[],
            );
            p.wait_ready(admin);
            identities.push((Some(p), api));
        }
        let identity_addrs = format!("{},{}", identities[0].1, identities[1].1);
        for (ns, w) in [
            ("weft", "policy"),
            ("weft-system", "operator"),
            ("default", "api"),
            ("default", "web"),
        ] {
            token(&data, ns, w, &d.join(format!("{w}.token")));
        }
        let mut policies = Vec::new();
        for name in ["policy-a", "policy-b"] {
            let (api, admin) = (free_addr(), free_addr());
            let mut p = start_weft(
                &d,
                name,
                &[
                    "policy",
                    "--store",
                    &etcd.store_url(),
                    "--listen",
                    &api.to_string(),
                    "--admin-listen",
                    &admin.to_string(),
                ],
                &[
                    (ENV_TOKEN_FILE, d.join("policy.token").display().to_string()),
                    (ENV_IDENTITY_ADDR, identity_addrs.clone()),
                ],
            );
            p.wait_ready(admin);
            policies.push((Some(p), api, admin));
        }
        let (v1, v2) = (app("v1").port(), app("v2").port());
        let mut mesh = Mesh {
            dir,
            etcd,
            identities,
            policies,
            proxies: Vec::new(),
        };
        let applied = mesh.apply(&mesh.resources(50, 50));
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        for (name, token, labels, app_port) in [
            ("api-v1", "api", "version=v1", v1),
            ("api-v2", "api", "version=v2", v2),
        ] {
            mesh.start_proxy(name, token, labels, app_port);
        }
        mesh
    }

    fn policy_addrs(&self) -> String {
        format!("{},{}", self.policies[0].1, self.policies[1].1)
    }

    fn start_proxy(&mut self, name: &str, token: &str, labels: &str, app_port: u16) -> SocketAddr {
        let d = self.dir.path();
        let (inbound, outbound, admin) = (free_addr(), free_addr(), free_addr());
        let mut env = vec![
            (
                ENV_TOKEN_FILE,
                d.join(format!("{token}.token")).display().to_string(),
            ),
            (
                ENV_IDENTITY_ADDR,
                format!("{},{}", self.identities[0].1, self.identities[1].1),
            ),
            (ENV_POLICY_ADDR, self.policy_addrs()),
            (proxy_config::ENV_INBOUND, inbound.to_string()),
            (proxy_config::ENV_OUTBOUND, outbound.to_string()),
            (proxy_config::ENV_ADMIN, admin.to_string()),
            (proxy_config::ENV_APP_PORT, app_port.to_string()),
            (proxy_config::ENV_SERVICE, token.to_string()),
        ];
        if !labels.is_empty() {
            env.push((proxy_config::ENV_LABELS, labels.to_string()));
        }
        let mut p = start_weft(d, name, &["proxy"], &env);
        p.wait_ready(admin);
        self.proxies.push((p, admin));
        outbound
    }

    /// The services (on port 80, as the demo's) and the split of `api` between its two
    /// versions.
    fn resources(&self, v1: u32, v2: u32) -> String {
        let service = |name: &str, selector: &str| {
            format!(
                "kind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: 80}}], selector: {selector}}}\n---\n"
            )
        };
        format!(
            "{}{}{}{}kind: HTTPRoute\nmetadata: {{name: api}}\nspec:\n  parentRefs: [{{name: api, port: 80}}]\n  rules:\n    - backendRefs: [{{name: api-v1, port: 80, weight: {v1}}}, {{name: api-v2, port: 80, weight: {v2}}}]\n",
            service("api", "{app: api}"),
            service("api-v1", "{app: api, version: v1}"),
            service("api-v2", "{app: api, version: v2}"),
            service("web", "{app: web}"),
        )
    }

    /// `weft apply` of `yaml` as the bootstrap operator, through both replicas, with a
    /// certificate issued now (they live 8 s here).
    fn apply(&self, yaml: &str) -> Output {
        let d = self.dir.path();
        let o = Command::new(WEFT)
            .args(["cert", "issue", "--token-file"])
            .arg(d.join("operator.token"))
            .arg("--out-dir")
            .arg(d.join("operator"))
            .env(
                ENV_IDENTITY_ADDR,
                format!("{},{}", self.identities[0].1, self.identities[1].1),
            )
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let file = self.dir.path().join("mesh.yaml");
        std::fs::write(&file, yaml).unwrap();
        Command::new(WEFT)
            .args(["apply", "--timeout", "60s", "-f"])
            .arg(&file)
            .env(ENV_POLICY_ADDR, self.policy_addrs())
            .env("WEFT_CERT_DIR", self.dir.path().join("operator"))
            .output()
            .unwrap()
    }

    /// Applies, retrying (bounded) while the store settles.
    fn apply_ok(&self, yaml: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = self.apply(yaml);
            if o.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn streams(&self, i: usize) -> f64 {
        admin_metric(self.policies[i].2, "weft_policy_discovery_streams", &[])
    }

    /// Renewals made so far by every proxy.
    fn renewals(&self) -> Vec<f64> {
        self.proxies
            .iter()
            .map(|(_, admin)| {
                admin_metric(
                    *admin,
                    "weft_identity_client_certify_total",
                    &["kind=\"renewal\"", "result=\"ok\""],
                )
            })
            .collect()
    }

    fn logs(&self) -> String {
        log_tails(self.dir.path(), 15)
    }
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn nothing_fails_while_parts_of_the_control_plane_die() {
    require_tools(&["etcd"], "etcd-server");
    let mut mesh = Mesh::start();
    // The client's proxy, started last: the replica its stream is on is the one whose count
    // of streams grows.
    let before = [mesh.streams(0), mesh.streams(1)];
    let outbound = mesh.start_proxy("web", "web", "", 1);
    let mut web_replica = None;
    wait("web's stream", Duration::from_secs(10), || {
        web_replica = (0..2).find(|&i| mesh.streams(i) > before[i]);
        web_replica.is_some()
    });
    let web_replica = web_replica.unwrap();
    let traffic = Traffic::start(outbound, "api.default", Duration::from_millis(40), 15_000);
    traffic.go_on_for(20);
    assert!(
        traffic.failures().0.is_empty(),
        "{:?}\n{}",
        traffic.failures(),
        mesh.logs()
    );

    // 1. One etcd member dies: nothing visible; a route change now reaches the proxies.
    mesh.etcd.kill(0);
    traffic.go_on_for(20);
    mesh.apply_ok(&mesh.resources(100, 0));
    traffic.wait_all_from("v1", Duration::from_secs(10));
    traffic.assert_none_failed("one etcd member down");
    mesh.etcd.restart(0).unwrap();
    mesh.etcd.wait_healthy(Duration::from_secs(30)).unwrap();

    // 2. The replica web is connected to dies: every proxy is on the other within 5 s, and a
    //    change applied through the survivor reaches them.
    let survivor = 1 - web_replica;
    let total = mesh.streams(0) + mesh.streams(1);
    drop(mesh.policies[web_replica].0.take());
    let moved = wait(
        "the proxies on the surviving replica",
        Duration::from_secs(5),
        || mesh.streams(survivor) >= total,
    );
    eprintln!("the proxies were on the surviving replica {moved:?} after the other died");
    mesh.apply_ok(&mesh.resources(0, 100));
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        traffic.wait_all_from("v2", Duration::from_secs(10))
    }))
    .is_err()
    {
        panic!("{}", mesh.logs());
    }
    traffic.go_on_for(20);
    traffic.assert_none_failed("a control-plane replica down");

    // 3. etcd loses its quorum: the proxies go on; an apply is refused naming the store.
    mesh.etcd.kill(1);
    mesh.etcd.kill(2);
    traffic.go_on_for(40);
    let refused = mesh.apply(&mesh.resources(50, 50));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("the store (etcd at") && err.contains("unavailable"),
        "{err}"
    );
    let admin = mesh.policies[survivor].2;
    wait(
        "the replica's /ready to say the store is unavailable",
        Duration::from_secs(30),
        || {
            http(admin, "GET", "/ready", "x")
                .is_some_and(|r| r.0 == 503 && r.1.contains("the store (etcd"))
        },
    );
    // `weft check` says so, and what to do.
    let check = Command::new(WEFT)
        .args(["check", "--policy-admin", &admin.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success());
    assert!(
        said.contains("control plane follows its store") && said.contains("etcd"),
        "{said}"
    );
    traffic.assert_none_failed("etcd without quorum");
    // It comes back: the change applied afterwards arrives.
    mesh.etcd.restart(1).unwrap();
    mesh.etcd.restart(2).unwrap();
    mesh.etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    mesh.apply_ok(&mesh.resources(100, 0));
    traffic.wait_all_from("v1", Duration::from_secs(15));
    traffic.assert_none_failed("etcd back");

    // 4. An identity replica dies while certificates rotate (8 s lifetimes): every proxy
    //    renews through the other, twice, and no request fails.
    let renewed = mesh.renewals();
    drop(mesh.identities[0].0.take());
    wait(
        "two renewals by every proxy through the surviving identity replica",
        Duration::from_secs(40),
        || {
            mesh.renewals()
                .iter()
                .zip(&renewed)
                .all(|(now, then)| *now >= then + 2.0)
        },
    );
    traffic.go_on_for(20);
    traffic.assert_none_failed("an identity replica down");
    let (_, all) = traffic.failures();
    eprintln!("{all} requests, none failed");
}
