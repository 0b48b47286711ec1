//! The goals of docs/benchmarks.md, and how the reports judge them: the mesh benchmark's
//! (added latency, throughput, CPU and memory of weft's proxies, at the headline rate; issue
//! 20's against the HAProxy pair of the same run) and the stack benchmark's (the full outbound
//! stack's CPU against the minimal one's).

use super::mesh::ProxySummary;
use super::{Added, Comparison, Scenario, Spread, ThroughputRatios, WEB_PROXY, thousands};

/// One goal, what was measured, and whether it was met.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetCheck {
    pub what: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// The goals of docs/benchmarks.md (issue 7), at the headline rate.
pub const TARGET_ADDED_P99_MS: f64 = 0.35;
pub const TARGET_ADDED_P999_MS: f64 = 1.1;
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.26;
pub const TARGET_CPU_PER_1000: f64 = 0.09;
pub const TARGET_PEAK_RSS_MIB: f64 = 12.0;
pub const TARGET_IDLE_RSS_MIB: f64 = 5.0;

/// The stack benchmark's goal: the full outbound stack's CPU per request is under 110% of the
/// minimal stack's, in the web (outbound) proxy.
pub const TARGET_FULL_STACK_CPU_RATIO: f64 = 1.10;

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

/// Issue 20's goals (docs/benchmarks.md), judged against the HAProxy pair of the same run.
pub const TARGET_PEER_ADDED_P99_MS: f64 = 0.30;
pub const TARGET_PEER_ADDED_P999_MS: f64 = 1.0;
pub const TARGET_NEW_CONNECTION_P99_OVER_PEER: f64 = 1.1;
pub const TARGET_IDLE_CONNECTION_KIB: f64 = 2.0;

/// Issue 20's targets at the headline `rate`: tail latency, each weft proxy's CPU against its
/// HAProxy's (paired in order: web with the web HAProxy, api with the api one), the new
/// connection's p99 against the HAProxy pair's, and the front proxy's RSS per idle client
/// connection (`idle_connections` of them). A target with nothing to judge it by (no peer
/// scenario, no idle connections) is left out.
pub fn peer_targets(
    rate: u64,
    comparisons: &[Comparison],
    new_connection: Option<&Comparison>,
    proxies: &[ProxySummary],
    idle_connections: usize,
) -> Vec<TargetCheck> {
    let r = thousands(rate as f64);
    let headline = comparisons.iter().find(|c| c.rate == rate);
    let added = |f: fn(&Added) -> Spread| headline.map_or(f64::NAN, |c| f(&c.weft_added).median);
    let (p99, p999) = (added(|a| a.p99_ms), added(|a| a.p999_ms));
    let mut targets = vec![
        TargetCheck {
            what: format!("p99 added at {r} req/s (issue 20)"),
            goal: format!("<= {TARGET_PEER_ADDED_P99_MS:.2} ms"),
            measured: format!("{p99:.3} ms"),
            met: p99 <= TARGET_PEER_ADDED_P99_MS,
        },
        TargetCheck {
            what: format!("p99.9 added at {r} req/s (issue 20)"),
            goal: format!("<= {TARGET_PEER_ADDED_P999_MS:.1} ms"),
            measured: format!("{p999:.3} ms"),
            met: p999 <= TARGET_PEER_ADDED_P999_MS,
        },
    ];
    let weft = proxies.iter().filter(|p| p.scenario == Scenario::Weft);
    let peers = proxies.iter().filter(|p| p.scenario == Scenario::Peer);
    for (w, p) in weft.clone().zip(peers) {
        let (mine, theirs) = (w.cpu_at(rate).median, p.cpu_at(rate).median);
        targets.push(TargetCheck {
            what: format!(
                "CPU per 1,000 requests at {r} req/s, {} / {}",
                w.proxy, p.proxy
            ),
            goal: "<= 1x".into(),
            measured: format!("{:.2}x ({mine:.3} / {theirs:.3} CPU-s)", mine / theirs),
            met: mine <= theirs,
        });
    }
    if let Some(ratio) = new_connection.and_then(|c| c.p99_weft_over_peer.as_ref()) {
        targets.push(TargetCheck {
            what: "new connection per request, p99 weft / HAProxy pair".into(),
            goal: format!("<= {TARGET_NEW_CONNECTION_P99_OVER_PEER}x"),
            measured: format!("{:.2}x", ratio.median),
            met: ratio.median <= TARGET_NEW_CONNECTION_P99_OVER_PEER,
        });
    }
    let front = weft.take(1).find_map(|p| {
        let before = p.rss_before_idle_connections_mib?;
        let with = p.rss_idle_connections_mib?;
        Some((p, (with - before) * 1024.0 / idle_connections as f64))
    });
    if let Some((p, kib)) = front.filter(|_| idle_connections > 0) {
        targets.push(TargetCheck {
            what: format!("RSS per idle client connection, {}", p.proxy),
            goal: format!("<= {TARGET_IDLE_CONNECTION_KIB} KiB"),
            measured: format!("{kib:.1} KiB"),
            met: kib <= TARGET_IDLE_CONNECTION_KIB,
        });
    }
    targets
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

#[cfg(test)]
mod tests;
