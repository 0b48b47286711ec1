//! `weft run` with real processes: the identity service, the control plane, an `api` workload
//! behind its own `weft proxy`, and a `web` app (a shell script calling `api` with curl)
//! under `weft run`. The app's first call succeeds (the proxy was ready first); its exit code
//! is `weft run`'s once the proxy drained and deregistered; on SIGTERM the app keeps calling
//! out for 2 s without a failure while the inbound side already refuses connections; SIGHUP
//! reaches the app and changes nothing else; an app that is not there is exit 127; a proxy
//! that cannot get ready never lets the app start.
//!
//! System tests: they need `sh` and `curl` (WEFT_SYSTEM_TESTS=1).
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use support::*;
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::testing::http;

/// The control plane, and `api` (an app and its proxy) on port 80 as callers name it.
struct Mesh {
    dir: tempfile::TempDir,
    _procs: Vec<weft_runtime::child::Child>,
    id_api: SocketAddr,
    pol_api: SocketAddr,
    pol_admin: SocketAddr,
}

impl Mesh {
    fn start() -> Self {
        require_tools(&["sh", "curl"], "curl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("ca");
        let (identity, id_api, _) = start_identity(d, &data);
        for w in ["api", "web"] {
            token(&data, "default", w, &d.join(format!("{w}.token")));
        }
        let resources = d.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        std::fs::write(
            resources.join("mesh.yaml"),
            "kind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 80}]}\n---\n\
             kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n",
        )
        .unwrap();
        let (policy, pol_api, pol_admin) = start_policy(d, &data, id_api, &resources);
        let admin = free_addr();
        let env = proxy_env(
            &d.join("api.token"),
            id_api,
            pol_api,
            (free_addr(), admin),
            app("api").port(),
        );
        let mut api = start_weft(d, "api", &["proxy"], &env);
        api.wait_ready(admin);
        Self {
            dir,
            _procs: vec![identity, policy, api],
            id_api,
            pol_api,
            pol_admin,
        }
    }

    /// `weft run -- sh SCRIPT OUT` as the `web` workload; its stderr in `<dir>/<name>.log`.
    fn run(&self, name: &str, script: &str) -> Web {
        let out = self.dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let file = out.join("app.sh");
        std::fs::write(&file, script).unwrap();
        self.run_app(name, &["sh", file.to_str().unwrap(), out.to_str().unwrap()])
    }

    /// `weft run -- APP...` as the `web` workload.
    fn run_app(&self, name: &str, app: &[&str]) -> Web {
        let d = self.dir.path();
        let out = d.join(name);
        std::fs::create_dir_all(&out).unwrap();
        let (inbound, admin) = (free_addr(), free_addr());
        let child = Command::new(WEFT)
            .args(["run", "--app-grace", "20s", "--"])
            .args(app)
            .env("WEFT_LOG", "info")
            .envs(proxy_env(
                &d.join("web.token"),
                self.id_api,
                self.pol_api,
                (inbound, admin),
                1,
            ))
            .stderr(std::fs::File::create(out.join("weft-run.log")).unwrap())
            .spawn()
            .unwrap();
        Web {
            child,
            out,
            inbound,
            admin,
        }
    }

    /// Whether the control plane lists a workload whose admin is `admin`.
    fn registered(&self, admin: SocketAddr) -> bool {
        http(self.pol_admin, "GET", "/workloads", "x")
            .is_some_and(|(_, body)| body.contains(&admin.to_string()))
    }
}

/// A `weft run` of the `web` app.
struct Web {
    child: Child,
    out: PathBuf,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Web {
    fn log(&self) -> String {
        std::fs::read_to_string(self.out.join("weft-run.log")).unwrap_or_default()
    }

    /// Waits (bounded) for `weft run` to exit.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        match wait_exit(&mut self.child, limit) {
            Some(s) => s,
            None => panic!("weft run did not exit:\n{}", self.log()),
        }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.out.join(name)).unwrap_or_default()
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The app calls `api` once, at once, records the answer, and exits 3.
const CALL_ONCE_AND_EXIT_3: &str = r#"
out=$1
curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://api/ > "$out/first" 2> "$out/curl.err"
exit 3
"#;

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn the_app_starts_once_its_proxy_is_ready_and_its_exit_code_is_returned_after_draining() {
    let mesh = Mesh::start();
    let mut web = mesh.run("exit3", CALL_ONCE_AND_EXIT_3);
    let status = web.wait(Duration::from_secs(90));
    let log = web.log();
    // The very first request went through: the proxy was ready before the app started.
    assert_eq!(web.file("first"), "200", "{}\n{log}", web.file("curl.err"));
    assert_eq!(status.code(), Some(3), "{log}");
    // Drained and deregistered before exiting.
    assert!(
        log.contains("shutting down: draining requests in flight"),
        "{log}"
    );
    assert!(
        !mesh.registered(web.admin),
        "web is still registered\n{log}"
    );
    assert!(TcpStream::connect(web.admin).is_err());
}

/// On SIGTERM the app keeps calling `api` for 2 s, then exits 0.
const CALL_UNTIL_2S_AFTER_SIGTERM: &str = r#"
out=$1
stop_at=
trap 'stop_at=$(( $(date +%s%N) + 2000000000 )); echo term > "$out/term"' TERM
while :; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://api/)
  if [ -n "$stop_at" ]; then echo "$code" >> "$out/draining"; else echo "$code" >> "$out/running"; fi
  if [ -n "$stop_at" ] && [ "$(date +%s%N)" -ge "$stop_at" ]; then exit 0; fi
  sleep 0.05
done
"#;

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn on_sigterm_the_app_drains_calling_out_while_the_inbound_side_refuses_connections() {
    let mesh = Mesh::start();
    let mut web = mesh.run("drain", CALL_UNTIL_2S_AFTER_SIGTERM);
    let log = || String::new();
    wait_for(
        "the app's first calls",
        Duration::from_secs(60),
        || web.file("running").lines().count() >= 3,
        log,
    );
    wait_for(
        "web's registration",
        Duration::from_secs(10),
        || mesh.registered(web.admin),
        log,
    );
    assert!(
        TcpStream::connect(web.inbound).is_ok(),
        "inbound not listening"
    );
    signal(web.child.id(), "-TERM");

    // While the app drains: deregistered, and new inbound connections refused.
    wait_for(
        "the app to hear SIGTERM",
        Duration::from_secs(10),
        || !web.file("term").is_empty(),
        log,
    );
    wait_for(
        "the inbound listener to close",
        Duration::from_secs(10),
        || TcpStream::connect(web.inbound).is_err(),
        log,
    );
    assert!(
        !mesh.registered(web.admin),
        "still registered while draining"
    );
    assert!(
        web.child.try_wait().unwrap().is_none(),
        "weft run did not wait for the app"
    );

    let status = web.wait(Duration::from_secs(60));
    let log = web.log();
    assert_eq!(status.code(), Some(0), "{log}");
    let running = web.file("running");
    let draining = web.file("draining");
    // 2 s of calls at one per ~50 ms plus the call's own time: several at the least.
    assert!(draining.lines().count() >= 5, "{draining}\n{log}");
    for code in running.lines().chain(draining.lines()) {
        assert_eq!(
            code, "200",
            "running:\n{running}\ndraining:\n{draining}\n{log}"
        );
    }
}

/// Signals other than SIGTERM and SIGINT reach the app and change nothing else (SIGHUP here,
/// which an app may take as "reload"); an app that cannot be started is exit 127, its proxy
/// stopped.
const HUP_THEN_TERM: &str = r#"
out=$1
trap 'echo hup >> "$out/hup"' HUP
trap 'exit 0' TERM
echo started > "$out/started"
while :; do sleep 0.05; done
"#;

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn other_signals_reach_the_app_and_an_app_not_found_is_127() {
    let mesh = Mesh::start();
    let mut web = mesh.run("hup", HUP_THEN_TERM);
    let log = || String::new();
    wait_for(
        "the app",
        Duration::from_secs(60),
        || !web.file("started").is_empty(),
        log,
    );
    signal(web.child.id(), "-HUP");
    wait_for(
        "the app's SIGHUP",
        Duration::from_secs(10),
        || !web.file("hup").is_empty(),
        log,
    );
    // Still running, and still registered.
    assert!(web.child.try_wait().unwrap().is_none(), "{}", web.log());
    assert!(mesh.registered(web.admin));
    signal(web.child.id(), "-TERM");
    assert_eq!(
        web.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        web.log()
    );

    // An app that is not there: said, exit 127 (as a shell's), the proxy drained and gone.
    let mut missing = mesh.run_app("missing", &["/nonexistent/app", "--flag"]);
    let status = missing.wait(Duration::from_secs(60));
    let log = missing.log();
    assert_eq!(status.code(), Some(127), "{log}");
    assert!(log.contains("cannot start /nonexistent/app"), "{log}");
    assert!(!mesh.registered(missing.admin), "{log}");
}

/// A proxy that cannot get ready, because its token is bad (it fails at once) or because no
/// identity service answers (it waits): the app is never started, and `weft run` says why
/// and exits 1, within its `--ready-timeout` at the latest.
#[test]
fn an_app_whose_proxy_cannot_get_ready_is_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("bad.token"), "not-a-token").unwrap();
    // A real token, of a CA whose identity service is then gone.
    let data = d.join("ca");
    let (identity, id_api, _) = start_identity(d, &data);
    token(&data, "default", "web", &d.join("web.token"));
    drop(identity);
    for (token, why) in [
        ("bad.token", "the bootstrap token is malformed"),
        ("web.token", "was not ready within 2s (--ready-timeout)"),
    ] {
        let started = Instant::now();
        let out = Command::new(WEFT)
            .args(["run", "--ready-timeout", "2s", "--", "sh", "-c"])
            .arg(format!("touch {}", d.join("started").display()))
            .env(ENV_TOKEN_FILE, d.join(token))
            .env(ENV_IDENTITY_ADDR, id_api.to_string())
            .env(ENV_POLICY_ADDR, free_addr().to_string())
            .env(proxy_config::ENV_INBOUND, free_addr().to_string())
            .env(proxy_config::ENV_OUTBOUND, free_addr().to_string())
            .env(proxy_config::ENV_ADMIN, free_addr().to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(why) && err.contains("the app was not started"),
            "{err}"
        );
        assert!(!d.join("started").exists(), "the app ran");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
