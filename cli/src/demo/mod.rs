//! `weft demo`: a whole local mesh on one machine, running until Ctrl-C (or `--duration`).
//!
//! It starts, as child processes of one `weft` binary, the identity service, the control plane
//! (with a resource directory it writes and the user may edit live), and the demo topology:
//! `loadgen → web → api → db`, where calls to `api` are routed (mobile user-agents to `api-v3`,
//! the others split 90/10 between `api-v1` and `api-v2`) and only `api` may call `db`. Every
//! workload is a small HTTP app (`weft demo-app`) with its sidecar (`weft proxy`); the load
//! generator runs in the demo itself behind the `loadgen` sidecar; `weft dashboard` shows it
//! all live. Everything listens on free loopback ports and needs no root; every child is
//! stopped on exit, on Ctrl-C and on SIGTERM, and exits by itself should the demo die.
//!
//! # Layout
//! - `mod.rs`: the command, whose `start_and_run` is the demo's outline; the directory and
//!   every token; ports; the start-up order (identity, control plane, workloads, dashboard).
//! - [`print`]: what the demo prints: its directories, the table of processes, where to look.
//! - [`resources`]: the YAML resources the control plane serves.
//! - [`app`]: `weft demo-app`, the workloads, and the HTTP client through a sidecar.
//! - [`load`]: the load generator.
//! - [`children`]: starting, watching and stopping the child processes.

pub mod app;
pub mod children;
pub mod load;
mod print;
pub mod resources;
mod setup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use children::Fleet;

/// How long the mesh may take to come up before the demo gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The sidecars' own grace for requests in flight on SIGTERM (below [`STOP_GRACE`]).
const PROXY_SHUTDOWN_GRACE: &str = "2s";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after the mesh has served traffic this long (e.g. 20s); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = weft_runtime::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Directory for the CA, tokens, resources and logs [default: a new temporary directory,
    /// removed on exit]. Resources already in DIR/resources are kept.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Requests per second the load generator sends to web.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// Use consecutive ports from this one instead of free ones chosen by the system.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Serve the dashboard here [default: a free loopback port].
    #[arg(long)]
    pub dashboard_listen: Option<SocketAddr>,
    /// Lifetime of workload certificates.
    #[arg(long, default_value = "1h", value_parser = weft_runtime::config::parse_duration)]
    pub leaf_lifetime: Duration,
    /// Where the control plane keeps the resources and registrations: `dir` (one control
    /// plane, the resources directory) or `etcd` (a three-member etcd cluster on loopback, two
    /// control-plane replicas over it: kill one and watch nothing happen; needs `etcd`).
    #[arg(long, value_enum, default_value = "dir")]
    pub store: DemoStore,
}

/// The demo's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoStore {
    Dir,
    Etcd,
}

/// A demo workload: an app and its sidecar.
struct Workload {
    name: &'static str,
    /// The service it registers under, and its labels.
    service: &'static str,
    labels: &'static str,
    /// Its identity (service account): the three versions of `api` share `api`.
    account: &'static str,
    /// What its app calls, if anything; `None` for `loadgen`, which has no app.
    app: Option<AppSpec>,
}

struct AppSpec {
    call: Option<&'static str>,
    fail_percent: u8,
}

const fn app(call: Option<&'static str>, fail_percent: u8) -> Option<AppSpec> {
    Some(AppSpec { call, fail_percent })
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "web",
        service: "web",
        labels: "",
        account: "web",
        app: app(Some("http://api/"), 0),
    },
    Workload {
        name: "api-v1",
        service: "api",
        labels: "version=v1",
        account: "api",
        app: app(Some("http://db/"), 0),
    },
    Workload {
        name: "api-v2",
        service: "api",
        labels: "version=v2",
        account: "api",
        app: app(Some("http://db/"), resources::API_V2_FAIL_PERCENT),
    },
    Workload {
        name: "api-v3",
        service: "api",
        labels: "version=v3",
        account: "api",
        app: app(Some("http://db/"), 0),
    },
    Workload {
        name: "db",
        service: "db",
        labels: "",
        account: "db",
        app: app(None, 0),
    },
    Workload {
        name: "loadgen",
        service: "loadgen",
        labels: "",
        account: "loadgen",
        app: None,
    },
];

/// Hands out loopback addresses: free ones ([`weft_runtime::process::free_loopback_addr`]), or consecutive ones from a base
/// port, checked free.
struct Ports {
    next: Option<u16>,
}

impl Ports {
    fn take(&mut self, what: &str) -> Result<SocketAddr, String> {
        let Some(port) = self.next else {
            return weft_runtime::process::free_loopback_addr(what);
        };
        self.next = port.checked_add(1);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpListener::bind(addr).map_err(|e| {
            format!(
                "port {port} (for {what}) is taken ({e}): choose another --base-port, or leave it \
                 out to use free ports"
            )
        })?;
        Ok(addr)
    }
}

struct SidecarAddrs {
    app: Option<SocketAddr>,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

/// The files the processes read, written to the demo directory before any starts.
struct Files {
    /// One token per account, in a file named after it.
    tokens: PathBuf,
    /// The bootstrap operator's certificate (`weft apply --cert-dir`).
    operator: PathBuf,
    resources: PathBuf,
    /// The resources were there already (the user's, kept) rather than written now.
    kept: bool,
}

/// The running mesh: what the table, the hints and the load generator need.
struct Mesh {
    policy_admin: SocketAddr,
    identity_admin: SocketAddr,
    /// Every control-plane replica's API, comma-separated (`WEFT_POLICY_ADDR`).
    policy_addrs: String,
    /// The etcd cluster, with `--store etcd` (stopped when dropped).
    etcd: Option<weft_runtime::etcd::EtcdCluster>,
    dashboard: SocketAddr,
    sidecars: Vec<(&'static Workload, SidecarAddrs)>,
}

impl Mesh {
    fn sidecar(&self, name: &str) -> Option<&SidecarAddrs> {
        self.sidecars
            .iter()
            .find(|(w, _)| w.name == name)
            .map(|(_, a)| a)
    }
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let (dir, _temp) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("weft-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a demo directory: {e}"))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut fleet = Fleet::new(&dir.join("logs"))?;
    // Ctrl-C and SIGTERM are heard from the start: during start-up they end it.
    let result = tokio::select! {
        r = start_and_run(&args, &dir, args.dir.is_none(), &mut fleet) => r,
        _ = weft_runtime::process::shutdown_signal() => Ok(()),
    };
    println!("weft demo: stopping {} processes", fleet.procs.len());
    fleet.stop(STOP_GRACE).await;
    println!("weft demo: stopped");
    result
}

/// The demo, in order: its files, the mesh, what runs where, then load until the time is up
/// (a signal ends it from [`demo`]).
async fn start_and_run(
    args: &DemoArgs,
    dir: &Path,
    temporary: bool,
    fleet: &mut Fleet,
) -> Result<(), String> {
    let files = setup::write_files(dir, args.leaf_lifetime)?;
    print::directories(dir, temporary, &files, args.store == DemoStore::Etcd);
    let mesh = start_mesh(args, dir, &files, fleet).await?;
    print::running(fleet, &mesh, &files, args.rate, args.duration);
    // The operator commands find this mesh with no flags while it runs.
    let _current = crate::context::announce(&crate::context::Current {
        pid: std::process::id(),
        started: weft_identity::rfc3339(std::time::SystemTime::now()),
        dir: dir.to_path_buf(),
        policy_admin: mesh.policy_admin.to_string(),
        identity_admin: mesh.identity_admin.to_string(),
        policy_addr: mesh.policy_addrs.clone(),
        operator: files.operator.clone(),
    })
    .inspect_err(|e| {
        println!("weft demo: {e}: weft stat, routes, check and dashboard will need --policy-admin")
    })
    .ok();

    let loadgen = mesh
        .sidecar("loadgen")
        .map(|a| a.outbound)
        .ok_or("no loadgen sidecar")?;
    let load = load::run(app::Upstream::new(loadgen), args.rate);
    match args.duration {
        Some(d) => {
            let _ = tokio::time::timeout(d, load).await;
        }
        None => load.await,
    }
    Ok(())
}

/// An argument of a child's command line.
fn exe_arg(s: &str) -> String {
    s.to_string()
}

/// An address as a child's argument or environment variable.
fn addr(a: SocketAddr) -> String {
    a.to_string()
}

/// Starts the mesh in order, each part ready before the next needs it: 1. the identity
/// service, 2. the control plane, 3. the workloads, 4. the dashboard.
async fn start_mesh(
    args: &DemoArgs,
    dir: &Path,
    files: &Files,
    fleet: &mut Fleet,
) -> Result<Mesh, String> {
    let mut ports = Ports {
        next: args.base_port,
    };
    let deadline = Instant::now() + READY_TIMEOUT;

    // 1. The identity service, 2. the control plane.
    let (id_api, id_admin) = start_component(
        fleet,
        &mut ports,
        ("identity", "identity"),
        2,
        &[
            exe_arg("--data-dir"),
            dir.join("identity").display().to_string(),
            exe_arg("--leaf-lifetime"),
            format!("{}ms", args.leaf_lifetime.as_millis().max(1)),
        ],
        &[],
        deadline,
    )
    .await?;
    let env = [
        (
            weft_identity::config::ENV_TOKEN_FILE,
            files.tokens.join("policy").display().to_string(),
        ),
        (weft_identity::config::ENV_IDENTITY_ADDR, addr(id_api)),
    ];
    let (pol_api, pol_admin, etcd) = match args.store {
        DemoStore::Dir => {
            let dir_args = [exe_arg("--dir"), files.resources.display().to_string()];
            let (api, admin) = start_component(
                fleet,
                &mut ports,
                ("policy", "policy"),
                1,
                &dir_args,
                &env,
                deadline,
            )
            .await?;
            (addr(api), admin, None)
        }
        DemoStore::Etcd => {
            let etcd = setup::start_etcd(dir, &files.resources).await?;
            let store_args = [exe_arg("--store"), etcd.store_url()];
            let mut apis = Vec::new();
            let mut admins = Vec::new();
            for name in ["policy-a", "policy-b"] {
                let (api, admin) = start_component(
                    fleet,
                    &mut ports,
                    ("policy", name),
                    1,
                    &store_args,
                    &env,
                    deadline,
                )
                .await?;
                apis.push(addr(api));
                admins.push(admin);
            }
            (apis.join(","), admins[0], Some(etcd))
        }
    };

    // 3. The workloads: apps and sidecars, all at once.
    let mut sidecars = Vec::new();
    for w in WORKLOADS {
        let a = start_workload(fleet, &mut ports, w, &files.tokens, id_api, &pol_api)?;
        sidecars.push((w, a));
    }
    for (w, a) in &sidecars {
        if let Some(app_addr) = a.app {
            fleet
                .wait_listening(&format!("{} app", w.name), app_addr, deadline)
                .await?;
        }
        fleet
            .wait_ready(&format!("{} sidecar", w.name), a.admin, deadline)
            .await?;
    }

    // 4. The dashboard, on the control plane's list of proxies.
    let dash = start_dashboard(
        fleet,
        &mut ports,
        args.dashboard_listen,
        pol_admin,
        deadline,
    )
    .await?;
    Ok(Mesh {
        policy_admin: pol_admin,
        identity_admin: id_admin,
        policy_addrs: pol_api,
        etcd,
        dashboard: dash,
        sidecars,
    })
}

/// Starts a workload's app (if it has one) and its sidecar, on new ports, without waiting.
fn start_workload(
    fleet: &mut Fleet,
    ports: &mut Ports,
    w: &Workload,
    tokens: &Path,
    id_api: SocketAddr,
    pol_api: &str,
) -> Result<SidecarAddrs, String> {
    let a = SidecarAddrs {
        app: match w.app {
            Some(_) => Some(ports.take(&format!("the {} app", w.name))?),
            None => None,
        },
        inbound: ports.take(&format!("{}'s sidecar (inbound)", w.name))?,
        outbound: ports.take(&format!("{}'s sidecar (outbound)", w.name))?,
        admin: ports.take(&format!("{}'s sidecar (admin)", w.name))?,
    };
    if let (Some(spec), Some(app_addr)) = (&w.app, a.app) {
        spawn_app(fleet, w, spec, app_addr, a.outbound)?;
    }
    spawn_sidecar(fleet, w, &a, tokens, id_api, pol_api)?;
    Ok(a)
}

/// `weft demo-app`, calling through its sidecar's outbound port if it calls anything.
fn spawn_app(
    fleet: &mut Fleet,
    w: &Workload,
    spec: &AppSpec,
    app_addr: SocketAddr,
    outbound: SocketAddr,
) -> Result<(), String> {
    let mut argv = vec![
        exe_arg("demo-app"),
        exe_arg("--name"),
        exe_arg(w.name),
        exe_arg("--listen"),
        addr(app_addr),
        exe_arg("--fail-percent"),
        spec.fail_percent.to_string(),
    ];
    if let Some(call) = spec.call {
        argv.extend([
            exe_arg("--call"),
            exe_arg(call),
            exe_arg("--via"),
            addr(outbound),
        ]);
    }
    let what = match spec.call {
        Some(c) => format!("http={app_addr} calls={c}"),
        None => format!("http={app_addr}"),
    };
    let what = if spec.fail_percent > 0 {
        format!("{what} fails={}%", spec.fail_percent)
    } else {
        what
    };
    fleet.spawn(w.name, "app", 0, what, &argv, &[])
}

/// `weft proxy` for a workload, with its identity's token and its service's name and labels.
fn spawn_sidecar(
    fleet: &mut Fleet,
    w: &Workload,
    a: &SidecarAddrs,
    tokens: &Path,
    id_api: SocketAddr,
    pol_api: &str,
) -> Result<(), String> {
    let mut env = vec![
        (
            weft_identity::config::ENV_TOKEN_FILE,
            tokens.join(w.account).display().to_string(),
        ),
        (weft_identity::config::ENV_IDENTITY_ADDR, addr(id_api)),
        (weft_proxy::config::ENV_POLICY_ADDR, pol_api.to_string()),
        (weft_proxy::config::ENV_INBOUND, addr(a.inbound)),
        (weft_proxy::config::ENV_OUTBOUND, addr(a.outbound)),
        (weft_proxy::config::ENV_ADMIN, addr(a.admin)),
        (weft_proxy::config::ENV_SERVICE, w.service.to_string()),
        (
            weft_proxy::config::ENV_SHUTDOWN_GRACE,
            PROXY_SHUTDOWN_GRACE.to_string(),
        ),
    ];
    if let Some(app_addr) = a.app {
        env.push((
            weft_proxy::config::ENV_APP_PORT,
            app_addr.port().to_string(),
        ));
    }
    if !w.labels.is_empty() {
        env.push((weft_proxy::config::ENV_LABELS, w.labels.to_string()));
    }
    fleet.spawn(
        w.name,
        "sidecar",
        0,
        format!(
            "inbound={} outbound={} admin={}",
            a.inbound, a.outbound, a.admin
        ),
        &[exe_arg("proxy")],
        &env,
    )
}

/// `weft dashboard` on `listen` or a new port, reading the control plane's list of proxies;
/// waits until it is ready.
async fn start_dashboard(
    fleet: &mut Fleet,
    ports: &mut Ports,
    listen: Option<SocketAddr>,
    pol_admin: SocketAddr,
    deadline: Instant,
) -> Result<SocketAddr, String> {
    let dash = match listen {
        Some(a) => a,
        None => ports.take("the dashboard")?,
    };
    fleet.spawn(
        "dashboard",
        "dashboard",
        0,
        format!("http={dash}"),
        &[
            exe_arg("dashboard"),
            exe_arg("--listen"),
            addr(dash),
            exe_arg("--policy-admin"),
            addr(pol_admin),
        ],
        &[],
    )?;
    fleet.wait_ready("dashboard", dash, deadline).await?;
    Ok(dash)
}

/// Starts `weft <command> --listen A --admin-listen B <args>` (named `name`) on two new ports
/// and waits until it is ready; returns both addresses.
#[allow(clippy::too_many_arguments)]
async fn start_component(
    fleet: &mut Fleet,
    ports: &mut Ports,
    (command, name): (&'static str, &'static str),
    tier: u8,
    args: &[String],
    env: &[(&str, String)],
    deadline: Instant,
) -> Result<(SocketAddr, SocketAddr), String> {
    let api = ports.take(&format!("the {name} service"))?;
    let admin = ports.take(&format!("the {name} admin endpoint"))?;
    let mut argv = vec![
        command.to_string(),
        "--listen".into(),
        api.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    argv.extend_from_slice(args);
    fleet.spawn(
        name,
        command,
        tier,
        format!("api={api} admin={admin}"),
        &argv,
        env,
    )?;
    fleet.wait_ready(name, admin, deadline).await?;
    Ok((api, admin))
}
