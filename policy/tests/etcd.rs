//! The etcd client against a real three-member etcd cluster on loopback (Debian's
//! `etcd-server`, started and stopped by the test): reads and writes, transactions that
//! compare revisions, leases, watches from a past revision, and what the client sees when
//! members go away: one member down changes nothing; without a quorum, writes fail as
//! unavailable within the client's timeout while a serializable read still answers; with the
//! members back, writes work again.
//!
//! A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs `etcd`, failing loudly
//! without it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use weft_policy::etcd::wire::{Compare, EventKind, PutRequest, RequestOp};
use weft_policy::etcd::{Etcd, EtcdConfig};
use weft_runtime::etcd::EtcdCluster;

mod support;

fn client(cluster: &EtcdCluster, timeout: Duration) -> Etcd {
    let members = EtcdConfig::members(&cluster.store_url()).unwrap();
    Etcd::new(&EtcdConfig {
        members,
        tls: None,
        timeout,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
async fn the_client_against_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3).unwrap();
    let etcd = client(&cluster, Duration::from_secs(2));

    // Reads and writes; a prefix read sees exactly the keys under it.
    let rev = etcd.put(b"/weft/a", b"1", 0).await.unwrap();
    etcd.put(b"/weft/b", b"2", 0).await.unwrap();
    etcd.put(b"/weftx", b"outside", 0).await.unwrap();
    let a = etcd.get(b"/weft/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], rev));
    assert!(etcd.get(b"/weft/none").await.unwrap().is_none());
    let (at, kvs) = etcd.get_prefix(b"/weft/", false).await.unwrap();
    assert!(at >= rev + 2);
    let keys: Vec<&[u8]> = kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, [&b"/weft/a"[..], b"/weft/b"]);

    // A transaction on a revision: the first of two writers at the same revision wins.
    let put = |v: &str| {
        RequestOp::Put(PutRequest {
            key: b"/weft/a".to_vec(),
            value: v.as_bytes().to_vec(),
            lease: 0,
        })
    };
    let cas = |v: &str| {
        (
            vec![Compare::modified_at(b"/weft/a".to_vec(), rev)],
            vec![put(v)],
        )
    };
    let (c, ops) = cas("first");
    assert!(etcd.txn(c, ops).await.unwrap().0);
    let (c, ops) = cas("second");
    assert!(!etcd.txn(c, ops).await.unwrap().0);
    assert_eq!(etcd.get(b"/weft/a").await.unwrap().unwrap().value, b"first");
    // Created only if absent (revision 0).
    let create = vec![Compare::modified_at(b"/weft/new".to_vec(), 0)];
    let op = RequestOp::Put(PutRequest {
        key: b"/weft/new".to_vec(),
        value: b"x".to_vec(),
        lease: 0,
    });
    assert!(etcd.txn(create, vec![op]).await.unwrap().0);

    // Leases: a key attached to one goes with it.
    let lease = etcd.grant(Duration::from_secs(10)).await.unwrap();
    etcd.put(b"/weft/leased", b"x", lease).await.unwrap();
    assert_eq!(
        etcd.get(b"/weft/leased").await.unwrap().unwrap().lease,
        lease
    );
    assert!(etcd.keep_alive(lease).await.unwrap());
    etcd.revoke(lease).await.unwrap();
    assert!(etcd.get(b"/weft/leased").await.unwrap().is_none());
    assert!(!etcd.keep_alive(lease).await.unwrap());

    // A watch from a past revision replays what happened since, then follows.
    let from = etcd.delete(b"/weft/b").await.unwrap();
    let mut watch = etcd.watch_prefix(b"/weft/", from).await.unwrap();
    etcd.put(b"/weft/c", b"3", 0).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "the watch saw only {seen:?}");
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(batch.events.into_iter().map(|e| (e.kind, e.kv.key)));
    }
    assert_eq!(
        seen,
        [
            (EventKind::Delete, b"/weft/b".to_vec()),
            (EventKind::Put, b"/weft/c".to_vec())
        ]
    );

    // One member down, the one the client prefers: nothing visible.
    let preferred = watch.member().to_string();
    let i = cluster
        .clients()
        .iter()
        .position(|c| c.to_string() == preferred)
        .unwrap();
    cluster.kill(i);
    etcd.put(b"/weft/d", b"4", 0).await.unwrap();
    assert_eq!(etcd.get(b"/weft/d").await.unwrap().unwrap().value, b"4");

    // No quorum: a write fails as unavailable, promptly; a serializable read still answers.
    let j = (i + 1) % 3;
    cluster.kill(j);
    let started = Instant::now();
    let e = etcd.put(b"/weft/e", b"5", 0).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let (_, kvs) = etcd.get_prefix(b"/weft/", true).await.unwrap();
    assert!(kvs.iter().any(|kv| kv.key == b"/weft/d"), "{kvs:?}");

    // The members back: writes again.
    cluster.restart(i).unwrap();
    cluster.restart(j).unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match etcd.put(b"/weft/e", b"5", 0).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "{e}\n{}", cluster.logs()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
