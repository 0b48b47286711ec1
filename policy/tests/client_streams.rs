//! The client's one discovery stream (issue 18; issue 16, hole 3): an item is unsubscribed
//! when its last receiver is dropped, subscriptions past the control plane's cap are asked
//! for again later without holding up registrations, and one given up meanwhile is not.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use weft_policy::client::Watched;
use weft_policy::registry::{Registration, ServiceEndpoints};
use weft_policy::server::Settings;
use weft_runtime::testing::{eventually_some, metric_sum};

/// More watches than the control plane takes from one caller.
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

/// The control plane's default cap of watches per caller.
const CAP: usize = weft_policy::api::DEFAULT_MAX_WATCHES_PER_IDENTITY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_cap_wait_their_turn_and_registrations_still_pass() {
    let (_dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let client = cp.client();
    // More watches than the control plane takes from one caller: the cap's worth answer, on
    // one stream.
    let mut watches: Vec<_> = (0..SERVER_STREAMS)
        .map(|i| Some(client.watch_endpoints("default", &format!("svc-{i}"))))
        .collect();
    eventually_some(
        Duration::from_secs(10),
        "the cap's worth of watches answered",
        || {
            let n = answered(&watches).len();
            async move { (n >= CAP).then_some(()) }
        },
    )
    .await;
    let (_, metrics) = cp.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "weft_policy_discovery_streams", &[]),
        1.0
    );

    // A registration passes at once beside them.
    let registered = tokio::time::timeout(
        Duration::from_secs(2),
        client.register(&Registration {
            trust: None,
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
    .expect("a registration answers within 2 s with every watch place in use");
    assert!(registered.is_ok(), "{registered:?}");
    wait_active(&cp, CAP as f64).await;
    let served = answered(&watches);
    assert_eq!(served.len(), CAP);

    // Refused ones are asked for again: once places are freed (watches dropped, so
    // unsubscribed), the ones still wanted get them; those given up are not asked for.
    let waiting: Vec<usize> = (0..SERVER_STREAMS)
        .filter(|i| !served.contains(i))
        .collect();
    let (&last, given_up) = waiting.split_last().unwrap();
    for &i in given_up {
        watches[i] = None;
    }
    watches[served[0]] = None;
    let w = watches[last].as_mut().unwrap();
    tokio::time::timeout(Duration::from_secs(5), w.wait_for(|v| v.is_some()))
        .await
        .expect("a freed place goes to the watch still waiting")
        .unwrap();
    wait_active(&cp, CAP as f64).await;

    // A clone keeps the watch; dropping every receiver unsubscribes every item.
    let clone = watches[served[1]].clone().unwrap();
    watches.clear();
    wait_active(&cp, 1.0).await;
    drop(clone);
    wait_active(&cp, 0.0).await;
    cp.stop().await;
}
