//! Replicas of the control plane over a real etcd cluster (three members on loopback).

use std::time::Duration;

use weft_policy::etcd::follow::EtcdResources;
use weft_policy::etcd::{Etcd, EtcdConfig};
use weft_policy::server::Settings;
use weft_runtime::etcd::EtcdCluster;

use super::{ControlPlane, RESOURCES};

pub const FILE: &[u8] = b"/weft/resources/mesh.yaml";

pub fn etcd(cluster: &EtcdCluster) -> Etcd {
    Etcd::new(&EtcdConfig {
        members: EtcdConfig::members(&cluster.store_url()).unwrap(),
        tls: None,
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

/// Three etcd members under `dir` holding [`RESOURCES`], and two replicas of the control
/// plane over them.
pub async fn two_replicas(dir: &std::path::Path) -> (EtcdCluster, ControlPlane, ControlPlane) {
    let cluster = EtcdCluster::start(dir, 3).unwrap();
    etcd(&cluster)
        .put(FILE, RESOURCES.as_bytes(), 0)
        .await
        .unwrap();
    let replica = || {
        let mut s = Settings::insecure(dir.join("unused"));
        s.etcd = Some(EtcdResources {
            etcd: etcd(&cluster),
            prefix: "/weft/".into(),
        });
        s
    };
    let a = ControlPlane::start(replica()).await;
    let b = ControlPlane::start(replica()).await;
    (cluster, a, b)
}

/// Waits until every one of `replicas` has `what` on its `/status` page, at most 20 s.
pub async fn wait_status(replicas: &[&ControlPlane], what: &str) {
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
