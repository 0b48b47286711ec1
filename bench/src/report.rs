//! What the mesh benchmark reports: the raw runs, medians with their min–max spread over the
//! repeats, the added latency and throughput ratio of weft against the direct path, each
//! proxy's CPU time per 1,000 requests and memory, the targets, and the mTLS check. Printed as
//! Markdown tables, written as JSON.

use std::fmt::Write as _;

use crate::load::RunResult;
use crate::procstat::Memory;

/// The two paths compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// load generator → app.
    Direct,
    /// load generator → weft outbound → mTLS → weft inbound → app.
    Weft,
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
        // Pair each weft run with the direct run of the same repeat and mode.
        let paired = |open: bool, f: fn(&RunResult, &RunResult) -> f64| {
            let weft = pick(Scenario::Weft, open);
            let values: Vec<f64> = pick(Scenario::Direct, open)
                .iter()
                .filter_map(|d| {
                    let w = weft.iter().find(|w| w.repeat == d.repeat)?;
                    Some(f(&w.load, &d.load))
                })
                .collect();
            Spread::of(&values)
        };
        let added = Added {
            p50_ms: paired(true, |w, d| w.p50_ms - d.p50_ms),
            p99_ms: paired(true, |w, d| w.p99_ms - d.p99_ms),
            p999_ms: paired(true, |w, d| w.p999_ms - d.p999_ms),
        };
        let throughput_ratio = paired(false, |w, d| w.requests_per_second / d.requests_per_second);
        let cpu = |name: &str, open: bool| {
            let values: Vec<f64> = pick(Scenario::Weft, open)
                .iter()
                .flat_map(|r| &r.proxies)
                .filter(|p| p.proxy == name)
                .map(|p| p.cpu_seconds_per_1000_requests)
                .collect();
            Spread::of(&values)
        };
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
        let _ = writeln!(out, "\n| target | goal | measured | |");
        let _ = writeln!(out, "|---|---|---|---|");
        for t in &self.targets {
            let met = if t.met { "met" } else { "MISSED" };
            let _ = writeln!(out, "| {} | {} | {} | {met} |", t.what, t.goal, t.measured);
        }
        let m = &self.mtls;
        let _ = writeln!(
            out,
            "\nmTLS check ({}): the api proxy counted {} inbound TLS handshakes from web and {} \
             inbound mTLS requests during the runs ({} measured by the load generator).",
            if m.ok { "passed" } else { "FAILED" },
            m.inbound_handshakes,
            m.inbound_mtls_requests,
            m.weft_requests_measured
        );
        for r in self.runs.iter().filter(|r| r.load.errors() > 0) {
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
        out
    }
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

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
