//! What the mesh benchmark reports: direct, weft and the HAProxy pair at each fixed rate and
//! at the maximum (and, if measured, with a new connection per request), each proxy's CPU
//! and memory (and with many idle client connections open), the targets, the mTLS checks of
//! weft and of the HAProxy pair; and its Markdown.

use std::fmt::Write as _;

use super::markdown::{
    EVERY_LATENCY, cpu_cells, cpu_columns, quick_note, table_header, table_row, thousands,
    write_checks, write_latency_table, write_targets,
};
use super::{
    Added, AtRate, Comparison, Latency, Mode, MtlsCheck, Run, Scenario, ScenarioSummary, Settings,
    Spread, TargetCheck, ThroughputRatios, cpu_at_rates, cpu_spread, mesh_targets, peer_targets,
};
use crate::procstat::Memory;

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
    pub(super) fn cpu_at(&self, rate: u64) -> Spread {
        self.cpu_seconds_per_1000
            .iter()
            .find(|c| c.rate == rate)
            .map_or(Spread::of(&[]), |c| c.value)
    }
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
        let mut targets = mesh_targets(settings.rate, &comparisons, &throughput, &proxies);
        targets.extend(peer_targets(
            settings.rate,
            &comparisons,
            new_connection.as_ref(),
            &proxies,
            settings.idle_connections,
        ));
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
        let mut out = String::new();
        let _ = writeln!(
            out,
            "weft mesh benchmark{}: open loop at {} req/s (targets at {}) and closed loop, {}, \
             scenarios alternating within each repeat, {} cores{}; median (min–max) over the \
             repeats, differences and ratios paired repeat by repeat\n",
            quick_note(s.quick),
            s.rates_shown(),
            thousands(s.rate as f64),
            s.load("run"),
            s.cores,
            s.haproxy
                .as_deref()
                .map_or(String::new(), |v| format!("; peer: {v}"))
        );
        write_latency_table(
            &mut out,
            &self.scenarios,
            &self.comparisons,
            &self.throughput,
            &EVERY_LATENCY,
        );
        self.write_proxies(&mut out);
        self.write_new_connection(&mut out);
        self.write_idle_connections(&mut out);
        write_targets(&mut out, &self.targets);
        if let Some(p) = &self.peer_check {
            let _ = writeln!(out, "\n{}", peer_check_line(p));
        }
        write_checks(&mut out, &self.mtls, &self.runs);
        out
    }

    /// The proxies' table: CPU at each rate and at the maximum, at rest, memory.
    fn write_proxies(&self, out: &mut String) {
        let mut header = cpu_columns(&self.settings.rates);
        for h in [
            "idle CPU %",
            "idle RSS MiB",
            "peak RSS MiB",
            "RSS at end MiB (anonymous)",
        ] {
            header.push(h.into());
        }
        table_header(out, &header);
        for p in &self.proxies {
            let mut row = cpu_cells(
                &p.proxy,
                &p.cpu_seconds_per_1000,
                &p.cpu_seconds_per_1000_at_max,
            );
            row.push(format!("{:.1}", p.idle_cpu_percent));
            row.push(format!("{:.1}", p.idle_rss_mib));
            row.push(format!("{:.1}", p.peak_rss_mib));
            row.push(format!("{:.1} ({:.1})", p.rss_mib, p.rss_anon_mib));
            table_row(out, &row);
        }
        out.push('\n');
    }

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

#[cfg(test)]
mod tests;
