//! The Markdown the reports share: numbers with thousands separators, table headers and rows,
//! the latency and throughput table and the CPU columns of the mesh and interception
//! reports, the targets, the mTLS check and the runs' errors.

use std::borrow::Borrow;
use std::fmt::Write as _;

use super::{
    Added, AtRate, Comparison, Latency, MtlsCheck, Run, Scenario, ScenarioSummary, Spread,
    TargetCheck, ThroughputRatios,
};

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

/// What a report's first line says of a `--quick` run.
pub(crate) fn quick_note(quick: bool) -> &'static str {
    if quick {
        " (QUICK: a harness check, not numbers to quote)"
    } else {
        ""
    }
}

pub(crate) fn table_header<S: Borrow<str>>(out: &mut String, cells: &[S]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(cells.len()));
}

pub(crate) fn table_row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// One latency row of the latency table: its name, what it shows of each scenario, and of
/// the differences (`None`: the row shows none).
pub(crate) type LatencyRow = (
    &'static str,
    fn(&Latency) -> Spread,
    Option<fn(&Added) -> Spread>,
);

/// p50, p90, p99, p99.9 and max; the differences of p50, p99 and p99.9.
pub(crate) const EVERY_LATENCY: [LatencyRow; 5] = [
    ("p50", |l| l.p50_ms, Some(|a| a.p50_ms)),
    ("p90", |l| l.p90_ms, None),
    ("p99", |l| l.p99_ms, Some(|a| a.p99_ms)),
    ("p99.9", |l| l.p999_ms, Some(|a| a.p999_ms)),
    ("max", |l| l.max_ms, None),
];

/// p50, p99 and p99.9, with their differences.
pub(crate) const TAIL_LATENCY: [LatencyRow; 3] = [
    ("p50", |l| l.p50_ms, Some(|a| a.p50_ms)),
    ("p99", |l| l.p99_ms, Some(|a| a.p99_ms)),
    ("p99.9", |l| l.p999_ms, Some(|a| a.p999_ms)),
];

/// The latency and throughput table of direct, weft and, when `scenarios` has it, the
/// HAProxy pair: `rows` at each rate of `comparisons` with weft − direct and weft / direct
/// (and the HAProxy pair − direct, weft / HAProxy), the maximum rates and their ratios, and
/// the errors; then a blank line.
pub(crate) fn write_latency_table(
    out: &mut String,
    scenarios: &[ScenarioSummary],
    comparisons: &[Comparison],
    throughput: &ThroughputRatios,
    rows: &[LatencyRow],
) {
    let summary = |s: Scenario| scenarios.iter().find(|x| x.scenario == s);
    let (direct, weft, peer) = (
        summary(Scenario::Direct),
        summary(Scenario::Weft),
        summary(Scenario::Peer),
    );
    let mut header = vec!["req/s", "latency ms", "direct", "weft"];
    if peer.is_some() {
        header.push("HAProxy pair");
    }
    header.extend(["weft − direct", "weft / direct"]);
    if peer.is_some() {
        header.extend(["HAProxy − direct", "weft / HAProxy"]);
    }
    table_header(out, &header);
    let show = |s: Option<&ScenarioSummary>, rate: u64, f: fn(&Latency) -> Spread| {
        s.and_then(|s| s.at(rate))
            .map_or("n/a".into(), |l| f(l).show(3, false))
    };
    for c in comparisons {
        for &(name, pick, added) in rows {
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
            table_row(out, &row);
        }
    }
    let t = throughput;
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
    table_row(out, &row);
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
    row.resize(header.len(), String::new());
    table_row(out, &row);
    out.push('\n');
}

/// The first columns of a table of the proxies' CPU: the proxy, its CPU-seconds per 1,000
/// requests at each of `rates`, and at the maximum rate.
pub(crate) fn cpu_columns(rates: &[u64]) -> Vec<String> {
    let mut header = vec!["proxy".to_string()];
    for &r in rates {
        header.push(format!(
            "CPU-s per 1,000 req at {} req/s",
            thousands(r as f64)
        ));
    }
    header.push("at max".into());
    header
}

/// One proxy's cells in those columns.
pub(crate) fn cpu_cells(proxy: &str, at_rates: &[AtRate], at_max: &Spread) -> Vec<String> {
    let mut row = vec![proxy.to_string()];
    row.extend(at_rates.iter().map(|c| c.value.show(3, false)));
    row.push(at_max.show(3, false));
    row
}

/// The targets as a Markdown table.
pub(crate) fn write_targets(out: &mut String, targets: &[TargetCheck]) {
    let _ = writeln!(out, "| target | goal | measured | |");
    let _ = writeln!(out, "|---|---|---|---|");
    for t in targets {
        let met = if t.met { "met" } else { "MISSED" };
        let _ = writeln!(out, "| {} | {} | {} | {met} |", t.what, t.goal, t.measured);
    }
}

/// The mTLS check, then a line for each run that had errors.
pub(crate) fn write_checks(out: &mut String, m: &MtlsCheck, runs: &[Run]) {
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
