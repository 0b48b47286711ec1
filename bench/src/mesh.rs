//! The mesh scenario: the same load, in one invocation, on three paths to the same app:
//!
//! - direct: load generator → app;
//! - weft: load generator → `web` proxy outbound (HTTP/1.1, `Host: api.default:<port>`) →
//!   pooled HTTP/2 over mTLS → `api` proxy inbound → app;
//! - peer: load generator → HAProxy `web` → HTTP/1.1 over mTLS → HAProxy `api` → app, with
//!   the same certificates (see `peer.rs`; skipped with `--no-peer`).
//!
//! Every component is its own process, as an operator runs them: the app (`weft-bench app`,
//! this binary re-executed), `weft identity`, `weft policy` with a resource directory, two
//! proxies (`weft-proxy`, else `weft proxy`) and two HAProxies, in a temporary directory, on
//! loopback. Each repeat measures open loop at each fixed rate, then closed loop (the maximum
//! rate), and at each of those runs the scenarios one after the other (A B C A B C …), so
//! drift weighs on all of them alike and the runs compared ran next to each other. The
//! proxies' CPU time is sampled at the edges of each measured window; their memory at rest
//! before the runs and at the end. Every process is killed when the benchmark ends, on error
//! too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::{Child, Options, Stdin};
use weft_runtime::testing::{http_get, metric_sum};

use crate::Error;
use crate::load::{self, LoadConfig, Window};
use crate::peer::{self, Peer};
use crate::procstat;
use crate::report::{
    API_PROXY, IdleConnectionsRss, MeshReport, MtlsCheck, ProxyCpu, ProxyFootprint, Run, Scenario,
    Settings, WEB_PROXY,
};

/// How long a process may take to become ready, and the mesh to route the first request.
pub(crate) const READY_TIMEOUT: Duration = weft_runtime::testing::READY_TIMEOUT;
/// How long the proxies get to settle after idle connections open or close.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// How long the proxies' CPU use at rest is sampled before the runs.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// At most this many fixed rates in one invocation.
pub const MAX_RATES: usize = 8;
/// The app lives at most this long, should the benchmark be killed before it can stop it.
const APP_LIFETIME: &str = "2h";

/// Settings of `weft-bench mesh` (and `stack`, which uses `rate` only).
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The headline rate: the targets are judged at it; one of `rates`.
    pub rate: u64,
    /// The fixed rates of the open-loop runs, increasing (see [`rates_with`]).
    pub rates: Vec<u64>,
    /// `--quick`: short runs for a harness check, reported as such.
    pub quick: bool,
    /// Skip the HAProxy pair.
    pub no_peer: bool,
    /// The `haproxy` binary [default: on `PATH`, else `/usr/sbin/haproxy`].
    pub haproxy: Option<PathBuf>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub repeat: usize,
    pub body_size: usize,
    /// Bytes in each request body (0: `GET`s).
    pub request_body_size: usize,
    pub max_requests: u64,
    pub http2: bool,
    /// The `weft` binary [default: `weft` beside this binary].
    pub weft: Option<PathBuf>,
    /// The rate of the runs with a new connection per request (the connection-setup cost);
    /// `None`: not measured.
    pub setup_rate: Option<u64>,
    /// Idle client connections held open to each front proxy while the proxies' memory is
    /// read, after the runs; 0: not measured.
    pub idle_connections: usize,
}

/// How a run loads its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Open loop at a fixed rate over keep-alive connections.
    Rate(u64),
    /// Closed loop: the maximum rate.
    Max,
    /// Open loop at a fixed rate, each request on a new connection.
    NewConnection(u64),
}

/// The `weft` binary: `explicit`, else `weft` in the directory of this binary (both are
/// built into `target/release/`).
pub fn find_weft(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--weft {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let beside = exe.with_file_name("weft");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(format!(
        "no weft binary at {}: run `cargo build --release -p weft` (with the same \
         CARGO_TARGET_DIR as this benchmark), or pass --weft PATH",
        beside.display()
    ))
}

/// `rates` with `headline` added, increasing, each once; an error for a zero rate or more
/// than [`MAX_RATES`].
pub fn rates_with(rates: &[u64], headline: u64) -> Result<Vec<u64>, Error> {
    let mut all: Vec<u64> = rates.iter().copied().chain([headline]).collect();
    if all.contains(&0) {
        return Err("a rate of 0 requests per second cannot be measured".into());
    }
    all.sort_unstable();
    all.dedup();
    if all.len() > MAX_RATES {
        return Err(format!(
            "{} rates ({all:?}): at most {MAX_RATES} in one invocation",
            all.len()
        ));
    }
    Ok(all)
}

/// Starts the mesh and (unless `no_peer`) the HAProxy pair, runs every scenario at every
/// rate and at the maximum `repeat` times, and reports.
pub fn run(cfg: &MeshConfig) -> Result<MeshReport, Error> {
    let rates = rates_with(&cfg.rates, cfg.rate)?;
    // Before anything starts: a missing haproxy is an error that says what to install.
    let haproxy = if cfg.no_peer {
        None
    } else {
        Some(peer::find_haproxy(cfg.haproxy.as_deref())?)
    };
    let mut h = Harness::start(cfg, |_| vec![])?;
    if let Some(haproxy) = haproxy {
        h.peer = Some(Peer::start(&h.mesh, &h.weft, &haproxy)?);
    }
    let inbound_before = h.mesh.inbound_mtls_requests()?;
    let mut proxies: Vec<(Scenario, &'static str, u32)> = h
        .mesh
        .proxy_pids()
        .into_iter()
        .map(|(name, pid)| (Scenario::Weft, name, pid))
        .collect();
    let mut scenarios = vec![Scenario::Direct, Scenario::Weft];
    if let Some(p) = &h.peer {
        proxies.extend(
            p.pids()
                .into_iter()
                .map(|(name, pid)| (Scenario::Peer, name, pid)),
        );
        scenarios.push(Scenario::Peer);
    }
    let pids: Vec<(&'static str, u32)> = proxies.iter().map(|(_, n, p)| (*n, *p)).collect();
    let at_rest = at_rest(&pids, h.ticks)?;

    let modes: Vec<Load> = rates
        .iter()
        .map(|&r| Load::Rate(r))
        .chain([Load::Max])
        .chain(cfg.setup_rate.map(Load::NewConnection))
        .collect();
    let mut runs = Vec::new();
    for repeat in 0..cfg.repeat.max(1) {
        for &load in &modes {
            for &scenario in &scenarios {
                runs.push(h.measure(cfg, repeat, scenario, load)?);
            }
        }
    }

    let mut footprints = at_rest
        .into_iter()
        .zip(&proxies)
        .map(
            |((idle_cpu_percent, rss_before_kib), (scenario, name, pid))| {
                Ok(ProxyFootprint {
                    proxy: name.to_string(),
                    scenario: *scenario,
                    idle_cpu_percent,
                    rss_before_kib,
                    memory: procstat::memory(*pid)?,
                    idle_connections: None,
                })
            },
        )
        .collect::<Result<Vec<_>, Error>>()?;
    if cfg.idle_connections > 0 {
        for &scenario in &scenarios {
            let Some(front) = h.front(scenario) else {
                continue;
            };
            let rss =
                h.rss_with_idle_connections(front, cfg.idle_connections, &proxies, scenario)?;
            for (f, rss) in footprints.iter_mut().zip(rss) {
                if rss.is_some() {
                    f.idle_connections = rss;
                }
            }
        }
    }
    let mtls = h.mesh.mtls_check(inbound_before, &runs)?;
    let peer_check = h.peer.as_ref().map(|p| p.check(&runs)).transpose()?;
    let mut settings = h.settings(cfg);
    settings.rates = rates;
    settings.setup_rate = cfg.setup_rate;
    settings.idle_connections = cfg.idle_connections;
    Ok(MeshReport::new(
        settings, runs, footprints, mtls, peer_check,
    ))
}

/// A running mesh and the load generator's runtime: what every scenario measures with.
#[derive(Debug)]
pub(crate) struct Harness {
    /// The HAProxy pair of the peer scenario, if started; declared before `mesh` so it is
    /// killed before the mesh's directory (its configuration and logs) goes.
    pub(crate) peer: Option<Peer>,
    pub(crate) mesh: Mesh,
    rt: tokio::runtime::Runtime,
    ticks: u64,
    weft: PathBuf,
}

impl Harness {
    /// Starts the mesh (with `extra` resource files, see [`Mesh::start`]) and the load
    /// generator's runtime.
    pub(crate) fn start(cfg: &MeshConfig, extra: ExtraResources) -> Result<Self, Error> {
        let weft = find_weft(cfg.weft.as_deref())?;
        eprintln!("starting the mesh ({})", weft.display());
        let mesh = Mesh::start(&weft, cfg.body_size, extra)?;
        // The load generator gets one worker thread, in every scenario alike: the 2 cores
        // are shared by it, the app and the two proxies, and the same generator on every
        // path keeps the ratios fair.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the load generator's runtime: {e}"))?;
        Ok(Self {
            peer: None,
            mesh,
            rt,
            ticks: procstat::clock_ticks(),
            weft,
        })
    }

    /// Where the load of `scenario` goes, and the proxies on its path.
    fn path(&self, scenario: Scenario) -> Result<(SocketAddr, Pids), Error> {
        let mesh = &self.mesh;
        Ok(match scenario {
            Scenario::Direct => (mesh.app, vec![]),
            Scenario::Weft | Scenario::Minimal | Scenario::Full => {
                (mesh.web.outbound, mesh.proxy_pids())
            }
            Scenario::Peer => {
                let peer = self
                    .peer
                    .as_ref()
                    .ok_or("the peer scenario without the HAProxy pair started")?;
                (peer.web_addr, peer.pids())
            }
        })
    }

    /// The address of the proxy the load generator talks to in `scenario`; `None` for the
    /// direct path.
    fn front(&self, scenario: Scenario) -> Option<SocketAddr> {
        match self.path(scenario) {
            Ok((addr, proxies)) if !proxies.is_empty() => Some(addr),
            _ => None,
        }
    }

    /// The resident memory of each of `proxies` that is on `scenario`'s path (`None` for the
    /// others) just before and with `n` idle keep-alive client connections open to `front`
    /// (each after one answered request).
    fn rss_with_idle_connections(
        &self,
        front: SocketAddr,
        n: usize,
        proxies: &[(Scenario, &'static str, u32)],
        scenario: Scenario,
    ) -> Result<Vec<Option<IdleConnectionsRss>>, Error> {
        let rss = || -> Result<Vec<Option<u64>>, Error> {
            proxies
                .iter()
                .map(|(s, _, pid)| {
                    (*s == scenario)
                        .then(|| procstat::memory(*pid).map(|m| m.rss_kib))
                        .transpose()
                })
                .collect()
        };
        eprintln!("{n} idle connections to {}", scenario.label());
        let before = rss()?;
        let conns = crate::idle::open(front, &self.mesh.host(), n)?;
        // Let the proxies finish with the requests (pool, buffers) before reading.
        std::thread::sleep(IDLE_SETTLE);
        let with = rss()?;
        drop(conns);
        std::thread::sleep(IDLE_SETTLE);
        Ok(before
            .into_iter()
            .zip(with)
            .map(|(b, w)| {
                Some(IdleConnectionsRss {
                    before_kib: b?,
                    with_kib: w?,
                })
            })
            .collect())
    }

    /// One run of `scenario` loaded as `load`, with the CPU time of the proxies on its path
    /// over the measured window.
    pub(crate) fn measure(
        &self,
        cfg: &MeshConfig,
        repeat: usize,
        scenario: Scenario,
        load: Load,
    ) -> Result<Run, Error> {
        let mesh = &self.mesh;
        let (target, proxies) = self.path(scenario)?;
        let (rate, new_connection) = match load {
            Load::Rate(r) => (Some(r), false),
            Load::Max => (None, false),
            Load::NewConnection(r) => (Some(r), true),
        };
        let load = LoadConfig {
            target: format!("http://{target}/")
                .parse()
                .map_err(|e| format!("bad target {target}: {e}"))?,
            // The same request on every path; the app ignores the Host header.
            host: Some(mesh.host()),
            connections: cfg.connections,
            rate,
            warmup: cfg.warmup,
            duration: cfg.duration,
            max_requests: cfg.max_requests,
            http2: cfg.http2 && !new_connection,
            new_connection,
            request_body_size: cfg.request_body_size,
        };
        let window = Window::after_warmup(cfg.warmup, cfg.duration);
        let sampler = sample_cpu(window, proxies.clone());
        let result = self.rt.block_on(load::run(&load, window))?;
        let cpu = sampler
            .join()
            .map_err(|_| "the CPU sampling thread panicked".to_string())??;
        let run = Run {
            repeat,
            scenario,
            proxies: proxy_cpu(&proxies, cpu, self.ticks, result.requests),
            load: result,
        };
        eprintln!("{}", run.progress_line(cfg.repeat.max(1), (12, 14)));
        // Let the finished run's connections close before the next one.
        std::thread::sleep(Duration::from_millis(300));
        Ok(run)
    }

    /// The settings, as reported.
    pub(crate) fn settings(&self, cfg: &MeshConfig) -> Settings {
        Settings {
            haproxy: self.peer.as_ref().map(|p| p.version.clone()),
            ..settings(cfg, self.ticks, &self.weft)
        }
    }
}

/// The settings of `cfg` as reported, for a benchmark run with `weft` on a machine of
/// `clock_ticks`: the headline rate only, and no peer, connection-setup or idle-connection
/// runs; each benchmark fills in what else it ran.
pub(crate) fn settings(cfg: &MeshConfig, clock_ticks: u64, weft: &Path) -> Settings {
    Settings {
        rate: cfg.rate,
        rates: vec![cfg.rate],
        quick: cfg.quick,
        connections: cfg.connections,
        warmup_seconds: cfg.warmup.as_secs_f64(),
        duration_seconds: cfg.duration.as_secs_f64(),
        repeat: cfg.repeat.max(1),
        body_size: cfg.body_size,
        request_body_size: cfg.request_body_size,
        http2: cfg.http2,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        clock_ticks,
        weft: weft.display().to_string(),
        haproxy: None,
        setup_rate: None,
        idle_connections: 0,
    }
}

/// CPU ticks each of `pids` used between the window's start and its end, sampled by a
/// thread of its own so the load generator's runtime is not disturbed.
pub(crate) fn sample_cpu(
    window: Window,
    pids: Vec<(&'static str, u32)>,
) -> std::thread::JoinHandle<Result<Vec<u64>, Error>> {
    std::thread::spawn(move || {
        let sample = |at: Instant| {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            cpu_ticks(&pids)
        };
        let before = sample(window.measure_from)?;
        let after = sample(window.deadline)?;
        Ok(after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect())
    })
}

/// Each of `proxies`' CPU time over a run, from the clock ticks it used there (as
/// [`sample_cpu`] returns them, in the same order; `clock_ticks` a second): in seconds, and
/// per 1,000 of the `requests` the run measured.
pub(crate) fn proxy_cpu(
    proxies: &Pids,
    ticks_used: Vec<u64>,
    clock_ticks: u64,
    requests: u64,
) -> Vec<ProxyCpu> {
    proxies
        .iter()
        .zip(ticks_used)
        .map(|((name, _), ticks_used)| {
            let cpu_seconds = ticks_used as f64 / clock_ticks as f64;
            ProxyCpu {
                proxy: name.to_string(),
                cpu_seconds,
                cpu_seconds_per_1000_requests: cpu_seconds * 1000.0 / requests.max(1) as f64,
            }
        })
        .collect()
}

/// Each of `pids`' CPU use at rest (percent of a core over `IDLE_WINDOW`, all sampled over
/// the same window) and resident memory, before any load.
fn at_rest(pids: &[(&'static str, u32)], ticks: u64) -> Result<Vec<(f64, u64)>, Error> {
    let before = cpu_ticks(pids)?;
    std::thread::sleep(IDLE_WINDOW);
    let after = cpu_ticks(pids)?;
    pids.iter()
        .zip(before.iter().zip(&after))
        .map(|((_, pid), (b, a))| {
            let percent =
                a.saturating_sub(*b) as f64 / ticks as f64 / IDLE_WINDOW.as_secs_f64() * 100.0;
            Ok((percent, procstat::memory(*pid)?.rss_kib))
        })
        .collect()
}

/// CPU ticks used so far by each of `pids`.
fn cpu_ticks(pids: &[(&'static str, u32)]) -> Result<Vec<u64>, Error> {
    pids.iter()
        .map(|(_, pid)| procstat::cpu_ticks(*pid))
        .collect()
}

/// Processes by the name the report gives them, and their PIDs.
pub(crate) type Pids = Vec<(&'static str, u32)>;

/// Resource files the control plane reads from its start beside `mesh.yaml`, made from the
/// app's port (the port of the `api` service): each a file name and its YAML.
pub(crate) type ExtraResources = fn(app_port: u16) -> Vec<(&'static str, String)>;

/// A process of the benchmark, killed when dropped: `program args` with `env` added,
/// `WEFT_LOG=warn`, nothing on stdin, its stderr in `<dir>/<name>.log`.
pub(crate) fn spawn(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Child, Error> {
    let options = Options {
        log_level: "warn",
        stdin: Stdin::Null,
        ..Options::default()
    };
    Child::spawn(
        name,
        program,
        args,
        env,
        &dir.join(format!("{name}.log")),
        &options,
    )
}

/// A proxy's process and its listeners.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) proc: Child,
    pub(crate) outbound: SocketAddr,
    admin: SocketAddr,
}

/// The running mesh. Dropping it kills every process, then removes the directory.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub(crate) app: SocketAddr,
    /// The identity service's API.
    pub(crate) identity_api: SocketAddr,
    pub(crate) web: Proxy,
    pub(crate) api: Proxy,
    pub(crate) policy: Child,
    /// The control plane's resource directory, re-read every 200 ms.
    resources: PathBuf,
    policy_admin: SocketAddr,
    _identity: Child,
    _app: Child,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts every process. The resource directory holds `mesh.yaml` ([`resources_yaml`])
    /// and the files of `extra` from the start.
    fn start(weft: &Path, body_size: usize, extra: ExtraResources) -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let d = dir.path();
        let path = |p: &Path| p.display().to_string();

        let app = free_addr()?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let body_size = body_size.to_string();
        let mut app_proc = spawn(
            d,
            "app",
            &exe,
            &[
                "app",
                "--listen",
                &app.to_string(),
                "--body-size",
                &body_size,
                "--lifetime",
                APP_LIFETIME,
            ],
            &[],
        )?;
        app_proc.wait_for_200(app, "/", "app")?;

        let data = d.join("ca");
        let (identity, id_api, _) = start_server(d, weft, "identity", "--data-dir", &data, &[])?;
        for (ns, workload) in [("weft", "policy"), ("default", "api"), ("default", "web")] {
            let out = d.join(format!("{workload}.token"));
            token(weft, &data, ns, workload, &out)?;
        }

        let resources = d.join("resources");
        std::fs::create_dir_all(&resources)
            .map_err(|e| format!("cannot create {}: {e}", resources.display()))?;
        write_file(&resources.join("mesh.yaml"), &resources_yaml(app.port()))?;
        for (name, yaml) in extra(app.port()) {
            write_file(&resources.join(name), &yaml)?;
        }
        let (policy, pol_api, policy_admin) = start_server(
            d,
            weft,
            "policy",
            "--dir",
            &resources,
            &[
                (ENV_TOKEN_FILE, path(&d.join("policy.token"))),
                (ENV_IDENTITY_ADDR, id_api.to_string()),
            ],
        )?;

        // The sidecar's own binary, as a deployment runs it; `weft proxy` when it is not built.
        let sidecar = weft.with_file_name("weft-proxy");
        let (proxy_bin, proxy_args): (&Path, &[&str]) = if sidecar.is_file() {
            (&sidecar, &[])
        } else {
            (weft, &["proxy"])
        };
        let proxy = |name: &'static str, app_port: u16| -> Result<Proxy, Error> {
            let (inbound, outbound, admin) = (free_addr()?, free_addr()?, free_addr()?);
            let mut proc = spawn(
                d,
                name,
                proxy_bin,
                proxy_args,
                &[
                    (ENV_TOKEN_FILE, path(&d.join(format!("{name}.token")))),
                    (ENV_IDENTITY_ADDR, id_api.to_string()),
                    (ENV_POLICY_ADDR, pol_api.to_string()),
                    (proxy_config::ENV_INBOUND, inbound.to_string()),
                    (proxy_config::ENV_OUTBOUND, outbound.to_string()),
                    (proxy_config::ENV_ADMIN, admin.to_string()),
                    (proxy_config::ENV_APP_PORT, app_port.to_string()),
                ],
            )?;
            proc.wait_for_200(admin, "/ready", "localhost")?;
            Ok(Proxy {
                proc,
                outbound,
                admin,
            })
        };
        let api = proxy("api", app.port())?;
        let mut web = proxy("web", 1)?;
        // Ready proxies route once api's registration reaches web through discovery.
        let host = format!("api.default:{}", app.port());
        web.proc
            .wait_for_200(web.outbound, "/", &host)
            .map_err(|e| format!("{e}\napi's log:\n{}", api.proc.logs()))?;
        Ok(Self {
            app,
            identity_api: id_api,
            web,
            api,
            policy,
            resources,
            policy_admin,
            _identity: identity,
            _app: app_proc,
            _dir: dir,
        })
    }

    /// The temporary directory: tokens, the CA, resources, logs.
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The Host header of calls to api through the mesh.
    pub(crate) fn host(&self) -> String {
        format!("api.default:{}", self.app.port())
    }

    fn proxy_pids(&self) -> Vec<(&'static str, u32)> {
        vec![
            (WEB_PROXY, self.web.proc.pid()),
            (API_PROXY, self.api.proc.pid()),
        ]
    }

    /// Writes `name` in the resource directory (`Some`) or removes it (`None`), for the
    /// control plane's next poll. A write goes to a hidden file first, which the control plane
    /// skips, then is renamed, so no poll reads it half-written.
    pub(crate) fn set_resource(&self, name: &str, yaml: Option<&str>) -> Result<(), Error> {
        let path = self.resources.join(name);
        match yaml {
            Some(yaml) => {
                let tmp = self.resources.join(format!(".{name}.tmp"));
                write_file(&tmp, yaml)?;
                std::fs::rename(&tmp, &path).map_err(|e| {
                    format!("cannot rename {} to {}: {e}", tmp.display(), path.display())
                })
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("cannot remove {}: {e}", path.display()))
                }
                _ => Ok(()),
            },
        }
    }

    /// The control plane's `/status` page (JSON).
    pub(crate) fn policy_status(&self) -> Result<String, Error> {
        get_200(self.policy_admin, "/status", "the control plane's status")
    }

    /// `GET /` through web's outbound, as the load sends it: the status, `None` when nothing
    /// answers.
    pub(crate) fn probe(&self) -> Option<u16> {
        http_get(self.web.outbound, "/", &self.host()).map(|(status, _)| status)
    }

    fn api_metrics(&self) -> Result<String, Error> {
        get_200(self.api.admin, "/metrics", "the api proxy's metrics")
    }

    pub(crate) fn web_metrics(&self) -> Result<String, Error> {
        get_200(self.web.admin, "/metrics", "the web proxy's metrics")
    }

    /// TLS handshakes the api proxy completed inbound with web's identity.
    fn inbound_handshakes_from_web(&self) -> Result<f64, Error> {
        Ok(metric_sum(
            &self.api_metrics()?,
            "weft_proxy_tls_handshakes_total",
            &[
                "direction=\"inbound\"",
                "peer=\"spiffe://weft.local/ns/default/sa/web\"",
            ],
        ))
    }

    /// Requests the api proxy took in over mTLS so far.
    pub(crate) fn inbound_mtls_requests(&self) -> Result<f64, Error> {
        Ok(metric_sum(
            &self.api_metrics()?,
            "weft_proxy_requests_total",
            &["direction=\"inbound\"", "tls=\"true\""],
        ))
    }

    /// Whether the runs through the mesh went over mTLS: api counted handshakes from web,
    /// and at least as many inbound mTLS requests since `inbound_before` as the load
    /// generator measured through the mesh.
    pub(crate) fn mtls_check(&self, inbound_before: f64, runs: &[Run]) -> Result<MtlsCheck, Error> {
        let weft_requests_measured = runs
            .iter()
            .filter(|r| {
                matches!(
                    r.scenario,
                    Scenario::Weft | Scenario::Minimal | Scenario::Full
                )
            })
            .map(|r| r.load.requests)
            .sum();
        let inbound_handshakes = self.inbound_handshakes_from_web()?;
        let inbound_mtls_requests = self.inbound_mtls_requests()? - inbound_before;
        Ok(MtlsCheck {
            inbound_handshakes,
            inbound_mtls_requests,
            weft_requests_measured,
            ok: inbound_handshakes > 0.0
                && weft_requests_measured > 0
                && inbound_mtls_requests >= weft_requests_measured as f64,
        })
    }
}

/// `weft <name> <dir_flag> <dir> --listen A --admin-listen B` on free ports, ready; returns
/// it, its API address `A` and its admin address `B`.
fn start_server(
    d: &Path,
    weft: &Path,
    name: &'static str,
    dir_flag: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> Result<(Child, SocketAddr, SocketAddr), Error> {
    let (api, admin) = (free_addr()?, free_addr()?);
    let dir = dir.display().to_string();
    let (api_s, admin_s) = (api.to_string(), admin.to_string());
    let args = [
        name,
        dir_flag,
        &dir,
        "--listen",
        &api_s,
        "--admin-listen",
        &admin_s,
    ];
    let mut p = spawn(d, name, weft, &args, env)?;
    p.wait_for_200(admin, "/ready", "localhost")?;
    Ok((p, api, admin))
}

/// The resources: services api (the app's port) and web, and a policy letting web call api.
pub fn resources_yaml(port: u16) -> String {
    format!(
        "kind: Service\nmetadata: {{name: api, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n\
         kind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
         kind: AuthorizationPolicy\nmetadata: {{name: api-from-web, namespace: default}}\nspec:\n  \
         target: {{service: api, port: {port}}}\n  allow:\n    - identities: [\"spiffe://weft.local/ns/default/sa/web\"]\n"
    )
}

/// `weft token create` for `ns/workload`, written to `out`.
pub(crate) fn token(
    weft: &Path,
    data: &Path,
    ns: &str,
    workload: &str,
    out: &Path,
) -> Result<(), Error> {
    let o = Command::new(weft)
        .args(["token", "create", "--namespace", ns, "--workload", workload])
        .arg("--data-dir")
        .arg(data)
        .output()
        .map_err(|e| format!("cannot run {} token create: {e}", weft.display()))?;
    if !o.status.success() {
        return Err(format!(
            "weft token create for {ns}/{workload} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    std::fs::write(out, &o.stdout).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A free loopback port for a process of the benchmark to listen on.
pub(crate) fn free_addr() -> Result<SocketAddr, Error> {
    weft_runtime::process::free_loopback_addr("the benchmark")
}

/// The body of `GET path` at `addr` (an admin endpoint), or an error naming `what`.
fn get_200(addr: SocketAddr, path: &str, what: &str) -> Result<String, Error> {
    match http_get(addr, path, "localhost") {
        Some((200, text)) => Ok(text),
        other => Err(format!(
            "cannot read {what} at http://{addr}{path}: {other:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_rate_is_one_of_the_rates() {
        assert_eq!(
            rates_with(&[2000, 500, 1000], 1000),
            Ok(vec![500, 1000, 2000])
        );
        assert_eq!(rates_with(&[500, 2000], 1000), Ok(vec![500, 1000, 2000]));
        assert_eq!(rates_with(&[], 1000), Ok(vec![1000]));
        assert_eq!(rates_with(&[500, 500], 500), Ok(vec![500]));
        assert!(rates_with(&[0, 500], 1000).is_err());
        assert!(rates_with(&[500], 0).is_err());
        let many: Vec<u64> = (1..=MAX_RATES as u64).map(|r| r * 100).collect();
        assert!(rates_with(&many, 100).is_ok());
        assert!(rates_with(&many, 50).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_proxys_cpu_is_its_ticks_in_seconds_and_per_1000_requests() {
        let proxies: Pids = vec![(WEB_PROXY, 11), (API_PROXY, 12)];
        // 100 ticks a second: 2.5 s and 1 s over 5,000 requests.
        let cpu = proxy_cpu(&proxies, vec![250, 100], 100, 5000);
        let got: Vec<(&str, f64, f64)> = cpu
            .iter()
            .map(|p| {
                (
                    p.proxy.as_str(),
                    p.cpu_seconds,
                    p.cpu_seconds_per_1000_requests,
                )
            })
            .collect();
        assert_eq!(got, [(WEB_PROXY, 2.5, 0.5), (API_PROXY, 1.0, 0.2)]);
        // A run that measured no request does not divide by zero.
        assert_eq!(
            proxy_cpu(&proxies, vec![10, 0], 100, 0)[0].cpu_seconds_per_1000_requests,
            100.0
        );
    }
}
