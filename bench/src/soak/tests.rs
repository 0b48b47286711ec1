use std::path::PathBuf;
use std::time::Duration;

use weft_identity::SpiffeId;
use weft_policy::authz::{DefaultPolicy, authorize};
use weft_policy::load::{Config, compile};

use super::churn::config_hash;
use super::*;
use crate::load::{Episode, Progress, USER_AGENT, add_failure};
use crate::mesh::{RESOURCES_FILE, resources_yaml};

const PORT: u16 = 8080;

/// The control plane's resources with `mesh` as `mesh.yaml` and `route` as the soak's route
/// file, compiled by the control plane's own loader.
fn load(mesh: &str, route: Option<&str>) -> Config {
    let mut sources = vec![
        (PathBuf::from(RESOURCES_FILE), mesh.to_string()),
        (PathBuf::from(BACKENDS_FILE), backends_yaml(PORT)),
    ];
    if let Some(route) = route {
        sources.push((PathBuf::from(ROUTE_FILE), route.to_string()));
    }
    match compile(&sources, DefaultPolicy::default()) {
        Ok(config) => config,
        Err(errors) => panic!("{}", weft_policy::load::render_errors(&errors)),
    }
}

#[test]
fn every_edit_loads_and_still_admits_and_routes_the_load() {
    let web = SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap();
    let outsider = SpiffeId::parse("spiffe://weft.local/ns/batch/sa/report").unwrap();
    let get = http::Method::GET;
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::USER_AGENT, USER_AGENT.parse().unwrap());
    // The first policy is the mesh's own: the soak starts from what every benchmark serves.
    assert_eq!(policy_variants(PORT)[0].1, resources_yaml(PORT));
    for (what, policy) in policy_variants(PORT) {
        for (route_what, route) in route_variants(PORT) {
            let config = load(&policy, route.as_deref());
            let authz = config.workload_policy("default", "api");
            assert!(
                authorize(authz.port(PORT), Some(&web), &get, "/").is_allowed(),
                "{what} / {route_what}"
            );
            assert!(
                !authorize(authz.port(PORT), Some(&outsider), &get, "/").is_allowed(),
                "{what}: a policy that admits anyone would not test the edit"
            );
            let routes = config.service_routes("default", "api");
            match route {
                None => assert!(routes.rules.is_empty()),
                Some(_) => {
                    let rule = routes.find(&get, "/", &headers).unwrap();
                    let backends: Vec<&str> =
                        rule.backends.iter().map(|b| b.service.as_str()).collect();
                    assert_eq!(backends, ["api-v1", "api-v2"], "{route_what}");
                }
            }
        }
    }
}

#[test]
fn every_edit_changes_what_the_control_plane_reads() {
    let routes = route_variants(PORT);
    let policies = policy_variants(PORT);
    for (i, (_, a)) in routes.iter().enumerate() {
        for (_, b) in &routes[i + 1..] {
            assert_ne!(a, b);
        }
    }
    for (i, (_, a)) in policies.iter().enumerate() {
        for (_, b) in &policies[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn the_leaf_lifetime_makes_clients_renew_about_as_often_as_asked() {
    for every in [10, 60, 300] {
        let leaf = leaf_lifetime(Duration::from_secs(every));
        let renews_after = leaf.as_secs_f64() * RENEW_FRACTION;
        assert!(
            renews_after >= every as f64 && renews_after < every as f64 + 1.0,
            "{every}: {leaf:?}"
        );
    }
    assert_eq!(
        leaf_lifetime(Duration::from_millis(100)),
        Duration::from_secs(2)
    );
}

#[test]
fn the_windows_are_a_tenth_of_the_run_after_a_warm_up_of_at_most_two_minutes() {
    let w = Windows::of(1800.0, None);
    assert_eq!(w.warmup, 120.0);
    assert_eq!(w.baseline, (120.0, 300.0));
    assert_eq!(w.end, (1620.0, 1800.0));
    let w = Windows::of(60.0, None);
    assert_eq!(
        (w.warmup, w.baseline, w.end),
        (6.0, (6.0, 12.0), (54.0, 60.0))
    );
    assert_eq!(Windows::of(60.0, Some(20.0)).baseline, (20.0, 26.0));
}

#[test]
fn drift_compares_the_means_of_the_windows_and_ignores_gaps() {
    let w = Windows::of(100.0, None);
    let mut m = Memory::new("web proxy", true);
    // Warm-up growth (not compared), 1000 KiB after it, 1050 KiB at the end, a gap while the
    // process was not running, and the last sample a little past the end.
    m.samples = vec![
        (0.0, Some(500)),
        (5.0, Some(900)),
        (10.0, Some(990)),
        (15.0, Some(1010)),
        (20.0, Some(1000)),
        (50.0, None),
        (90.0, Some(1040)),
        (95.0, None),
        (100.2, Some(1060)),
    ];
    m.finish(&w);
    assert_eq!(m.baseline_kib, Some(1000.0));
    assert_eq!(m.end_kib, Some(1050.0));
    assert!((m.drift_percent.unwrap() - 5.0).abs() < 1e-9);
    assert_eq!(
        (m.first_kib, m.last_kib, m.peak_kib),
        (Some(500), Some(1060), Some(1060))
    );
    assert_eq!(mean_in(&m.samples, 40.0, 60.0), None);

    let mut none = Memory::new("api-2 proxy", false);
    none.samples = vec![(0.0, None), (100.0, None)];
    none.finish(&w);
    assert_eq!(none.drift_percent, None);
}

#[test]
fn failures_close_together_are_one_episode() {
    let mut episodes: Vec<Episode> = Vec::new();
    for (at, error) in [
        (10.0, "answered with status 503 (weft-error: no_endpoints)"),
        (10.5, "answered with status 503 (weft-error: no_endpoints)"),
        (10.4, "request: connection closed"),
        (11.4, "answered with status 503 (weft-error: no_endpoints)"),
        (30.0, "request: connection closed"),
    ] {
        add_failure(&mut episodes, at, error.to_string());
    }
    assert_eq!(episodes.len(), 2);
    let first = &episodes[0];
    assert_eq!(
        (first.from_seconds, first.to_seconds, first.failed),
        (10.0, 11.4, 4)
    );
    assert_eq!(
        first.errors["answered with status 503 (weft-error: no_endpoints)"],
        3
    );
    assert_eq!(first.errors["request: connection closed"], 1);
    assert_eq!((episodes[1].from_seconds, episodes[1].failed), (30.0, 1));

    // Bounded: past the last episode allowed, failures join it.
    let mut many = Vec::new();
    for k in 0..Progress::MAX_EPISODES + 5 {
        add_failure(&mut many, k as f64 * 10.0, format!("error {}", k % 30));
    }
    assert_eq!(many.len(), Progress::MAX_EPISODES);
    let last = many.last().unwrap();
    assert_eq!(last.failed, 6);
    assert!(last.errors.len() <= 21, "{:?}", last.errors);
}

#[test]
fn the_control_plane_pages_are_read() {
    let status =
        r#"{"valid": true, "revision": 3, "config": {"summary": {"hash": "ab12", "kinds": {}}}}"#;
    assert_eq!(config_hash(status), Some((true, "ab12".into())));
    let invalid = r#"{"valid": false, "config": {"summary": {"hash": "ab12"}}}"#;
    assert_eq!(config_hash(invalid), Some((false, "ab12".into())));
    assert_eq!(config_hash("nope"), None);

    let workloads = r#"[{"namespace": "default", "service": "web", "address": "127.0.0.1:2"},
                        {"namespace": "default", "service": "api", "address": "127.0.0.1:1"}]"#;
    assert_eq!(
        registered(workloads),
        Some(vec![
            "api 127.0.0.1:1".to_string(),
            "web 127.0.0.1:2".to_string()
        ])
    );
    assert_eq!(registered("{}"), None);
}

fn config(duration: u64) -> SoakConfig {
    SoakConfig {
        rate: 100,
        duration: Duration::from_secs(duration),
        connections: 8,
        body_size: 64,
        rotate_every: Duration::from_secs(10),
        edit_every: Duration::from_secs(5),
        endpoint_every: Duration::from_secs(20),
        sample_every: Duration::from_secs(2),
        warmup: None,
        max_drift_percent: 5.0,
        weft: None,
    }
}

#[test]
fn settings_that_cannot_make_a_soak_are_refused() {
    assert_eq!(check(&config(60)), Ok(()));
    assert!(
        check(&config(10))
            .unwrap_err()
            .contains("fewer than 10 samples")
    );
    let mut c = config(60);
    c.rate = 0;
    assert!(check(&c).unwrap_err().contains("--rate"));
    let mut c = config(60);
    c.warmup = Some(Duration::from_secs(50));
    assert!(check(&c).unwrap_err().contains("--warmup"));
    assert!(check(&config(25 * 3600)).is_err());
}

/// A report of a 100-second soak whose web proxy grew by `web_drift` percent, with
/// `failures` failed requests and the renewals each client made.
fn report(web_drift: f64, failures: &[(f64, &str)], renewals: f64) -> SoakReport {
    let mut cfg = config(100);
    cfg.rotate_every = Duration::from_secs(20);
    let mut load = crate::report::tests::run_at(
        0,
        crate::report::Scenario::Weft,
        Some(100),
        2.0,
        100.0,
        0.0,
        0.0,
    )
    .load;
    load.status_errors = failures.len() as u64;
    let mut episodes = Vec::new();
    for (at, error) in failures {
        add_failure(&mut episodes, *at, error.to_string());
    }
    let flat = |kib: u64| {
        (0..=50)
            .map(|k| (k as f64 * 2.0, Some(kib)))
            .collect::<Vec<_>>()
    };
    let mut memory: Vec<Memory> = [IDENTITY, CONTROL_PLANE, WEB, API]
        .iter()
        .map(|c| Memory::new(c, true))
        .chain([Memory::new(SECOND_API, false)])
        .collect();
    for m in &mut memory {
        m.samples = flat(10_240);
    }
    // web: 10 MiB after the warm-up, `web_drift` % more at the end.
    for (t, k) in &mut memory[2].samples {
        if *t >= 90.0 {
            *k = Some((10_240.0 * (1.0 + web_drift / 100.0)) as u64);
        }
    }
    // api-2: down half the time.
    for (i, (_, k)) in memory[4].samples.iter_mut().enumerate() {
        if i % 10 >= 5 {
            *k = None;
        }
    }
    let soak = Soak {
        memory,
        requests: vec![(0.0, 0, 0), (100.0, 10_000, failures.len() as u64)],
        renewals: vec![(WEB, renewals), (API, renewals)],
        edits: churn::Edits::new(PORT),
        registered: None,
    };
    let log = Log {
        t0: std::time::Instant::now(),
        events: vec![
            Event {
                at: 39.0,
                what: "control plane: api 127.0.0.1:1 no longer registered".into(),
            },
            Event {
                at: 60.0,
                what: "edit 12: route → no route".into(),
            },
        ],
        problems: Vec::new(),
    };
    let lives = vec![Life {
        number: 1,
        started_at: 0.0,
        ready_after: Some(0.1),
        requests_served: Some(500.0),
        renewals: Some(1.0),
        sigterm_at: Some(10.0),
        drained_in: Some(0.1),
        exit: Some("exit status: 0".into()),
    }];
    // Issued: web's, api's, api-2's and the control plane's (as many as each proxy's).
    let issued = Some(renewals * 3.0 + 1.0);
    SoakReport::new(
        &cfg,
        Duration::from_secs(29),
        std::path::Path::new("weft"),
        load,
        episodes,
        soak,
        issued,
        lives,
        log,
    )
}

#[test]
fn a_soak_passes_without_failures_within_the_drift_and_with_the_renewals() {
    let r = report(4.0, &[], 5.0);
    assert!(r.verdict.passed, "{:?}", r.verdict);
    assert_eq!(r.renewals.expected_at_least, 4);
    assert_eq!(
        r.renewals.by_process,
        [
            (WEB.to_string(), 5.0),
            (API.to_string(), 5.0),
            (CONTROL_PLANE.to_string(), 5.0)
        ]
    );
    let md = r.markdown("soak.svg", "soak.json");
    assert!(md.contains("**Passed**"), "{md}");
    assert!(md.contains("![VmRSS over time](soak.svg)"), "{md}");
    assert!(md.contains("| web proxy | 10.0 | 10.0 | 10.4 |"), "{md}");
    assert!(md.contains("not judged"), "{md}");
    assert!(!md.contains("## Failed requests"), "{md}");
    // One line per process; the second api's broken where it was down (5 lives of 5 samples).
    let svg = r.plot();
    assert_eq!(svg.matches("<polyline").count(), 4 + 6, "{svg}");
    assert_eq!(
        svg.matches("stroke-width=\"3\"").count(),
        5,
        "a legend entry per process"
    );
}

#[test]
fn a_soak_fails_on_a_failed_request_a_drift_or_too_few_renewals() {
    let r = report(6.0, &[], 5.0);
    assert!(!r.verdict.passed);
    assert_eq!(r.verdict.reasons.len(), 1, "{:?}", r.verdict);
    assert!(
        r.verdict.reasons[0].contains("web proxy's memory drifted +6.0 %"),
        "{:?}",
        r.verdict
    );

    let r = report(0.0, &[], 3.0);
    assert_eq!(
        r.verdict.reasons.len(),
        3,
        "web, api, control plane: {:?}",
        r.verdict
    );

    let lapse = "answered with status 503 (weft-error: no_endpoints)";
    let r = report(
        0.0,
        &[
            (39.5, lapse),
            (39.6, lapse),
            (65.0, "request: connection closed"),
        ],
        5.0,
    );
    assert_eq!(r.failed, 3);
    assert_eq!(r.verdict.reasons.len(), 1, "{:?}", r.verdict);
    assert!(r.verdict.reasons[0].starts_with("3 requests failed (3 answered non-2xx"));
    let md = r.markdown("soak.svg", "soak.json");
    assert!(md.contains("**FAILED**: 3 requests failed"), "{md}");
    assert!(md.contains("3 failed, in 2 episodes"), "{md}");
    assert!(
        md.contains(&format!(
            "- 39.50–39.60 s, 2 failed: 2 × `{lapse}`. Before: 39.0 s control plane: api 127.0.0.1:1 no longer registered."
        )),
        "{md}"
    );
    assert!(
        md.contains("Before: 60.0 s edit 12: route → no route."),
        "{md}"
    );
}
