use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::Layer;
use weft_policy::routes::{Abort, Delay, Fault};
use weft_policy::wire::Dur;

use super::*;
use crate::metrics::ProxyMetrics;
use crate::testing::{call, metric, metrics, request, route, rule, status};

/// A route injecting an abort with 503 and a 100 ms delay, each for the given percentage.
fn faulty(abort: f64, delay: f64) -> Arc<Route> {
    let mut r = rule("r", &[("api", 1)]);
    r.fault = Some(Fault {
        abort: Some(Abort {
            http_status: 503,
            percentage: abort,
        }),
        delay: Some(Delay {
            fixed_delay: Dur(Duration::from_millis(100)),
            percentage: delay,
        }),
    });
    route(&r)
}

/// The fault layer over an app that answers 200 at once; the app's call count.
fn faults(
    metrics: &Arc<ProxyMetrics>,
) -> (
    impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = tower::service_fn(move |_req: Request<Body>| {
        counted.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, BoxError>(status(200)) }
    });
    (InjectFaultsLayer::new(metrics.clone()).layer(app), calls)
}

fn faults_counted(metrics: &ProxyMetrics, kind: &str) -> u64 {
    metric(
        metrics,
        "weft_route_faults_total",
        &[
            ("dst_service", "default/api"),
            ("route", "default/api"),
            ("rule", "r"),
            ("kind", kind),
        ],
    )
}

#[tokio::test]
async fn an_abort_answers_the_configured_status_without_calling_the_app() {
    let m = metrics();
    let (mut svc, calls) = faults(&m);
    let route = faulty(100.0, 0.0);
    for _ in 0..3 {
        let rsp = call(&mut svc, request(&route)).await.unwrap();
        assert_eq!(rsp.status(), 503);
        assert_eq!(rsp.headers()[FAULT_HEADER], "abort");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(faults_counted(&m, "abort"), 3);
    assert_eq!(faults_counted(&m, "delay"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_delay_answers_after_the_delay_and_says_so() {
    let m = metrics();
    let (mut svc, calls) = faults(&m);
    let t0 = Instant::now();
    let rsp = call(&mut svc, request(&faulty(0.0, 100.0))).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(100));
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()[FAULT_HEADER], "delay");
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(faults_counted(&m, "delay"), 1);

    // A route without faults passes at once, unmarked.
    let t0 = Instant::now();
    let rsp = call(&mut svc, request(&route(&rule("r", &[("api", 1)]))))
        .await
        .unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert!(!rsp.headers().contains_key(FAULT_HEADER));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn ten_percent_faults_hit_about_ten_percent_of_requests() {
    let m = metrics();
    let (mut svc, calls) = faults(&m);
    let route = faulty(10.0, 10.0);
    let n = 5_000;
    let (mut delayed, mut aborted) = (0, 0);
    for _ in 0..n {
        let t0 = Instant::now();
        let rsp = call(&mut svc, request(&route)).await.unwrap();
        let marks: Vec<_> = rsp.headers().get_all(FAULT_HEADER).iter().collect();
        let delay = marks.iter().any(|v| *v == "delay");
        let abort = marks.iter().any(|v| *v == "abort");
        assert_eq!(delay, t0.elapsed() == Duration::from_millis(100));
        assert_eq!(abort, rsp.status() == 503);
        delayed += usize::from(delay);
        aborted += usize::from(abort);
    }
    // Binomial: sigma = sqrt(0.1 × 0.9 / 5000) = 0.42 points; 3 points is 7 sigma.
    for (kind, count) in [("delay", delayed), ("abort", aborted)] {
        let rate = count as f64 / n as f64;
        assert!((rate - 0.10).abs() <= 0.03, "{kind}: {count} of {n}");
        assert_eq!(faults_counted(&m, kind), count as u64);
    }
    assert_eq!(calls.load(Ordering::Relaxed), n - aborted);
}
