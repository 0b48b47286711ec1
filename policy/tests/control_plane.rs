//! The control plane end to end, in-process: file edits reaching watchers, rejected edits,
//! registrations and leases, restarts, and resuming by version.
//!
//! # Why this file is long
//! Six end-to-end stories of one in-process control plane, each from start to stop (a resource
//! edit, a rejected edit, registrations and leases, a restart, the list+watch API, address
//! lookups), sharing this file's helpers (`weights`, `registration`, the watch-line readers).
//! There is no clean seam: the restart story crosses both halves (it follows resource files
//! and registers a workload), so a split would duplicate those helpers or move them into
//! `support/`, which every policy test binary compiles. Keep each story whole; add a file when
//! a new concern comes.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use weft_identity::SpiffeId;
use weft_policy::authz::authorize;
use weft_policy::registry::Registration;
use weft_policy::server::Settings;
use weft_policy::wire::Dur;
use weft_runtime::testing::eventually_some;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edit_reaches_a_watcher_within_one_second() {
    let (dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let client = cp.client();
    let mut routes = client.watch_routes("default", "api");
    let mut inbound = client.watch_inbound("default", "api");
    wait_until(
        &mut routes,
        Duration::from_secs(5),
        "the first snapshot",
        |r| weights(r) == vec![90, 10],
    )
    .await;
    let policy = wait_until(
        &mut inbound,
        Duration::from_secs(5),
        "the inbound policy",
        |_| true,
    )
    .await;
    let web = SpiffeId::parse("spiffe://weft.local/ns/default/sa/web").unwrap();
    let job = SpiffeId::parse("spiffe://weft.local/ns/default/sa/job").unwrap();
    assert!(authorize(policy.port(8080), Some(&web), &http::Method::GET, "/").is_allowed());
    assert!(!authorize(policy.port(8080), Some(&job), &http::Method::GET, "/").is_allowed());

    for (v1, v2) in [(50, 50), (0, 100), (75, 25)] {
        let edited = Instant::now();
        write(dir.path(), &resources_with_weights(v1, v2));
        wait_until(
            &mut routes,
            Duration::from_secs(1),
            "the edit to reach the watcher",
            |r| weights(r) == vec![v1, v2],
        )
        .await;
        let took = edited.elapsed();
        assert!(took < Duration::from_secs(1), "the edit took {took:?}");
    }
    // A policy edit reaches the inbound watch too.
    write(dir.path(), &RESOURCES.replace("sa/web", "sa/job"));
    let policy = wait_until(
        &mut inbound,
        Duration::from_secs(1),
        "the policy edit",
        |p| !authorize(p.port(8080), Some(&web), &http::Method::GET, "/").is_allowed(),
    )
    .await;
    assert!(authorize(policy.port(8080), Some(&job), &http::Method::GET, "/").is_allowed());
    cp.stop().await;
}

/// Captures log lines of the current thread's tasks.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// Single-threaded so the thread-local log subscriber sees every task.
#[tokio::test]
async fn invalid_edit_is_logged_and_shown_and_the_watcher_keeps_its_state() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let client = cp.client();
    let mut routes = client.watch_routes("default", "api");
    let before = wait_until(
        &mut routes,
        Duration::from_secs(5),
        "the first snapshot",
        |_| true,
    )
    .await;
    let (status, body) = cp.admin_get("/status").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"valid\": true"), "{body}");

    // Two edits in one: a valid-looking weight change and a bad duration. Neither applies.
    let bad = resources_with_weights(10, 90).replace(
        "weight: 90}]",
        "weight: 90}]\n      timeouts: {request: 2x}",
    );
    write(dir.path(), &bad);
    let body = eventually_some(
        Duration::from_secs(2),
        "/status to show the error",
        || async {
            let (_, body) = cp.admin_get("/status").await;
            body.contains("\"valid\": false").then_some(body)
        },
    )
    .await;
    assert!(body.contains("resources.yaml: document 5 (HTTPRoute default/api): spec.rules[0].timeouts.request: bad duration"), "{body}");
    let logged = logs.text();
    assert!(
        logged.contains("ERROR") && logged.contains("spec.rules[0].timeouts.request"),
        "{logged}"
    );
    assert!(logged.contains("rejected as a whole"), "{logged}");
    let (_, metrics) = cp.admin_get("/metrics").await;
    assert!(
        metrics.contains("weft_policy_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_policy_config_valid 0"), "{metrics}");

    // The watcher still holds the previous state and was sent nothing new.
    assert!(!routes.has_changed().unwrap());
    assert_eq!(routes.borrow().as_deref(), Some(&*before));
    // A new client is served the last good set too.
    let mut fresh = cp.client().watch_routes("default", "api");
    let served = wait_until(
        &mut fresh,
        Duration::from_secs(5),
        "a fresh snapshot",
        |_| true,
    )
    .await;
    assert_eq!(weights(&served), vec![90, 10]);

    // Fixing the file applies it and clears the error.
    write(dir.path(), &resources_with_weights(10, 90));
    wait_until(&mut routes, Duration::from_secs(1), "the fixed edit", |r| {
        weights(r) == vec![10, 90]
    })
    .await;
    let (_, body) = cp.admin_get("/status").await;
    assert!(
        body.contains("\"valid\": true") && body.contains("\"last_error\": null"),
        "{body}"
    );
    cp.stop().await;
}

fn registration(version: &str, port: u16, lease: Duration) -> Registration {
    Registration {
        trust: None,
        service: "api".into(),
        namespace: None,
        labels: BTreeMap::from([("version".to_string(), version.to_string())]),
        address: format!("127.0.0.1:{port}").parse().unwrap(),
        identity: Some(SpiffeId::parse("spiffe://weft.local/ns/default/sa/api").unwrap()),
        lease: Some(Dur(lease)),
        metrics: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_appear_in_watches_and_expire_with_their_lease() {
    let (_dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let client = cp.client();
    let mut all = client.watch_endpoints("default", "api");
    let mut v1 = client.watch_endpoints("default", "api-v1");
    let mut v2 = client.watch_endpoints("default", "api-v2");
    wait_until(
        &mut all,
        Duration::from_secs(5),
        "an empty endpoint set",
        |e| e.endpoints.is_empty(),
    )
    .await;

    let lease = Duration::from_millis(600);
    let a = client.keep_registered(registration("v1", 7001, lease));
    let b = client.keep_registered(registration("v2", 7002, lease));
    let got = wait_until(
        &mut all,
        Duration::from_secs(2),
        "both registrations",
        |e| e.endpoints.len() == 2,
    )
    .await;
    assert_eq!(
        got.endpoints[0].identity.as_ref().unwrap().as_str(),
        "spiffe://weft.local/ns/default/sa/api"
    );
    assert_eq!(got.endpoints[0].labels["version"], "v1");
    assert_eq!(got.endpoints[0].labels["app"], "api");
    // The version services select by label.
    let e1 = wait_until(&mut v1, Duration::from_secs(2), "api-v1's endpoint", |e| {
        e.endpoints.len() == 1
    })
    .await;
    assert_eq!(e1.endpoints[0].address.port(), 7001);
    let e2 = wait_until(&mut v2, Duration::from_secs(2), "api-v2's endpoint", |e| {
        e.endpoints.len() == 1
    })
    .await;
    assert_eq!(e2.endpoints[0].address.port(), 7002);

    // Renewals keep them alive across several lease periods.
    let mut granted = a.granted();
    granted.borrow_and_update();
    let renewals_from = Instant::now();
    for _ in 0..5 {
        granted.changed().await.unwrap();
    }
    assert!(
        renewals_from.elapsed() > lease,
        "several renewals span more than one lease"
    );
    assert_eq!(
        all.borrow().as_ref().unwrap().endpoints.len(),
        2,
        "renewed endpoints stay"
    );

    // A workload that stops renewing disappears within its lease.
    drop(b);
    let stopped = Instant::now();
    wait_until(
        &mut all,
        lease + Duration::from_millis(500),
        "the lapsed lease",
        |e| e.endpoints.len() == 1,
    )
    .await;
    let took = stopped.elapsed();
    assert!(
        took <= lease + Duration::from_millis(300),
        "expired after {took:?}, lease {lease:?}"
    );
    wait_until(&mut v2, Duration::from_secs(1), "api-v2 empty", |e| {
        e.endpoints.is_empty()
    })
    .await;
    let (_, metrics) = cp.admin_get("/metrics").await;
    assert!(
        metrics.contains("weft_policy_leases_expired_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_policy_endpoints_registered 1"),
        "{metrics}"
    );

    // Clean deregistration removes at once.
    drop(a);
    client
        .deregister("default", "127.0.0.1:7001".parse().unwrap())
        .await
        .unwrap();
    wait_until(
        &mut all,
        Duration::from_millis(500),
        "the deregistration",
        |e| e.endpoints.is_empty(),
    )
    .await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_last_state_then_reconnects_and_converges() {
    let (dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    let addr = cp.api;
    let client = cp.client();
    let mut routes = client.watch_routes("default", "api");
    let mut endpoints = client.watch_endpoints("default", "api");
    wait_until(
        &mut routes,
        Duration::from_secs(5),
        "the first snapshot",
        |r| weights(r) == vec![90, 10],
    )
    .await;
    wait_until(&mut endpoints, Duration::from_secs(5), "endpoints", |_| {
        true
    })
    .await;
    assert_eq!(client.connections(), 1);

    cp.stop().await;
    // The control plane is gone: the client still serves what it had.
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => (1, ()),
            Err(_) => (0, ()),
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 0, "the control plane is down");
    assert_eq!(weights(routes.borrow().as_ref().unwrap()), vec![90, 10]);

    // It comes back (same address) with changed resources; the client converges.
    write(dir.path(), &resources_with_weights(20, 80));
    let mut settings = Settings::insecure(dir.path());
    settings.api.registry_warmup = Duration::from_millis(1500);
    let cp = ControlPlane::start_on(addr, settings).await;
    wait_until(
        &mut routes,
        Duration::from_secs(5),
        "convergence after the restart",
        |r| weights(r) == vec![20, 80],
    )
    .await;
    assert!(client.connections() >= 2, "the client reconnected");
    // The other watch resumed with its version: the endpoints did not change, so it got no
    // new snapshot (UNCHANGED), yet it is live again and sees later changes.
    assert!(!endpoints.has_changed().unwrap());
    // While the restarted registry warms up (workloads of the old instance have not all
    // renewed yet), a resumed endpoints watch keeps its list; then it sees the registration.
    let registered_at = tokio::time::Instant::now();
    let _reg = client.keep_registered(registration("v1", 7101, Duration::from_secs(5)));
    wait_until(
        &mut endpoints,
        Duration::from_secs(5),
        "a registration after the restart",
        |e| e.endpoints.len() == 1,
    )
    .await;
    assert!(
        registered_at.elapsed() >= Duration::from_millis(500),
        "the registration was delivered during the warm-up"
    );
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_lists_resumes_and_errors() {
    let (_dir, cp) = serve_resources(RESOURCES, |d| Settings::insecure(d)).await;
    // A list (no watch) is one snapshot.
    let (status, body) = cp.api_get("/v1/routes?namespace=default&service=api").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "SNAPSHOT");
    assert_eq!(v["item"]["rules"][0]["backends"][0]["service"], "api-v1");
    let version = v["version"].as_str().unwrap().to_string();

    // A watch resumed with the current version starts with UNCHANGED.
    let first = first_watch_line(
        cp.api,
        &format!("/v1/routes?namespace=default&service=api&watch=true&version={version}"),
    )
    .await;
    let e: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(e["type"], "UNCHANGED", "{first}");
    assert_eq!(e["version"], version.as_str());
    // With an old version, a fresh snapshot.
    let first = first_watch_line(
        cp.api,
        "/v1/routes?namespace=default&service=api&watch=true&version=0123",
    )
    .await;
    assert!(first.contains("\"type\":\"SNAPSHOT\""), "{first}");

    let (status, body) = cp.api_get("/v1/routes").await;
    assert_eq!(status, 400);
    assert!(body.contains("missing_service"), "{body}");
    let (status, _) = cp.api_get("/v1/nothing").await;
    assert_eq!(status, 404);
    // Services without resources get defaults.
    let (_, body) = cp.api_get("/v1/inbound?service=ghost").await;
    assert!(body.contains("default:all-authenticated"), "{body}");
    cp.stop().await;
}

/// Reads the first line of a watch stream over HTTP/1.1 (chunked).
async fn first_watch_line(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "stream ended");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((_, body)) = text.split_once("\r\n\r\n") {
                // Chunked: size line, then data.
                if let Some((_, data)) = body.split_once("\r\n")
                    && let Some((line, _)) = data.split_once('\n')
                {
                    return line.to_string();
                }
            }
        }
    })
    .await
    .expect("a first line within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_lookup_names_the_endpoints_at_an_ip_and_follows_registrations() {
    // A static endpoint at 10.0.0.7 (a workload without a proxy) besides the usual resources.
    let resources = format!(
        "{RESOURCES}---\nkind: Service\nmetadata: {{name: legacy, namespace: default}}\n\
         spec:\n  ports: [{{port: 8080}}, {{port: 25, appProtocol: opaque}}]\n  endpoints:\n    - address: 10.0.0.7:8080\n"
    );
    let (_dir, cp) = serve_resources(&resources, |d| Settings::insecure(d)).await;
    let item = |body: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "SNAPSHOT", "{body}");
        v["item"].clone()
    };

    let (status, body) = cp.api_get("/v1/address?ip=10.0.0.7").await;
    assert_eq!(status, 200, "{body}");
    let legacy = item(&body);
    assert_eq!(legacy["ip"], "10.0.0.7");
    assert_eq!(legacy["endpoints"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(legacy["endpoints"][0]["service"], "legacy");
    assert_eq!(
        legacy["endpoints"][0]["endpoint"]["address"],
        "10.0.0.7:8080"
    );
    assert_eq!(legacy["endpoints"][0]["endpoint"]["source"], "static");
    assert!(legacy["endpoints"][0]["endpoint"].get("identity").is_none());
    // Its service's opaque port: proxies skip protocol detection on it.
    assert_eq!(
        legacy["endpoints"][0]["opaque_ports"],
        serde_json::json!([25])
    );

    // An IP the mesh does not know: known to be unknown, not an error.
    let (status, body) = cp.api_get("/v1/address?ip=127.0.0.1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(item(&body)["endpoints"], serde_json::json!([]));

    // A watch sees a registration at the IP, with its service and identity, and its removal.
    let (tx, mut lines) = tokio::sync::mpsc::channel(16);
    let watch = tokio::spawn(watch_lines(
        cp.api,
        "/v1/address?ip=127.0.0.1&watch=true",
        tx,
    ));
    let next_snapshot = async |lines: &mut tokio::sync::mpsc::Receiver<String>| loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.recv())
            .await
            .expect("a snapshot within 5 s")
            .expect("the watch is open");
        if line.contains("\"SNAPSHOT\"") {
            return item(&line);
        }
    };
    assert_eq!(
        next_snapshot(&mut lines).await["endpoints"],
        serde_json::json!([])
    );
    let client = cp.client();
    let registered = client.keep_registered(registration("v1", 7001, Duration::from_secs(30)));
    let seen = next_snapshot(&mut lines).await;
    let endpoints = seen["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{seen}");
    assert_eq!(endpoints[0]["namespace"], "default");
    assert_eq!(endpoints[0]["service"], "api");
    assert_eq!(endpoints[0]["endpoint"]["address"], "127.0.0.1:7001");
    assert_eq!(
        endpoints[0]["endpoint"]["identity"],
        "spiffe://weft.local/ns/default/sa/api"
    );
    assert_eq!(endpoints[0]["endpoint"]["source"], "registered");
    assert!(endpoints[0].get("opaque_ports").is_none(), "{seen}");
    // The proxy's client follows the same: what transparent interception asks.
    let mut followed = client.watch_address("127.0.0.1".parse().unwrap());
    let got = wait_until(
        &mut followed,
        Duration::from_secs(5),
        "the workload at the address",
        |a| a.endpoints.len() == 1,
    )
    .await;
    assert_eq!(got.endpoints[0].service, "api");
    assert_eq!(
        got.endpoints[0]
            .endpoint
            .identity
            .as_ref()
            .unwrap()
            .as_str(),
        "spiffe://weft.local/ns/default/sa/api"
    );
    drop(registered);
    client
        .deregister("default", "127.0.0.1:7001".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        next_snapshot(&mut lines).await["endpoints"],
        serde_json::json!([])
    );
    wait_until(
        &mut followed,
        Duration::from_secs(5),
        "the address empty again",
        |a| a.endpoints.is_empty(),
    )
    .await;
    watch.abort();

    // Bad requests say what to give.
    let (status, body) = cp.api_get("/v1/address").await;
    assert_eq!(status, 400);
    assert!(body.contains("missing_ip"), "{body}");
    let (status, body) = cp.api_get("/v1/address?ip=api.default").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("bad_ip") && body.contains("api.default"),
        "{body}"
    );
    // The watch was counted under its own kind.
    let (_, metrics) = cp.admin_get("/metrics").await;
    assert!(
        metrics.contains("weft_policy_watch_events_total{kind=\"address\"}"),
        "{metrics}"
    );
    cp.stop().await;
}

/// Sends every line of a watch stream (HTTP/1.1, chunked) to `tx` until it ends.
async fn watch_lines(
    addr: std::net::SocketAddr,
    path: &str,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    let mut body_started = false;
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if !body_started {
            match text.split_once("\r\n\r\n") {
                Some((_, rest)) => {
                    text = rest.to_string();
                    body_started = true;
                }
                None => continue,
            }
        }
        // Chunk framing aside, every event is one JSON line.
        while let Some(i) = text.find('\n') {
            let line: String = text.drain(..=i).collect();
            let line = line.trim();
            if line.starts_with('{') && tx.send(line.to_string()).await.is_err() {
                return;
            }
        }
    }
}
