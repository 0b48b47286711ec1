//! The soak (`weft-bench soak`): steady open-loop load through the mesh for a long time (500
//! req/s for 30 minutes by default) while everything an operator's mesh lives through keeps
//! happening, and what it cost: failed requests, and each weft process's memory over time.
//!
//! - Load: the load generator (`load`), open loop at `rate` from the start to the end, every
//!   request counted (no warm-up is left out), through web's outbound proxy to `api`.
//! - Certificates rotate: the identity service issues leaves for `rotate_every / 0.7`, so every
//!   proxy and the control plane renew theirs about every `rotate_every` (they renew at 70 %
//!   of the lifetime, see `docs/identity.md`).
//! - Resources are edited: every `edit_every`, in turn, api's HTTPRoute (none, a 50/50 split
//!   with retries, a 90/10 split with per-attempt timeouts) and its authorization policy (three
//!   forms, each allowing web), each edit checked to show in the control plane's status
//!   (`churn::Edits`).
//! - An endpoint comes and goes: a second `api` proxy, up for half of `endpoint_every`, then
//!   stopped with SIGTERM (it drains) and down for the other half (`churn::SecondApi`).
//! - Memory: VmRSS of the identity service, the control plane and every proxy every
//!   `sample_every`; the drift of each long-lived process (`memory`).
//!
//! The soak adds no retry of its own: a request the mesh fails is a failed request, reported
//! with its time and the events just before it. `report` writes the JSON, the Markdown summary
//! and the plot, and judges the run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_identity::client::RENEW_FRACTION;
use weft_identity::config::ENV_LEAF_LIFETIME;
use weft_runtime::testing::metric_sum;

use crate::Error;
use crate::load::{self, LoadConfig, Progress, Window};
use crate::mesh::{Mesh, find_weft};
use crate::stack::{BACKENDS_FILE, backends_yaml};

mod churn;
mod memory;
mod report;

pub use churn::{Life, ROUTE_FILE, ROUTE_NAME, SECOND_API, policy_variants, route_variants};
pub use memory::{Memory, Windows, mean_in};
pub use report::{Event, Renewals, SoakReport, SoakSettings, Verdict, memory_plot};

use churn::{Edits, SecondApi};

/// Settings of `weft-bench soak`.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub rate: u64,
    pub duration: Duration,
    pub connections: usize,
    pub body_size: usize,
    /// About how often every certificate is renewed.
    pub rotate_every: Duration,
    pub edit_every: Duration,
    /// The second api instance's cycle: up for half of it, down for the other half.
    pub endpoint_every: Duration,
    pub sample_every: Duration,
    /// `None`: 10 % of the run or 2 minutes, whichever is smaller.
    pub warmup: Option<Duration>,
    /// The largest drift of a long-lived process's memory that passes.
    pub max_drift_percent: f64,
    pub weft: Option<PathBuf>,
}

/// The longest soak.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The names of the processes whose memory is followed, as reported.
pub const IDENTITY: &str = "identity service";
pub const CONTROL_PLANE: &str = "control plane";
pub const WEB: &str = "web proxy";
pub const API: &str = "api proxy";
/// At most this much of the end of each process's log is kept for the report.
const LOG_TAIL_BYTES: usize = 256 << 10;
/// How often the loop looks at what is due.
const TICK: Duration = Duration::from_millis(100);

/// The leaf lifetime that makes a client renew about every `rotate_every`: it renews at
/// [`RENEW_FRACTION`] of the lifetime; whole seconds, at least 2.
pub fn leaf_lifetime(rotate_every: Duration) -> Duration {
    let secs = (rotate_every.as_secs_f64() / RENEW_FRACTION).ceil() as u64;
    Duration::from_secs(secs.max(2))
}

fn check(cfg: &SoakConfig) -> Result<(), Error> {
    let positive = [
        ("--rate", cfg.rate as f64),
        ("--duration", cfg.duration.as_secs_f64()),
        ("--rotate-every", cfg.rotate_every.as_secs_f64()),
        ("--edit-every", cfg.edit_every.as_secs_f64()),
        ("--endpoint-every", cfg.endpoint_every.as_secs_f64()),
        ("--sample-every", cfg.sample_every.as_secs_f64()),
        ("--connections", cfg.connections as f64),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, v)| *v <= 0.0) {
        return Err(format!("{flag} must be more than 0"));
    }
    if cfg.duration > MAX_DURATION {
        return Err(format!("--duration: at most {MAX_DURATION:?}"));
    }
    if cfg.duration < cfg.sample_every * 10 {
        return Err(format!(
            "--duration {:?} holds fewer than 10 samples of --sample-every {:?}: too short to \
             see memory over time",
            cfg.duration, cfg.sample_every
        ));
    }
    if cfg.warmup.is_some_and(|w| w * 10 >= cfg.duration * 8) {
        return Err(
            "--warmup must leave room for the windows compared (under 80 % of the run)".into(),
        );
    }
    Ok(())
}

/// What happened during the soak, in seconds from its start (negative: before the load began).
#[derive(Debug)]
pub(crate) struct Log {
    t0: Instant,
    pub(crate) events: Vec<Event>,
    /// Things that went wrong besides failed requests: each fails the soak.
    pub(crate) problems: Vec<String>,
}

impl Log {
    pub(crate) fn now(&self) -> f64 {
        match Instant::now().checked_duration_since(self.t0) {
            Some(d) => d.as_secs_f64(),
            None => -self.t0.duration_since(Instant::now()).as_secs_f64(),
        }
    }

    pub(crate) fn event(&mut self, what: String) {
        let at = self.now();
        eprintln!("[{at:8.1} s] {what}");
        self.events.push(Event { at, what });
    }

    pub(crate) fn problem(&mut self, what: String) {
        self.event(format!("PROBLEM: {what}"));
        self.problems.push(what);
    }
}

/// Starts the mesh and the second api instance, runs the load for `duration` while the
/// certificates rotate, the resources change and the second instance comes and goes, and
/// reports; with the end of every process's log, by file name.
pub fn run(cfg: &SoakConfig) -> Result<(SoakReport, Vec<(String, String)>), Error> {
    check(cfg)?;
    let weft = find_weft(cfg.weft.as_deref())?;
    let leaf = leaf_lifetime(cfg.rotate_every);
    eprintln!(
        "starting the mesh ({}), leaf certificates for {} s",
        weft.display(),
        leaf.as_secs()
    );
    let mut mesh = Mesh::start(
        &weft,
        cfg.body_size,
        |port| vec![(BACKENDS_FILE, backends_yaml(port))],
        &[(ENV_LEAF_LIFETIME, format!("{}s", leaf.as_secs()))],
    )?;
    let mut log = Log {
        t0: Instant::now(),
        events: Vec::new(),
        problems: Vec::new(),
    };
    let mut second = SecondApi::new(mesh.app.port());
    second.toggle(&mesh, &mut log)?;
    while !second.settled() {
        second.poll(&mut log);
        std::thread::sleep(Duration::from_millis(50));
    }
    if !log.problems.is_empty() {
        return Err(format!(
            "the second api instance did not start: {}",
            log.problems.join("; ")
        ));
    }

    // One worker thread, as in the mesh benchmark: the generator shares the 2 cores with what
    // it loads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the load generator's runtime: {e}"))?;
    let load = LoadConfig {
        target: format!("http://{}/", mesh.web.outbound)
            .parse()
            .map_err(|e| format!("bad target {}: {e}", mesh.web.outbound))?,
        host: Some(mesh.host()),
        connections: cfg.connections,
        rate: Some(cfg.rate),
        warmup: Duration::ZERO,
        duration: cfg.duration,
        max_requests: cfg.rate.saturating_mul(cfg.duration.as_secs() + 1),
        http2: false,
        new_connection: false,
        request_body_size: 0,
    };
    let progress = Arc::new(Progress::default());
    let window = Window::after_warmup(Duration::ZERO, cfg.duration);
    log.t0 = window.start;
    let handle = {
        let progress = progress.clone();
        rt.spawn(async move { load::run_observed(&load, window, Some(progress)).await })
    };
    eprintln!(
        "soak: {} req/s for {:?} through web → api",
        cfg.rate, cfg.duration
    );
    let mut soak = Soak::new(&mesh);
    soak.run(
        cfg,
        &mut mesh,
        &mut second,
        &mut log,
        &progress,
        window.deadline,
    );
    let result = rt
        .block_on(handle)
        .map_err(|e| format!("the load generator failed: {e}"))??;
    soak.sample(&mesh, &second, &mut log, &progress);
    second.read_counts();
    let logs = logs(mesh.dir());
    let identity_renewals = mesh
        .identity_metrics()
        .map(|m| {
            metric_sum(
                &m,
                "weft_identity_certificates_issued_total",
                &["method=\"renewal\""],
            )
        })
        .ok();
    let report = SoakReport::new(
        cfg,
        leaf,
        &weft,
        result,
        progress.episodes(),
        soak,
        identity_renewals,
        second.lives.clone(),
        log,
    );
    Ok((report, logs))
}

/// The end of every process's log in `dir` (`<name>.log`) that is not empty, by file name.
fn logs(dir: &std::path::Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_string();
            if !name.ends_with(".log") {
                return None;
            }
            let bytes = std::fs::read(&path).ok().filter(|b| !b.is_empty())?;
            let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL_BYTES)..];
            Some((name, String::from_utf8_lossy(tail).into_owned()))
        })
        .collect();
    out.sort();
    out
}

/// What the soak's loop keeps.
#[derive(Debug)]
pub(crate) struct Soak {
    pub(crate) memory: Vec<Memory>,
    /// `(seconds, requests ok, requests failed)` at each sample.
    pub(crate) requests: Vec<(f64, u64, u64)>,
    /// Certificate renewals seen per proxy (web, api), from their metrics.
    pub(crate) renewals: Vec<(&'static str, f64)>,
    pub(crate) edits: Edits,
    /// The workloads registered with the control plane at the last look (`service address`).
    registered: Option<Vec<String>>,
}

impl Soak {
    fn new(mesh: &Mesh) -> Self {
        Self {
            memory: [IDENTITY, CONTROL_PLANE, WEB, API]
                .iter()
                .map(|c| Memory::new(c, true))
                .chain([Memory::new(SECOND_API, false)])
                .collect(),
            requests: Vec::new(),
            renewals: vec![(WEB, 0.0), (API, 0.0)],
            edits: Edits::new(mesh.app.port()),
            registered: None,
        }
    }

    /// Until `deadline`: samples, edits and toggles the second api instance when each is
    /// due; stops early when a process of the mesh exits.
    fn run(
        &mut self,
        cfg: &SoakConfig,
        mesh: &mut Mesh,
        second: &mut SecondApi,
        log: &mut Log,
        progress: &Progress,
        deadline: Instant,
    ) {
        let (sample, edit) = (cfg.sample_every.as_secs_f64(), cfg.edit_every.as_secs_f64());
        let half = cfg.endpoint_every.as_secs_f64() / 2.0;
        let (mut next_sample, mut next_edit, mut next_toggle) = (0.0, edit, half);
        while Instant::now() < deadline {
            let t = log.now();
            if t >= next_sample {
                self.sample(mesh, second, log, progress);
                while next_sample <= t {
                    next_sample += sample;
                }
            }
            if t >= next_edit && !self.edits.busy() {
                if let Err(e) = self.edits.start_next(mesh, log) {
                    log.problem(e);
                }
                next_edit = t + edit;
            }
            if let Err(e) = self.edits.poll(mesh, log) {
                log.problem(e);
            }
            if t >= next_toggle && second.settled() {
                if let Err(e) = second.toggle(mesh, log) {
                    log.problem(e);
                }
                next_toggle = t + half;
            }
            second.poll(log);
            self.watch_registrations(mesh, log);
            if let Some(gone) = mesh_exited(mesh) {
                log.problem(gone);
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(TICK.min(left));
        }
    }

    /// One sample: every process's memory, the requests so far, and the renewals each
    /// long-lived client made (an event when one renewed since the last sample).
    fn sample(&mut self, mesh: &Mesh, second: &SecondApi, log: &mut Log, progress: &Progress) {
        let at = log.now();
        let pids = [
            Some(mesh.identity.pid()),
            Some(mesh.policy.pid()),
            Some(mesh.web.proc.pid()),
            Some(mesh.api.proc.pid()),
            second.pid(),
        ];
        for (m, pid) in self.memory.iter_mut().zip(pids) {
            m.sample(at, pid);
        }
        let (ok, failed) = progress.counts();
        self.requests.push((at, ok, failed));
        let pages = [mesh.web.metrics(), mesh.api.metrics()];
        for ((name, seen), page) in self.renewals.iter_mut().zip(pages) {
            let Ok(page) = page else { continue };
            let now = churn::renewals(&page);
            if now > *seen {
                log.event(format!("certificate renewed: {name} ({now:.0} so far)"));
                *seen = now;
            }
        }
    }
}

impl Soak {
    /// An event whenever the workloads registered with the control plane change: an
    /// endpoint that leaves or comes back, or a registration that lapsed.
    fn watch_registrations(&mut self, mesh: &Mesh, log: &mut Log) {
        let Some(now) = mesh.policy_workloads().ok().and_then(|p| registered(&p)) else {
            return;
        };
        if let Some(before) = &self.registered {
            let gone: Vec<&String> = before.iter().filter(|w| !now.contains(w)).collect();
            let new: Vec<&String> = now.iter().filter(|w| !before.contains(w)).collect();
            for w in gone {
                log.event(format!("control plane: {w} no longer registered"));
            }
            for w in new {
                log.event(format!("control plane: {w} registered"));
            }
        }
        self.registered = Some(now);
    }
}

/// The workloads of the control plane's `/workloads` page, each as `service address`, sorted;
/// `None` when the page is not the expected JSON.
pub(crate) fn registered(page: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(page).ok()?;
    let mut out: Vec<String> = v
        .as_array()?
        .iter()
        .filter_map(|w| {
            Some(format!(
                "{} {}",
                w.get("service")?.as_str()?,
                w.get("address")?.as_str()?
            ))
        })
        .collect();
    out.sort();
    Some(out)
}

/// A message naming a process of the mesh that has exited, if one has.
fn mesh_exited(mesh: &mut Mesh) -> Option<String> {
    let mut procs = [
        (IDENTITY, &mut mesh.identity),
        (CONTROL_PLANE, &mut mesh.policy),
        (WEB, &mut mesh.web.proc),
        (API, &mut mesh.api.proc),
    ];
    procs.iter_mut().find_map(|(name, p)| {
        p.exited()
            .map(|status| format!("the {name} exited ({status}); its log:\n{}", p.log_tail(20)))
    })
}

#[cfg(test)]
mod tests;
