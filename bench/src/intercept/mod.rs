//! The transparent-interception scenario (`weft-bench intercept`): the same app, the same
//! client, the same veth, reached directly and through both proxies, as other meshes are
//! compared (p50/p99/p99.9 added at fixed rates, the maximum throughput ratio, CPU per 1,000
//! requests of each proxy).
//!
//! Two network namespaces of its own, joined by a veth pair:
//!
//! - **app** (`10.78.0.2`): the app (`weft-bench app`, one process on two ports: `9080`
//!   behind the mesh, `9081` reached directly), `weft identity` and `weft policy` (listening
//!   on the veth address), `weft init --proxy-uid 2102 --skip-inbound-ports 9081,8443,8090`
//!   and the `api` proxy running as UID 2102 (`setpriv`);
//! - **client** (`10.78.0.1`): `weft init --proxy-uid 2102 --skip-outbound-ports 9081`, the
//!   `web` proxy as UID 2102, and the load generator (`weft-bench load`, this binary
//!   re-executed) as root with no proxy settings, sending to `http://10.78.0.2:<port>/`.
//!
//! So the **weft** path is load generator → iptables → web outbound (original destination,
//! control-plane address lookup) → mTLS HTTP/2 → iptables → api inbound → app, and the
//! **direct** path is the same client to the same app over the same veth, around both
//! proxies. Before the runs, probes show that the port behind the mesh is reached over mTLS
//! through both proxies and the direct port through neither; after them, the proxies' counters
//! must cover every request measured on the weft path. Either failing fails the benchmark.
//!
//! Each repeat runs open loop at each fixed rate, then closed loop, the two scenarios one after
//! the other (direct, weft, direct, weft, …). The load generator runs as a process in the
//! client namespace; it and this process agree on the run's window through a wall-clock start
//! time (`load --start-at-unix-ms`), so the proxies' CPU is sampled over the measured window
//! only. Every process is killed and both namespaces are deleted when the benchmark ends, on
//! error and panic too (drop guards). Needs root, `ip` (iproute2), `iptables` and `setpriv`
//! (util-linux).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;
use weft_runtime::testing::{http_get, metric_sum};

use crate::Error;
use crate::load::{DRAIN, RunResult, Window};
use crate::mesh::{
    self, Load, MeshConfig, Pids, READY_TIMEOUT, find_weft, proxy_cpu, rates_with, resources_yaml,
    sample_cpu, token, write_file,
};
use crate::procstat;
use crate::report::{API_PROXY, Run, Scenario, Settings, WEB_PROXY};

pub mod report;
pub use report::{InterceptCheck, InterceptReport};

/// The proxies' user, exempted from redirection by `weft init` (Linkerd's).
pub const PROXY_UID: u32 = 2102;
/// The veth pair's network and its two ends.
pub const CLIENT_IP: &str = "10.78.0.1";
pub const APP_IP: &str = "10.78.0.2";
const PREFIX_LEN: u8 = 24;
/// The app's port behind the mesh (intercepted in both namespaces).
pub const MESHED_PORT: u16 = 9080;
/// The app's port reached directly: skipped by `weft init` inbound (app) and outbound (client).
pub const DIRECT_PORT: u16 = 9081;
/// The identity service and the control plane, on the app namespace's veth address (skipped
/// inbound, so the client namespace's proxy reaches them).
const IDENTITY_PORT: u16 = 8443;
const POLICY_PORT: u16 = 8090;
/// Admin endpoints, on each namespace's loopback.
const IDENTITY_ADMIN: &str = "127.0.0.1:9990";
const POLICY_ADMIN: &str = "127.0.0.1:9991";
/// The proxy's default admin address (`weft init --admin-port` default).
const PROXY_ADMIN: &str = "127.0.0.1:4191";
/// Namespace names start with this, then `c-`/`a-` and the benchmark's PID.
const NS_PREFIX: &str = "weft-bench";
/// How long before a run's start the load generator is started: time to exec and connect.
/// Its connections are made at once and stay quiet until the start, so this must stay well
/// under the proxy's protocol-detection timeout (`--detect-timeout`, 1 s): a client silent for
/// longer is taken for a server-speaks-first protocol and tunnelled as opaque TCP, and the
/// runs would measure that (the check after the runs would then fail: no HTTP requests
/// counted). A generator that starts late anyway still runs if it is late by less than half
/// the warm-up (see `Window::starting_at`).
const START_LEAD: Duration = Duration::from_millis(400);
/// Beyond its window and drain, how long a load generator may take to exit.
const LOAD_EXIT_GRACE: Duration = Duration::from_secs(15);
/// Requests of each probe before the runs.
const PROBE_REQUESTS: u64 = 20;
/// The app lives at most this long, should the benchmark be killed before it can stop it.
const APP_LIFETIME: &str = "2h";

/// The SPIFFE IDs of the two workloads (`weft token create` in trust domain weft.local).
const WEB_ID: &str = "spiffe://weft.local/ns/default/sa/web";

/// Whether this process runs as root (effective UID 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective UID (the second field of `Uid:`) in the text of `/proc/<pid>/status`.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Root and the tools, or an error saying what is missing and what to install.
pub fn preflight() -> Result<(), Error> {
    if !is_root() {
        return Err(
            "weft-bench intercept creates network namespaces and iptables rules in them: run \
             it as root (e.g. `sudo target/release/weft-bench intercept`)"
                .into(),
        );
    }
    let missing: Vec<&str> = ["ip", "iptables", "iptables-restore", "setpriv"]
        .into_iter()
        .filter(|t| on_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "weft-bench intercept needs {} on PATH: install the Debian packages iproute2, \
             iptables and util-linux (.ci/run does)",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `tool` in a directory of `PATH`, where the benchmark (and `weft init`) run it from.
fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Sets up both namespaces, proves the two paths are what they claim, runs every scenario at
/// every rate and at the maximum `repeat` times, proves the weft runs went over mTLS, and
/// reports. Tears everything down whatever happens.
pub fn run(cfg: &MeshConfig) -> Result<InterceptReport, Error> {
    preflight()?;
    let rates = rates_with(&cfg.rates, cfg.rate)?;
    let weft = find_weft(cfg.weft.as_deref())?;
    remove_stale_namespaces();
    eprintln!(
        "starting the interception bench: namespaces {NS_PREFIX}-c-{pid} ({CLIENT_IP}) and \
         {NS_PREFIX}-a-{pid} ({APP_IP}) ({})",
        weft.display(),
        pid = std::process::id()
    );
    let bench = Bench::start(&weft, cfg)?;
    let mut check = bench.probe()?;
    if !check.probe_ok {
        return Err(format!(
            "the paths are not what they claim, nothing measured: {}",
            check.detail.join("; ")
        ));
    }
    let before = bench.counters()?;

    let modes: Vec<Load> = rates
        .iter()
        .map(|&r| Load::Rate(r))
        .chain([Load::Max])
        .collect();
    let ticks = procstat::clock_ticks();
    let mut runs = Vec::new();
    for repeat in 0..cfg.repeat.max(1) {
        for &load in &modes {
            for scenario in [Scenario::Direct, Scenario::Weft] {
                runs.push(bench.measure(cfg, repeat, scenario, load, ticks)?);
            }
        }
    }
    let after = bench.counters()?;
    check.conclude_runs(&before, &after, &runs);
    let settings = Settings {
        rates,
        ..mesh::settings(cfg, ticks, &weft)
    };
    Ok(InterceptReport::new(settings, runs, check))
}

/// A network namespace made by the benchmark (`ip netns add`), deleted when dropped, also on
/// error and panic.
#[derive(Debug)]
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> Result<Self, Error> {
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    /// `program` run in the namespace (`ip netns exec` execs it: the child's PID is the
    /// program's).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip -n <ns> <args>`, which must succeed.
    fn ip(&self, args: &[&str]) -> Result<String, Error> {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "warning: could not delete network namespace {}: {out:?}; delete it with \
                 `ip netns del {}`",
                self.name, self.name
            );
        }
    }
}

/// Runs `cmd`, which must exit 0; its stdout.
fn run_ok(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes namespaces a killed benchmark left behind (`weft-bench-{c,a}-<pid>` whose
/// benchmark process is gone), after killing what it had started in them (`ip netns pids`).
/// Only ours: other names are never touched.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if is_stale(name, std::process::id(), alive) {
            eprintln!("deleting network namespace {name}, left behind by a killed benchmark");
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Whether `name` is a namespace a killed benchmark left behind: ours by its name, and its
/// benchmark's process gone (`alive` says), or that process had this one's PID: this run has
/// not made its namespaces yet, so one with its name can only be left over, and would make
/// `ip netns add` fail.
fn is_stale(name: &str, own_pid: u32, alive: impl Fn(u32) -> bool) -> bool {
    stale_namespace_pid(name).is_some_and(|pid| pid == own_pid || !alive(pid))
}

/// The PID in a namespace name of ours (`weft-bench-c-1234`, `weft-bench-a-1234`).
fn stale_namespace_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?.strip_prefix('-')?;
    let pid = rest
        .strip_prefix("c-")
        .or_else(|| rest.strip_prefix("a-"))?;
    pid.parse().ok()
}

/// The two namespaces and the veth pair between them (which goes with them).
#[derive(Debug)]
struct Pair {
    client: Netns,
    app: Netns,
}

impl Pair {
    fn new() -> Result<Self, Error> {
        let pid = std::process::id();
        let pair = Pair {
            client: Netns::add(format!("{NS_PREFIX}-c-{pid}"))?,
            app: Netns::add(format!("{NS_PREFIX}-a-{pid}"))?,
        };
        // Interface names are at most 15 bytes.
        let (vc, va) = (
            format!("wbc{}", pid % 1_000_000),
            format!("wba{}", pid % 1_000_000),
        );
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &vc,
            "netns",
            &pair.client.name,
            "type",
            "veth",
            "peer",
            "name",
            &va,
            "netns",
            &pair.app.name,
        ]))?;
        for (ns, dev, ip) in [(&pair.client, &vc, CLIENT_IP), (&pair.app, &va, APP_IP)] {
            ns.ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

/// The running bench. Fields drop in order: every process is killed, then the namespaces are
/// deleted, then the directory (tokens, CA, resources, logs) is removed.
#[derive(Debug)]
struct Bench {
    web: Child,
    api: Child,
    _policy: Child,
    _identity: Child,
    _app: Child,
    pair: Pair,
    /// This binary, re-executed in the namespaces as the app, the load generator and `fetch`.
    exe: PathBuf,
    dir: tempfile::TempDir,
}

/// Counters of the two proxies, read together.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Counters {
    /// web: outbound requests over mTLS to the app's service (`dst_service="default/api"`).
    pub client_outbound_mtls: f64,
    /// web: outbound requests sent unmeshed (plaintext to the original destination).
    pub client_unmeshed: f64,
    /// api: inbound requests over mTLS from web's identity.
    pub app_inbound_mtls: f64,
    /// api: inbound TLS handshakes from web's identity.
    pub app_inbound_handshakes: f64,
    /// Every request either proxy counted, in either direction.
    pub all_requests: f64,
    /// web: connections whose protocol detection gave up (client silent for the detection
    /// timeout) and were tunnelled as opaque TCP: no HTTP request of theirs is counted.
    pub client_detect_timeouts: f64,
}

impl Counters {
    fn read(web: &str, api: &str) -> Self {
        let requests = "weft_proxy_requests_total";
        let peer = format!("peer=\"{WEB_ID}\"");
        Self {
            client_outbound_mtls: metric_sum(
                web,
                requests,
                &[
                    "direction=\"outbound\"",
                    "dst_service=\"default/api\"",
                    "tls=\"true\"",
                ],
            ),
            client_unmeshed: metric_sum(
                web,
                requests,
                &["direction=\"outbound\"", "dst_service=\"unmeshed\""],
            ),
            app_inbound_mtls: metric_sum(
                api,
                requests,
                &["direction=\"inbound\"", "tls=\"true\"", &peer],
            ),
            app_inbound_handshakes: metric_sum(
                api,
                "weft_proxy_tls_handshakes_total",
                &["direction=\"inbound\"", &peer],
            ),
            all_requests: metric_sum(web, requests, &[]) + metric_sum(api, requests, &[]),
            client_detect_timeouts: metric_sum(
                web,
                "weft_proxy_errors_total",
                &["direction=\"outbound\"", "reason=\"detect_timeout\""],
            ),
        }
    }

    /// `self - before`, counter by counter.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            client_outbound_mtls: self.client_outbound_mtls - before.client_outbound_mtls,
            client_unmeshed: self.client_unmeshed - before.client_unmeshed,
            app_inbound_mtls: self.app_inbound_mtls - before.app_inbound_mtls,
            app_inbound_handshakes: self.app_inbound_handshakes - before.app_inbound_handshakes,
            all_requests: self.all_requests - before.all_requests,
            client_detect_timeouts: self.client_detect_timeouts - before.client_detect_timeouts,
        }
    }
}

impl Bench {
    fn start(weft: &Path, cfg: &MeshConfig) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("weft-bench-intercept-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let d = dir.path();
        // The proxies (UID 2102) read their tokens from here.
        set_mode(d, 0o755)?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let pair = Pair::new()?;
        let path = |p: &Path| p.display().to_string();

        let (meshed, direct) = (
            format!("0.0.0.0:{MESHED_PORT}"),
            format!("0.0.0.0:{DIRECT_PORT}"),
        );
        let body_size = cfg.body_size.to_string();
        let mut app = spawn_in(
            d,
            &pair.app,
            "app",
            &exe,
            &[
                "app",
                "--listen",
                &meshed,
                "--listen",
                &direct,
                "--body-size",
                &body_size,
                "--lifetime",
                APP_LIFETIME,
            ],
            &[],
        )?;
        let app_direct = format!("127.0.0.1:{DIRECT_PORT}");
        wait_for_200(&exe, &pair.app, &mut app, &app_direct, "/")?;

        let data = d.join("ca");
        let identity_api = format!("{APP_IP}:{IDENTITY_PORT}");
        let mut identity = spawn_in(
            d,
            &pair.app,
            "identity",
            weft,
            &[
                "identity",
                "--data-dir",
                &path(&data),
                "--listen",
                &identity_api,
                "--admin-listen",
                IDENTITY_ADMIN,
            ],
            &[],
        )?;
        wait_for_200(&exe, &pair.app, &mut identity, IDENTITY_ADMIN, "/ready")?;
        for (ns, workload) in [("weft", "policy"), ("default", "api"), ("default", "web")] {
            let out = d.join(format!("{workload}.token"));
            token(weft, &data, ns, workload, &out)?;
            set_mode(&out, 0o644)?;
        }

        let resources = d.join("resources");
        std::fs::create_dir_all(&resources)
            .map_err(|e| format!("cannot create {}: {e}", resources.display()))?;
        // Services api (the app's port behind the mesh) and web, and a policy letting web
        // call api: the mesh benchmark's resources.
        write_file(&resources.join("mesh.yaml"), &resources_yaml(MESHED_PORT))?;
        let policy_api = format!("{APP_IP}:{POLICY_PORT}");
        let mut policy = spawn_in(
            d,
            &pair.app,
            "policy",
            weft,
            &[
                "policy",
                "--dir",
                &path(&resources),
                "--listen",
                &policy_api,
                "--admin-listen",
                POLICY_ADMIN,
            ],
            &[
                (ENV_TOKEN_FILE, path(&d.join("policy.token"))),
                (ENV_IDENTITY_ADDR, identity_api.clone()),
            ],
        )?;
        wait_for_200(&exe, &pair.app, &mut policy, POLICY_ADMIN, "/ready")?;

        // Interception: the app namespace leaves the direct port and the identity service's
        // and control plane's ports alone inbound; the client namespace the direct port
        // outbound.
        let uid = PROXY_UID.to_string();
        let skip_in = format!("{DIRECT_PORT},{IDENTITY_PORT},{POLICY_PORT}");
        let skip_out = DIRECT_PORT.to_string();
        for (ns, args) in [
            (&pair.app, ["--skip-inbound-ports", skip_in.as_str()]),
            (&pair.client, ["--skip-outbound-ports", skip_out.as_str()]),
        ] {
            run_ok(
                ns.command(weft)
                    .args(["init", "--proxy-uid", &uid])
                    .args(args),
            )
            .map_err(|e| format!("weft init in {}: {e}", ns.name))?;
        }

        // The sidecar's own binary, as a deployment runs it; `weft proxy` when it is not built.
        let sidecar = weft.with_file_name("weft-proxy");
        let (proxy_bin, proxy_args): (&Path, &[&str]) = if sidecar.is_file() {
            (&sidecar, &[])
        } else {
            (weft, &["proxy"])
        };
        let proxy = |ns: &Netns, name: &'static str| -> Result<Child, Error> {
            let setpriv = [
                format!("--reuid={PROXY_UID}"),
                format!("--regid={PROXY_UID}"),
                "--clear-groups".into(),
                "--".into(),
                path(proxy_bin),
            ];
            let mut args: Vec<&str> = setpriv.iter().map(String::as_str).collect();
            args.extend_from_slice(proxy_args);
            let mut p = spawn_in(
                d,
                ns,
                name,
                Path::new("setpriv"),
                &args,
                &[
                    (ENV_TOKEN_FILE, path(&d.join(format!("{name}.token")))),
                    (ENV_IDENTITY_ADDR, identity_api.clone()),
                    (ENV_POLICY_ADDR, policy_api.clone()),
                    (proxy_config::ENV_PROXY_UID, uid.clone()),
                    (proxy_config::ENV_APP_PORT, MESHED_PORT.to_string()),
                ],
            )?;
            wait_for_200(&exe, ns, &mut p, PROXY_ADMIN, "/ready")?;
            Ok(p)
        };
        let api = proxy(&pair.app, "api")?;
        let web = proxy(&pair.client, "web")?;
        let bench = Self {
            web,
            api,
            _policy: policy,
            _identity: identity,
            _app: app,
            pair,
            exe,
            dir,
        };
        // Ready proxies route once api's registration reaches the control plane and web's
        // address lookup finds it: until then web sends the request unmeshed, which api's
        // policy refuses (403).
        let meshed = format!("{APP_IP}:{MESHED_PORT}");
        let client = &bench.pair.client;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let got = fetch(&bench.exe, client, &meshed, "/");
            if matches!(got, Some((200, _))) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "http://{meshed}/ from the client namespace never answered 200 through \
                     the mesh within {READY_TIMEOUT:?} (last: {got:?})\nweb's log:\n{}\napi's \
                     log:\n{}",
                    bench.web.logs(),
                    bench.api.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(bench)
    }

    fn metrics(&self, ns: &Netns, what: &str) -> Result<String, Error> {
        match fetch(&self.exe, ns, PROXY_ADMIN, "/metrics") {
            Some((200, text)) => Ok(text),
            other => Err(format!(
                "cannot read {what}'s metrics at http://{PROXY_ADMIN}/metrics in {}: {other:?}",
                ns.name
            )),
        }
    }

    fn counters(&self) -> Result<Counters, Error> {
        let web = self.metrics(&self.pair.client, "the web proxy")?;
        let api = self.metrics(&self.pair.app, "the api proxy")?;
        Ok(Counters::read(&web, &api))
    }

    /// Before the runs: [`PROBE_REQUESTS`] requests to the port behind the mesh must each
    /// show in web as outbound mTLS to api and in api as inbound mTLS from web (none
    /// unmeshed), and as many to the direct port in neither proxy.
    fn probe(&self) -> Result<InterceptCheck, Error> {
        let send = |port: u16| -> Result<(), Error> {
            let addr = format!("{APP_IP}:{port}");
            for _ in 0..PROBE_REQUESTS {
                match fetch(&self.exe, &self.pair.client, &addr, "/") {
                    Some((200, _)) => {}
                    other => {
                        return Err(format!(
                            "probe of http://{addr}/ from the client namespace: {other:?}"
                        ));
                    }
                }
            }
            Ok(())
        };
        let c0 = self.counters()?;
        send(MESHED_PORT)?;
        let c1 = self.counters()?;
        send(DIRECT_PORT)?;
        let c2 = self.counters()?;
        Ok(InterceptCheck::from_probes(
            PROBE_REQUESTS,
            c1.since(&c0),
            c2.since(&c1),
            c2.app_inbound_handshakes,
        ))
    }

    /// One run of `scenario` loaded as `load`: the load generator as a process in the client
    /// namespace, the CPU time of the proxies on the path over the measured window.
    fn measure(
        &self,
        cfg: &MeshConfig,
        repeat: usize,
        scenario: Scenario,
        load: Load,
        ticks: u64,
    ) -> Result<Run, Error> {
        let (port, proxies): (u16, Pids) = match scenario {
            Scenario::Direct => (DIRECT_PORT, vec![]),
            _ => (
                MESHED_PORT,
                vec![(WEB_PROXY, self.web.pid()), (API_PROXY, self.api.pid())],
            ),
        };
        let rate = match load {
            Load::Rate(r) | Load::NewConnection(r) => Some(r),
            Load::Max => None,
        };
        // The window is built from what the load generator is told, in whole milliseconds
        // (`--start-at-unix-ms`, `--warmup`, `--duration`), so the proxies' CPU is sampled over
        // the very window it measures, not one up to a millisecond off at each edge.
        let start = whole_ms(
            (SystemTime::now() + START_LEAD)
                .duration_since(UNIX_EPOCH)
                .map_err(|e| format!("the clock is before 1970: {e}"))?,
        );
        let (warmup, duration) = (whole_ms(cfg.warmup), whole_ms(cfg.duration));
        let window = Window::starting_at(UNIX_EPOCH + start, warmup, duration)
            .ok_or("the clock went back while a run was being set up")?;
        let start_ms = start.as_millis().to_string();
        let json = self.dir.path().join("run.json");
        let _ = std::fs::remove_file(&json);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut args: Vec<String> = vec![
            "load".into(),
            "--target".into(),
            format!("http://{APP_IP}:{port}/"),
            "--connections".into(),
            cfg.connections.to_string(),
            "--warmup".into(),
            ms(warmup),
            "--duration".into(),
            ms(duration),
            "--max-requests".into(),
            cfg.max_requests.to_string(),
            "--request-body-size".into(),
            cfg.request_body_size.to_string(),
            "--start-at-unix-ms".into(),
            start_ms,
            "--json".into(),
            json.display().to_string(),
        ];
        match rate {
            Some(r) => args.extend(["--rate".into(), r.to_string()]),
            None => args.push("--max".into()),
        }
        if cfg.http2 {
            args.push("--http2".into());
        }
        let sampler = sample_cpu(window, proxies.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_in(
            self.dir.path(),
            &self.pair.client,
            "load",
            &self.exe,
            &args,
            &[],
        )?;
        let limit = START_LEAD + cfg.warmup + cfg.duration + DRAIN + LOAD_EXIT_GRACE;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.exited() {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the load generator in {} did not finish within {limit:?}; its log:\n{}",
                    self.pair.client.name,
                    child.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cpu = sampler
            .join()
            .map_err(|_| "the CPU sampling thread panicked".to_string())??;
        if !status.success() {
            return Err(format!(
                "the load generator in {} failed ({status}); its log:\n{}",
                self.pair.client.name,
                child.logs()
            ));
        }
        let text = std::fs::read_to_string(&json)
            .map_err(|e| format!("the load generator wrote no {}: {e}", json.display()))?;
        let result: RunResult =
            serde_json::from_str(&text).map_err(|e| format!("the load generator's JSON: {e}"))?;
        let run = Run {
            repeat,
            scenario,
            proxies: proxy_cpu(&proxies, cpu, ticks, result.requests),
            load: result,
        };
        eprintln!("{}", run.progress_line(cfg.repeat.max(1), (7, 12)));
        // Let the finished run's connections close before the next one.
        std::thread::sleep(Duration::from_millis(300));
        Ok(run)
    }
}

/// `d` cut to whole milliseconds: what the load generator's arguments carry.
fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))
}

/// `program args` in `ns` as a process of the bench (killed when dropped, its stderr in
/// `<dir>/<name>.log`).
fn spawn_in(
    dir: &Path,
    ns: &Netns,
    name: &'static str,
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Child, Error> {
    let mut all: Vec<&str> = vec!["netns", "exec", &ns.name];
    let program = program.display().to_string();
    all.push(&program);
    all.extend_from_slice(args);
    mesh::spawn(dir, name, Path::new("ip"), &all, env)
}

/// `GET path` at `addr` from inside `ns` (this binary's `fetch`, as root: to an address
/// outside the namespace it is intercepted like any client's): the status and body, `None`
/// when nothing answered.
fn fetch(exe: &Path, ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let out = ns
        .command(exe)
        .args(["fetch", addr, path])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    Some((status.trim().parse().ok()?, body.to_string()))
}

/// Waits until `GET path` at `addr` in `ns` answers 200: bounded, and an error with the
/// process's log if it exits or takes too long.
fn wait_for_200(
    exe: &Path,
    ns: &Netns,
    proc: &mut Child,
    addr: &str,
    path: &str,
) -> Result<(), Error> {
    let what = format!("GET http://{addr}{path} in {}", ns.name);
    proc.wait_until_200(&what, Duration::from_millis(100), || {
        fetch(exe, ns, addr, path)
    })
}

/// `weft-bench fetch ADDR PATH`: one `GET` (with `Connection: close`), printed as the status on
/// the first line and the body after it; `Err` when nothing answered.
pub fn fetch_main(addr: &str, path: &str) -> Result<String, Error> {
    let sock = addr
        .parse()
        .map_err(|e| format!("{addr} is not an IP address and port: {e}"))?;
    let (status, body) = http_get(sock, path, addr)
        .ok_or_else(|| format!("nothing answered GET http://{addr}{path}"))?;
    Ok(format!("{status}\n{body}"))
}

#[cfg(test)]
mod tests;
