//! `weft stat` and `weft routes`: golden signals per service, per route rule and per backend,
//! read from every proxy's `/metrics` (found through the control plane's `/workloads`), as
//! `linkerd viz stat` / `routes` show them: success rate, requests per second, p50/p95/p99
//! latency and, per service, the share of requests over mTLS.
//!
//! Rates come from counter increases between two scrapes `--window` apart, quantiles from the
//! histogram buckets' increases ([`compute::histogram_quantile`]).

pub mod compute;
pub mod prom;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use weft_runtime::config::parse_duration;

use self::compute::{RouteRow, Scrape, ServiceRow};

/// Where the CLI finds the control plane's admin.
pub const ENV_POLICY_ADMIN: &str = "WEFT_POLICY_ADMIN";
/// The control plane's admin address by default.
pub const DEFAULT_POLICY_ADMIN: &str = weft_policy::config::DEFAULT_ADMIN;

/// Where the proxies are, and how to show what they saw.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub policy_admin: crate::context::PolicyAdmin,
    /// Scrape these proxy admin addresses instead of asking the control plane (repeatable).
    #[arg(long = "proxy-admin")]
    pub proxies: Vec<String>,
    /// The window rates and quantiles are computed over (`30s`, `1m`).
    #[arg(long, default_value = "30s", value_parser = parse_window)]
    pub window: Duration,
    /// Refresh every 2 s (over the last `--window`) until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Output: `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Only this service (`name` or `namespace/name`).
    pub service: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// Only the routes of calls to this service (`name` or `namespace/name`).
    pub service: Option<String>,
    /// One row per backend of each rule.
    #[arg(long)]
    pub backends: bool,
    #[command(flatten)]
    pub common: Common,
}

pub fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("the window must be at least 1s".into());
    }
    Ok(d)
}

/// `weft stat`.
pub fn stat(args: StatArgs) -> Result<(), String> {
    let only = args.service.clone();
    run(&args.common, |inc, secs, json| {
        let rows: Vec<ServiceRow> = compute::services(inc, secs)
            .into_iter()
            .filter(|r| {
                only.as_deref()
                    .is_none_or(|s| compute::is_service(&r.service, s))
            })
            .collect();
        if json {
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())
        } else {
            Ok(service_table(&rows))
        }
    })
}

/// `weft routes`.
pub fn routes(args: RoutesArgs) -> Result<(), String> {
    run(&args.common, |inc, secs, json| {
        let rows = compute::routes(inc, secs, args.service.as_deref(), args.backends);
        if json {
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())
        } else {
            Ok(route_table(&rows, args.backends))
        }
    })
}

fn run(
    c: &Common,
    render: impl Fn(&[prom::Sample], f64, bool) -> Result<String, String>,
) -> Result<(), String> {
    let json = c.output == "json";
    let targets = targets(c)?;
    if targets.is_empty() {
        return Err(format!(
            "no proxy to scrape: the control plane at {} lists no workload with a metrics address (are proxies running and registered?)",
            c.policy_admin.addr()
        ));
    }
    let first = scrape_all(&targets)?;
    if !c.watch {
        eprintln!(
            "weft: sampling {} prox{} for {:?} (--window)…",
            targets.len(),
            if targets.len() == 1 { "y" } else { "ies" },
            c.window
        );
        std::thread::sleep(c.window);
        let last = scrape_all(&targets)?;
        let secs = last.at.duration_since(first.at).as_secs_f64();
        println!(
            "{}",
            render(&compute::increases(&first, &last), secs, json)?
        );
        return Ok(());
    }
    // Watch: keep the scrapes of the last window; each refresh compares against the oldest.
    let mut history = std::collections::VecDeque::from([first]);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = scrape_all(&targets)?;
        while history.len() > 1 && now.at.duration_since(history[1].at) >= c.window {
            history.pop_front();
        }
        let oldest = &history[0];
        let secs = now.at.duration_since(oldest.at).as_secs_f64();
        let out = render(&compute::increases(oldest, &now), secs, json)?;
        if !json {
            // Clear the screen and home the cursor, as `watch` does.
            print!("\x1b[2J\x1b[H");
        }
        println!("{out}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        history.push_back(now);
    }
}

/// The proxies' metrics addresses: given, or from the control plane.
fn targets(c: &Common) -> Result<Vec<String>, String> {
    if !c.proxies.is_empty() {
        return Ok(c.proxies.clone());
    }
    Ok(metrics_addrs(&workloads(&c.policy_admin.addr())?))
}

/// The workloads registered with the control plane whose admin is at `policy_admin`, as its
/// `/workloads` lists them.
pub fn workloads(policy_admin: &str) -> Result<Vec<weft_policy::registry::Workload>, String> {
    let body = crate::admin::get_ok(policy_admin, "/workloads").map_err(|e| {
        format!(
            "cannot list the workloads at the control plane's admin {policy_admin}: {e} (set --policy-admin or WEFT_POLICY_ADMIN)"
        )
    })?;
    serde_json::from_str(&body)
        .map_err(|e| format!("the control plane's /workloads is not what weft expects: {e}"))
}

/// The distinct proxy admin (`/metrics`) addresses of `workloads`, sorted.
pub fn metrics_addrs(workloads: &[weft_policy::registry::Workload]) -> Vec<String> {
    let mut out: Vec<String> = workloads
        .iter()
        .filter_map(|w| w.metrics.map(|m| m.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One scrape of every target; a target that does not answer is skipped with a warning
/// (a proxy may be restarting), but none answering is an error.
pub fn scrape_all(targets: &[String]) -> Result<Scrape, String> {
    let at = Instant::now();
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for t in targets {
        match crate::admin::get_ok(t, "/metrics").and_then(|text| prom::parse(&text)) {
            Ok(samples) => {
                out.insert(t.clone(), samples);
            }
            Err(e) => errors.push(format!("{t}: {e}")),
        }
    }
    if out.is_empty() {
        return Err(format!("no proxy answered: {}", errors.join("; ")));
    }
    for e in errors {
        eprintln!("weft: skipping a proxy that did not answer: {e}");
    }
    Ok(Scrape { at, targets: out })
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}ms"))
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    )];
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

fn signal_cells(s: &compute::Signals) -> Vec<String> {
    vec![
        pct(s.success_rate),
        format!("{:.1}", s.rps),
        ms(s.p50_ms),
        ms(s.p95_ms),
        ms(s.p99_ms),
    ]
}

fn service_table(rows: &[ServiceRow]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.service.clone()];
            c.extend(signal_cells(&r.signals));
            c.push(
                r.signals
                    .tls_percent
                    .map_or_else(|| "-".into(), |t| format!("{t:.0}%")),
            );
            c
        })
        .collect();
    table(
        &["SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99", "TLS"],
        &rows,
    )
}

fn route_table(rows: &[RouteRow], backends: bool) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.service.clone(), r.route.clone(), r.rule.clone()];
            if backends {
                c.push(r.backend.clone().unwrap_or_default());
            }
            c.extend(signal_cells(&r.signals));
            c
        })
        .collect();
    let mut header = vec!["SERVICE", "ROUTE", "RULE"];
    if backends {
        header.push("BACKEND");
    }
    header.extend(["SUCCESS", "RPS", "P50", "P95", "P99"]);
    table(&header, &rows)
}
