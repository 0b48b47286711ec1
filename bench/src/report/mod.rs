//! What the benchmarks report. This file holds the data model the mesh, stack and
//! interception reports share: the scenarios and the proxies' names, the raw runs, the
//! settings, medians with their min–max spread over the repeats, each scenario's summary, the
//! added latency and the ratios of one path against another (each paired repeat by repeat and
//! rate by rate), each proxy's CPU time per 1,000 requests, the mTLS check. Printed as
//! Markdown tables, written as JSON.
//!
//! - `mesh`: what the mesh benchmark reports (direct, weft and the HAProxy pair), and its
//!   Markdown.
//! - `stack`: what the stack benchmark reports (the full outbound stack against the minimal
//!   one), and its Markdown.
//! - `targets`: the goals of docs/benchmarks.md, judged.
//! - `markdown`: the Markdown helpers the reports share, `intercept/report.rs` too (numbers,
//!   tables, the latency table, the checks).
//! - `tests` (with `mesh/tests.rs`, `stack/tests.rs`, `targets/tests.rs`): the tests, and the
//!   runs, settings and reports other tests build on.

use crate::load::RunResult;

pub(crate) mod markdown;
mod mesh;
mod stack;
mod targets;

pub use markdown::thousands;
pub use mesh::{IdleConnectionsRss, MeshReport, PeerCheck, ProxyFootprint, ProxySummary};
pub use stack::{RouteSwitch, StackPath, StackReport, cpu_ratio, route_summary};
pub use targets::{
    TARGET_ADDED_P99_MS, TARGET_ADDED_P999_MS, TARGET_CPU_PER_1000, TARGET_FULL_STACK_CPU_RATIO,
    TARGET_IDLE_RSS_MIB, TARGET_PEAK_RSS_MIB, TARGET_THROUGHPUT_RATIO, TargetCheck,
    full_stack_cpu_target, mesh_targets, peer_targets,
};

/// The paths compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// load generator → app.
    Direct,
    /// load generator → weft outbound → mTLS → weft inbound → app (`weft-bench mesh`).
    Weft,
    /// load generator → HAProxy `web` → mTLS → HAProxy `api` → app (`weft-bench mesh`): the
    /// peer, the same hop with the same certificates.
    Peer,
    /// The weft path with no HTTPRoute for api: the minimal outbound stack (`weft-bench stack`).
    Minimal,
    /// The weft path with an HTTPRoute configuring every layer (`weft-bench stack`).
    Full,
}

impl Scenario {
    /// The scenario's name in the Markdown tables.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Weft => "weft",
            Scenario::Peer => "HAProxy pair",
            Scenario::Minimal => "minimal stack",
            Scenario::Full => "full stack",
        }
    }
}

/// The proxies, as the reports name them.
pub const WEB_PROXY: &str = "web (outbound)";
pub const API_PROXY: &str = "api (inbound)";
pub const HAPROXY_WEB: &str = "haproxy web";
pub const HAPROXY_API: &str = "haproxy api";

/// Which runs a summary takes: open loop at whatever rate (the stack benchmark has one),
/// open loop at one rate, closed loop, or open loop with a new connection per request; the
/// first three over keep-alive connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    At(u64),
    Max,
    NewConnection,
}

impl Mode {
    pub fn matches(self, r: &RunResult) -> bool {
        match self {
            Mode::Open => r.target_rate.is_some() && !r.new_connection,
            Mode::At(rate) => r.target_rate == Some(rate) && !r.new_connection,
            Mode::Max => r.target_rate.is_none(),
            Mode::NewConnection => r.new_connection,
        }
    }
}

/// CPU time one proxy spent over a run's measured window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyCpu {
    pub proxy: String,
    pub cpu_seconds: f64,
    pub cpu_seconds_per_1000_requests: f64,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub repeat: usize,
    pub scenario: Scenario,
    pub load: RunResult,
    /// The proxies on the run's path; empty for the direct scenario.
    pub proxies: Vec<ProxyCpu>,
}

impl Run {
    /// The line printed on stderr as the run ends, `run i/n <scenario> <mode> <rate> req/s
    /// p50 p99 p99.9 errors`, with the scenario and mode columns `widths` wide (each
    /// benchmark fits its own labels).
    pub(crate) fn progress_line(&self, repeats: usize, widths: (usize, usize)) -> String {
        let r = &self.load;
        let mode = if r.new_connection {
            "new-connection"
        } else {
            r.mode.as_str()
        };
        format!(
            "run {}/{} {:<sw$} {:<mw$} {:>6} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  errors {}",
            self.repeat + 1,
            repeats,
            self.scenario.label(),
            mode,
            r.target_rate.map_or("max".to_string(), |r| r.to_string()),
            r.requests_per_second,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors(),
            sw = widths.0,
            mw = widths.1,
        )
    }
}

/// Evidence that the weft path was mTLS: read from the `api` proxy's metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MtlsCheck {
    /// `weft_proxy_tls_handshakes_total{direction="inbound"}` from `web`'s identity.
    pub inbound_handshakes: f64,
    /// Growth of `weft_proxy_requests_total{direction="inbound",tls="true"}` over the runs.
    pub inbound_mtls_requests: f64,
    /// 2xx answers the load generator counted in the weft runs' windows (warm-up excluded).
    pub weft_requests_measured: u64,
    pub ok: bool,
}

/// The settings the runs were made with, as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    /// The headline rate: the targets are judged at it (stack: the one rate).
    pub rate: u64,
    /// Every fixed rate measured, in increasing order (stack: the one rate).
    pub rates: Vec<u64>,
    /// `--quick`: one short repeat, fewer rates: checks the harness, not numbers to quote.
    pub quick: bool,
    pub connections: usize,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub repeat: usize,
    pub body_size: usize,
    /// Bytes in each request body (0: `GET`s).
    pub request_body_size: usize,
    pub http2: bool,
    pub cores: usize,
    pub clock_ticks: u64,
    pub weft: String,
    /// `haproxy -v`'s first line; `None` without the peer scenario.
    pub haproxy: Option<String>,
    /// The rate of the new-connection-per-request runs; `None`: not measured.
    pub setup_rate: Option<u64>,
    /// Idle keep-alive client connections held open to each front proxy while its memory is
    /// read; 0: not measured.
    pub idle_connections: usize,
}

impl Settings {
    /// `GET`s with 64-byte response bodies, or `POST`s with request bodies too.
    pub fn bodies(&self) -> String {
        match self.request_body_size {
            0 => format!("GETs, {}-byte response bodies", self.body_size),
            n => format!(
                "POSTs with {n}-byte request bodies, {}-byte response bodies",
                self.body_size
            ),
        }
    }

    /// The load of each measurement, as the reports' first lines say it: `32 connections,
    /// GETs, 64-byte response bodies, 3 repeat(s) of 2s warm-up + 10s per run` (`per`: what
    /// one measurement is, a run or a path).
    pub fn load(&self, per: &str) -> String {
        format!(
            "{} connections, {}, {} repeat(s) of {}s warm-up + {}s per {per}",
            self.connections,
            self.bodies(),
            self.repeat,
            self.warmup_seconds,
            self.duration_seconds
        )
    }

    /// The fixed rates, with thousands separators: `500, 1,000`.
    pub fn rates_shown(&self) -> String {
        let rates: Vec<String> = self.rates.iter().map(|&r| thousands(r as f64)).collect();
        rates.join(", ")
    }
}

/// The median and the range of one measurement over the repeats.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `0.21 (0.18–0.25)`, or just the value when all runs agree or there was one run;
    /// `n/a` when nothing was measured.
    pub fn show(&self, decimals: usize, sign: bool) -> String {
        if self.median.is_nan() {
            return "n/a".into();
        }
        let f = |x: f64| {
            if sign {
                format!("{x:+.decimals$}")
            } else {
                format!("{x:.decimals$}")
            }
        };
        if f(self.min) == f(self.max) {
            f(self.median)
        } else {
            format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
        }
    }

    /// Requests per second: `23,266 (22,590–24,285)`.
    pub fn show_thousands(&self) -> String {
        if thousands(self.min) == thousands(self.max) {
            thousands(self.median)
        } else {
            format!(
                "{} ({}–{})",
                thousands(self.median),
                thousands(self.min),
                thousands(self.max)
            )
        }
    }
}

/// One scenario's latency at one fixed rate, over the repeats.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub rate: u64,
    pub p50_ms: Spread,
    pub p90_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub max_ms: Spread,
    /// The rate achieved (the fixed rate, unless the path fell behind).
    pub requests_per_second: Spread,
    /// 2xx answers in the measured windows, all repeats.
    pub requests: u64,
    /// Non-2xx, transport errors and unsent requests, all repeats.
    pub errors: u64,
}

/// One scenario's closed-loop runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub requests_per_second: Spread,
    pub requests: u64,
    pub errors: u64,
}

/// One scenario: its latency at each fixed rate and its maximum rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioSummary {
    pub scenario: Scenario,
    pub at_rates: Vec<Latency>,
    pub max: Throughput,
    /// A new connection per request (at `Settings::setup_rate`), if measured.
    pub new_connection: Option<Latency>,
    /// Over all the scenario's runs.
    pub errors: u64,
}

impl ScenarioSummary {
    pub(crate) fn of(
        runs: &[Run],
        scenario: Scenario,
        rates: &[u64],
        setup_rate: Option<u64>,
    ) -> Self {
        let select = |mode: Mode| -> Vec<&RunResult> {
            runs.iter()
                .filter(|r| r.scenario == scenario && mode.matches(&r.load))
                .map(|r| &r.load)
                .collect()
        };
        let spread = |f: fn(&RunResult) -> f64, loads: &[&RunResult]| {
            Spread::of(&loads.iter().map(|l| f(l)).collect::<Vec<_>>())
        };
        let latency = |rate: u64, mode: Mode| {
            let loads = select(mode);
            Latency {
                rate,
                p50_ms: spread(|l| l.p50_ms, &loads),
                p90_ms: spread(|l| l.p90_ms, &loads),
                p99_ms: spread(|l| l.p99_ms, &loads),
                p999_ms: spread(|l| l.p999_ms, &loads),
                max_ms: spread(|l| l.max_ms, &loads),
                requests_per_second: spread(|l| l.requests_per_second, &loads),
                requests: loads.iter().map(|l| l.requests).sum(),
                errors: loads.iter().map(|l| l.errors()).sum(),
            }
        };
        let at_rates: Vec<Latency> = rates
            .iter()
            .map(|&rate| latency(rate, Mode::At(rate)))
            .collect();
        let new_connection = setup_rate.map(|rate| latency(rate, Mode::NewConnection));
        let closed = select(Mode::Max);
        let max = Throughput {
            requests_per_second: spread(|l| l.requests_per_second, &closed),
            requests: closed.iter().map(|l| l.requests).sum(),
            errors: closed.iter().map(|l| l.errors()).sum(),
        };
        let errors = runs
            .iter()
            .filter(|r| r.scenario == scenario)
            .map(|r| r.load.errors())
            .sum();
        Self {
            scenario,
            at_rates,
            max,
            new_connection,
            errors,
        }
    }

    pub(crate) fn at(&self, rate: u64) -> Option<&Latency> {
        self.at_rates.iter().find(|l| l.rate == rate)
    }
}

/// One path's latency minus another's, repeat by repeat (the two ran next to each other).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
}

/// weft against direct and against the HAProxy pair at one fixed rate, repeat by repeat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub rate: u64,
    /// weft minus direct.
    pub weft_added: Added,
    /// The HAProxy pair minus direct; `None` without the peer scenario.
    pub peer_added: Option<Added>,
    pub p99_weft_over_direct: Spread,
    pub p99_weft_over_peer: Option<Spread>,
}

/// Maximum rates over each other, repeat by repeat.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThroughputRatios {
    pub weft_over_direct: Spread,
    pub weft_over_peer: Option<Spread>,
    pub peer_over_direct: Option<Spread>,
}

/// A value at one fixed rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AtRate {
    pub rate: u64,
    pub value: Spread,
}

/// `f(a, b)` of each run of `a` in `mode` and the run of `b` in the same repeat and mode
/// (they ran next to each other): `a / b` of `f`, or `None` when `b`'s is not positive.
fn ratio(runs: &[Run], a: Scenario, b: Scenario, mode: Mode, f: fn(&RunResult) -> f64) -> Spread {
    paired(runs, a, b, mode, |x, y| {
        let d = f(&y.load);
        (d > 0.0).then(|| f(&x.load) / d)
    })
}

impl Comparison {
    /// weft against direct and (`peer`) against the HAProxy pair at `rate`.
    pub fn of(runs: &[Run], rate: u64, peer: bool) -> Self {
        Self::in_mode(runs, rate, Mode::At(rate), peer)
    }

    /// The same for the runs of `mode`, made at `rate`.
    pub fn in_mode(runs: &[Run], rate: u64, mode: Mode, peer: bool) -> Self {
        use Scenario::{Direct, Peer, Weft};
        let p99 = |l: &RunResult| l.p99_ms;
        Self {
            rate,
            weft_added: Added::of(runs, Weft, Direct, mode),
            peer_added: peer.then(|| Added::of(runs, Peer, Direct, mode)),
            p99_weft_over_direct: ratio(runs, Weft, Direct, mode, p99),
            p99_weft_over_peer: peer.then(|| ratio(runs, Weft, Peer, mode, p99)),
        }
    }
}

impl ThroughputRatios {
    pub fn of(runs: &[Run], peer: bool) -> Self {
        use Scenario::{Direct, Peer, Weft};
        let rps = |l: &RunResult| l.requests_per_second;
        Self {
            weft_over_direct: ratio(runs, Weft, Direct, Mode::Max, rps),
            weft_over_peer: peer.then(|| ratio(runs, Weft, Peer, Mode::Max, rps)),
            peer_over_direct: peer.then(|| ratio(runs, Peer, Direct, Mode::Max, rps)),
        }
    }
}

/// `f(a, b)` for each run of scenario `a` in `mode`, and the run of `b` in the same repeat
/// and mode (the two ran next to each other): its spread over the repeats.
fn paired(
    runs: &[Run],
    a: Scenario,
    b: Scenario,
    mode: Mode,
    f: impl Fn(&Run, &Run) -> Option<f64>,
) -> Spread {
    let pick = |s: Scenario| {
        runs.iter()
            .filter(move |r| r.scenario == s && mode.matches(&r.load))
    };
    let values: Vec<f64> = pick(a)
        .filter_map(|ra| {
            let rb = pick(b)
                .find(|rb| rb.repeat == ra.repeat && rb.load.target_rate == ra.load.target_rate)?;
            f(ra, rb)
        })
        .collect();
    Spread::of(&values)
}

impl Added {
    /// Scenario `a`'s latency minus `b`'s in `mode` (open loop), repeat by repeat.
    pub fn of(runs: &[Run], a: Scenario, b: Scenario, mode: Mode) -> Self {
        let minus = |f: fn(&RunResult) -> f64| {
            paired(runs, a, b, mode, |x, y| Some(f(&x.load) - f(&y.load)))
        };
        Self {
            p50_ms: minus(|l| l.p50_ms),
            p99_ms: minus(|l| l.p99_ms),
            p999_ms: minus(|l| l.p999_ms),
        }
    }
}

/// CPU-seconds per 1,000 requests of `proxy` in a run, if it was on the run's path.
fn cpu_per_1000(run: &Run, proxy: &str) -> Option<f64> {
    run.proxies
        .iter()
        .find(|p| p.proxy == proxy)
        .map(|p| p.cpu_seconds_per_1000_requests)
}

/// The spread of `proxy`'s CPU-seconds per 1,000 requests over the runs of `scenario` in
/// `mode`.
pub(crate) fn cpu_spread(runs: &[Run], scenario: Scenario, mode: Mode, proxy: &str) -> Spread {
    let values: Vec<f64> = runs
        .iter()
        .filter(|r| r.scenario == scenario && mode.matches(&r.load))
        .filter_map(|r| cpu_per_1000(r, proxy))
        .collect();
    Spread::of(&values)
}

/// The spread of `proxy`'s CPU-seconds per 1,000 requests over the runs of `scenario` at each
/// of `rates`, open loop.
pub(crate) fn cpu_at_rates(
    runs: &[Run],
    scenario: Scenario,
    rates: &[u64],
    proxy: &str,
) -> Vec<AtRate> {
    rates
        .iter()
        .map(|&rate| AtRate {
            rate,
            value: cpu_spread(runs, scenario, Mode::At(rate), proxy),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
