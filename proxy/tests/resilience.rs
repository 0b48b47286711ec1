//! Resilience and traffic control through real proxies on loopback: `web`'s outbound proxy
//! routes, splits, injects faults, retries within its budget, times out, balances and ejects
//! failing endpoints; the endpoints are real `api` proxies (mTLS) in front of test apps.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use weft_policy::authz::DefaultPolicy;
use weft_runtime::testing::{eventually, metric_sum};

const LIMIT: Duration = Duration::from_secs(120);

fn metric(p: &TestProxy, name: &str, labels: &[&str]) -> f64 {
    metric_sum(&p.metrics(), name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_a_fifth_of_failures_into_success_within_the_budget() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = test_app("api", Duration::ZERO, 20).await;
    let (_api, web) = api_with_rule(
        &mesh,
        &[&app],
        "all",
        r#"
  retry: {attempts: 3, codes: [503], budget: {ratio: 0.2, minPerSecond: 10, ttl: 60s}}
"#,
    )
    .await;
    let n = 1_000;
    let replies = drive(web.outbound, "http://api/", n, 8, &[], LIMIT).await;
    let ok = count(&replies, |r| r.status == 200);
    assert!(ok * 1000 >= n * 995, "success {ok}/{n}");

    let labels = ["dst_service=\"default/api\"", "rule=\"all\""];
    let taken = metric(
        &web,
        "weft_route_retries_total",
        &[&labels[..], &["outcome=\"taken\""]].concat(),
    );
    let requests = metric(&web, "weft_route_requests_total", &labels);
    assert_eq!(requests, n as f64);
    eprintln!(
        "20 % failing: {ok}/{n} succeeded, {taken} retries, app saw {}",
        app.served()
    );
    // About a quarter of requests needed a retry (20 %, 4 %, 0.8 %...): all of them within
    // the budget of 20 % of requests plus 10/s over the 60 s window.
    assert!(taken > 0.1 * n as f64, "retries taken: {taken}");
    assert!(taken <= 0.2 * requests + 600.0, "retries taken: {taken}");
    // The app saw each request once plus each retry.
    assert_eq!(app.served() as f64, n as f64 + taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gets_at_most_the_budget_in_retries() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = test_app("api", Duration::ZERO, 100).await;
    // Three retries per request would be 4× the load; the budget allows 20 % more plus
    // 1/s × 60 s.
    let (_api, web) = api_with_rule(
        &mesh,
        &[&app],
        "all",
        r#"
  retry: {attempts: 3, conditions: [5xx], budget: {ratio: 0.2, minPerSecond: 1, ttl: 60s}}
"#,
    )
    .await;
    let n = 500;
    let replies = drive(web.outbound, "http://api/", n, 8, &[], LIMIT).await;
    assert_eq!(count(&replies, |r| r.status == 503), n);
    let served = app.served() as f64;
    let bound = 1.2 * n as f64 + 60.0;
    eprintln!("100 % failing: {n} requests, the backend saw {served} (bound {bound})");
    assert!(
        served <= bound,
        "the backend saw {served} requests (bound {bound})"
    );
    // The budget was used, then refused.
    assert!(served >= 1.2 * n as f64, "the backend saw {served}");
    let skipped = metric(
        &web,
        "weft_route_retries_total",
        &["outcome=\"skipped_budget\""],
    );
    assert!(skipped >= 0.5 * n as f64, "skipped by budget: {skipped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoints_get_less_traffic_and_dead_ones_are_ejected_until_they_return() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let fast1 = test_app("fast-1", Duration::from_millis(5), 0).await;
    let fast2 = test_app("fast-2", Duration::from_millis(5), 0).await;
    let slow = test_app("slow", Duration::from_millis(50), 0).await;
    let (mut api, web) = api_with_rule(
        &mesh,
        &[&fast1, &fast2, &slow],
        "all",
        r#"
  retry: {attempts: 2, conditions: [connect-failure, 5xx]}
  circuitBreaker: {consecutiveFailures: 3, ejectionTime: 500ms}
"#,
    )
    .await;
    let replies = drive(web.outbound, "http://api/", 600, 6, &[], LIMIT).await;
    assert_eq!(count(&replies, |r| r.status == 200), 600);
    let by = |name: &str| count(&replies, |r| r.app.as_deref() == Some(name));
    let (f1, f2, s) = (by("fast-1"), by("fast-2"), by("slow"));
    eprintln!("fast-1 {f1}, fast-2 {f2}, slow {s}");
    assert!(s * 3 < f1.min(f2), "fast-1 {f1}, fast-2 {f2}, slow {s}");

    // fast-2's workload dies: connect failures are retried elsewhere, it is ejected, and
    // then nobody sees an error.
    let dead = api.remove(1);
    let dead_addr = dead.inbound;
    dead.stop().await;
    let before = drive(web.outbound, "http://api/", 100, 4, &[], LIMIT).await;
    assert_eq!(count(&before, |r| r.status == 200), 100, "{before:?}");
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &web,
            "weft_balance_ejections_total",
            &[]
        ) >= 1.0)
        .await,
        "{}",
        web.metrics()
    );
    let after = drive(web.outbound, "http://api/", 300, 4, &[], LIMIT).await;
    assert_eq!(count(&after, |r| r.status == 200), 300, "{after:?}");
    assert_eq!(count(&after, |r| r.app.as_deref() == Some("fast-2")), 0);

    // Back at the same address: a probe after its ejection brings it back into service.
    let _back = mesh
        .proxy_at(
            "api",
            fast2.addr.port(),
            default_policy(DefaultPolicy::AllAuthenticated),
            dead_addr,
        )
        .await;
    let served = fast2.served();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fast2.served() < served + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fast-2 got no traffic again"
        );
        let r = drive(web.outbound, "http://api/", 50, 2, &[], LIMIT).await;
        assert_eq!(count(&r, |r| r.status == 200), 50, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_over_10000_requests_and_mobile_goes_to_v3() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let v1 = test_app("api-v1", Duration::ZERO, 0).await;
    let v2 = test_app("api-v2", Duration::ZERO, 0).await;
    let v3 = test_app("api-v3", Duration::ZERO, 0).await;
    let _v1 = api_endpoints(&mesh, "api-v1", &[&v1]).await;
    let _v2 = api_endpoints(&mesh, "api-v2", &[&v2]).await;
    let _v3 = api_endpoints(&mesh, "api-v3", &[&v3]).await;
    let web = mesh.client_proxy("web").await;
    let routes = |w1: u32, w2: u32| {
        rules(&format!(
            r#"
- route: default/api
  name: mobile
  matches: [{{headers: [{{name: user-agent, type: RegularExpression, value: ".*[Mm]obile.*"}}]}}]
  backends: [{{namespace: default, service: api-v3, weight: 1}}]
- route: default/api
  name: split
  backends: [{{namespace: default, service: api-v1, weight: {w1}}}, {{namespace: default, service: api-v2, weight: {w2}}}]
"#
        ))
    };
    mesh.resolver.set_routes("api", routes(90, 10));
    let n = 10_000;
    let desktop = [("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")];
    let replies = drive(web.outbound, "http://api/", n, 16, &desktop, LIMIT).await;
    assert_eq!(count(&replies, |r| r.status == 200), n);
    let v1_share = count(&replies, |r| r.app.as_deref() == Some("api-v1")) as f64 / n as f64;
    eprintln!("api-v1 share {:.2} %", v1_share * 100.0);
    assert!(
        (v1_share - 0.9).abs() <= 0.02,
        "api-v1 got {:.2} %",
        v1_share * 100.0
    );
    assert_eq!(count(&replies, |r| r.app.as_deref() == Some("api-v3")), 0);
    let m = web.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "weft_route_requests_total",
            &["rule=\"split\"", "backend=\"default/api-v2\""]
        ) + metric_sum(
            &m,
            "weft_route_requests_total",
            &["rule=\"split\"", "backend=\"default/api-v1\""]
        ),
        n as f64,
        "{m}"
    );

    let mobile = [("user-agent", "Mozilla/5.0 (iPhone) Mobile/15E148")];
    let replies = drive(web.outbound, "http://api/", 200, 4, &mobile, LIMIT).await;
    assert_eq!(count(&replies, |r| r.app.as_deref() == Some("api-v3")), 200);

    // New weights apply live: api-v1 at weight 0 drains.
    mesh.resolver.set_routes("api", routes(0, 100));
    let replies = drive(web.outbound, "http://api/", 300, 4, &desktop, LIMIT).await;
    assert_eq!(count(&replies, |r| r.app.as_deref() == Some("api-v2")), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_aborts_and_delays_hit_their_percentages_and_are_marked() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = test_app("api", Duration::ZERO, 0).await;
    let (_api, web) = api_with_rule(
        &mesh,
        &[&app],
        "faulty",
        r#"
  retry: {attempts: 2}
  fault: {abort: {httpStatus: 503, percentage: 10}, delay: {fixedDelay: 100ms, percentage: 10}}
"#,
    )
    .await;
    let n = 2_000;
    let replies = drive(web.outbound, "http://api/", n, 32, &[], LIMIT).await;
    let aborted: Vec<_> = replies
        .iter()
        .filter(|r| r.faults.iter().any(|f| f == "abort"))
        .collect();
    let delayed: Vec<_> = replies
        .iter()
        .filter(|r| r.faults.iter().any(|f| f == "delay"))
        .collect();
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    assert!(
        (pct(aborted.len()) - 10.0).abs() <= 3.0,
        "aborted {:.1} %",
        pct(aborted.len())
    );
    assert!(
        (pct(delayed.len()) - 10.0).abs() <= 3.0,
        "delayed {:.1} %",
        pct(delayed.len())
    );
    eprintln!(
        "aborted {:.1} %, delayed {:.1} %",
        pct(aborted.len()),
        pct(delayed.len())
    );
    assert!(aborted.iter().all(|r| r.status == 503));
    assert!(
        delayed
            .iter()
            .all(|r| r.elapsed >= Duration::from_millis(100))
    );
    // Everything not aborted succeeded; the aborts reached the application as they are (not
    // retried away) and never the backend.
    assert_eq!(count(&replies, |r| r.status == 200), n - aborted.len());
    assert_eq!(app.served() as usize, n - aborted.len());
    let m = web.metrics();
    assert_eq!(
        metric_sum(&m, "weft_route_faults_total", &["kind=\"abort\""]),
        aborted.len() as f64,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "weft_route_faults_total", &["kind=\"delay\""]),
        delayed.len() as f64,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_answers_504_in_time() {
    let mesh = Mesh::new(Duration::from_secs(3600)).await;
    let app = test_app("api", Duration::from_secs(1), 0).await;
    let (_api, web) = api_with_rule(
        &mesh,
        &[&app],
        "slow",
        r#"
  timeouts: {request: 200ms}
"#,
    )
    .await;
    let replies = drive(web.outbound, "http://api/", 5, 1, &[], LIMIT).await;
    for r in &replies {
        eprintln!("timeout after {:?}", r.elapsed);
        assert_eq!(
            (r.status, r.error.as_deref()),
            (504, Some("timeout")),
            "{r:?}"
        );
        assert!(
            r.elapsed >= Duration::from_millis(200) && r.elapsed < Duration::from_millis(800),
            "{r:?}"
        );
    }
    let m = web.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "weft_route_responses_total",
            &["rule=\"slow\"", "status_class=\"5xx\""]
        ),
        5.0,
        "{m}"
    );
    // An injected delay counts against the route timeout: a 400 ms delay on a route with a
    // 200 ms timeout is a 504 at 200 ms (the backend is never called).
    let fast = test_app("fast", Duration::ZERO, 0).await;
    let _fast = api_endpoints(&mesh, "fast", &[&fast]).await;
    mesh.resolver.set_routes(
        "fast",
        one_rule(
            "fast",
            "delayed",
            r#"
  timeouts: {request: 200ms}
  fault: {delay: {fixedDelay: 400ms, percentage: 100}}
"#,
        ),
    );
    let replies = drive(web.outbound, "http://fast/", 3, 1, &[], LIMIT).await;
    for r in &replies {
        assert_eq!(
            (r.status, r.error.as_deref()),
            (504, Some("timeout")),
            "{r:?}"
        );
        assert!(r.elapsed < Duration::from_millis(390), "{r:?}");
    }
    assert_eq!(fast.served(), 0);
}
