//! What the stack benchmark reports: direct, the minimal outbound stack and the full one at
//! the fixed rate, full minus minimal latency and full over minimal CPU (paired repeat by
//! repeat), the target, the route's switches and the mTLS check; and its Markdown.

use std::fmt::Write as _;

use super::markdown::{thousands, write_checks, write_targets};
use super::{
    API_PROXY, Added, Mode, MtlsCheck, Run, Scenario, Settings, Spread, TargetCheck, WEB_PROXY,
    cpu_per_1000, cpu_spread, full_stack_cpu_target, paired,
};
use crate::load::RunResult;

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
             against the minimal stack (no HTTPRoute), open loop at {} req/s, {}, {} cores; \
             median (min–max) over the repeats\n",
            thousands(s.rate as f64),
            s.load("path"),
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

#[cfg(test)]
mod tests;
