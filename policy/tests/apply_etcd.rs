//! Applying through replicas of the control plane over a real etcd cluster (three members on
//! loopback): a change applied through one replica reaches watchers of the other; two
//! applies validated against the same revision, through different replicas: one lands, the
//! other is told to retry, and applies sent at once through both lose nothing; an invalid set
//! changes nothing in etcd; without a quorum an apply is refused naming the store, `/ready`
//! says why, the proxies' watches keep the last set, and a registration is still taken; once
//! it is back, the registration is written and reaches the other replica, and the next apply
//! arrives.
//!
//! A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs `etcd`, failing loudly
//! without it.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::replicas::*;
use support::*;
use weft_policy::client::{ClientError, PolicyClient};
use weft_policy::manage::{ApplyRequest, InputFile};

const ROUTE: &str = "kind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{name: api, port: 8080}]\n  rules:\n    - name: split\n      backendRefs: [{name: api-v1, port: 8080, weight: V1}, {name: api-v2, port: 8080, weight: V2}]\n";

fn route(v1: u32, v2: u32) -> ApplyRequest {
    let yaml = ROUTE
        .replace("V1", &v1.to_string())
        .replace("V2", &v2.to_string());
    ApplyRequest {
        files: vec![InputFile {
            name: "route.yaml".into(),
            yaml,
        }],
        revision: None,
        dry_run: false,
    }
}

/// A client that waits long enough for etcd's own timeouts.
fn patient(cp: &ControlPlane) -> PolicyClient {
    let mut s = fast_settings(cp.api.to_string());
    s.request_timeout = Duration::from_secs(30);
    PolicyClient::new(s)
}

fn status_of(e: &ClientError) -> u16 {
    match e {
        ClientError::Rejected { status, .. } => status.as_u16(),
        other => panic!("not an answer of the control plane: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
async fn applies_through_replicas_over_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, a, b) = two_replicas(dir.path()).await;
    let (pa, pb) = (patient(&a), patient(&b));
    let mut at_b = b.client().watch_routes("default", "api");
    let limit = Duration::from_secs(10);
    wait_until(&mut at_b, limit, "90/10", |r| weights(r) == [90, 10]).await;

    // Through A, to B's watchers.
    let done = pa.apply(&route(50, 50)).await.unwrap();
    assert_eq!(done.applied[0].file, "default.httproute.api.yaml");
    wait_until(&mut at_b, limit, "50/50", |r| weights(r) == [50, 50]).await;
    let listed = pb
        .list_resources(Some("HTTPRoute"), None, None)
        .await
        .unwrap();
    assert_eq!(listed.revision, done.revision);
    assert!(listed.items[0].yaml.contains("weight: 50"));

    // Validated against the same revision, through A and through B: one lands.
    let mut first = route(60, 40);
    first.revision = Some(done.revision.clone());
    let mut second = route(70, 30);
    second.revision = Some(done.revision.clone());
    pa.apply(&first).await.unwrap();
    let refused = pb.apply(&second).await.unwrap_err();
    assert_eq!(status_of(&refused), 409, "{refused}");
    assert!(refused.to_string().contains("retry"), "{refused}");
    wait_until(&mut at_b, limit, "60/40", |r| weights(r) == [60, 40]).await;

    // Sent at once through both: each lands or is told to retry; none is lost.
    let sends: Vec<_> = (0..8)
        .map(|i| {
            let client = if i % 2 == 0 { pa.clone() } else { pb.clone() };
            let yaml = format!(
                "kind: Service\nmetadata: {{name: s{i}}}\nspec: {{ports: [{{port: 80}}]}}\n"
            );
            tokio::spawn(async move {
                let req = ApplyRequest {
                    files: vec![InputFile {
                        name: format!("s{i}.yaml"),
                        yaml,
                    }],
                    revision: None,
                    dry_run: false,
                };
                client.apply(&req).await
            })
        })
        .collect();
    let mut landed = Vec::new();
    for (i, send) in sends.into_iter().enumerate() {
        match send.await.unwrap() {
            Ok(_) => landed.push(format!("s{i}")),
            Err(e) => assert!(
                status_of(&e) == 409 && e.to_string().contains("run it again"),
                "{e}"
            ),
        }
    }
    assert!(!landed.is_empty());
    let services = pa
        .list_resources(Some("Service"), None, None)
        .await
        .unwrap();
    for name in &landed {
        assert!(
            services.items.iter().any(|i| &i.name == name),
            "{name} landed and must be stored"
        );
    }

    // An invalid set: refused, naming the file, document and field; etcd unchanged.
    let before = pa.list_resources(None, None, None).await.unwrap().revision;
    let mut bad = route(1, 1);
    bad.files[0].yaml = bad.files[0].yaml.replace("weight: 1}", "weight: many}");
    let refused = pb.apply(&bad).await.unwrap_err();
    assert_eq!(status_of(&refused), 422);
    assert!(
        refused.to_string().contains(
            "route.yaml: document 1 (HTTPRoute default/api): spec.rules[0].backendRefs[0].weight"
        ),
        "{refused}"
    );
    let after = pa.list_resources(None, None, None).await.unwrap().revision;
    assert_eq!(before, after);

    // No quorum: refused naming the store; /ready says why; watchers keep the last set.
    cluster.kill(0);
    cluster.kill(1);
    wait_status(&[&a, &b], "\"store_error\": \"").await;
    let refused = pa.apply(&route(20, 80)).await.unwrap_err();
    assert_eq!(status_of(&refused), 503, "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("the store (etcd at") && text.contains("unavailable"),
        "{text}"
    );
    for cp in [&a, &b] {
        let (status, body) = cp.admin_get("/ready").await;
        assert_eq!(status, 503);
        assert!(body.contains("the store (etcd"), "{body}");
    }
    assert_eq!(weights(at_b.borrow().as_deref().unwrap()), [60, 40]);
    // A workload registers meanwhile: the replica takes it (the proxy's side keeps it, and
    // renews it), and writes it to etcd once etcd is back.
    let mut v1_at_b = b.client().watch_endpoints("default", "api-v1");
    let registered = pa
        .register(&weft_policy::registry::Registration {
            trust: None,
            service: "api".into(),
            namespace: None,
            labels: std::collections::BTreeMap::from([("version".to_string(), "v1".to_string())]),
            address: "127.0.0.1:7501".parse().unwrap(),
            identity: None,
            lease: Some(weft_policy::wire::Dur(Duration::from_secs(120))),
            metrics: None,
        })
        .await;
    assert!(registered.is_ok(), "{registered:?}");

    // Back: the registration made meanwhile reaches the other replica; the next apply
    // arrives.
    cluster.restart(0).unwrap();
    cluster.restart(1).unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    wait_status(&[&a, &b], "\"store_error\": null").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = pa.apply(&route(20, 80)).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until(&mut at_b, limit, "20/80", |r| weights(r) == [20, 80]).await;
    wait_until(
        &mut v1_at_b,
        limit,
        "the registration made without quorum",
        |e| e.endpoints.iter().any(|x| x.address.port() == 7501),
    )
    .await;
    assert_eq!(b.admin_get("/ready").await.0, 200);
    a.stop().await;
    b.stop().await;
}
