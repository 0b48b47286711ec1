//! Tests of the data model (spreads, runs, pairing repeat by repeat) and of `thousands`, and
//! the runs, settings and reports the other tests of the benchmarks build on.

use super::*;
use crate::procstat::Memory;

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
pub(super) fn run(repeat: usize, scenario: Scenario, p99_ms: f64, web: f64, api: f64) -> Run {
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

pub(super) fn mtls_passed() -> MtlsCheck {
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
pub(super) fn mesh_runs(peer: bool) -> Vec<Run> {
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

pub(super) fn footprint(
    proxy: &str,
    scenario: Scenario,
    idle_kib: u64,
    peak_kib: u64,
) -> ProxyFootprint {
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

pub(super) fn mesh_report(peer: bool) -> MeshReport {
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
fn thousands_are_separated() {
    assert_eq!(thousands(0.4), "0");
    assert_eq!(thousands(999.0), "999");
    assert_eq!(thousands(1000.0), "1,000");
    assert_eq!(thousands(1234567.8), "1,234,568");
}
