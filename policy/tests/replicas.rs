//! Two replicas of the control plane over one etcd cluster (three real members on loopback):
//! both serve the resource files kept under `/weft/resources/`, and a change written to etcd
//! reaches watchers of each; an invalid change is rejected by both, naming the key, while the
//! last valid set stays served; one member down changes nothing; without a quorum both go on
//! serving the last set, say on `/status` that the store cannot be followed, and follow again
//! once it is back.
//!
//! A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs `etcd`, failing loudly
//! without it.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::replicas::*;
use support::*;
use tokio::sync::{mpsc, oneshot};
use weft_identity::SpiffeId;
use weft_policy::etcd::registry::{EtcdRegistry, Unchanged, Write};
use weft_policy::registry::{Registration, Workload};
use weft_policy::wire::Dur;
use weft_runtime::etcd::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
async fn replicas_serve_the_resources_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, a, b) = two_replicas(dir.path()).await;
    let writer = etcd(&cluster);
    let (ca, cb) = (a.client(), b.client());
    let mut watches = [
        ca.watch_routes("default", "api"),
        cb.watch_routes("default", "api"),
    ];
    let limit = Duration::from_secs(10);
    for w in &mut watches {
        wait_until(w, limit, "the first set", |r| weights(r) == [90, 10]).await;
    }

    // A change written to etcd reaches watchers of both replicas.
    let change = |v1: u32, v2: u32| resources_with_weights(v1, v2).into_bytes();
    writer.put(FILE, &change(50, 50), 0).await.unwrap();
    for w in &mut watches {
        wait_until(w, limit, "50/50", |r| weights(r) == [50, 50]).await;
    }

    // An invalid file: rejected by both, naming its key; the last set stays served.
    writer
        .put(b"/weft/resources/bad.yaml", b"kind: Nope\n", 0)
        .await
        .unwrap();
    wait_status(&[&a, &b], "/weft/resources/bad.yaml").await;
    assert_eq!(weights(watches[0].borrow().as_deref().unwrap()), [50, 50]);
    writer.delete(b"/weft/resources/bad.yaml").await.unwrap();
    wait_status(&[&a, &b], "\"valid\": true").await;

    // One member down: nothing visible.
    cluster.kill(0);
    writer.put(FILE, &change(30, 70), 0).await.unwrap();
    for w in &mut watches {
        wait_until(w, limit, "30/70", |r| weights(r) == [30, 70]).await;
    }

    // No quorum: both serve the last set to a new watcher, and say the store is away.
    cluster.kill(1);
    wait_status(&[&a, &b], "\"store_error\": \"").await;
    for cp in [&a, &b] {
        let mut fresh = cp.client().watch_routes("default", "api");
        wait_until(&mut fresh, limit, "the last set", |r| {
            weights(r) == [30, 70]
        })
        .await;
    }

    // Back: followed again, and the next change arrives.
    cluster.restart(0).unwrap();
    cluster.restart(1).unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    wait_status(&[&a, &b], "\"store_error\": null").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = writer.put(FILE, &change(10, 90), 0).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in &mut watches {
        wait_until(w, limit, "10/90", |r| weights(r) == [10, 90]).await;
    }
    a.stop().await;
    b.stop().await;
}

fn registration(identity: &str, lease: Duration) -> Registration {
    Registration {
        trust: None,
        service: "api".into(),
        namespace: None,
        labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
        address: "127.0.0.1:7001".parse().unwrap(),
        identity: Some(SpiffeId::parse(identity).unwrap()),
        lease: Some(Dur(lease)),
        metrics: None,
    }
}

const API: &str = "spiffe://weft.local/ns/default/sa/api";

/// Registrations made through one replica are served by every one (they are in etcd, on the
/// lease of the replica they were made through); removed through another, they are gone from
/// all; a workload whose replica stopped registers again through another, and its
/// registration outlives the stopped replica's lease; an address one identity holds cannot
/// be taken by another through another replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
async fn registrations_made_through_one_replica_are_served_by_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, a, b) = two_replicas(dir.path()).await;
    let (ca, cb) = (a.client(), b.client());
    let mut at_b = cb.watch_endpoints("default", "api");
    let limit = Duration::from_secs(10);
    wait_until(&mut at_b, limit, "no endpoint", |e| e.endpoints.is_empty()).await;

    // Through A, served by B.
    ca.register(&registration(API, Duration::from_secs(30)))
        .await
        .unwrap();
    let got = wait_until(&mut at_b, limit, "A's registration at B", |e| {
        e.endpoints.len() == 1
    })
    .await;
    assert_eq!(got.endpoints[0].address.port(), 7001);

    // Another identity cannot take the address through B.
    let other = registration(
        "spiffe://weft.local/ns/default/sa/intruder",
        Duration::from_secs(30),
    );
    let refused = cb.register(&other).await.unwrap_err();
    assert!(
        refused.to_string().contains("is registered by"),
        "{refused}"
    );

    // Removed through B: gone from A too.
    let mut at_a = ca.watch_endpoints("default", "api");
    wait_until(&mut at_a, limit, "the endpoint at A", |e| {
        e.endpoints.len() == 1
    })
    .await;
    cb.deregister("default", "127.0.0.1:7001".parse().unwrap())
        .await
        .unwrap();
    wait_until(&mut at_a, limit, "the removal at A", |e| {
        e.endpoints.is_empty()
    })
    .await;
    wait_until(&mut at_b, limit, "the removal at B", |e| {
        e.endpoints.is_empty()
    })
    .await;

    // Kept registered through A; A stops (the workload is not told: its registration stays,
    // on A's lease); the workload registers through B: its registration outlives A's lease.
    let _through_a = ca.keep_registered(registration(API, Duration::from_secs(3)));
    wait_until(&mut at_b, limit, "the renewed registration", |e| {
        e.endpoints.len() == 1
    })
    .await;
    a.stop().await;
    let _through_b = cb.keep_registered(registration(API, Duration::from_secs(3)));
    let past_a = tokio::time::Instant::now()
        + weft_policy::etcd::registry::REPLICA_LEASE
        + Duration::from_secs(2);
    while tokio::time::Instant::now() < past_a {
        assert_eq!(
            at_b.borrow().as_ref().map(|e| e.endpoints.len()),
            Some(1),
            "the registration was lost when A's lease lapsed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.stop().await;
}

/// A removal asked through a replica removes the registration of the identity that asked
/// however often it was written since the replica saw it (a write sent again after a lost
/// answer, a replica's new lease, a proxy's new trust report): compared with the revision the
/// replica had seen, such a removal was lost, and the endpoint stayed served until its lease
/// lapsed. Another identity's registration made since stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
async fn a_removal_takes_its_identitys_registration_however_often_it_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1).unwrap();
    let etcd = etcd(&cluster);
    let registry = EtcdRegistry {
        etcd: etcd.clone(),
        prefix: "/weft/".into(),
    };
    let (writes, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let writer = tokio::spawn(registry.write(rx, Vec::new, async {
        let _ = stopped.await;
    }));
    let workload = |identity: &str, port: u16| Workload {
        namespace: "default".into(),
        service: "api".into(),
        labels: BTreeMap::from([("app".to_string(), "api".to_string())]),
        address: ([127, 0, 0, 1], port).into(),
        identity: Some(SpiffeId::parse(identity).unwrap()),
        metrics: None,
        trust: None,
    };
    let key = |port: u16| format!("/weft/registry/default/127.0.0.1:{port}").into_bytes();
    let put = |w: Workload| {
        let etcd = etcd.clone();
        async move {
            let json = serde_json::to_vec(&w).unwrap();
            etcd.put(&key(w.address.port()), &json, 0).await.unwrap()
        }
    };
    let removal = |identity: &str| Write::Delete {
        namespace: "default".into(),
        address: "127.0.0.1:7001".parse().unwrap(),
        only_if: Unchanged::HeldBy(Some(SpiffeId::parse(identity).unwrap())),
    };
    let wait_for = |port: u16, present: bool| {
        let etcd = etcd.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while etcd.get(&key(port)).await.unwrap().is_some() != present {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "127.0.0.1:{port} never {}",
                    if present { "written" } else { "removed" }
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Written, and written again: removed.
    let seen = put(workload(API, 7001)).await;
    let since = put(workload(API, 7001)).await;
    assert!(since > seen);
    writes.send(removal(API)).unwrap();
    wait_for(7001, false).await;

    // Registered since by another identity: kept. Writes go in order, so once a later write
    // is in etcd, the removal was tried.
    let intruder = "spiffe://weft.local/ns/default/sa/intruder";
    put(workload(intruder, 7001)).await;
    writes.send(removal(API)).unwrap();
    writes.send(Write::Put(workload(API, 7002))).unwrap();
    wait_for(7002, true).await;
    let kept = etcd.get(&key(7001)).await.unwrap().unwrap();
    let kept: Workload = serde_json::from_slice(&kept.value).unwrap();
    assert_eq!(kept.identity.unwrap().as_str(), intruder);

    stop.send(()).unwrap();
    writer.await.unwrap();
}
