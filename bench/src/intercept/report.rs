//! What `weft-bench intercept` reports: the mesh benchmark's summaries (latency per scenario
//! and rate, weft minus direct and weft over direct paired repeat by repeat, the maximum-rate
//! ratio) for its two scenarios, each proxy's CPU per 1,000 requests, and the evidence that the
//! two paths are what they claim. Printed as Markdown, written as JSON.

use std::fmt::Write as _;

use super::{APP_IP, CLIENT_IP, Counters, DIRECT_PORT, MESHED_PORT, PROXY_UID};
use crate::report::markdown::{
    TAIL_LATENCY, cpu_cells, cpu_columns, quick_note, table_header, table_row, write_latency_table,
    write_run_errors,
};
use crate::report::{
    API_PROXY, AtRate, Comparison, Mode, Run, Scenario, ScenarioSummary, Settings, Spread,
    ThroughputRatios, WEB_PROXY, cpu_at_rates, cpu_spread,
};

/// Evidence that the weft path is mTLS through both proxies and the direct path through
/// neither: probes before the runs, the proxies' counters over the runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InterceptCheck {
    /// Requests each probe sent from the client namespace (all answered 200).
    pub probe_requests: u64,
    /// The proxies' counters' growth over the probe of the port behind the mesh.
    pub probe_meshed: Counters,
    /// The same over the probe of the direct port (nothing may grow).
    pub probe_direct: Counters,
    /// The api proxy's inbound TLS handshakes from web's identity, by the end of the probes.
    pub inbound_handshakes: f64,
    pub probe_ok: bool,
    /// 2xx answers the load generator counted in the weft runs' windows (warm-up excluded).
    pub weft_requests_measured: u64,
    /// The counters' growth over all the runs; `None` before they ran.
    pub runs: Option<Counters>,
    /// The probes and the runs passed.
    pub ok: bool,
    /// What failed, in words.
    pub detail: Vec<String>,
}

impl InterceptCheck {
    /// The probes' verdict: each of `n` requests to the port behind the mesh counted by web as
    /// outbound mTLS to api and by api as inbound mTLS from web, none unmeshed, handshakes from
    /// web seen; the `n` to the direct port counted by neither proxy.
    pub fn from_probes(
        n: u64,
        meshed: Counters,
        direct: Counters,
        inbound_handshakes: f64,
    ) -> Self {
        let n_f = n as f64;
        let mut detail = Vec::new();
        if meshed.client_outbound_mtls < n_f {
            detail.push(format!(
                "web counted {} outbound mTLS requests to default/api for {n} sent to \
                 {APP_IP}:{MESHED_PORT}",
                meshed.client_outbound_mtls
            ));
        }
        if meshed.app_inbound_mtls < n_f {
            detail.push(format!(
                "api counted {} inbound mTLS requests from web for {n} sent to \
                 {APP_IP}:{MESHED_PORT}",
                meshed.app_inbound_mtls
            ));
        }
        if meshed.client_unmeshed > 0.0 {
            detail.push(format!(
                "web sent {} requests unmeshed (plaintext) while probing the port behind the \
                 mesh",
                meshed.client_unmeshed
            ));
        }
        if inbound_handshakes <= 0.0 {
            detail.push("api counted no inbound TLS handshake from web".into());
        }
        if direct.all_requests != 0.0 {
            detail.push(format!(
                "the proxies counted {} requests while {n} went to the direct port \
                 {APP_IP}:{DIRECT_PORT}: the direct path is not direct",
                direct.all_requests
            ));
        }
        let probe_ok = detail.is_empty();
        Self {
            probe_requests: n,
            probe_meshed: meshed,
            probe_direct: direct,
            inbound_handshakes,
            probe_ok,
            weft_requests_measured: 0,
            runs: None,
            ok: false,
            detail,
        }
    }

    /// The verdict over the runs: web's outbound mTLS requests to api and api's inbound mTLS
    /// requests from web both grew by at least the weft requests measured (the warm-ups add
    /// more), and none went unmeshed.
    pub fn conclude_runs(&mut self, before: &Counters, after: &Counters, runs: &[Run]) {
        let d = after.since(before);
        let measured: u64 = runs
            .iter()
            .filter(|r| r.scenario == Scenario::Weft)
            .map(|r| r.load.requests)
            .sum();
        let m = measured as f64;
        if measured == 0 {
            self.detail.push("the weft runs measured no request".into());
        }
        if d.client_outbound_mtls < m {
            self.detail.push(format!(
                "over the runs web counted {} outbound mTLS requests to default/api, fewer than \
                 the {measured} measured",
                d.client_outbound_mtls
            ));
        }
        if d.app_inbound_mtls < m {
            self.detail.push(format!(
                "over the runs api counted {} inbound mTLS requests from web, fewer than the \
                 {measured} measured",
                d.app_inbound_mtls
            ));
        }
        if d.client_unmeshed > 0.0 {
            self.detail.push(format!(
                "web sent {} requests unmeshed during the runs",
                d.client_unmeshed
            ));
        }
        if d.client_detect_timeouts > 0.0 {
            self.detail.push(format!(
                "web's protocol detection timed out on {} client connections during the runs \
                 (tunnelled as opaque TCP, not measured as HTTP): the load generator's \
                 connections stayed silent too long before the first request",
                d.client_detect_timeouts
            ));
        }
        self.weft_requests_measured = measured;
        self.runs = Some(d);
        self.ok = self.detail.is_empty();
    }

    /// One line for the report.
    pub fn line(&self) -> String {
        let mut line = format!(
            "Interception check ({}): probes of {} requests from the client namespace: to \
             {APP_IP}:{MESHED_PORT}, web counted {} outbound mTLS requests to default/api, api \
             {} inbound mTLS requests from web ({} TLS handshakes from web), {} unmeshed; to \
             {APP_IP}:{DIRECT_PORT}, the proxies counted {} requests.",
            if self.ok { "passed" } else { "FAILED" },
            self.probe_requests,
            self.probe_meshed.client_outbound_mtls,
            self.probe_meshed.app_inbound_mtls,
            self.inbound_handshakes,
            self.probe_meshed.client_unmeshed,
            self.probe_direct.all_requests,
        );
        if let Some(r) = &self.runs {
            let _ = write!(
                line,
                " Over the runs: web {} outbound mTLS requests to default/api, api {} inbound \
                 mTLS requests from web, {} unmeshed ({} measured by the load generator on the \
                 weft path, warm-ups not counted).",
                r.client_outbound_mtls,
                r.app_inbound_mtls,
                r.client_unmeshed,
                self.weft_requests_measured
            );
        }
        for d in &self.detail {
            let _ = write!(line, " FAILED: {d}.");
        }
        line
    }
}

/// Where things are: the namespaces' addresses, the app's two ports, the proxies' user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Topology {
    pub client_ip: &'static str,
    pub app_ip: &'static str,
    /// Intercepted in both namespaces: the weft path.
    pub meshed_port: u16,
    /// Skipped by `weft init` in both: the direct path.
    pub direct_port: u16,
    pub proxy_uid: u32,
}

/// One proxy's CPU-seconds per 1,000 requests over the weft runs' measured windows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyCpuSummary {
    pub proxy: String,
    pub cpu_seconds_per_1000: Vec<AtRate>,
    pub cpu_seconds_per_1000_at_max: Spread,
}

/// Everything `weft-bench intercept` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InterceptReport {
    pub bench: &'static str,
    pub settings: Settings,
    pub topology: Topology,
    /// direct, then weft.
    pub scenarios: Vec<ScenarioSummary>,
    /// weft against direct at each fixed rate, paired repeat by repeat.
    pub comparisons: Vec<Comparison>,
    /// The maximum rates, weft over direct, paired repeat by repeat.
    pub throughput: ThroughputRatios,
    /// web (the client namespace's, outbound) and api (the app namespace's, inbound).
    pub proxies: Vec<ProxyCpuSummary>,
    pub check: InterceptCheck,
    pub runs: Vec<Run>,
}

impl InterceptReport {
    pub fn new(settings: Settings, runs: Vec<Run>, check: InterceptCheck) -> Self {
        let scenarios = [Scenario::Direct, Scenario::Weft]
            .into_iter()
            .map(|s| ScenarioSummary::of(&runs, s, &settings.rates, None))
            .collect();
        let comparisons = settings
            .rates
            .iter()
            .map(|&rate| Comparison::of(&runs, rate, false))
            .collect();
        let proxies = [WEB_PROXY, API_PROXY]
            .into_iter()
            .map(|proxy| ProxyCpuSummary {
                proxy: proxy.to_string(),
                cpu_seconds_per_1000: cpu_at_rates(&runs, Scenario::Weft, &settings.rates, proxy),
                cpu_seconds_per_1000_at_max: cpu_spread(&runs, Scenario::Weft, Mode::Max, proxy),
            })
            .collect();
        Self {
            bench: "intercept",
            throughput: ThroughputRatios::of(&runs, false),
            topology: Topology {
                client_ip: CLIENT_IP,
                app_ip: APP_IP,
                meshed_port: MESHED_PORT,
                direct_port: DIRECT_PORT,
                proxy_uid: PROXY_UID,
            },
            settings,
            scenarios,
            comparisons,
            proxies,
            check,
            runs,
        }
    }

    /// The report as Markdown: latency and throughput, the proxies' CPU, the check.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "weft interception benchmark{}: client and app in two network namespaces joined by \
             a veth pair, `weft init` in both, the proxies as UID {PROXY_UID}; **direct**: \
             client → {APP_IP}:{DIRECT_PORT} (skipped by `weft init`) → app; **weft**: client \
             → {APP_IP}:{MESHED_PORT} → iptables → web → mTLS → iptables → api → app (the same \
             app process). Open loop at {} req/s and closed loop, {}, scenarios alternating, {} \
             cores; median (min–max) over the repeats, differences and ratios paired repeat by \
             repeat\n",
            quick_note(s.quick),
            s.rates_shown(),
            s.load("run"),
            s.cores,
        );
        write_latency_table(
            &mut out,
            &self.scenarios,
            &self.comparisons,
            &self.throughput,
            &TAIL_LATENCY,
        );
        table_header(&mut out, &cpu_columns(&s.rates));
        for p in &self.proxies {
            table_row(
                &mut out,
                &cpu_cells(
                    &p.proxy,
                    &p.cpu_seconds_per_1000,
                    &p.cpu_seconds_per_1000_at_max,
                ),
            );
        }
        let _ = writeln!(out, "\n{}", self.check.line());
        write_run_errors(&mut out, &self.runs);
        out
    }
}
