//! `weft-bench`: the mesh benchmark and its parts. See the crate's `lib.rs` for the layout
//! and `docs/benchmarks.md` for what is measured.
//!
//! - `weft-bench all [--out-dir bench/results] [--quick] [mesh flags]`: every benchmark (the
//!   interception one as root only), the results written as JSON, Markdown and SVG
//!   (`just bench`);
//! - `weft-bench mesh [--rates 500,1000,2000] [--rate 1000] [--repeat 3] [--no-peer] [--quick]
//!   [--json out.json]`: direct against weft against the HAProxy pair, side by side;
//! - `weft-bench stack [--rate 1000] [--repeat 3] [--json out.json]`: direct, the minimal
//!   outbound stack and the full one (an HTTPRoute configuring every layer), side by side;
//! - `weft-bench intercept [--rates 500,1000,2000] [--rate 1000] [--repeat 3] [--quick]
//!   [--json out.json]`: direct against both proxies with transparent interception, between
//!   two network namespaces (root only);
//! - `weft-bench soak [--rate 500] [--duration 30m] [--out-dir bench/results] [--rotate-every
//!   60s] [--edit-every 15s] [--endpoint-every 60s] [--max-drift-percent 5]`: steady load
//!   while the mesh changes; writes soak-<date>.{json,md,svg}, exits 1 unless it passed;
//! - `weft-bench load --target http://127.0.0.1:PORT/ [--rate N | --max]`: the load generator
//!   on its own;
//! - `weft-bench app --listen 127.0.0.1:PORT`: the app the mesh benchmark runs behind weft.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use weft_bench::Error;
use weft_bench::app::AppConfig;
use weft_bench::intercept::{self, InterceptReport};
use weft_bench::load::{self, LoadConfig, Window};
use weft_bench::mesh::{self, MeshConfig};
use weft_bench::report::MeshReport;
use weft_bench::soak::{self, SoakConfig};
use weft_bench::stack;
use weft_bench::suite::{self, SuiteConfig};
use weft_runtime::config::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "weft-bench",
    about = "weft's benchmarks: open-loop load, direct against the mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every benchmark, as `just bench` runs it: the identity service's and the control
    /// plane's, then the mesh, then (as root) the interception benchmark; writes
    /// <out-dir>/<date>.json, a Markdown summary <date>.md and the latency plot <date>.svg
    /// (and latest.md, latest.svg).
    All(AllArgs),
    /// Direct against app → weft → weft → app over mTLS against the same hop made by two
    /// HAProxies, side by side, at several fixed rates and at the maximum.
    Mesh(MeshArgs),
    /// Direct, the minimal outbound stack (no HTTPRoute) and the full one (an HTTPRoute
    /// configuring every layer), side by side, open loop at a fixed rate.
    Stack(BenchArgs),
    /// Transparent interception between two network namespaces (client; app): direct against
    /// app → iptables → weft → mTLS → weft → app, side by side, at several fixed rates and at
    /// the maximum. Needs root, `ip`, `iptables` and `setpriv`.
    Intercept(InterceptArgs),
    /// Steady open-loop load through the mesh for a long time while certificates rotate,
    /// routes and policies are edited and a second api endpoint comes and goes; reports the
    /// failed requests and every weft process's memory over time (soak-<date>.json, .md, .svg
    /// in --out-dir) and exits 1 if a request failed or a memory drift passed the threshold.
    Soak(SoakArgs),
    /// The control plane at scale: simulated proxies (each a real mTLS client with its own
    /// discovery stream) on two replicas over a three-member etcd; endpoint-change delivery,
    /// bytes per change, memory per proxy, a replica restart. Needs `etcd`.
    Scale(weft_bench::scale::ScaleArgs),
    /// The load generator: open loop at a fixed rate, or closed loop (--max).
    Load(LoadArgs),
    /// A tiny HTTP/1.1 + h2c server answering every request with a fixed body.
    App(AppArgs),
    /// Draws a soak's memory plot again from its JSON: writes <same name>.svg beside it.
    #[command(hide = true)]
    SoakPlot { json: PathBuf },
    /// One `GET http://ADDR/PATH`: the status on the first line, then the body (`intercept`
    /// reads the proxies' admin endpoints inside its namespaces with it).
    #[command(hide = true)]
    Fetch {
        addr: String,
        #[arg(default_value = "/")]
        path: String,
    },
}

#[derive(Debug, clap::Args)]
struct InterceptArgs {
    #[command(flatten)]
    common: BenchArgs,
    /// The fixed rates of the open-loop runs (requests per second); --rate is added if missing.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
    rates: Vec<u64>,
    /// A check that the harness works: one repeat, 0.5 s warm-up and 2 s per run, rates 500
    /// and --rate; overrides --repeat, --warmup, --duration and --rates. Reported as quick.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, clap::Args)]
struct MeshArgs {
    #[command(flatten)]
    common: BenchArgs,
    /// The fixed rates of the open-loop runs (requests per second); --rate is added if missing.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000")]
    rates: Vec<u64>,
    /// Leave out the HAProxy pair (the peer scenario), e.g. where haproxy is not installed.
    #[arg(long)]
    no_peer: bool,
    /// The haproxy binary [default: `haproxy` on PATH, else /usr/sbin/haproxy].
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// The rate of the runs with a new client connection per request (the connection-setup
    /// cost); 0 leaves them out.
    #[arg(long, default_value_t = 200)]
    setup_rate: u64,
    /// Idle keep-alive client connections held open to each front proxy while the proxies'
    /// memory is read, after the runs; 0 leaves it out.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
    /// A check that the harness works, well under 2 minutes: one repeat, 0.5 s warm-up and
    /// 2 s per run, rates 500 and --rate, 100 idle connections; overrides --repeat, --warmup,
    /// --duration, --rates and --idle-connections. Reported as quick: not numbers to quote.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Fixed request rate of the open-loop runs (requests per second); `mesh` judges the
    /// targets at it.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of each measured run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each run (not measured).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Repeats of every scenario (mesh: direct, weft, HAProxy pair; stack: direct, minimal,
    /// full); medians and min–max are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Bytes in each response body.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// Bytes in each request body: 0 sends `GET`s, more `POST`s with a body.
    #[arg(long, default_value_t = 0)]
    request_body_size: usize,
    /// Upper bound on requests in one run, whatever the duration.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// HTTP/2 with prior knowledge from the load generator instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// The weft binary [default: `weft` beside this binary, e.g. target/release/weft].
    #[arg(long)]
    weft: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Requests per second, open loop, for the whole run.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Length of the run.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// About how often every certificate is renewed: the identity service's leaf lifetime is
    /// set so that the clients, renewing at 70 % of it, renew this often.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    rotate_every: Duration,
    /// How often api's HTTPRoute or its AuthorizationPolicy (in turn) is edited.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    edit_every: Duration,
    /// The second api instance's cycle: up for half of it, then stopped with SIGTERM and down
    /// for the other half.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    endpoint_every: Duration,
    /// How often every process's memory is read.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Memory before the end of the warm-up is not compared [default: 10 % of the run or 2
    /// minutes, whichever is smaller].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// The largest memory drift (percent) of a process living the whole run that passes.
    #[arg(long, default_value_t = 5.0)]
    max_drift_percent: f64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Bytes in each response body.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// The weft binary [default: `weft` beside this binary, e.g. target/release/weft].
    #[arg(long)]
    weft: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Where to send: http://IP:PORT/path on loopback or a private network.
    #[arg(long)]
    target: http::Uri,
    /// The Host header, e.g. `api.default:8080` through a weft outbound proxy.
    #[arg(long)]
    host: Option<String>,
    /// Keep-alive connections, each sending one request at a time.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests per second over all connections (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Closed loop: every connection sends back to back; reports the maximum rate.
    #[arg(long)]
    max: bool,
    /// Length of the measured run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before the run (not measured).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Upper bound on requests, whatever the duration.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// A new connection for every request, made when it is due (the connection-setup cost).
    #[arg(long)]
    new_connection: bool,
    /// Bytes in each request body: 0 sends `GET`s, more `POST`s with a body.
    #[arg(long, default_value_t = 0)]
    request_body_size: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Start at this wall-clock time (milliseconds since 1970) instead of at once, so another
    /// process can sample over the same window; an error if it passed more than half the
    /// warm-up ago.
    #[arg(long, hide = true)]
    start_at_unix_ms: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct AppArgs {
    /// Where to listen; repeat it to serve the same app on several addresses.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Bytes in each response body.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// Exit after this long in any case.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    lifetime: Duration,
}

fn main() {
    let result = match Cli::parse().command {
        Cmd::All(a) => run_all(a),
        Cmd::Mesh(a) => run_mesh(a),
        Cmd::Stack(a) => run_stack(a),
        Cmd::Intercept(a) => run_intercept(a),
        Cmd::Fetch { addr, path } => {
            weft_bench::intercept::fetch_main(&addr, &path).map(|text| print!("{text}"))
        }
        Cmd::Soak(a) => run_soak(a),
        Cmd::Scale(a) => weft_bench::scale::main(a),
        Cmd::SoakPlot { json } => soak_plot(&json),
        Cmd::Load(a) => run_load(a),
        Cmd::App(a) => weft_bench::app::serve(&AppConfig {
            listen: a.listen,
            body_size: a.body_size,
            lifetime: a.lifetime,
        }),
    };
    if let Err(e) = result {
        eprintln!("weft-bench: {e}");
        std::process::exit(1);
    }
}

/// `--quick`: one repeat of short runs at two rates.
const QUICK_REPEAT: usize = 1;
const QUICK_WARMUP: Duration = Duration::from_millis(500);
const QUICK_DURATION: Duration = Duration::from_secs(2);
const QUICK_RATES: &[u64] = &[500];
const QUICK_IDLE_CONNECTIONS: usize = 100;

impl MeshArgs {
    fn config(&self) -> MeshConfig {
        let mut cfg = self.common.config();
        cfg.rates = self.rates.clone();
        cfg.no_peer = self.no_peer;
        cfg.haproxy = self.haproxy.clone();
        cfg.setup_rate = (self.setup_rate > 0).then_some(self.setup_rate);
        cfg.idle_connections = self.idle_connections;
        if self.quick {
            quicken(&mut cfg);
        }
        cfg
    }
}

impl InterceptArgs {
    fn config(&self) -> MeshConfig {
        let mut cfg = self.common.config();
        cfg.rates = self.rates.clone();
        if self.quick {
            quicken(&mut cfg);
        }
        cfg
    }
}

/// `--quick`'s settings, for `mesh` and `intercept` alike.
fn quicken(cfg: &mut MeshConfig) {
    cfg.quick = true;
    cfg.repeat = QUICK_REPEAT;
    cfg.warmup = QUICK_WARMUP;
    cfg.duration = QUICK_DURATION;
    cfg.rates = QUICK_RATES.to_vec();
    cfg.idle_connections = cfg.idle_connections.min(QUICK_IDLE_CONNECTIONS);
}

impl BenchArgs {
    fn config(&self) -> MeshConfig {
        MeshConfig {
            rate: self.rate,
            rates: vec![self.rate],
            quick: false,
            no_peer: true,
            haproxy: None,
            connections: self.connections,
            warmup: self.warmup,
            duration: self.duration,
            repeat: self.repeat,
            body_size: self.body_size,
            request_body_size: self.request_body_size,
            max_requests: self.max_requests,
            http2: self.http2,
            weft: self.weft.clone(),
            setup_rate: None,
            idle_connections: 0,
        }
    }
}

fn run_mesh(a: MeshArgs) -> Result<(), Error> {
    let report = mesh::run(&a.config())?;
    println!("\n{}", report.markdown());
    write_json(a.common.json.as_deref(), &report)?;
    mesh_checks(&report)
}

/// The mesh benchmark fails when a path was not shown to be what it claims.
fn mesh_checks(report: &MeshReport) -> Result<(), Error> {
    mtls_ok(report.mtls.ok)?;
    match &report.peer_check {
        Some(p) if !p.ok => Err(format!(
            "the HAProxy pair's hop was not shown to be mTLS over TLS 1.3: {}",
            p.detail.join("; ")
        )),
        _ => Ok(()),
    }
}

fn run_all(a: AllArgs) -> Result<(), Error> {
    if a.mesh.common.json.is_some() {
        return Err("`all` writes its JSON to --out-dir; --json is for `mesh` and `stack`".into());
    }
    let (report, written) = suite::run(&SuiteConfig {
        out_dir: a.out_dir,
        quick: a.mesh.quick,
        mesh: a.mesh.config(),
    })?;
    println!("\n{}", report.mesh.markdown());
    match (&report.intercept, &report.intercept_skipped) {
        (Some(r), _) => println!("\n{}", r.markdown()),
        (None, Some(why)) => println!("\ninterception benchmark SKIPPED: {why}"),
        (None, None) => {}
    }
    for path in [&written.json, &written.markdown, &written.plot] {
        println!("wrote {}", path.display());
    }
    mesh_checks(&report.mesh)?;
    report.intercept.as_ref().map_or(Ok(()), intercept_ok)
}

fn run_stack(a: BenchArgs) -> Result<(), Error> {
    let report = stack::run(&a.config())?;
    println!("\n{}", report.markdown());
    write_json(a.json.as_deref(), &report)?;
    mtls_ok(report.mtls.ok)
}

fn run_intercept(a: InterceptArgs) -> Result<(), Error> {
    let report = intercept::run(&a.config())?;
    println!("\n{}", report.markdown());
    write_json(a.common.json.as_deref(), &report)?;
    intercept_ok(&report)
}

/// The interception benchmark fails when its check did not pass.
fn intercept_ok(report: &InterceptReport) -> Result<(), Error> {
    if report.check.ok {
        Ok(())
    } else {
        Err(format!(
            "the interception benchmark's paths were not shown to be what they claim: {}",
            report.check.detail.join("; ")
        ))
    }
}

fn mtls_ok(ok: bool) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err("the weft runs were not shown to go over mTLS (see the mTLS check)".into())
    }
}

fn run_soak(a: SoakArgs) -> Result<(), Error> {
    let (report, logs) = soak::run(&SoakConfig {
        rate: a.rate,
        duration: a.duration,
        connections: a.connections,
        body_size: a.body_size,
        rotate_every: a.rotate_every,
        edit_every: a.edit_every,
        endpoint_every: a.endpoint_every,
        sample_every: a.sample_every,
        warmup: a.warmup,
        max_drift_percent: a.max_drift_percent,
        weft: a.weft,
    })?;
    let written = report.write(&a.out_dir, &logs)?;
    println!(
        "\n{}",
        report.markdown(&file_name(&written.plot), &file_name(&written.json))
    );
    for path in [&written.json, &written.markdown, &written.plot] {
        println!("wrote {}", path.display());
    }
    if !report.verdict.passed {
        println!(
            "the processes' logs are in {}-logs/",
            written.json.with_extension("").display()
        );
    }
    if report.verdict.passed {
        Ok(())
    } else {
        Err(format!(
            "the soak failed: {}",
            report.verdict.reasons.join("; ")
        ))
    }
}

fn soak_plot(json: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(json)
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let part = |name: &str| v.get(name).cloned().unwrap_or_default();
    let bad = |e: serde_json::Error| format!("{} is not a soak's report: {e}", json.display());
    let svg = soak::memory_plot(
        &serde_json::from_value(part("settings")).map_err(bad)?,
        &serde_json::from_value(part("windows")).map_err(bad)?,
        &serde_json::from_value::<Vec<soak::Memory>>(part("memory")).map_err(bad)?,
    );
    let out = json.with_extension("svg");
    std::fs::write(&out, svg).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn run_load(a: LoadArgs) -> Result<(), Error> {
    let cfg = LoadConfig {
        target: a.target,
        host: a.host,
        connections: a.connections,
        rate: (!a.max).then_some(a.rate),
        warmup: a.warmup,
        duration: a.duration,
        max_requests: a.max_requests,
        http2: a.http2,
        new_connection: a.new_connection,
        request_body_size: a.request_body_size,
    };
    // One worker thread, as in the mesh benchmark: the generator shares the machine with
    // what it measures.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let window = match a.start_at_unix_ms {
        Some(ms) => {
            let start = UNIX_EPOCH + Duration::from_millis(ms);
            Window::starting_at(start, cfg.warmup, cfg.duration).ok_or_else(|| {
                format!(
                    "--start-at-unix-ms {ms} passed more than half the warm-up ago (started too \
                     late: the open loop's backlog would go out in a burst in the measured window)"
                )
            })?
        }
        None => Window::after_warmup(cfg.warmup, cfg.duration),
    };
    let r = rt.block_on(load::run(&cfg, window))?;
    println!(
        "| mode | conns | rate | req/s | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        r.mode,
        r.connections,
        r.target_rate.map_or("max".to_string(), |r| r.to_string()),
        r.requests_per_second,
        r.errors(),
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms
    );
    if let Some(e) = &r.first_error {
        println!(
            "errors: {} status, {} transport, {} unsent; first: {e}",
            r.status_errors, r.transport_errors, r.unsent
        );
    }
    write_json(a.json.as_deref(), &r)
}

fn write_json(path: Option<&Path>, value: &impl serde::Serialize) -> Result<(), Error> {
    let Some(path) = path else { return Ok(()) };
    let json = serde_json::to_string_pretty(value).map_err(|e| format!("JSON: {e}"))?;
    std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
