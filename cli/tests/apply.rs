//! `weft apply`, `weft get` and `weft delete` against a real control plane (mTLS, the
//! directory store), as operators and others: what is written, what is refused, and two
//! operators applying at once.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;
use weft_identity::config::ENV_IDENTITY_ADDR;
use weft_runtime::child::Child;

const SERVICES: &str = "# every service\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 8080}]}\n---\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
const ROUTE: &str = "kind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - timeouts: {request: 2s}\n";

struct Plane {
    dir: tempfile::TempDir,
    resources: PathBuf,
    policy_api: String,
    _procs: Vec<Child>,
}

impl Plane {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("ca");
        let (identity, id_api, _) = start_identity_with(d, &data, &["--leaf-lifetime", "2h"]);
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        std::fs::write(resources.join("services.yaml"), SERVICES).unwrap();
        std::fs::write(resources.join("route.yaml"), ROUTE).unwrap();
        let (policy, api, _) = start_policy(d, &data, id_api, &resources);
        // Certificates: the bootstrap operator, and a workload that is no operator.
        for (ns, workload) in [("weft-system", "operator"), ("default", "web")] {
            let token = d.join(format!("{workload}.token"));
            support::token(&data, ns, workload, &token);
            let o = Command::new(WEFT)
                .args(["cert", "issue", "--token-file"])
                .arg(&token)
                .arg("--out-dir")
                .arg(d.join(workload))
                .env(ENV_IDENTITY_ADDR, id_api.to_string())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        Plane {
            resources,
            policy_api: api.to_string(),
            _procs: vec![identity, policy],
            dir,
        }
    }

    /// `weft <args>` as `who` (the name of a certificate directory).
    fn weft(&self, who: &str, args: &[&str]) -> Output {
        Command::new(WEFT)
            .args(args)
            .env("WEFT_POLICY_ADDR", &self.policy_api)
            .env("WEFT_CERT_DIR", self.dir.path().join(who))
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn stored(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(&self.resources)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    /// The revision `weft get` prints.
    fn revision(&self) -> String {
        let o = self.weft("operator", &["get", "all", "-A", "-o", "yaml"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        out.lines()
            .next()
            .and_then(|l| l.strip_prefix("# weft revision "))
            .unwrap()
            .to_string()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_operator_applies_gets_and_deletes_and_the_directory_follows() {
    let plane = Plane::start();
    let changed = plane.file("route.yaml", &ROUTE.replace("2s", "5s"));
    let o = plane.weft("operator", &["apply", "-f", path_str(&changed)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("HTTPRoute default/api configured (route.yaml)"),
        "{out}"
    );
    let stored = std::fs::read_to_string(plane.resources.join("route.yaml")).unwrap();
    assert!(stored.contains("5s"), "{stored}");

    // Applying it again changes nothing.
    let o = plane.weft("operator", &["apply", "-f", path_str(&changed)]);
    assert!(text(&o.stdout).contains("unchanged"), "{}", text(&o.stdout));

    // A resource moved out of a shared file leaves the other one as written.
    let web = plane.file(
        "web.yaml",
        "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 8081}]}\n",
    );
    let o = plane.weft("operator", &["apply", "-f", path_str(&web)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let services = std::fs::read_to_string(plane.resources.join("services.yaml")).unwrap();
    assert!(services.starts_with("# every service\nkind: Service\nmetadata: {name: api}"));
    assert!(!services.contains("web"), "{services}");

    // Listed as a table, and as YAML that applies back unchanged.
    let o = plane.weft("operator", &["get", "svc"]);
    let table = text(&o.stdout);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(table.contains("default.service.web.yaml"), "{table}");
    let o = plane.weft("operator", &["get", "httproute", "api", "-o", "yaml"]);
    let yaml = plane.file("got.yaml", &text(&o.stdout));
    let o = plane.weft("operator", &["apply", "-f", path_str(&yaml)]);
    assert!(text(&o.stdout).contains("unchanged"), "{}", text(&o.stdout));

    // Deleting what a route refers to is refused, and names the route's file.
    let o = plane.weft("operator", &["delete", "svc", "api"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("route.yaml"), "{err}");
    assert!(plane.resources.join("services.yaml").exists());
    let o = plane.weft("operator", &["delete", "httproute", "api"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!plane.resources.join("route.yaml").exists());
    let o = plane.weft("operator", &["get", "httproute", "api"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no HTTPRoute default/api"));
}

#[test]
fn an_invalid_set_changes_nothing_and_says_where_it_is_wrong() {
    let plane = Plane::start();
    let before = plane.stored();
    let bad = plane.file(
        "bad.yaml",
        "kind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432}]}\n---\nkind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{name: api}]\n  rules:\n    - timeouts: {request: soon}\n",
    );
    let o = plane.weft("operator", &["apply", "-f", path_str(&bad)]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("bad.yaml: document 2 (HTTPRoute default/api): spec.rules[0].timeouts"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(plane.stored(), before, "nothing was written");
}

#[test]
fn only_operators_may_change_the_resources() {
    let plane = Plane::start();
    let before = plane.stored();
    let changed = plane.file("route.yaml", &ROUTE.replace("2s", "7s"));
    let o = plane.weft("web", &["apply", "-f", path_str(&changed)]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("spiffe://weft.local/ns/default/sa/web may not change the resources"),
        "{err}"
    );
    assert!(err.contains("403"), "{err}");
    let o = plane.weft("web", &["delete", "httproute", "api"]);
    assert!(text(&o.stderr).contains("not_an_operator"));
    assert_eq!(plane.stored(), before);
    // Anyone in the mesh may read.
    let o = plane.weft("web", &["get", "httproute"]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // The bootstrap operator names web an operator.
    let mesh = plane.file(
        "mesh.yaml",
        "kind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  operators: [\"spiffe://weft.local/ns/default/sa/web\"]\n",
    );
    let o = plane.weft("operator", &["apply", "-f", path_str(&mesh)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Once the control plane serves it (it follows the directory), web may write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let o = plane.weft("web", &["apply", "-f", path_str(&changed)]);
        if o.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", text(&o.stderr));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = plane.weft("no-such-dir", &["get", "svc"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("cannot read"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn of_two_operators_applying_at_once_one_wins_and_the_other_is_told_to_retry() {
    let plane = Plane::start();
    // Both read the same revision, then apply against it.
    let read = plane.revision();
    let a = plane.file("a.yaml", &ROUTE.replace("2s", "3s"));
    let b = plane.file("b.yaml", &ROUTE.replace("2s", "4s"));
    let first = plane.weft(
        "operator",
        &["apply", "-f", path_str(&a), "--revision", &read],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = plane.weft(
        "operator",
        &["apply", "-f", path_str(&b), "--revision", &read],
    );
    assert!(!second.status.success());
    let err = text(&second.stderr);
    assert!(err.contains("conflict") && err.contains("retry"), "{err}");
    let stored = std::fs::read_to_string(plane.resources.join("route.yaml")).unwrap();
    assert!(stored.contains("3s"), "the winner's change stays: {stored}");

    // Truly at once: every apply either lands or is told to retry, and none is lost.
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let svc = plane.file(
                &format!("svc{i}.yaml"),
                &format!(
                    "kind: Service\nmetadata: {{name: s{i}}}\nspec: {{ports: [{{port: 80}}]}}\n"
                ),
            );
            let (api, home) = (plane.policy_api.clone(), plane.dir.path().to_path_buf());
            std::thread::spawn(move || {
                Command::new(WEFT)
                    .args(["apply", "-f", path_str(&svc)])
                    .env("WEFT_POLICY_ADDR", api)
                    .env("WEFT_CERT_DIR", home.join("operator"))
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let mut landed = Vec::new();
    for (i, t) in threads.into_iter().enumerate() {
        let o = t.join().unwrap();
        if o.status.success() {
            landed.push(i);
        } else {
            let err = text(&o.stderr);
            assert!(err.contains("run it again"), "{err}");
        }
    }
    assert!(!landed.is_empty());
    for i in landed {
        assert!(
            plane
                .resources
                .join(format!("default.service.s{i}.yaml"))
                .exists(),
            "s{i} was applied and must be stored"
        );
    }
}
