//! What the mesh and stack benchmarks report: the raw runs, medians with their min–max spread
//! over the repeats, the added latency and throughput ratio of weft against the direct path,
//! each proxy's CPU time per 1,000 requests and memory, the full outbound stack's CPU against
//! the minimal one's, the targets, and the mTLS check. Printed as Markdown tables, written as
//! JSON.

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
    /// The weft path with no HTTPRoute for api: the minimal outbound stack (`weft-bench stack`).
    Minimal,
    /// The weft path with an HTTPRoute configuring every layer (`weft-bench stack`).
    Full,
}

/// The proxies, as the reports name them.
pub const WEB_PROXY: &str = "web (outbound)";
pub const API_PROXY: &str = "api (inbound)";

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
    /// Empty for the direct scenario.
    pub proxies: Vec<ProxyCpu>,
}

/// One proxy at rest before the runs, and its memory after them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyFootprint {
    pub proxy: String,
    /// CPU used while no request flows, in percent of one core.
    pub idle_cpu_percent: f64,
    /// `VmRSS` before the first run.
    pub rss_before_kib: u64,
    /// After the last run.
    #[serde(flatten)]
    pub memory: Memory,
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
    pub rate: u64,
    pub connections: usize,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub repeat: usize,
    pub body_size: usize,
    pub http2: bool,
    pub cores: usize,
    pub clock_ticks: u64,
    pub weft: String,
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

    /// `0.21 (0.18–0.25)`, or just the value when all runs agree or there was one run.
    pub fn show(&self, decimals: usize, sign: bool) -> String {
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
}

/// One scenario's latency at the fixed rate and its maximum rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScenarioSummary {
    pub p50_ms: Spread,
    pub p90_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
    pub max_ms: Spread,
    pub max_requests_per_second: Spread,
    /// Non-2xx, transport errors and unsent requests over all runs of the scenario.
    pub errors: u64,
}

/// weft minus direct, repeat by repeat (the two ran next to each other).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    pub p50_ms: Spread,
    pub p99_ms: Spread,
    pub p999_ms: Spread,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxySummary {
    pub proxy: String,
    pub idle_cpu_percent: f64,
    pub rss_before_mib: f64,
    pub cpu_seconds_per_1000_at_rate: Spread,
    pub cpu_seconds_per_1000_at_max: Spread,
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
    pub rss_anon_mib: f64,
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
    pub direct: ScenarioSummary,
    pub weft: ScenarioSummary,
    pub added: Added,
    /// weft's maximum rate over the direct path's, repeat by repeat.
    pub throughput_ratio: Spread,
    pub proxies: Vec<ProxySummary>,
    pub targets: Vec<TargetCheck>,
    pub mtls: MtlsCheck,
    pub runs: Vec<Run>,
}

/// The goals of docs/benchmarks.md.
pub const TARGET_ADDED_P99_MS: f64 = 0.35;
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.26;
pub const TARGET_CPU_PER_1000: f64 = 0.09;
pub const TARGET_PEAK_RSS_MIB: f64 = 12.0;

impl MeshReport {
    pub fn new(
        settings: Settings,
        runs: Vec<Run>,
        footprints: Vec<ProxyFootprint>,
        mtls: MtlsCheck,
    ) -> Self {
        let pick = |scenario: Scenario, open: bool| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.scenario == scenario && r.load.target_rate.is_some() == open)
                .collect()
        };
        let summary = |scenario| {
            let (open, closed) = (pick(scenario, true), pick(scenario, false));
            let spread = |f: fn(&RunResult) -> f64, runs: &[&Run]| {
                Spread::of(&runs.iter().map(|r| f(&r.load)).collect::<Vec<_>>())
            };
            ScenarioSummary {
                p50_ms: spread(|l| l.p50_ms, &open),
                p90_ms: spread(|l| l.p90_ms, &open),
                p99_ms: spread(|l| l.p99_ms, &open),
                p999_ms: spread(|l| l.p999_ms, &open),
                max_ms: spread(|l| l.max_ms, &open),
                max_requests_per_second: spread(|l| l.requests_per_second, &closed),
                errors: open.iter().chain(&closed).map(|r| r.load.errors()).sum(),
            }
        };
        let added = Added::of(&runs, Scenario::Weft, Scenario::Direct);
        let throughput_ratio = paired(&runs, Scenario::Weft, Scenario::Direct, false, |w, d| {
            Some(w.load.requests_per_second / d.load.requests_per_second)
        });
        let cpu = |name: &str, open: bool| cpu_spread(&runs, Scenario::Weft, open, name);
        let mib = |kib: u64| kib as f64 / 1024.0;
        let proxies: Vec<ProxySummary> = footprints
            .iter()
            .map(|m| ProxySummary {
                proxy: m.proxy.clone(),
                idle_cpu_percent: m.idle_cpu_percent,
                rss_before_mib: mib(m.rss_before_kib),
                cpu_seconds_per_1000_at_rate: cpu(&m.proxy, true),
                cpu_seconds_per_1000_at_max: cpu(&m.proxy, false),
                peak_rss_mib: mib(m.memory.peak_rss_kib),
                rss_mib: mib(m.memory.rss_kib),
                rss_anon_mib: mib(m.memory.rss_anon_kib),
            })
            .collect();
        let rate = thousands(settings.rate as f64);
        let mut targets = vec![
            TargetCheck {
                what: format!("p99 added at {rate} req/s"),
                goal: format!("< {TARGET_ADDED_P99_MS} ms"),
                measured: format!("{:.3} ms", added.p99_ms.median),
                met: added.p99_ms.median < TARGET_ADDED_P99_MS,
            },
            TargetCheck {
                what: "max throughput, weft / direct".into(),
                goal: format!(">= {TARGET_THROUGHPUT_RATIO}x"),
                measured: format!("{:.2}x", throughput_ratio.median),
                met: throughput_ratio.median >= TARGET_THROUGHPUT_RATIO,
            },
        ];
        for p in &proxies {
            targets.push(TargetCheck {
                what: format!("CPU per 1,000 requests, {} at {rate} req/s", p.proxy),
                goal: format!("< {TARGET_CPU_PER_1000} CPU-s"),
                measured: format!("{:.3} CPU-s", p.cpu_seconds_per_1000_at_rate.median),
                met: p.cpu_seconds_per_1000_at_rate.median < TARGET_CPU_PER_1000,
            });
        }
        for p in &proxies {
            targets.push(TargetCheck {
                what: format!("peak RSS, {}", p.proxy),
                goal: format!("< {TARGET_PEAK_RSS_MIB} MiB"),
                measured: format!("{:.1} MiB", p.peak_rss_mib),
                met: p.peak_rss_mib < TARGET_PEAK_RSS_MIB,
            });
        }
        Self {
            bench: "mesh",
            direct: summary(Scenario::Direct),
            weft: summary(Scenario::Weft),
            settings,
            added,
            throughput_ratio,
            proxies,
            targets,
            mtls,
            runs,
        }
    }

    /// The report as Markdown: latency and throughput, then the proxies, then the targets.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let rate = thousands(s.rate as f64);
        let (d, w, a) = (&self.direct, &self.weft, &self.added);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "weft mesh benchmark: {} connections, {}-byte bodies, {} repeat(s) of {}s warm-up + \
             {}s per run, {} cores; median (min–max) over the repeats\n",
            s.connections, s.body_size, s.repeat, s.warmup_seconds, s.duration_seconds, s.cores
        );
        let _ = writeln!(out, "| measurement | direct | weft | weft − direct |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (name, dv, wv, av) in [
            ("p50", d.p50_ms, w.p50_ms, Some(a.p50_ms)),
            ("p90", d.p90_ms, w.p90_ms, None),
            ("p99", d.p99_ms, w.p99_ms, Some(a.p99_ms)),
            ("p99.9", d.p999_ms, w.p999_ms, Some(a.p999_ms)),
            ("max", d.max_ms, w.max_ms, None),
        ] {
            let _ = writeln!(
                out,
                "| {name} ms at {rate} req/s | {} | {} | {} |",
                dv.show(3, false),
                wv.show(3, false),
                av.map_or(String::new(), |a| a.show(3, true))
            );
        }
        let show_rps = |r: &Spread| {
            if thousands(r.min) == thousands(r.max) {
                thousands(r.median)
            } else {
                format!(
                    "{} ({}–{})",
                    thousands(r.median),
                    thousands(r.min),
                    thousands(r.max)
                )
            }
        };
        let _ = writeln!(
            out,
            "| max throughput, req/s | {} | {} | ×{} |",
            show_rps(&d.max_requests_per_second),
            show_rps(&w.max_requests_per_second),
            self.throughput_ratio.show(2, false)
        );
        let _ = writeln!(
            out,
            "| errors, all runs | {} | {} | |\n",
            d.errors, w.errors
        );
        let _ = writeln!(
            out,
            "| proxy | CPU-s per 1,000 req at {rate} req/s | CPU-s per 1,000 req at max | idle CPU % | RSS before MiB | peak RSS MiB | RSS at end MiB (anonymous) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for p in &self.proxies {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} ({:.1}) |",
                p.proxy,
                p.cpu_seconds_per_1000_at_rate.show(3, false),
                p.cpu_seconds_per_1000_at_max.show(3, false),
                p.idle_cpu_percent,
                p.rss_before_mib,
                p.peak_rss_mib,
                p.rss_mib,
                p.rss_anon_mib
            );
        }
        out.push('\n');
        write_targets(&mut out, &self.targets);
        write_checks(&mut out, &self.mtls, &self.runs);
        out
    }
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
    for r in runs.iter().filter(|r| r.load.errors() > 0) {
        let _ = writeln!(
            out,
            "errors in {:?} {} run {}: {} status, {} transport, {} unsent; first: {}",
            r.scenario,
            r.load.mode,
            r.repeat + 1,
            r.load.status_errors,
            r.load.transport_errors,
            r.load.unsent,
            r.load.first_error.as_deref().unwrap_or("?")
        );
    }
}

/// `f(a, b)` for each run of scenario `a`, open loop (`open`) or closed, and the run of `b`
/// in the same repeat and mode (the two ran next to each other): its spread over the repeats.
fn paired(
    runs: &[Run],
    a: Scenario,
    b: Scenario,
    open: bool,
    f: impl Fn(&Run, &Run) -> Option<f64>,
) -> Spread {
    let pick = |s: Scenario| {
        runs.iter()
            .filter(move |r| r.scenario == s && r.load.target_rate.is_some() == open)
    };
    let values: Vec<f64> = pick(a)
        .filter_map(|ra| f(ra, pick(b).find(|rb| rb.repeat == ra.repeat)?))
        .collect();
    Spread::of(&values)
}

impl Added {
    /// Scenario `a`'s open-loop latency minus `b`'s, repeat by repeat.
    pub fn of(runs: &[Run], a: Scenario, b: Scenario) -> Self {
        let minus = |f: fn(&RunResult) -> f64| {
            paired(runs, a, b, true, |x, y| Some(f(&x.load) - f(&y.load)))
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

/// The spread of `proxy`'s CPU-seconds per 1,000 requests over the runs of `scenario`, open
/// loop (`open`) or closed.
fn cpu_spread(runs: &[Run], scenario: Scenario, open: bool, proxy: &str) -> Spread {
    let values: Vec<f64> = runs
        .iter()
        .filter(|r| r.scenario == scenario && r.load.target_rate.is_some() == open)
        .filter_map(|r| cpu_per_1000(r, proxy))
        .collect();
    Spread::of(&values)
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
        let cpu = |proxy| meshed.then(|| cpu_spread(runs, scenario, true, proxy));
        Self {
            p50_ms: spread(|l| l.p50_ms),
            p99_ms: spread(|l| l.p99_ms),
            p999_ms: spread(|l| l.p999_ms),
            added: meshed.then(|| Added::of(runs, scenario, Scenario::Direct)),
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
    paired(runs, Scenario::Full, Scenario::Minimal, true, |f, m| {
        Some(cpu_per_1000(f, proxy)? / cpu_per_1000(m, proxy)?)
    })
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
            full_minus_minimal: Added::of(&runs, Scenario::Full, Scenario::Minimal),
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
             {}-byte bodies, {} repeat(s) of {}s warm-up + {}s per path, {} cores; median \
             (min–max) over the repeats\n",
            thousands(s.rate as f64),
            s.connections,
            s.body_size,
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
mod tests {
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

    /// An open-loop run of `scenario` with its p99 and, through the mesh, the proxies'
    /// CPU-seconds per 1,000 requests.
    fn run(repeat: usize, scenario: Scenario, p99_ms: f64, web: f64, api: f64) -> Run {
        let proxies = if scenario == Scenario::Direct {
            vec![]
        } else {
            [(WEB_PROXY, web), (API_PROXY, api)]
                .into_iter()
                .map(|(proxy, per_1000)| ProxyCpu {
                    proxy: proxy.into(),
                    cpu_seconds: per_1000 * 10.0,
                    cpu_seconds_per_1000_requests: per_1000,
                })
                .collect()
        };
        Run {
            repeat,
            scenario,
            load: RunResult {
                mode: "open-loop".into(),
                connections: 32,
                target_rate: Some(1000),
                requests: 10_000,
                status_errors: 0,
                transport_errors: 0,
                unsent: 0,
                first_error: None,
                capped: false,
                seconds: 10.0,
                requests_per_second: 1000.0,
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
            Settings {
                rate: 1000,
                connections: 32,
                warmup_seconds: 2.0,
                duration_seconds: 10.0,
                repeat: 3,
                body_size: 64,
                http2: false,
                cores: 2,
                clock_ticks: 100,
                weft: "weft".into(),
            },
            String::new(),
            runs,
            vec![],
            MtlsCheck {
                inbound_handshakes: 1.0,
                inbound_mtls_requests: 60_000.0,
                weft_requests_measured: 60_000,
                ok: true,
            },
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
