//! Tests of the stack report: full against minimal paired repeat by repeat, and the line on
//! the route's switches.

use super::*;
use crate::report::tests::{mtls_passed, run, settings};

#[test]
fn the_stack_ratio_pairs_full_and_minimal_runs_of_a_repeat() {
    use Scenario::{Direct, Full, Minimal};
    let runs = vec![
        run(0, Direct, 0.4, 0.0, 0.0),
        run(0, Minimal, 0.7, 0.100, 0.090),
        run(0, Full, 0.8, 0.105, 0.090),
        run(1, Full, 0.9, 0.120, 0.099),
        run(1, Minimal, 0.7, 0.100, 0.090),
        run(1, Direct, 0.5, 0.0, 0.0),
        run(2, Direct, 0.4, 0.0, 0.0),
        run(2, Minimal, 0.6, 0.110, 0.090),
        run(2, Full, 0.7, 0.1232, 0.090),
    ];
    let web = cpu_ratio(&runs, WEB_PROXY);
    assert!((web.median - 1.12).abs() < 1e-9, "{web:?}");
    assert!((web.min - 1.05).abs() < 1e-9 && (web.max - 1.20).abs() < 1e-9);
    assert!((cpu_ratio(&runs, API_PROXY).max - 1.10).abs() < 1e-9);

    let report = StackReport::new(
        settings(1000, vec![1000]),
        String::new(),
        runs,
        vec![],
        mtls_passed(),
    );
    // p99 added against direct, repeat by repeat: 0.3, 0.2, 0.2 (minimal); 0.4, 0.4, 0.3.
    let added = |p: &StackPath| p.added.as_ref().unwrap().p99_ms.median;
    assert!((added(&report.minimal) - 0.2).abs() < 1e-9);
    assert!((added(&report.full) - 0.4).abs() < 1e-9);
    assert!(report.direct.added.is_none() && report.direct.web_cpu_seconds_per_1000.is_none());
    assert!((report.full_minus_minimal.p99_ms.median - 0.1).abs() < 1e-9);
    // +12 %: missed.
    assert!(!report.targets[0].met);
    let table = report.markdown();
    assert!(table.contains("| web (outbound) CPU-s per 1,000 req | | 0.100 (0.100–0.110) |"));
    assert!(table.contains("MISSED"), "{table}");
}

#[test]
fn route_switches_are_summed_up() {
    let switch = |to, proxy_seconds, route_metric| RouteSwitch {
        to,
        control_plane_seconds: 0.2,
        proxy_seconds,
        route_metric,
    };
    let seen = route_summary(&[
        switch(Scenario::Full, Some(0.3), true),
        switch(Scenario::Minimal, Some(0.5), true),
    ]);
    assert_eq!(
        seen,
        "route: switched 2 time(s); the control plane loaded each change within 0.20–0.20 s; \
         web's weft_route_requests_total showed 2 of them within 0.30–0.50 s."
    );
    let fixed = route_summary(&[switch(Scenario::Full, None, false)]);
    assert!(
        fixed.contains("web exports no weft_route_requests_total"),
        "{fixed}"
    );
    let unseen = route_summary(&[switch(Scenario::Full, None, true)]);
    assert!(unseen.contains("1 NOT SEEN"), "{unseen}");
}
