//! Shared by the CLI's process tests: free loopback ports, `weft` processes that log to a file
//! (a [`Child`]: it waits for `/ready`, stops on SIGTERM and is killed when dropped), the
//! identity service and tokens, and the system tests' network namespaces and tool checks. Raw
//! HTTP/1 and metric sums come from `weft_runtime::testing`.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_runtime::child::{Child, Options};

mod traffic;
#[allow(unused_imports)]
pub use traffic::*;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Waits (bounded) for `child` to exit: its status, or `None` (then it is killed).
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig` (`-TERM`, `-INT`, ...) to `pid` with `kill` (no `unsafe` in the tests either).
pub fn signal(pid: u32, sig: &str) {
    assert!(
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// A free loopback address for a child to listen on (below the ephemeral range, never
/// handed out twice: see `free_loopback_addr`).
pub fn free_addr() -> SocketAddr {
    weft_runtime::process::free_loopback_addr("a test").unwrap()
}

/// The environment of a `weft proxy` (or `weft run`) on loopback: its token file, the identity
/// service and the control plane at `identity` and `policy`, its inbound and admin addresses,
/// a free outbound one, and its app's port.
pub fn proxy_env(
    token_file: &Path,
    identity: SocketAddr,
    policy: SocketAddr,
    (inbound, admin): (SocketAddr, SocketAddr),
    app_port: u16,
) -> Vec<(&'static str, String)> {
    use weft_proxy::config as proxy;
    vec![
        (ENV_TOKEN_FILE, token_file.display().to_string()),
        (ENV_IDENTITY_ADDR, identity.to_string()),
        (weft_policy::config::ENV_POLICY_ADDR, policy.to_string()),
        (proxy::ENV_INBOUND, inbound.to_string()),
        (proxy::ENV_OUTBOUND, free_addr().to_string()),
        (proxy::ENV_ADMIN, admin.to_string()),
        (proxy::ENV_APP_PORT, app_port.to_string()),
    ]
}

/// `weft <args>` with `env` added (and `WEFT_LOG=info`), its stderr in `<dir>/<name>.log`;
/// killed when dropped.
pub fn start_weft(dir: &Path, name: &str, args: &[&str], env: &[(&str, String)]) -> Child {
    let log = dir.join(format!("{name}.log"));
    Child::spawn(name, Path::new(WEFT), args, env, &log, &Options::default()).unwrap()
}

/// `weft identity` on free ports with its data in `data`, ready; returns it, its API and
/// admin addresses.
pub fn start_identity(dir: &Path, data: &Path) -> (Child, SocketAddr, SocketAddr) {
    start_identity_with(dir, data, &[])
}

/// [`start_identity`] with more flags (`--leaf-lifetime 2h`).
pub fn start_identity_with(
    dir: &Path,
    data: &Path,
    extra: &[&str],
) -> (Child, SocketAddr, SocketAddr) {
    let (api, admin) = (free_addr(), free_addr());
    let (api_s, admin_s) = (api.to_string(), admin.to_string());
    let mut args = vec![
        "identity",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &api_s,
        "--admin-listen",
        &admin_s,
    ];
    args.extend_from_slice(extra);
    let mut p = start_weft(dir, "identity", &args, &[]);
    p.wait_ready(admin);
    (p, api, admin)
}

/// `weft token create` for `ns/workload`, written to `out`; returns the token.
pub fn token(data: &Path, ns: &str, workload: &str, out: &Path) -> String {
    token_with(data, ns, workload, &[], out)
}

/// [`token`] with more flags (`--ttl 1h`).
pub fn token_with(data: &Path, ns: &str, workload: &str, extra: &[&str], out: &Path) -> String {
    let o = Command::new(WEFT)
        .args(["token", "create", "--namespace", ns, "--workload", workload])
        .args(extra)
        .args(["--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(out, &o.stdout).unwrap();
    String::from_utf8(o.stdout).unwrap()
}

/// `weft policy` over the resource directory `resources`, with mTLS (its token minted from
/// the CA in `data`, its certificate from the identity service at `identity`), ready; returns
/// it, its API and admin addresses.
pub fn start_policy(
    dir: &Path,
    data: &Path,
    identity: SocketAddr,
    resources: &Path,
) -> (Child, SocketAddr, SocketAddr) {
    start_policy_with(dir, data, &identity.to_string(), resources, &[])
}

/// [`start_policy`] asking the identity service at `identity` (replicas comma-separated), with
/// more environment (`WEFT_IDENTITY_TRUST_REFRESH`, say).
pub fn start_policy_with(
    dir: &Path,
    data: &Path,
    identity: &str,
    resources: &Path,
    env: &[(&str, String)],
) -> (Child, SocketAddr, SocketAddr) {
    let token_file = dir.join("policy.token");
    token(data, "weft", "policy", &token_file);
    let (api, admin) = (free_addr(), free_addr());
    let mut policy = start_weft(
        dir,
        "policy",
        &[
            "policy",
            "--dir",
            resources.to_str().unwrap(),
            "--listen",
            &api.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ],
        &[
            &[
                (ENV_TOKEN_FILE, token_file.display().to_string()),
                (ENV_IDENTITY_ADDR, identity.to_string()),
            ],
            env,
        ]
        .concat(),
    );
    policy.wait_ready(admin);
    (policy, api, admin)
}

/// With system tests on, a missing tool is a failure, never a skip: each of `tools` must be on
/// `PATH`; `packages` says what to install.
pub fn require_tools(tools: &[&str], packages: &str) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap()
            .status
            .success();
        assert!(
            found,
            "{tool} is missing: install the Debian packages {packages} (see .ci/run)"
        );
    }
}

/// A network namespace made for one test (`ip netns add`), deleted when dropped, also when
/// the test panics ([`weft_runtime::testing::Netns`], with what the system tests run in it).
pub struct Netns(weft_runtime::testing::Netns);

impl std::ops::Deref for Netns {
    type Target = weft_runtime::testing::Netns;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netns {
    /// A new namespace named `<prefix>-<pid>-<n>`, unique among this process's.
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Netns(weft_runtime::testing::Netns::add(name).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Runs a command in the namespace.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv[0]).args(&argv[1..]).output().unwrap()
    }

    /// A long-running process in the namespace (with `WEFT_LOG=info`), killed when dropped;
    /// its stderr goes to `log`, whose name (without `.log`) names it.
    pub fn spawn(&self, argv: &[&str], env: &[(&str, String)], log: &Path) -> Child {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(argv);
        let name = log.file_stem().unwrap_or_default().to_string_lossy();
        Child::spawn(&name, Path::new("ip"), &args, env, log, &Options::default()).unwrap()
    }

    /// Polls `url` from the namespace with `curl` until it answers 200 (`what` is ready);
    /// fails with `what`'s log after a minute.
    pub fn wait_ok(&self, url: &str, what: &Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.exec(&["curl", "-sf", "-m", "2", "-o", "/dev/null", url]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} never answered 200:\n{}",
                what.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The nat table as `save` (`iptables-save`, `iptables-legacy-save`...) prints it, without
    /// its timestamp comments and counters.
    pub fn nat(&self, save: &str) -> String {
        self.ok(&[save, "-t", "nat"])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                Some((decl, _)) if l.starts_with(':') => format!("{decl} [0:0]"),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `weft ARGS` in the namespace, which must succeed: (stdout, stderr).
    pub fn weft(&self, args: &[&str]) -> (String, String) {
        let mut argv = vec![WEFT];
        argv.extend_from_slice(args);
        let out = self.exec(&argv);
        let (stdout, stderr) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert!(
            out.status.success(),
            "weft {args:?} failed:\n{stderr}\n{stdout}"
        );
        (stdout, stderr)
    }

    /// Runs a command in the namespace that must succeed; its stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The identity service's API port in the system tests' namespaces (admin: the next port,
/// on loopback).
pub const NS_IDENTITY_PORT: u16 = 8443;
/// The control plane's API port there (admin: the next port, on loopback).
pub const NS_POLICY_PORT: u16 = 8090;

/// The mesh's identity service and control plane running in a test's network namespace.
pub struct NsControlPlane {
    pub identity: Child,
    pub policy: Child,
    /// The CA's data directory (for `token`).
    pub data: PathBuf,
}

impl NsControlPlane {
    /// Starts both in `ns`, their APIs on `listen_ip` (`0.0.0.0` for other hosts to reach
    /// them), the control plane serving `resources`; returns once both are ready.
    pub fn start(ns: &Netns, dir: &Path, listen_ip: &str, resources: &Path) -> Self {
        let data = dir.join("ca");
        let identity = Self::start_one(
            ns,
            dir,
            &["identity", "--data-dir", data.to_str().unwrap()],
            (listen_ip, NS_IDENTITY_PORT),
            &[],
        );
        let policy_token = dir.join("policy.token");
        token(&data, "weft", "policy", &policy_token);
        let policy = Self::start_one(
            ns,
            dir,
            &["policy", "--dir", resources.to_str().unwrap()],
            (listen_ip, NS_POLICY_PORT),
            &[
                (ENV_TOKEN_FILE, policy_token.display().to_string()),
                (ENV_IDENTITY_ADDR, format!("127.0.0.1:{NS_IDENTITY_PORT}")),
            ],
        );
        Self {
            identity,
            policy,
            data,
        }
    }

    /// `weft <args>` in `ns` with `env`, its API on `listen` (IP, port) and its admin on the next
    /// port on loopback, logging to `<dir>/<args[0]>.log`; returns once its admin is ready.
    fn start_one(
        ns: &Netns,
        dir: &Path,
        args: &[&str],
        listen: (&str, u16),
        env: &[(&str, String)],
    ) -> Child {
        let (ip, port) = listen;
        let (api, admin) = (format!("{ip}:{port}"), format!("127.0.0.1:{}", port + 1));
        let mut argv = vec![WEFT];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--listen", &api, "--admin-listen", &admin]);
        let child = ns.spawn(&argv, env, &dir.join(format!("{}.log", args[0])));
        ns.wait_ok(&format!("http://{admin}/ready"), &child);
        child
    }

    /// A bootstrap token for `default/<workload>` in `<dir>/<workload>.token`, readable by the
    /// proxy's own user; its path.
    pub fn token(&self, dir: &Path, workload: &str) -> PathBuf {
        let file = dir.join(format!("{workload}.token"));
        token(&self.data, "default", workload, &file);
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        file
    }
}

/// `weft proxy` in `ns` as `uid` (the user `weft init --proxy-uid` exempts), with `env`;
/// not waited for.
pub fn spawn_proxy_as(ns: &Netns, uid: u32, env: &[(&str, String)], log: &Path) -> Child {
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    ns.spawn(
        &["setpriv", &reuid, &regid, "--clear-groups", WEFT, "proxy"],
        env,
        log,
    )
}

/// A tiny HTTP/1 app in a thread: answers `hello from <name>: <request line>` (after 1.5 s
/// for `/slow`, 80 ms for `/sleep80`; 503 for `/fail`).
pub fn app(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    while !buf.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => buf.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let line = head.lines().next().unwrap_or("").to_string();
                    if line.contains(" /slow") {
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                    if line.contains(" /sleep80") {
                        std::thread::sleep(Duration::from_millis(80));
                    }
                    let status = if line.contains(" /fail") {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let body = format!("hello from {name}: {line}");
                    let rsp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(rsp.as_bytes()).is_err() {
                        return;
                    }
                    buf.clear();
                }
            });
        }
    });
    addr
}
