//! The discovery stream (issue 18): one stream per client whatever it follows; a change to
//! one endpoint of a service with 5,000 sends one endpoint, and what the client then holds is
//! exactly what the control plane serves; a client resuming after a restart is answered
//! `UNCHANGED` for what did not change (no snapshot is sent again); bad commands are refused
//! on the stream without ending the others' subscriptions.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use support::*;
use weft_policy::registry::{Registration, ServiceEndpoints};
use weft_policy::server::Settings;
use weft_runtime::testing::{eventually_some, metric_sum};

/// A service with `n` static endpoints, and the small services of [`RESOURCES`].
fn big_service(n: u16) -> String {
    let mut out = String::from(RESOURCES);
    out.push_str("---\nkind: Service\nmetadata: {name: big}\nspec:\n  ports: [{port: 8080}]\n  selector: {app: big}\n  endpoints:\n");
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        writeln!(
            out,
            "    - {{address: \"10.1.{a}.{b}:8080\", labels: {{zone: z{}}}}}",
            i % 3
        )
        .unwrap();
    }
    out
}

async fn bytes(cp: &ControlPlane, kind: &str) -> f64 {
    let (_, metrics) = cp.admin_get("/metrics").await;
    metric_sum(
        &metrics,
        "weft_policy_discovery_bytes_total",
        &[&format!("type=\"{kind}\"")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_changed_of_five_thousand_sends_one_endpoint() {
    let (_dir, cp) = serve_resources(&big_service(5000), |d| {
        let mut s = Settings::insecure(d);
        s.api.registry_warmup = Duration::ZERO;
        s
    })
    .await;
    let client = cp.client();
    let mut big = client.watch_endpoints("default", "big");
    let mut routes = client.watch_routes("default", "api");
    let mut inbound = client.watch_inbound("default", "api");
    let limit = Duration::from_secs(10);
    wait_until(&mut big, limit, "5,000 endpoints", |e| {
        e.endpoints.len() == 5000
    })
    .await;
    wait_until(&mut routes, limit, "the routes", |_| true).await;
    wait_until(&mut inbound, limit, "the inbound policy", |_| true).await;
    let (_, metrics) = cp.admin_get("/metrics").await;
    assert_eq!(
        metric_sum(&metrics, "weft_policy_discovery_streams", &[]),
        1.0
    );
    let snapshots = bytes(&cp, "snapshot").await;
    assert!(snapshots > 200_000.0, "{snapshots}");

    // One workload registers for the big service: one endpoint more.
    let before = bytes(&cp, "delta").await;
    let _reg = client.keep_registered(Registration {
        trust: None,
        service: "big".into(),
        namespace: None,
        labels: BTreeMap::from([("zone".to_string(), "z9".to_string())]),
        address: "127.0.0.1:7400".parse().unwrap(),
        identity: None,
        lease: None,
        metrics: None,
    });
    let got = wait_until(&mut big, limit, "5,001 endpoints", |e| {
        e.endpoints.len() == 5001
    })
    .await;
    let sent = bytes(&cp, "delta").await - before;
    assert!(sent > 0.0 && sent < 1000.0, "{sent} bytes for one endpoint");
    assert_eq!(
        bytes(&cp, "snapshot").await,
        snapshots,
        "no snapshot was sent again"
    );

    // What the client holds is what the control plane serves, endpoint for endpoint.
    let (_, served) = cp
        .api_get("/v1/endpoints?namespace=default&service=big")
        .await;
    let served: serde_json::Value = serde_json::from_str(&served).unwrap();
    let served: ServiceEndpoints = serde_json::from_value(served["item"].clone()).unwrap();
    assert_eq!(*got, served);
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_after_a_restart_is_sent_nothing_again() {
    let (dir, cp) = serve_resources(&big_service(2000), |d| Settings::insecure(d)).await;
    let addr = cp.api;
    let client = cp.client();
    let mut big = client.watch_endpoints("default", "big");
    let mut routes = client.watch_routes("default", "api");
    let limit = Duration::from_secs(10);
    wait_until(&mut big, limit, "2,000 endpoints", |e| {
        e.endpoints.len() == 2000
    })
    .await;
    wait_until(&mut routes, limit, "the routes", |r| weights(r) == [90, 10]).await;
    cp.stop().await;

    let cp = ControlPlane::start_on(addr, Settings::insecure(dir.path())).await;
    eventually_some(limit, "the client back on its stream", || async {
        let (_, m) = cp.admin_get("/metrics").await;
        (metric_sum(&m, "weft_policy_watches_active", &[]) == 2.0).then_some(())
    })
    .await;
    eventually_some(limit, "both items answered UNCHANGED", || async {
        (bytes(&cp, "other").await > 0.0).then_some(())
    })
    .await;
    assert_eq!(bytes(&cp, "snapshot").await, 0.0, "nothing is sent again");
    assert_eq!(big.borrow().as_ref().unwrap().endpoints.len(), 2000);

    // A change after the restart arrives as usual.
    write(
        dir.path(),
        &big_service(2000)
            .replace("weight: 90}", "weight: 30}")
            .replace("weight: 10}", "weight: 70}"),
    );
    wait_until(&mut routes, limit, "30/70", |r| weights(r) == [30, 70]).await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_on_the_stream() {
    let (_dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let body = "{\"subscribe\":{\"key\":{\"kind\":\"routes\",\"namespace\":\"default\",\"service\":\"api\"}}}\nnot json\n{\"subscribe\":{\"key\":{\"kind\":\"pods\"}}}\n{\"unsubscribe\":{\"key\":{\"kind\":\"routes\",\"namespace\":\"default\",\"service\":\"api\"}}}\n";
    let text = post_and_read(cp.api, "/v1/discover", body).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // The events, each a chunk of the chunked body.
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "SNAPSHOT", "{text}");
    assert_eq!(lines[0]["key"]["service"], "api");
    let refused: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["type"] == "REFUSED").collect();
    assert_eq!(refused.len(), 2, "{text}");
    assert_eq!(refused[0]["error"], "bad_command");
    cp.stop().await;
}

/// Sends `body` to `path` over HTTP/1.1 and reads what comes back within 2 s.
async fn post_and_read(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(n)) = tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}
