//! What the mesh and stack benchmarks report: the raw runs, medians with their min–max spread
//! over the repeats, the added latency and the ratios of weft against the direct path and
//! against the HAProxy pair (each paired repeat by repeat and rate by rate), each proxy's CPU
//! time per 1,000 requests and memory, the full outbound stack's CPU against the minimal
//! one's, the targets, and the mTLS checks. Printed as Markdown tables, written as JSON.

use std::fmt::Write as _;

use crate::load::RunResult;
use crate::procstat::Memory;

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

/// One proxy at rest before the runs, and its memory after them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyFootprint {
    pub proxy: String,
    /// The scenario whose path the proxy is on.
    pub scenario: Scenario,
    /// CPU used while no request flows, in percent of one core.
    pub idle_cpu_percent: f64,
    /// `VmRSS` before the first run.
    pub rss_before_kib: u64,
    /// After the last run.
    #[serde(flatten)]
    pub memory: Memory,
    /// `VmRSS` just before the idle client connections open and while they are open (after
    /// the runs); `None` when not measured.
    pub idle_connections: Option<IdleConnectionsRss>,
}

/// A proxy's `VmRSS` before and with the idle client connections.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct IdleConnectionsRss {
    pub before_kib: u64,
    pub with_kib: u64,
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

/// Evidence that the HAProxy pair's hop is mTLS over TLS 1.3 only: probes of the api
/// HAProxy's TLS port before the runs, and its frontend's counters after them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerCheck {
    /// A plain-text `GET /` to the TLS port got no 200.
    pub plaintext_refused: bool,
    /// A TLS 1.3 `GET /` without a client certificate got no 200.
    pub without_client_cert_refused: bool,
    /// A TLS 1.2 handshake (with web's certificate) failed.
    pub tls12_refused: bool,
    /// A TLS 1.3 `GET /` with web's certificate got a 200, from a server proving api's
    /// SPIFFE ID with a chain to the mesh's trust bundle.
    pub mtls_200: bool,
    /// The protocol the mTLS probe negotiated (`TLSv1_3`).
    pub mtls_version: String,
    /// A `GET /` through the web HAProxy (plain HTTP in, mTLS out) got a 200.
    pub through_web_200: bool,
    /// Growth of the api HAProxy's TLS frontend's 2xx count over the runs.
    pub api_frontend_2xx: f64,
    /// 2xx answers the load generator counted in the peer runs' windows.
    pub peer_requests_measured: u64,
    /// What failed, if anything.
    pub detail: Vec<String>,
    pub ok: bool,
}

impl PeerCheck {
    /// Sets `ok` from the probes and counters, and says what failed.
    pub fn conclude(mut self) -> Self {
        let mut detail = self.probe_failures();
        if !(self.peer_requests_measured > 0
            && self.api_frontend_2xx >= self.peer_requests_measured as f64)
        {
            detail.push(
                "the api HAProxy's TLS frontend counted fewer 2xx than the load generator \
                 measured"
                    .to_string(),
            );
        }
        self.ok = detail.is_empty();
        self.detail = detail;
        self
    }

    /// What the probes before the runs found wrong, if anything.
    pub fn probe_failures(&self) -> Vec<String> {
        [
            (
                self.plaintext_refused,
                "a plain-text request to the TLS port got a 200",
            ),
            (
                self.without_client_cert_refused,
                "a TLS request without a client certificate got a 200",
            ),
            (self.tls12_refused, "a TLS 1.2 handshake was accepted"),
            (
                self.mtls_200 && self.mtls_version == "TLSv1_3",
                "a TLS 1.3 request with web's certificate did not get a 200",
            ),
            (
                self.through_web_200,
                "a request through the web HAProxy did not get a 200",
            ),
        ]
        .into_iter()
        .filter(|(passed, _)| !passed)
        .map(|(_, what)| what.to_string())
        .collect()
    }
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxySummary {
    pub proxy: String,
    pub scenario: Scenario,
    pub idle_cpu_percent: f64,
    /// `VmRSS` at rest, before the first run.
    pub idle_rss_mib: f64,
    /// CPU-seconds per 1,000 requests at each fixed rate.
    pub cpu_seconds_per_1000: Vec<AtRate>,
    pub cpu_seconds_per_1000_at_max: Spread,
    /// With a new connection per request, if measured.
    pub cpu_seconds_per_1000_new_connection: Option<Spread>,
    /// `VmHWM` after the last run: the peak over the whole benchmark.
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
    pub rss_anon_mib: f64,
    /// `VmRSS` just before the idle client connections opened, if measured.
    pub rss_before_idle_connections_mib: Option<f64>,
    /// `VmRSS` with the idle client connections open, if measured.
    pub rss_idle_connections_mib: Option<f64>,
}

impl ProxySummary {
    fn cpu_at(&self, rate: u64) -> Spread {
        self.cpu_seconds_per_1000
            .iter()
            .find(|c| c.rate == rate)
            .map_or(Spread::of(&[]), |c| c.value)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetCheck {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// Everything the mesh benchmark reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshReport {
    pub bench: &'static str,
    pub settings: Settings,
    /// direct, weft and (unless `--no-peer`) the HAProxy pair.
    pub scenarios: Vec<ScenarioSummary>,
    /// At each fixed rate.
    pub comparisons: Vec<Comparison>,
    pub throughput: ThroughputRatios,
    /// With a new connection per request (at `settings.setup_rate`), if measured.
    pub new_connection: Option<Comparison>,
    pub proxies: Vec<ProxySummary>,
    /// Judged at the headline rate (`settings.rate`).
    pub targets: Vec<TargetCheck>,
    pub mtls: MtlsCheck,
    /// `None` without the peer scenario.
    pub peer_check: Option<PeerCheck>,
    pub runs: Vec<Run>,
}

/// The goals of docs/benchmarks.md (issue 7), at the headline rate.
pub const TARGET_ADDED_P99_MS: f64 = 0.35;
pub const TARGET_ADDED_P999_MS: f64 = 1.1;
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.26;
pub const TARGET_CPU_PER_1000: f64 = 0.09;
pub const TARGET_PEAK_RSS_MIB: f64 = 12.0;
pub const TARGET_IDLE_RSS_MIB: f64 = 5.0;

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

impl MeshReport {
    pub fn new(
        settings: Settings,
        runs: Vec<Run>,
        footprints: Vec<ProxyFootprint>,
        mtls: MtlsCheck,
        peer_check: Option<PeerCheck>,
    ) -> Self {
        let peer = runs.iter().any(|r| r.scenario == Scenario::Peer);
        let mut present = vec![Scenario::Direct, Scenario::Weft];
        if peer {
            present.push(Scenario::Peer);
        }
        let scenarios = present
            .iter()
            .map(|&s| ScenarioSummary::of(&runs, s, &settings.rates, settings.setup_rate))
            .collect();
        let comparisons: Vec<Comparison> = settings
            .rates
            .iter()
            .map(|&rate| Comparison::of(&runs, rate, peer))
            .collect();
        let throughput = ThroughputRatios::of(&runs, peer);
        let new_connection = settings
            .setup_rate
            .map(|rate| Comparison::in_mode(&runs, rate, Mode::NewConnection, peer));
        let mib = |kib: u64| kib as f64 / 1024.0;
        let proxies: Vec<ProxySummary> = footprints
            .iter()
            .map(|m| ProxySummary {
                proxy: m.proxy.clone(),
                scenario: m.scenario,
                idle_cpu_percent: m.idle_cpu_percent,
                idle_rss_mib: mib(m.rss_before_kib),
                cpu_seconds_per_1000: cpu_at_rates(&runs, m.scenario, &settings.rates, &m.proxy),
                cpu_seconds_per_1000_at_max: cpu_spread(&runs, m.scenario, Mode::Max, &m.proxy),
                cpu_seconds_per_1000_new_connection: settings
                    .setup_rate
                    .map(|_| cpu_spread(&runs, m.scenario, Mode::NewConnection, &m.proxy)),
                peak_rss_mib: mib(m.memory.peak_rss_kib),
                rss_mib: mib(m.memory.rss_kib),
                rss_anon_mib: mib(m.memory.rss_anon_kib),
                rss_before_idle_connections_mib: m.idle_connections.map(|i| mib(i.before_kib)),
                rss_idle_connections_mib: m.idle_connections.map(|i| mib(i.with_kib)),
            })
            .collect();
        let targets = mesh_targets(settings.rate, &comparisons, &throughput, &proxies);
        Self {
            bench: "mesh",
            settings,
            scenarios,
            comparisons,
            throughput,
            new_connection,
            proxies,
            targets,
            mtls,
            peer_check,
            runs,
        }
    }

    fn scenario(&self, s: Scenario) -> Option<&ScenarioSummary> {
        self.scenarios.iter().find(|x| x.scenario == s)
    }

    /// The report as Markdown: latency at each rate and throughput, then the proxies, then
    /// the targets and the checks.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let peer = self.scenario(Scenario::Peer);
        let mut out = String::new();
        let rates: Vec<String> = s.rates.iter().map(|&r| thousands(r as f64)).collect();
        let _ = writeln!(
            out,
            "weft mesh benchmark{}: open loop at {} req/s (targets at {}) and closed loop, {} \
             connections, {}, {} repeat(s) of {}s warm-up + {}s per run, \
             scenarios alternating within each repeat, {} cores{}; median (min–max) over the \
             repeats, differences and ratios paired repeat by repeat\n",
            if s.quick {
                " (QUICK: a harness check, not numbers to quote)"
            } else {
                ""
            },
            rates.join(", "),
            thousands(s.rate as f64),
            s.connections,
            s.bodies(),
            s.repeat,
            s.warmup_seconds,
            s.duration_seconds,
            s.cores,
            s.haproxy
                .as_deref()
                .map_or(String::new(), |v| format!("; peer: {v}"))
        );

        let mut header = vec!["req/s", "latency ms", "direct", "weft"];
        if peer.is_some() {
            header.push("HAProxy pair");
        }
        header.extend(["weft − direct", "weft / direct"]);
        if peer.is_some() {
            header.extend(["HAProxy − direct", "weft / HAProxy"]);
        }
        table_header(&mut out, &header);
        let columns = header.len();
        let show = |s: Option<&ScenarioSummary>, rate: u64, f: fn(&Latency) -> Spread| {
            s.and_then(|s| s.at(rate))
                .map_or("n/a".into(), |l| f(l).show(3, false))
        };
        let (direct, weft) = (
            self.scenario(Scenario::Direct),
            self.scenario(Scenario::Weft),
        );
        for c in &self.comparisons {
            type Pick = fn(&Latency) -> Spread;
            type PickAdded = fn(&Added) -> Spread;
            let rows: [(&str, Pick, Option<PickAdded>); 5] = [
                ("p50", |l| l.p50_ms, Some(|a| a.p50_ms)),
                ("p90", |l| l.p90_ms, None),
                ("p99", |l| l.p99_ms, Some(|a| a.p99_ms)),
                ("p99.9", |l| l.p999_ms, Some(|a| a.p999_ms)),
                ("max", |l| l.max_ms, None),
            ];
            for (name, pick, added) in rows {
                let is_p99 = name == "p99";
                let mut row = vec![
                    thousands(c.rate as f64),
                    name.to_string(),
                    show(direct, c.rate, pick),
                    show(weft, c.rate, pick),
                ];
                if peer.is_some() {
                    row.push(show(peer, c.rate, pick));
                }
                row.push(added.map_or(String::new(), |a| a(&c.weft_added).show(3, true)));
                row.push(if is_p99 {
                    format!("×{}", c.p99_weft_over_direct.show(2, false))
                } else {
                    String::new()
                });
                if peer.is_some() {
                    row.push(match (added, &c.peer_added) {
                        (Some(a), Some(p)) => a(p).show(3, true),
                        _ => String::new(),
                    });
                    row.push(match (&c.p99_weft_over_peer, is_p99) {
                        (Some(r), true) => format!("×{}", r.show(2, false)),
                        _ => String::new(),
                    });
                }
                table_row(&mut out, &row);
            }
        }
        let t = &self.throughput;
        let rps = |s: Option<&ScenarioSummary>| {
            s.map_or("n/a".into(), |s| s.max.requests_per_second.show_thousands())
        };
        let mut row = vec![
            "max".to_string(),
            "throughput, req/s".to_string(),
            rps(direct),
            rps(weft),
        ];
        if peer.is_some() {
            row.push(rps(peer));
        }
        row.push(String::new());
        row.push(format!("×{}", t.weft_over_direct.show(2, false)));
        if peer.is_some() {
            row.push(t.peer_over_direct.map_or(String::new(), |r| {
                format!("×{} of direct", r.show(2, false))
            }));
            row.push(
                t.weft_over_peer
                    .map_or(String::new(), |r| format!("×{}", r.show(2, false))),
            );
        }
        table_row(&mut out, &row);
        let errors = |s: Option<&ScenarioSummary>| s.map_or("n/a".into(), |s| s.errors.to_string());
        let mut row = vec![
            "all".to_string(),
            "errors".to_string(),
            errors(direct),
            errors(weft),
        ];
        if peer.is_some() {
            row.push(errors(peer));
        }
        row.resize(columns, String::new());
        table_row(&mut out, &row);
        out.push('\n');

        let mut header: Vec<String> = vec!["proxy".into()];
        for r in &rates {
            header.push(format!("CPU-s per 1,000 req at {r} req/s"));
        }
        header.push("at max".into());
        for h in [
            "idle CPU %",
            "idle RSS MiB",
            "peak RSS MiB",
            "RSS at end MiB (anonymous)",
        ] {
            header.push(h.into());
        }
        table_header(
            &mut out,
            &header.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        for p in &self.proxies {
            let mut row = vec![p.proxy.clone()];
            for c in &p.cpu_seconds_per_1000 {
                row.push(c.value.show(3, false));
            }
            row.push(p.cpu_seconds_per_1000_at_max.show(3, false));
            row.push(format!("{:.1}", p.idle_cpu_percent));
            row.push(format!("{:.1}", p.idle_rss_mib));
            row.push(format!("{:.1}", p.peak_rss_mib));
            row.push(format!("{:.1} ({:.1})", p.rss_mib, p.rss_anon_mib));
            table_row(&mut out, &row);
        }
        out.push('\n');
        self.write_new_connection(&mut out);
        self.write_idle_connections(&mut out);
        write_targets(&mut out, &self.targets);
        if let Some(p) = &self.peer_check {
            let _ = writeln!(out, "\n{}", peer_check_line(p));
        }
        write_checks(&mut out, &self.mtls, &self.runs);
        out
    }
}

impl MeshReport {
    /// The connection-setup table: latency with a new connection per request, and the
    /// proxies' CPU for it.
    fn write_new_connection(&self, out: &mut String) {
        let (Some(rate), Some(c)) = (self.settings.setup_rate, &self.new_connection) else {
            return;
        };
        let peer = self.scenario(Scenario::Peer);
        let _ = writeln!(
            out,
            "Connection setup: a new client connection for every request (`connection: close`), \
             open loop at {} req/s; the proxies keep their connections to each other\n",
            thousands(rate as f64)
        );
        let mut header = vec!["latency ms", "direct", "weft"];
        if peer.is_some() {
            header.push("HAProxy pair");
        }
        header.push("weft − direct");
        if peer.is_some() {
            header.extend(["HAProxy − direct", "weft / HAProxy"]);
        }
        table_header(out, &header);
        let show = |s: Scenario, f: fn(&Latency) -> Spread| {
            self.scenario(s)
                .and_then(|s| s.new_connection.as_ref())
                .map_or("n/a".into(), |l| f(l).show(3, false))
        };
        type Pick = fn(&Latency) -> Spread;
        type PickAdded = fn(&Added) -> Spread;
        let rows: [(&str, Pick, PickAdded); 3] = [
            ("p50", |l| l.p50_ms, |a| a.p50_ms),
            ("p99", |l| l.p99_ms, |a| a.p99_ms),
            ("p99.9", |l| l.p999_ms, |a| a.p999_ms),
        ];
        for (name, pick, added) in rows {
            let mut row = vec![
                name.to_string(),
                show(Scenario::Direct, pick),
                show(Scenario::Weft, pick),
            ];
            if peer.is_some() {
                row.push(show(Scenario::Peer, pick));
            }
            row.push(added(&c.weft_added).show(3, true));
            if peer.is_some() {
                row.push(
                    c.peer_added
                        .as_ref()
                        .map_or(String::new(), |p| added(p).show(3, true)),
                );
                row.push(match (&c.p99_weft_over_peer, name) {
                    (Some(r), "p99") => format!("×{}", r.show(2, false)),
                    _ => String::new(),
                });
            }
            table_row(out, &row);
        }
        let cpu: Vec<String> = self
            .proxies
            .iter()
            .filter_map(|p| {
                let c = p.cpu_seconds_per_1000_new_connection?;
                Some(format!("{} {}", p.proxy, c.show(3, false)))
            })
            .collect();
        let _ = writeln!(
            out,
            "\nCPU-s per 1,000 requests with a new connection each: {}\n",
            cpu.join(", ")
        );
    }

    /// The proxies' memory with many idle client connections open.
    fn write_idle_connections(&self, out: &mut String) {
        let n = self.settings.idle_connections;
        if n == 0 {
            return;
        }
        let _ = writeln!(
            out,
            "Idle client connections: {} keep-alive connections to each front proxy (weft's \
             web, the web HAProxy), each idle after one answered request\n",
            thousands(n as f64)
        );
        table_header(
            out,
            &[
                "proxy",
                "RSS at rest before the runs MiB",
                "RSS just before MiB",
                "RSS with the connections MiB",
                "KiB per connection",
            ],
        );
        for p in &self.proxies {
            let (Some(before), Some(with)) = (
                p.rss_before_idle_connections_mib,
                p.rss_idle_connections_mib,
            ) else {
                continue;
            };
            table_row(
                out,
                &[
                    p.proxy.clone(),
                    format!("{:.1}", p.idle_rss_mib),
                    format!("{before:.1}"),
                    format!("{with:.1}"),
                    format!("{:.1}", (with - before) * 1024.0 / n as f64),
                ],
            );
        }
        out.push('\n');
    }
}

/// The targets of the mesh benchmark, judged at the headline `rate`.
pub fn mesh_targets(
    rate: u64,
    comparisons: &[Comparison],
    throughput: &ThroughputRatios,
    proxies: &[ProxySummary],
) -> Vec<TargetCheck> {
    let r = thousands(rate as f64);
    let headline = comparisons.iter().find(|c| c.rate == rate);
    let added = |f: fn(&Added) -> Spread| headline.map_or(f64::NAN, |c| f(&c.weft_added).median);
    let (p99, p999) = (added(|a| a.p99_ms), added(|a| a.p999_ms));
    let ratio = throughput.weft_over_direct.median;
    // NaN (nothing measured) is never met.
    let mut targets = vec![
        TargetCheck {
            what: format!("p99 added at {r} req/s"),
            goal: format!("< {TARGET_ADDED_P99_MS} ms"),
            measured: format!("{p99:.3} ms"),
            met: p99 < TARGET_ADDED_P99_MS,
        },
        TargetCheck {
            what: format!("p99.9 added at {r} req/s"),
            goal: format!("< {TARGET_ADDED_P999_MS} ms"),
            measured: format!("{p999:.3} ms"),
            met: p999 < TARGET_ADDED_P999_MS,
        },
        TargetCheck {
            what: "max throughput, weft / direct".into(),
            goal: format!(">= {TARGET_THROUGHPUT_RATIO}x"),
            measured: format!("{ratio:.2}x"),
            met: ratio >= TARGET_THROUGHPUT_RATIO,
        },
    ];
    if let Some(over_peer) = &throughput.weft_over_peer {
        targets.push(TargetCheck {
            what: "max throughput, weft / HAProxy pair".into(),
            goal: "> 1x".into(),
            measured: format!("{:.2}x", over_peer.median),
            met: over_peer.median > 1.0,
        });
    }
    let weft_proxies = proxies.iter().filter(|p| p.scenario == Scenario::Weft);
    for p in weft_proxies.clone() {
        let cpu = p.cpu_at(rate).median;
        targets.push(TargetCheck {
            what: format!("CPU per 1,000 requests, {} at {r} req/s", p.proxy),
            goal: format!("< {TARGET_CPU_PER_1000} CPU-s"),
            measured: format!("{cpu:.3} CPU-s"),
            met: cpu < TARGET_CPU_PER_1000,
        });
    }
    for p in weft_proxies.clone() {
        targets.push(TargetCheck {
            what: format!("peak RSS, {}", p.proxy),
            goal: format!("< {TARGET_PEAK_RSS_MIB} MiB"),
            measured: format!("{:.1} MiB", p.peak_rss_mib),
            met: p.peak_rss_mib < TARGET_PEAK_RSS_MIB,
        });
    }
    for p in weft_proxies {
        targets.push(TargetCheck {
            what: format!("idle RSS, {}", p.proxy),
            goal: format!("< {TARGET_IDLE_RSS_MIB} MiB"),
            measured: format!("{:.1} MiB", p.idle_rss_mib),
            met: p.idle_rss_mib < TARGET_IDLE_RSS_MIB,
        });
    }
    targets
}

/// The peer check as one line.
fn peer_check_line(p: &PeerCheck) -> String {
    let mut line = format!(
        "HAProxy mTLS check ({}): to the api HAProxy's TLS port, plain text {}, TLS 1.3 \
         without a client certificate {}, TLS 1.2 {}, TLS 1.3 with web's certificate {} \
         ({}); through the web HAProxy {}; the api HAProxy's TLS frontend answered {} 2xx \
         during the runs ({} measured by the load generator).",
        if p.ok { "passed" } else { "FAILED" },
        refused(p.plaintext_refused),
        refused(p.without_client_cert_refused),
        refused(p.tls12_refused),
        if p.mtls_200 { "200" } else { "no 200" },
        if p.mtls_version.is_empty() {
            "no TLS"
        } else {
            &p.mtls_version
        },
        if p.through_web_200 { "200" } else { "no 200" },
        p.api_frontend_2xx,
        p.peer_requests_measured
    );
    for d in &p.detail {
        let _ = write!(line, " FAILED: {d}.");
    }
    line
}

fn refused(yes: bool) -> &'static str {
    if yes { "refused" } else { "ACCEPTED" }
}

pub(crate) fn table_header(out: &mut String, cells: &[&str]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(cells.len()));
}

pub(crate) fn table_row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// The targets as a Markdown table.
fn write_targets(out: &mut String, targets: &[TargetCheck]) {
    let _ = writeln!(out, "| target | goal | measured | |");
    let _ = writeln!(out, "|---|---|---|---|");
    for t in targets {
        let met = if t.met { "met" } else { "MISSED" };
        let _ = writeln!(out, "| {} | {} | {} | {met} |", t.what, t.goal, t.measured);
    }
}

/// The mTLS check, then a line for each run that had errors.
fn write_checks(out: &mut String, m: &MtlsCheck, runs: &[Run]) {
    let _ = writeln!(
        out,
        "\nmTLS check ({}): the api proxy counted {} inbound TLS handshakes from web and {} \
         inbound mTLS requests during the runs ({} measured by the load generator).",
        if m.ok { "passed" } else { "FAILED" },
        m.inbound_handshakes,
        m.inbound_mtls_requests,
        m.weft_requests_measured
    );
    write_run_errors(out, runs);
}

/// A line for each run that had errors: how many of each kind, and the first.
pub(crate) fn write_run_errors(out: &mut String, runs: &[Run]) {
    for r in runs.iter().filter(|r| r.load.errors() > 0) {
        let _ = writeln!(
            out,
            "errors in {} {}{} run {}: {} status, {} transport, {} unsent; first: {}",
            r.scenario.label(),
            r.load.mode,
            r.load
                .target_rate
                .map_or(String::new(), |rate| format!(" at {rate} req/s")),
            r.repeat + 1,
            r.load.status_errors,
            r.load.transport_errors,
            r.load.unsent,
            r.load.first_error.as_deref().unwrap_or("?")
        );
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

/// The stack benchmark's goal: the full outbound stack's CPU per request is under 110% of the
/// minimal stack's, in the web (outbound) proxy.
pub const TARGET_FULL_STACK_CPU_RATIO: f64 = 1.10;

/// One path of the stack benchmark, at the fixed rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StackPath {
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    /// This path minus direct, repeat by repeat; `None` for direct.
    pub added: Option<Added>,
    /// CPU-seconds per 1,000 requests of the web (outbound) proxy; `None` for direct.
    pub web_cpu_seconds_per_1000: Option<Spread>,
    /// The same of the api (inbound) proxy.
    pub api_cpu_seconds_per_1000: Option<Spread>,
    /// Non-2xx, transport errors and unsent requests over all its runs.
    pub errors: u64,
}

impl StackPath {
    fn of(runs: &[Run], scenario: Scenario) -> Self {
        let open: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.scenario == scenario)
            .map(|r| &r.load)
            .collect();
        let spread =
            |f: fn(&RunResult) -> f64| Spread::of(&open.iter().map(|l| f(l)).collect::<Vec<_>>());
        let meshed = scenario != Scenario::Direct;
        let cpu = |proxy| meshed.then(|| cpu_spread(runs, scenario, Mode::Open, proxy));
        Self {
            p50_ms: spread(|l| l.p50_ms),
            p99_ms: spread(|l| l.p99_ms),
            p999_ms: spread(|l| l.p999_ms),
            added: meshed.then(|| Added::of(runs, scenario, Scenario::Direct, Mode::Open)),
            web_cpu_seconds_per_1000: cpu(WEB_PROXY),
            api_cpu_seconds_per_1000: cpu(API_PROXY),
            errors: open.iter().map(|l| l.errors()).sum(),
        }
    }
}

/// A change of the full-stack HTTPRoute during the stack benchmark, and when it showed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteSwitch {
    /// `full`: the route was written; `minimal`: it was removed.
    pub to: Scenario,
    /// From the change on disk to the control plane's `/status` counting it.
    pub control_plane_seconds: f64,
    /// From the change on disk to web's `weft_route_requests_total` showing it (growing for
    /// the route, or no longer); `None` when it did not show within the bounded wait.
    pub proxy_seconds: Option<f64>,
    /// Whether web exported `weft_route_requests_total` at all by the end of the wait.
    pub route_metric: bool,
}

/// Everything the stack benchmark reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StackReport {
    pub bench: &'static str,
    pub settings: Settings,
    /// The full-stack HTTPRoute, as written to the control plane's directory.
    pub route_yaml: String,
    pub direct: StackPath,
    pub minimal: StackPath,
    pub full: StackPath,
    /// Full minus minimal latency, repeat by repeat.
    pub full_minus_minimal: Added,
    /// Full over minimal CPU per request of the web (outbound) proxy, repeat by repeat.
    pub web_cpu_ratio: Spread,
    /// The same of the api (inbound) proxy.
    pub api_cpu_ratio: Spread,
    pub targets: Vec<TargetCheck>,
    pub route_switches: Vec<RouteSwitch>,
    pub mtls: MtlsCheck,
    pub runs: Vec<Run>,
}

/// Scenario `full`'s CPU per request of `proxy` over `minimal`'s, repeat by repeat.
pub fn cpu_ratio(runs: &[Run], proxy: &str) -> Spread {
    paired(
        runs,
        Scenario::Full,
        Scenario::Minimal,
        Mode::Open,
        |f, m| Some(cpu_per_1000(f, proxy)? / cpu_per_1000(m, proxy)?),
    )
}

/// The stack benchmark's target, from the web proxy's full/minimal CPU ratio.
pub fn full_stack_cpu_target(web_cpu_ratio: &Spread, rate: u64) -> TargetCheck {
    let r = web_cpu_ratio.median;
    TargetCheck {
        what: format!(
            "full / minimal stack, {WEB_PROXY} CPU per request at {} req/s",
            thousands(rate as f64)
        ),
        goal: format!(
            "< {TARGET_FULL_STACK_CPU_RATIO:.2}x (under +{:.0} %)",
            (TARGET_FULL_STACK_CPU_RATIO - 1.0) * 100.0
        ),
        measured: format!("{r:.3}x ({:+.1} %)", (r - 1.0) * 100.0),
        // NaN (no CPU measured) is not met.
        met: r < TARGET_FULL_STACK_CPU_RATIO,
    }
}

impl StackReport {
    pub fn new(
        settings: Settings,
        route_yaml: String,
        runs: Vec<Run>,
        route_switches: Vec<RouteSwitch>,
        mtls: MtlsCheck,
    ) -> Self {
        let web_cpu_ratio = cpu_ratio(&runs, WEB_PROXY);
        Self {
            bench: "stack",
            targets: vec![full_stack_cpu_target(&web_cpu_ratio, settings.rate)],
            settings,
            route_yaml,
            direct: StackPath::of(&runs, Scenario::Direct),
            minimal: StackPath::of(&runs, Scenario::Minimal),
            full: StackPath::of(&runs, Scenario::Full),
            full_minus_minimal: Added::of(&runs, Scenario::Full, Scenario::Minimal, Mode::Open),
            web_cpu_ratio,
            api_cpu_ratio: cpu_ratio(&runs, API_PROXY),
            route_switches,
            mtls,
            runs,
        }
    }

    /// The report as Markdown: one table of the three paths, the target, the route switches
    /// and the mTLS check.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let (d, m, f) = (&self.direct, &self.minimal, &self.full);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "weft outbound stack benchmark: full stack (an HTTPRoute configuring every layer) \
             against the minimal stack (no HTTPRoute), open loop at {} req/s, {} connections, \
             {}, {} repeat(s) of {}s warm-up + {}s per path, {} cores; median \
             (min–max) over the repeats\n",
            thousands(s.rate as f64),
            s.connections,
            s.bodies(),
            s.repeat,
            s.warmup_seconds,
            s.duration_seconds,
            s.cores
        );
        let _ = writeln!(
            out,
            "| measurement at {} req/s | direct | minimal stack | full stack | full − minimal |",
            thousands(s.rate as f64)
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let fm = &self.full_minus_minimal;
        for (name, pick, diff) in [
            (
                "p50",
                (|p: &StackPath| p.p50_ms) as fn(&StackPath) -> Spread,
                fm.p50_ms,
            ),
            ("p99", |p| p.p99_ms, fm.p99_ms),
            ("p99.9", |p| p.p999_ms, fm.p999_ms),
        ] {
            let _ = writeln!(
                out,
                "| {name} ms | {} | {} | {} | {} |",
                pick(d).show(3, false),
                pick(m).show(3, false),
                pick(f).show(3, false),
                diff.show(3, true)
            );
        }
        for (name, pick) in [
            ("p50", (|a: &Added| a.p50_ms) as fn(&Added) -> Spread),
            ("p99", |a| a.p99_ms),
            ("p99.9", |a| a.p999_ms),
        ] {
            let added = |p: &StackPath| {
                p.added
                    .as_ref()
                    .map_or(String::new(), |a| pick(a).show(3, true))
            };
            let _ = writeln!(
                out,
                "| {name} added vs direct, ms | | {} | {} | |",
                added(m),
                added(f)
            );
        }
        for (proxy, pick, ratio) in [
            (
                WEB_PROXY,
                (|p: &StackPath| p.web_cpu_seconds_per_1000) as fn(&StackPath) -> Option<Spread>,
                self.web_cpu_ratio,
            ),
            (
                API_PROXY,
                |p| p.api_cpu_seconds_per_1000,
                self.api_cpu_ratio,
            ),
        ] {
            let cpu = |p: &StackPath| pick(p).map_or(String::new(), |c| c.show(3, false));
            let _ = writeln!(
                out,
                "| {proxy} CPU-s per 1,000 req | | {} | {} | ×{} |",
                cpu(m),
                cpu(f),
                ratio.show(3, false)
            );
        }
        let _ = writeln!(
            out,
            "| errors, all runs | {} | {} | {} | |\n",
            d.errors, m.errors, f.errors
        );
        write_targets(&mut out, &self.targets);
        let _ = writeln!(out, "\n{}", route_summary(&self.route_switches));
        write_checks(&mut out, &self.mtls, &self.runs);
        out
    }
}

/// One line on how the route changes showed in the control plane and in the web proxy.
pub fn route_summary(switches: &[RouteSwitch]) -> String {
    if switches.is_empty() {
        return "route: never switched (one path measured)".into();
    }
    let range = |v: &[f64]| {
        let s = Spread::of(v);
        if v.len() == 1 {
            format!("{:.2} s", s.median)
        } else {
            format!("{:.2}–{:.2} s", s.min, s.max)
        }
    };
    let cp: Vec<f64> = switches.iter().map(|s| s.control_plane_seconds).collect();
    let mut line = format!(
        "route: switched {} time(s); the control plane loaded each change within {}",
        switches.len(),
        range(&cp)
    );
    let seen: Vec<f64> = switches.iter().filter_map(|s| s.proxy_seconds).collect();
    if !seen.is_empty() {
        let _ = write!(
            line,
            "; web's weft_route_requests_total showed {} of them within {}",
            seen.len(),
            range(&seen)
        );
    }
    let unseen = switches.len() - seen.len();
    if unseen > 0 {
        if switches.iter().any(|s| s.route_metric) {
            let _ = write!(
                line,
                "; {unseen} NOT SEEN in web's weft_route_requests_total within the bounded wait \
                 (measured anyway: check the web proxy's log)"
            );
        } else {
            let _ = write!(
                line,
                "; web exports no weft_route_requests_total, so {unseen} change(s) were given a \
                 fixed wait: whether the proxy applied the route is not verified"
            );
        }
    }
    line.push('.');
    line
}

/// `12345.6` → `12,346`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < -0.5 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn spread_is_the_median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0, 2.0, 3.0]).median, 2.5);
        assert!(Spread::of(&[]).median.is_nan());
        assert_eq!(s.show(1, false), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of(&[0.25]).show(2, true), "+0.25");
    }

    /// An open-loop run of `scenario` at 1,000 req/s with its p99 and, through the mesh, the
    /// proxies' CPU-seconds per 1,000 requests.
    fn run(repeat: usize, scenario: Scenario, p99_ms: f64, web: f64, api: f64) -> Run {
        run_at(repeat, scenario, Some(1000), p99_ms, 1000.0, web, api)
    }

    /// A run of `scenario` at `rate` (closed loop: `None`) with its p99 (p50 half of it, p99.9
    /// twice, max three times), its rate and its proxies' CPU-seconds per 1,000 requests.
    pub(crate) fn run_at(
        repeat: usize,
        scenario: Scenario,
        rate: Option<u64>,
        p99_ms: f64,
        requests_per_second: f64,
        web: f64,
        api: f64,
    ) -> Run {
        let names = match scenario {
            Scenario::Direct => vec![],
            Scenario::Peer => vec![(HAPROXY_WEB, web), (HAPROXY_API, api)],
            _ => vec![(WEB_PROXY, web), (API_PROXY, api)],
        };
        let proxies = names
            .into_iter()
            .map(|(proxy, per_1000)| ProxyCpu {
                proxy: proxy.into(),
                cpu_seconds: per_1000 * 10.0,
                cpu_seconds_per_1000_requests: per_1000,
            })
            .collect();
        Run {
            repeat,
            scenario,
            load: RunResult {
                mode: if rate.is_some() {
                    "open-loop"
                } else {
                    "closed-loop"
                }
                .into(),
                new_connection: false,
                connections: 32,
                target_rate: rate,
                requests: (requests_per_second * 10.0) as u64,
                status_errors: 0,
                transport_errors: 0,
                unsent: 0,
                first_error: None,
                capped: false,
                seconds: 10.0,
                requests_per_second,
                p50_ms: p99_ms / 2.0,
                p90_ms: p99_ms,
                p99_ms,
                p999_ms: p99_ms * 2.0,
                max_ms: p99_ms * 3.0,
                spectrum: vec![(0.5, p99_ms / 2.0), (0.99, p99_ms), (1.0, p99_ms * 3.0)],
            },
            proxies,
        }
    }

    /// The settings of a benchmark at `rates` (`rate` the headline), as the reports' tests
    /// use them: 32 connections, 3 repeats of 2 s + 10 s.
    pub(crate) fn settings(rate: u64, rates: Vec<u64>) -> Settings {
        Settings {
            rate,
            rates,
            quick: false,
            connections: 32,
            warmup_seconds: 2.0,
            duration_seconds: 10.0,
            repeat: 3,
            body_size: 64,
            request_body_size: 0,
            http2: false,
            cores: 2,
            clock_ticks: 100,
            weft: "weft".into(),
            haproxy: None,
            setup_rate: None,
            idle_connections: 0,
        }
    }

    fn mtls_passed() -> MtlsCheck {
        MtlsCheck {
            inbound_handshakes: 1.0,
            inbound_mtls_requests: 60_000.0,
            weft_requests_measured: 60_000,
            ok: true,
        }
    }

    /// Three repeats of direct, weft and the HAProxy pair at 500 and 1,000 req/s and at the
    /// maximum, listed out of order: p99 at 1,000 req/s direct 0.4, 0.9, 0.5, weft 0.7, 1.1,
    /// 0.9 (paired differences 0.3, 0.2, 0.4: median 0.3, where the medians' difference is
    /// 0.4), HAProxy 0.7, 2.2, 0.6; at 500 req/s 0.2, 0.3, 0.25 for all repeats; maximum rates
    /// direct 100k, 110k, 90k, weft 25k, 22k, 27k, HAProxy 20k, 20k, 30k.
    fn mesh_runs(peer: bool) -> Vec<Run> {
        use Scenario::{Direct, Peer, Weft};
        let mut runs = vec![];
        for (repeat, d, w, p) in [(2, 0.5, 0.9, 0.6), (0, 0.4, 0.7, 0.7), (1, 0.9, 1.1, 2.2)] {
            runs.push(run_at(repeat, Weft, Some(1000), w, 1000.0, 0.08, 0.07));
            runs.push(run_at(repeat, Direct, Some(1000), d, 1000.0, 0.0, 0.0));
            runs.push(run_at(repeat, Weft, Some(500), 0.3, 500.0, 0.2, 0.15));
            runs.push(run_at(repeat, Direct, Some(500), 0.2, 500.0, 0.0, 0.0));
            if peer {
                runs.push(run_at(repeat, Peer, Some(1000), p, 1000.0, 0.06, 0.05));
                runs.push(run_at(repeat, Peer, Some(500), 0.25, 500.0, 0.1, 0.09));
            }
        }
        for (repeat, d, w, p) in [
            (0, 100_000.0, 25_000.0, 20_000.0),
            (1, 110_000.0, 22_000.0, 20_000.0),
            (2, 90_000.0, 27_000.0, 30_000.0),
        ] {
            runs.push(run_at(repeat, Direct, None, 1.0, d, 0.0, 0.0));
            runs.push(run_at(repeat, Weft, None, 3.0, w, 0.02, 0.02));
            if peer {
                runs.push(run_at(repeat, Peer, None, 3.0, p, 0.03, 0.03));
            }
        }
        runs
    }

    /// Three repeats with a new connection per request at 200 req/s: p99 direct 0.2, 0.3,
    /// 0.25, weft 0.5, 0.8, 0.6 (paired differences 0.3, 0.5, 0.35), HAProxy 0.4, 0.4, 0.45
    /// (0.2, 0.1, 0.2);
    /// web's CPU 0.3, api's 0.1 per 1,000 requests.
    fn new_connection_runs(peer: bool) -> Vec<Run> {
        use Scenario::{Direct, Peer, Weft};
        let mut runs = vec![];
        for (repeat, d, w, p) in [(0, 0.2, 0.5, 0.4), (1, 0.3, 0.8, 0.4), (2, 0.25, 0.6, 0.45)] {
            let mut group = vec![
                run_at(repeat, Direct, Some(200), d, 200.0, 0.0, 0.0),
                run_at(repeat, Weft, Some(200), w, 200.0, 0.3, 0.1),
            ];
            if peer {
                group.push(run_at(repeat, Peer, Some(200), p, 200.0, 0.2, 0.1));
            }
            for r in &mut group {
                r.load.new_connection = true;
            }
            runs.extend(group);
        }
        runs
    }

    fn footprint(proxy: &str, scenario: Scenario, idle_kib: u64, peak_kib: u64) -> ProxyFootprint {
        ProxyFootprint {
            proxy: proxy.into(),
            scenario,
            idle_cpu_percent: 0.0,
            rss_before_kib: idle_kib,
            memory: Memory {
                rss_kib: peak_kib,
                peak_rss_kib: peak_kib,
                rss_anon_kib: 1024,
            },
            idle_connections: None,
        }
    }

    fn mesh_report(peer: bool) -> MeshReport {
        let mut footprints = vec![
            footprint(WEB_PROXY, Scenario::Weft, 4 * 1024, 11 * 1024),
            footprint(API_PROXY, Scenario::Weft, 6 * 1024, 13 * 1024),
        ];
        if peer {
            footprints.push(footprint(HAPROXY_WEB, Scenario::Peer, 15 * 1024, 17 * 1024));
            footprints.push(footprint(HAPROXY_API, Scenario::Peer, 19 * 1024, 21 * 1024));
        }
        let peer_check = peer.then(|| {
            PeerCheck {
                plaintext_refused: true,
                without_client_cert_refused: true,
                tls12_refused: true,
                mtls_200: true,
                mtls_version: "TLSv1_3".into(),
                through_web_200: true,
                api_frontend_2xx: 120_000.0,
                peer_requests_measured: 115_000,
                ..PeerCheck::default()
            }
            .conclude()
        });
        MeshReport::new(
            settings(1000, vec![500, 1000]),
            mesh_runs(peer),
            footprints,
            mtls_passed(),
            peer_check,
        )
    }

    #[test]
    fn mesh_differences_pair_runs_of_the_same_repeat_and_rate() {
        let runs = mesh_runs(true);
        let added = Added::of(&runs, Scenario::Weft, Scenario::Direct, Mode::At(1000));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(added.p99_ms.median, 0.3), "{added:?}");
        assert!(close(added.p99_ms.min, 0.2) && close(added.p99_ms.max, 0.4));
        // p99.9 is twice p99 in these runs.
        assert!(close(added.p999_ms.median, 0.6));
        let at_500 = Added::of(&runs, Scenario::Weft, Scenario::Direct, Mode::At(500));
        assert!(close(at_500.p99_ms.median, 0.1) && close(at_500.p99_ms.max, 0.1));

        let c = Comparison::of(&runs, 1000, true);
        // weft / direct p99: 0.7/0.4, 1.1/0.9, 0.9/0.5.
        assert!(close(c.p99_weft_over_direct.median, 1.75), "{c:?}");
        // weft / HAProxy p99: 1.0, 0.5, 1.5.
        let over_peer = c.p99_weft_over_peer.unwrap();
        assert!(close(over_peer.median, 1.0) && close(over_peer.min, 0.5));
        // HAProxy − direct p99: 0.3, 1.3, 0.1.
        assert!(close(c.peer_added.unwrap().p99_ms.median, 0.3));

        let t = ThroughputRatios::of(&runs, true);
        assert!(close(t.weft_over_direct.median, 0.25), "{t:?}");
        assert!(close(t.weft_over_direct.min, 0.2) && close(t.weft_over_direct.max, 0.3));
        // 25/20, 22/20, 27/30.
        let over_peer = t.weft_over_peer.unwrap();
        assert!(close(over_peer.median, 1.1) && close(over_peer.min, 0.9));
        assert!(close(
            t.peer_over_direct.unwrap().median,
            20_000.0 / 100_000.0
        ));
    }

    #[test]
    fn a_runs_progress_line_pads_scenario_and_mode_to_the_benchmarks_widths() {
        let open = run_at(1, Scenario::Weft, Some(1000), 0.8, 1000.0, 0.06, 0.05);
        assert_eq!(
            open.progress_line(3, (12, 14)),
            "run 2/3 weft         open-loop        1000     1000 req/s  p50 0.400 ms  p99 0.800 ms  \
             p99.9 1.600 ms  errors 0"
        );
        assert_eq!(
            open.progress_line(3, (7, 12)),
            "run 2/3 weft    open-loop      1000     1000 req/s  p50 0.400 ms  p99 0.800 ms  \
             p99.9 1.600 ms  errors 0"
        );
        let mut max = run_at(0, Scenario::Peer, None, 0.5, 20_000.0, 0.0, 0.0);
        max.load.status_errors = 2;
        assert_eq!(
            max.progress_line(1, (12, 14)),
            "run 1/1 HAProxy pair closed-loop       max    20000 req/s  p50 0.250 ms  p99 0.500 ms  \
             p99.9 1.000 ms  errors 2"
        );
        let mut setup = run_at(0, Scenario::Direct, Some(200), 0.5, 200.0, 0.0, 0.0);
        setup.load.new_connection = true;
        assert!(
            setup
                .progress_line(1, (12, 14))
                .starts_with("run 1/1 direct       new-connection    200      200 req/s"),
            "{}",
            setup.progress_line(1, (12, 14))
        );
    }

    #[test]
    fn new_connection_runs_are_reported_apart_with_idle_connection_memory() {
        let mut runs = mesh_runs(true);
        runs.extend(new_connection_runs(true));
        let mut settings = settings(1000, vec![500, 1000]);
        settings.setup_rate = Some(200);
        settings.idle_connections = 1000;
        let mut footprints = vec![
            footprint(WEB_PROXY, Scenario::Weft, 4 * 1024, 11 * 1024),
            footprint(API_PROXY, Scenario::Weft, 6 * 1024, 13 * 1024),
            footprint(HAPROXY_WEB, Scenario::Peer, 15 * 1024, 17 * 1024),
            footprint(HAPROXY_API, Scenario::Peer, 19 * 1024, 21 * 1024),
        ];
        // 1,000 connections: web grows by 10 MiB (10.24 KiB each), HAProxy web by 5 MiB.
        let idle = |before: u64, with: u64| {
            Some(IdleConnectionsRss {
                before_kib: before * 1024,
                with_kib: with * 1024,
            })
        };
        footprints[0].idle_connections = idle(11, 21);
        footprints[1].idle_connections = idle(13, 13);
        footprints[2].idle_connections = idle(17, 22);
        let report = MeshReport::new(settings, runs, footprints, mtls_passed(), None);

        // The keep-alive numbers are those without the new-connection runs.
        let plain = mesh_report(true);
        assert_eq!(
            report.comparisons[1].weft_added.p99_ms,
            plain.comparisons[1].weft_added.p99_ms
        );
        assert_eq!(
            report.scenarios[1].at_rates[1].requests,
            plain.scenarios[1].at_rates[1].requests
        );
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let c = report.new_connection.as_ref().unwrap();
        assert_eq!(c.rate, 200);
        assert!(close(c.weft_added.p99_ms.median, 0.35), "{c:?}");
        assert!(close(c.weft_added.p99_ms.max, 0.5));
        // weft / HAProxy p99: 1.25, 2.0, 1.33.
        assert!(close(c.p99_weft_over_peer.unwrap().median, 0.6 / 0.45));
        let weft = report.scenarios[1].new_connection.as_ref().unwrap();
        assert_eq!(weft.requests, 6000);
        let web = &report.proxies[0];
        assert!(close(
            web.cpu_seconds_per_1000_new_connection.unwrap().median,
            0.3
        ));
        assert_eq!(web.rss_idle_connections_mib, Some(21.0));
        assert_eq!(report.proxies[3].rss_idle_connections_mib, None);

        let md = report.markdown();
        assert!(md.contains("open loop at 200 req/s"), "{md}");
        assert!(
            md.contains("| p99 | 0.250 (0.200–0.300) | 0.600 (0.500–0.800) | 0.400 (0.400–0.450) | +0.350 (+0.300–+0.500) | +0.200 (+0.100–+0.200) | ×1.33 (1.25–2.00) |"),
            "{md}"
        );
        assert!(md.contains("web (outbound) 0.300"), "{md}");
        assert!(
            md.contains("| web (outbound) | 4.0 | 11.0 | 21.0 | 10.2 |"),
            "{md}"
        );
        assert!(
            md.contains("| api (inbound) | 6.0 | 13.0 | 13.0 | 0.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| haproxy web | 15.0 | 17.0 | 22.0 | 5.1 |"),
            "{md}"
        );
        assert!(!md.contains("| haproxy api | 19.0 |"), "{md}");

        // Without them, no such sections.
        let md = plain.markdown();
        assert!(
            !md.contains("Connection setup") && !md.contains("Idle client"),
            "{md}"
        );
    }

    #[test]
    fn a_ratio_skips_a_repeat_without_its_partner_or_with_a_zero() {
        let mut runs = mesh_runs(false);
        runs.retain(|r| !(r.scenario == Scenario::Direct && r.repeat == 1));
        let c = Comparison::of(&runs, 1000, false);
        // Repeats 0 and 2 only: 0.7/0.4 and 0.9/0.5.
        assert!((c.p99_weft_over_direct.median - (1.75 + 1.8) / 2.0).abs() < 1e-9);
        assert!(c.peer_added.is_none() && c.p99_weft_over_peer.is_none());
        for r in runs.iter_mut().filter(|r| r.scenario == Scenario::Direct) {
            r.load.p99_ms = 0.0;
        }
        assert!(
            Comparison::of(&runs, 1000, false)
                .p99_weft_over_direct
                .median
                .is_nan()
        );
    }

    #[test]
    fn the_mesh_report_judges_the_targets_at_the_headline_rate() {
        let report = mesh_report(true);
        let target = |what: &str| {
            report
                .targets
                .iter()
                .find(|t| t.what.starts_with(what))
                .unwrap_or_else(|| panic!("no target {what}: {:?}", report.targets))
        };
        assert!(target("p99 added at 1,000 req/s").met);
        assert_eq!(target("p99 added").measured, "0.300 ms");
        assert!(target("p99.9 added at 1,000 req/s").met);
        assert!(!target("max throughput, weft / direct").met);
        assert!(target("max throughput, weft / HAProxy pair").met);
        assert!(target("CPU per 1,000 requests, web (outbound) at 1,000 req/s").met);
        assert!(!target("peak RSS, api (inbound)").met);
        assert!(target("idle RSS, web (outbound)").met);
        assert!(!target("idle RSS, api (inbound)").met);
        // Targets are weft's: none about the HAProxies.
        assert!(report.targets.iter().all(|t| !t.what.contains("haproxy")));

        assert_eq!(report.scenarios.len(), 3);
        let direct = &report.scenarios[0];
        assert_eq!(direct.at_rates[1].rate, 1000);
        assert_eq!(direct.at_rates[1].requests, 30_000);
        assert_eq!(direct.max.requests_per_second.median, 100_000.0);
        let haproxy_web = &report.proxies[2];
        assert_eq!(haproxy_web.scenario, Scenario::Peer);
        assert_eq!(haproxy_web.cpu_at(500).median, 0.1);
        assert_eq!(haproxy_web.cpu_at(1000).median, 0.06);
        assert_eq!(haproxy_web.cpu_seconds_per_1000_at_max.median, 0.03);
        assert!(report.peer_check.as_ref().unwrap().ok);

        let md = report.markdown();
        assert!(
            md.contains("| 1,000 | p99 | 0.500 (0.400–0.900) | 0.900 (0.700–1.100) | 0.700 (0.600–2.200) | +0.300 (+0.200–+0.400) | ×1.75 (1.22–1.80) | +0.300 (+0.100–+1.300) | ×1.00 (0.50–1.50) |"),
            "{md}"
        );
        assert!(md.contains("| max | throughput, req/s | 100,000 (90,000–110,000) | 25,000 (22,000–27,000) | 20,000 (20,000–30,000) |"), "{md}");
        assert!(
            md.contains("| haproxy api | 0.090 | 0.050 | 0.030 |"),
            "{md}"
        );
        assert!(md.contains("HAProxy mTLS check (passed)"), "{md}");

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenarios"][2]["scenario"], "peer");
        assert_eq!(json["comparisons"][1]["rate"], 1000);
    }

    #[test]
    fn without_the_peer_the_mesh_report_has_no_haproxy_columns() {
        let report = mesh_report(false);
        assert_eq!(report.scenarios.len(), 2);
        assert!(report.throughput.weft_over_peer.is_none());
        assert!(report.targets.iter().all(|t| !t.what.contains("HAProxy")));
        let md = report.markdown();
        assert!(!md.contains("HAProxy"), "{md}");
        assert!(
            md.contains("| 500 | p99 | 0.200 | 0.300 | +0.100 | ×1.50 |"),
            "{md}"
        );
    }

    #[test]
    fn targets_without_the_headline_rate_are_missed() {
        let report = mesh_report(false);
        let targets = mesh_targets(
            2000,
            &report.comparisons,
            &report.throughput,
            &report.proxies,
        );
        assert!(!targets[0].met && !targets[1].met, "{targets:?}");
        assert!(
            targets
                .iter()
                .filter(|t| t.what.starts_with("CPU"))
                .all(|t| !t.met)
        );
    }

    #[test]
    fn the_peer_check_says_what_failed() {
        let ok = PeerCheck {
            plaintext_refused: true,
            without_client_cert_refused: true,
            tls12_refused: true,
            mtls_200: true,
            mtls_version: "TLSv1_3".into(),
            through_web_200: true,
            api_frontend_2xx: 10.0,
            peer_requests_measured: 10,
            ..PeerCheck::default()
        };
        assert!(ok.clone().conclude().ok);
        let failed = PeerCheck {
            tls12_refused: false,
            api_frontend_2xx: 9.0,
            ..ok.clone()
        }
        .conclude();
        assert!(!failed.ok);
        assert_eq!(failed.detail.len(), 2, "{:?}", failed.detail);
        assert!(peer_check_line(&failed).contains("TLS 1.2 ACCEPTED"));
        let no_runs = PeerCheck {
            api_frontend_2xx: 0.0,
            peer_requests_measured: 0,
            ..ok
        };
        assert!(!no_runs.conclude().ok);
    }

    #[test]
    fn the_stack_ratio_pairs_full_and_minimal_runs_of_a_repeat() {
        use Scenario::{Direct, Full, Minimal};
        let runs = vec![
            run(0, Direct, 0.4, 0.0, 0.0),
            run(0, Minimal, 0.7, 0.100, 0.090),
            run(0, Full, 0.8, 0.105, 0.090),
            run(1, Full, 0.9, 0.120, 0.099),
            run(1, Minimal, 0.7, 0.100, 0.090),
            run(1, Direct, 0.5, 0.0, 0.0),
            run(2, Direct, 0.4, 0.0, 0.0),
            run(2, Minimal, 0.6, 0.110, 0.090),
            run(2, Full, 0.7, 0.1232, 0.090),
        ];
        let web = cpu_ratio(&runs, WEB_PROXY);
        assert!((web.median - 1.12).abs() < 1e-9, "{web:?}");
        assert!((web.min - 1.05).abs() < 1e-9 && (web.max - 1.20).abs() < 1e-9);
        assert!((cpu_ratio(&runs, API_PROXY).max - 1.10).abs() < 1e-9);

        let report = StackReport::new(
            settings(1000, vec![1000]),
            String::new(),
            runs,
            vec![],
            mtls_passed(),
        );
        // p99 added against direct, repeat by repeat: 0.3, 0.2, 0.2 (minimal); 0.4, 0.4, 0.3.
        let added = |p: &StackPath| p.added.as_ref().unwrap().p99_ms.median;
        assert!((added(&report.minimal) - 0.2).abs() < 1e-9);
        assert!((added(&report.full) - 0.4).abs() < 1e-9);
        assert!(report.direct.added.is_none() && report.direct.web_cpu_seconds_per_1000.is_none());
        assert!((report.full_minus_minimal.p99_ms.median - 0.1).abs() < 1e-9);
        // +12 %: missed.
        assert!(!report.targets[0].met);
        let table = report.markdown();
        assert!(table.contains("| web (outbound) CPU-s per 1,000 req | | 0.100 (0.100–0.110) |"));
        assert!(table.contains("MISSED"), "{table}");
    }

    #[test]
    fn the_stack_target_is_under_ten_percent_more_cpu() {
        let t = full_stack_cpu_target(&Spread::of(&[1.04, 1.02, 1.12]), 1000);
        assert!(t.met);
        assert_eq!(t.measured, "1.040x (+4.0 %)");
        assert_eq!(t.goal, "< 1.10x (under +10 %)");
        assert!(!full_stack_cpu_target(&Spread::of(&[1.11]), 1000).met);
        // No CPU measured: not met.
        assert!(!full_stack_cpu_target(&Spread::of(&[]), 1000).met);
    }

    #[test]
    fn route_switches_are_summed_up() {
        let switch = |to, proxy_seconds, route_metric| RouteSwitch {
            to,
            control_plane_seconds: 0.2,
            proxy_seconds,
            route_metric,
        };
        let seen = route_summary(&[
            switch(Scenario::Full, Some(0.3), true),
            switch(Scenario::Minimal, Some(0.5), true),
        ]);
        assert_eq!(
            seen,
            "route: switched 2 time(s); the control plane loaded each change within 0.20–0.20 s; \
             web's weft_route_requests_total showed 2 of them within 0.30–0.50 s."
        );
        let fixed = route_summary(&[switch(Scenario::Full, None, false)]);
        assert!(
            fixed.contains("web exports no weft_route_requests_total"),
            "{fixed}"
        );
        let unseen = route_summary(&[switch(Scenario::Full, None, true)]);
        assert!(unseen.contains("1 NOT SEEN"), "{unseen}");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
