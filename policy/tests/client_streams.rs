//! The client's streams on its one connection to the control plane (issue 16, hole 3): a
//! watch's stream ends when its last receiver is dropped, watches past the stream budget wait
//! their turn without holding up registrations, and one given up while waiting holds up no
//! other.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use weft_policy::client::{MAX_WATCH_STREAMS, Watched};
use weft_policy::registry::{Registration, ServiceEndpoints};
use weft_policy::server::Settings;
use weft_runtime::testing::{eventually_some, metric_sum};

/// The streams the control plane allows at once on one connection: its caps of watches and of
/// requests per identity.
const SERVER_STREAMS: usize = 1_100;

/// The watches of `ws` that got an answer.
fn answered(ws: &[Option<Watched<ServiceEndpoints>>]) -> Vec<usize> {
    ws.iter()
        .enumerate()
        .filter(|(_, w)| w.as_ref().is_some_and(|w| w.borrow().is_some()))
        .map(|(i, _)| i)
        .collect()
}

async fn active_watches(cp: &ControlPlane) -> f64 {
    let (_, metrics) = cp.admin_get("/metrics").await;
    metric_sum(&metrics, "weft_policy_watches_active", &[])
}

async fn wait_active(cp: &ControlPlane, n: f64) {
    eventually_some(
        Duration::from_secs(10),
        &format!("{n} watches open at the control plane"),
        || async { (active_watches(cp).await == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_past_the_stream_budget_wait_their_turn_and_registrations_still_pass() {
    let (_dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let client = cp.client();
    // As many watches as the connection allows streams: the budget's worth answer (in the
    // order their tasks ask, not necessarily the order they were made).
    let mut watches: Vec<_> = (0..SERVER_STREAMS)
        .map(|i| Some(client.watch_endpoints("default", &format!("svc-{i}"))))
        .collect();
    eventually_some(
        Duration::from_secs(10),
        "the budget's worth of watches answered",
        || {
            let n = answered(&watches).len();
            async move { (n >= MAX_WATCH_STREAMS).then_some(()) }
        },
    )
    .await;

    // A registration still gets a stream at once (it used to wait behind the queued watches
    // until its timeout, and the lease lapsed).
    let registered = tokio::time::timeout(
        Duration::from_secs(2),
        client.register(&Registration {
            service: "api".into(),
            namespace: None,
            labels: BTreeMap::new(),
            address: "127.0.0.1:7301".parse().unwrap(),
            identity: None,
            lease: None,
            metrics: None,
        }),
    )
    .await
    .expect("a registration answers within 2 s with every watch stream in use");
    assert!(registered.is_ok(), "{registered:?}");
    wait_active(&cp, MAX_WATCH_STREAMS as f64).await;
    let served = answered(&watches);
    assert_eq!(served.len(), MAX_WATCH_STREAMS);

    // Watches given up while waiting leave the line: once a stream ends, the last one still
    // waiting gets it.
    let waiting: Vec<usize> = (0..SERVER_STREAMS)
        .filter(|i| !served.contains(i))
        .collect();
    let (&last, given_up) = waiting.split_last().unwrap();
    for &i in given_up {
        watches[i] = None;
    }
    watches[served[0]] = None;
    let w = watches[last].as_mut().unwrap();
    tokio::time::timeout(Duration::from_secs(2), w.wait_for(|v| v.is_some()))
        .await
        .expect("a freed stream goes to the watch still waiting")
        .unwrap();
    wait_active(&cp, MAX_WATCH_STREAMS as f64).await;

    // A clone keeps the watch; dropping every receiver ends every stream.
    let clone = watches[served[1]].clone().unwrap();
    watches.clear();
    wait_active(&cp, 1.0).await;
    drop(clone);
    wait_active(&cp, 0.0).await;
    cp.stop().await;
}
