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

use std::time::Duration;

use support::*;
use weft_policy::etcd::follow::EtcdResources;
use weft_policy::etcd::{Etcd, EtcdConfig};
use weft_policy::server::Settings;
use weft_runtime::etcd::EtcdCluster;

const FILE: &[u8] = b"/weft/resources/mesh.yaml";

fn etcd(cluster: &EtcdCluster) -> Etcd {
    Etcd::new(&EtcdConfig {
        members: EtcdConfig::members(&cluster.store_url()).unwrap(),
        tls: None,
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// Waits until every one of `replicas` has `what` on its `/status` page, at most 20 s.
async fn wait_status(replicas: &[&ControlPlane], what: &str) {
    for cp in replicas {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = cp.admin_get("/status").await;
            if body.contains(what) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/status never showed {what}:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_the_resources_in_etcd() {
    if std::env::var("WEFT_SYSTEM_TESTS").map_or(true, |v| v != "1") {
        eprintln!(
            "replicas_serve_the_resources_in_etcd: skipped, a system test (set WEFT_SYSTEM_TESTS=1 to run it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3).unwrap();
    let writer = etcd(&cluster);
    writer.put(FILE, RESOURCES.as_bytes(), 0).await.unwrap();
    let replica = || {
        let mut s = Settings::insecure(dir.path().join("unused"));
        s.etcd = Some(EtcdResources {
            etcd: etcd(&cluster),
            prefix: "/weft/".into(),
        });
        s
    };
    let (a, b) = (
        ControlPlane::start(replica()).await,
        ControlPlane::start(replica()).await,
    );
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
