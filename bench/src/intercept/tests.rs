use std::time::Duration;

use super::netns::{is_stale, stale_namespace_pid};
use super::run::whole_ms;
use super::*;
use crate::report::WEB_PROXY;
use crate::report::tests::{run_at, settings};

#[test]
fn the_effective_uid_is_the_second_field() {
    let status = "Name:\tweft-bench\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
    assert_eq!(effective_uid(status), Some(0));
    assert_eq!(effective_uid("Uid:\t0\t2102\t0\t0\n"), Some(2102));
    assert_eq!(effective_uid("Name:\tx\n"), None);
}

#[test]
fn only_our_namespaces_are_taken_for_stale_ones() {
    assert_eq!(stale_namespace_pid("weft-bench-c-1234"), Some(1234));
    assert_eq!(stale_namespace_pid("weft-bench-a-77"), Some(77));
    for other in [
        "weft-ic-a-1234-0",
        "weft-bench-x-1234",
        "weft-bench-c-",
        "weft-bench-c-12x",
        "prod",
    ] {
        assert_eq!(stale_namespace_pid(other), None, "{other}");
    }
}

#[test]
fn a_namespace_of_a_gone_benchmark_or_of_a_former_holder_of_our_pid_is_stale() {
    let (alive, gone) = (|_: u32| true, |_: u32| false);
    assert!(is_stale("weft-bench-c-77", 1000, gone));
    assert!(!is_stale("weft-bench-c-77", 1000, alive));
    // Our PID, before we made ours: left by an earlier process with it.
    assert!(is_stale("weft-bench-a-1000", 1000, alive));
    assert!(!is_stale("prod", 1000, gone));
}

const WEB_METRICS: &str = "\
# TYPE weft_proxy_requests_total counter
weft_proxy_requests_total{direction=\"outbound\",peer=\"spiffe://weft.local/ns/default/sa/api\",dst_service=\"default/api\",tls=\"true\"} 120
weft_proxy_requests_total{direction=\"outbound\",peer=\"none\",dst_service=\"unmeshed\",tls=\"false\"} 3
weft_proxy_requests_total{direction=\"inbound\",peer=\"none\",dst_service=\"default/web\",tls=\"false\"} 1
weft_proxy_errors_total{direction=\"outbound\",reason=\"detect_timeout\"} 32
weft_proxy_errors_total{direction=\"outbound\",reason=\"loop\"} 1
";
const API_METRICS: &str = "\
weft_proxy_requests_total{direction=\"inbound\",peer=\"spiffe://weft.local/ns/default/sa/web\",dst_service=\"default/api\",tls=\"true\"} 119
weft_proxy_requests_total{direction=\"inbound\",peer=\"none\",dst_service=\"default/api\",tls=\"false\"} 4
weft_proxy_tls_handshakes_total{direction=\"inbound\",peer=\"spiffe://weft.local/ns/default/sa/web\",tls_version=\"TLSv1_3\"} 2
";

#[test]
fn counters_are_read_by_direction_service_peer_and_tls() {
    let c = Counters::read(WEB_METRICS, API_METRICS);
    assert_eq!(
        c,
        Counters {
            client_outbound_mtls: 120.0,
            client_unmeshed: 3.0,
            app_inbound_mtls: 119.0,
            app_inbound_handshakes: 2.0,
            all_requests: 124.0 + 123.0,
            client_detect_timeouts: 32.0,
        }
    );
    assert_eq!(c.since(&c), Counters::default());
}

fn grew(mtls: f64, unmeshed: f64, all: f64) -> Counters {
    Counters {
        client_outbound_mtls: mtls,
        client_unmeshed: unmeshed,
        app_inbound_mtls: mtls,
        app_inbound_handshakes: 0.0,
        all_requests: all,
        client_detect_timeouts: 0.0,
    }
}

#[test]
fn the_probes_pass_only_when_meshed_is_mtls_through_both_and_direct_through_neither() {
    let ok = InterceptCheck::from_probes(20, grew(20.0, 0.0, 40.0), grew(0.0, 0.0, 0.0), 1.0);
    assert!(ok.probe_ok && ok.detail.is_empty(), "{ok:?}");
    // Not yet concluded over the runs.
    assert!(!ok.ok);

    let unmeshed = InterceptCheck::from_probes(20, grew(0.0, 20.0, 40.0), grew(0.0, 0.0, 0.0), 0.0);
    assert!(!unmeshed.probe_ok);
    let all = unmeshed.detail.join("; ");
    assert!(all.contains("web counted 0 outbound mTLS"), "{all}");
    assert!(all.contains("api counted 0 inbound mTLS"), "{all}");
    assert!(all.contains("20 requests unmeshed"), "{all}");
    assert!(all.contains("no inbound TLS handshake"), "{all}");

    let not_direct =
        InterceptCheck::from_probes(20, grew(20.0, 0.0, 40.0), grew(0.0, 0.0, 40.0), 1.0);
    assert!(!not_direct.probe_ok);
    assert!(
        not_direct.detail[0].contains("the direct path is not direct"),
        "{not_direct:?}"
    );
}

#[test]
fn the_runs_pass_when_both_proxies_counted_every_weft_request_over_mtls() {
    let runs = vec![
        run_at(0, Scenario::Direct, Some(500), 0.2, 500.0, 0.0, 0.0),
        run_at(0, Scenario::Weft, Some(500), 0.5, 500.0, 0.05, 0.04),
    ];
    let measured = runs[1].load.requests as f64;
    let before = grew(100.0, 0.0, 200.0);
    let probe = || InterceptCheck::from_probes(20, grew(20.0, 0.0, 40.0), grew(0.0, 0.0, 0.0), 1.0);

    let mut c = probe();
    c.conclude_runs(&before, &grew(100.0 + measured + 50.0, 0.0, 0.0), &runs);
    assert!(c.ok, "{c:?}");
    assert_eq!(c.weft_requests_measured, measured as u64);
    assert!(
        c.line().starts_with("Interception check (passed)"),
        "{}",
        c.line()
    );

    let mut c = probe();
    c.conclude_runs(&before, &grew(100.0 + measured - 1.0, 0.0, 0.0), &runs);
    assert!(!c.ok);
    assert!(c.line().contains("fewer than the"), "{}", c.line());

    let mut c = probe();
    c.conclude_runs(&before, &grew(100.0 + measured, 5.0, 0.0), &runs);
    assert!(!c.ok);
    assert!(
        c.line().contains("5 requests unmeshed during the runs"),
        "{}",
        c.line()
    );

    // Connections tunnelled as opaque after a detection timeout: said in so many words.
    let mut c = probe();
    let mut after = grew(100.0 + measured, 0.0, 0.0);
    after.client_detect_timeouts = 32.0;
    c.conclude_runs(&before, &after, &runs);
    assert!(!c.ok);
    assert!(
        c.line().contains("detection timed out on 32"),
        "{}",
        c.line()
    );
}

#[test]
fn the_report_pairs_weft_with_direct_and_shows_each_proxys_cpu() {
    let mut runs = vec![];
    for (repeat, weft_p99) in [(0, 0.9), (1, 0.7), (2, 0.8)] {
        runs.push(run_at(
            repeat,
            Scenario::Direct,
            Some(1000),
            0.3,
            1000.0,
            0.0,
            0.0,
        ));
        runs.push(run_at(
            repeat,
            Scenario::Weft,
            Some(1000),
            weft_p99,
            1000.0,
            0.06,
            0.05,
        ));
        runs.push(run_at(
            repeat,
            Scenario::Direct,
            None,
            0.0,
            20_000.0,
            0.0,
            0.0,
        ));
        runs.push(run_at(
            repeat,
            Scenario::Weft,
            None,
            0.0,
            5_000.0,
            0.04,
            0.03,
        ));
    }
    let mut check =
        InterceptCheck::from_probes(20, grew(20.0, 0.0, 40.0), grew(0.0, 0.0, 0.0), 1.0);
    check.conclude_runs(&Counters::default(), &grew(1e9, 0.0, 0.0), &runs);
    let r = InterceptReport::new(settings(1000, vec![1000]), runs, check);
    let added = &r.comparisons[0].weft_added;
    // Paired repeat by repeat: 0.6, 0.4, 0.5.
    assert!((added.p99_ms.median - 0.5).abs() < 1e-9, "{added:?}");
    assert!((r.throughput.weft_over_direct.median - 0.25).abs() < 1e-9);
    assert_eq!(r.proxies[0].proxy, WEB_PROXY);
    assert!((r.proxies[0].cpu_seconds_per_1000[0].value.median - 0.06).abs() < 1e-9);
    assert!((r.proxies[1].cpu_seconds_per_1000_at_max.median - 0.03).abs() < 1e-9);

    let md = r.markdown();
    assert!(
        md.contains("| 1,000 | p99 | 0.300 | 0.800 (0.700–0.900) | +0.500 (+0.400–+0.600) |"),
        "{md}"
    );
    assert!(
        md.contains("| max | throughput, req/s | 20,000 | 5,000 |  | ×0.25 |"),
        "{md}"
    );
    assert!(md.contains("| web (outbound) | 0.060 | 0.040 |"), "{md}");
    assert!(md.contains("Interception check (passed)"), "{md}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["bench"], "intercept");
    assert_eq!(json["topology"]["direct_port"], DIRECT_PORT);
    assert_eq!(json["check"]["ok"], true);
}

#[test]
fn the_cpu_window_is_built_from_the_load_generators_whole_milliseconds() {
    let start = Duration::from_micros(1_700_000_000_123_900);
    assert_eq!(whole_ms(start), Duration::from_millis(1_700_000_000_123));
    let warmup = Duration::from_micros(1_500_400);
    assert_eq!(whole_ms(warmup), Duration::from_millis(1500));
    // What `--warmup` carries parses back to the same duration the window is built from.
    let arg = format!("{}ms", whole_ms(warmup).as_millis());
    assert_eq!(
        weft_runtime::config::parse_duration(&arg),
        Ok(whole_ms(warmup))
    );
}
