//! Tests of the mesh report: the new-connection and idle-connection sections, the targets
//! judged at the headline rate, the tables with and without the HAProxy pair, the peer check.

use super::*;
use crate::report::tests::{footprint, mesh_report, mesh_runs, mtls_passed, run_at, settings};
use crate::report::{API_PROXY, HAPROXY_API, HAPROXY_WEB, WEB_PROXY};

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
    // Targets are weft's: the HAProxies are only what weft is measured against.
    assert!(
        report
            .targets
            .iter()
            .filter(|t| t.what.contains("haproxy"))
            .all(|t| t.what.contains(" / haproxy")),
        "{:?}",
        report.targets
    );

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
