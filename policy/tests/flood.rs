//! A client flooding the control plane with names that do not exist (issue 16, hole 4): the
//! real `weft-policy` process, its memory read from `/proc`, stays flat, and its `/metrics`
//! page grows no series. A client holding many watches at once, as a busy proxy does, has
//! them all served on its one connection; one address opening connections is capped.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use tokio::task::JoinSet;
use weft_policy::client::{PolicyClient, Watched};
use weft_runtime::child::{Child, Options, Stdin};
use weft_runtime::process::free_loopback_addr;
use weft_runtime::testing::{http_get, metric_sum};

/// Distinct names in the flood (the number).
const NAMES: usize = 20_000;
/// Names asked for before the baseline is taken, so allocator and runtime are warm.
const WARM_UP: usize = 2_000;
/// Watches open at once: what a busy proxy might hold, well under any per-client cap.
const CONCURRENCY: usize = 32;
/// How far the resident memory may move over the flood.
const RSS_SLACK_KIB: u64 = 4 * 1024;

/// The resident set of process `pid`, KiB (`VmRSS` in `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

/// The number of series on a Prometheus page (lines that are not comments).
fn series(admin: SocketAddr) -> usize {
    let (status, page) = http_get(admin, "/metrics", "x").expect("the admin port answers");
    assert_eq!(status, 200, "{page}");
    page.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Waits for a watch's first snapshot, then drops it (the stream is closed).
async fn first<T>(mut rx: Watched<T>, what: String) {
    let got = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| v.is_some())).await;
    assert!(
        matches!(got, Ok(Ok(_))),
        "no snapshot within 20 s for {what}"
    );
}

/// Opens a watch for each name `nonexistent-<i>` (`i` in `names`), which no resource defines
/// and no workload registered, `CONCURRENCY` at a time, each closed after its first snapshot:
/// endpoints, inbound policy, routes and addresses in turn, as proxies ask.
async fn flood(client: &PolicyClient, names: std::ops::Range<usize>) {
    let mut open = JoinSet::new();
    for i in names {
        while open.len() >= CONCURRENCY {
            open.join_next().await.unwrap().unwrap();
        }
        let name = format!("nonexistent-{i}");
        let c = client.clone();
        open.spawn(async move {
            match i % 4 {
                0 => first(c.watch_endpoints("default", &name), name).await,
                1 => first(c.watch_inbound("default", &name), name).await,
                2 => first(c.watch_routes("default", &name), name).await,
                _ => {
                    // A distinct address nothing is registered at (only named in the query).
                    let n = u32::try_from(i).unwrap() & 0x00ff_ffff;
                    let ip = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n));
                    first(c.watch_address(ip), name).await
                }
            }
        });
    }
    while let Some(r) = open.join_next().await {
        r.unwrap();
    }
}

/// `weft-policy --insecure-dev` on free ports, with `extra` flags, ready: it, its API and its
/// admin addresses.
fn start_control_plane(
    resources: &Path,
    logs: &Path,
    extra: &[&str],
) -> (Child, SocketAddr, SocketAddr) {
    let api = free_loopback_addr("the control plane API").unwrap();
    let admin = free_loopback_addr("the control plane admin").unwrap();
    let options = Options {
        stdin: Stdin::Null,
        clear_weft_env: true,
        ..Options::default()
    };
    let mut args = vec![
        "--insecure-dev".to_string(),
        "--dir".to_string(),
        resources.display().to_string(),
        "--listen".to_string(),
        api.to_string(),
        "--admin-listen".to_string(),
        admin.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut child = Child::spawn(
        "weft-policy",
        Path::new(env!("CARGO_BIN_EXE_weft-policy")),
        &args,
        &[],
        &logs.join("policy.log"),
        &options,
    )
    .unwrap();
    child.wait_ready(admin);
    (child, api, admin)
}

#[test]
fn memory_stays_flat_under_a_flood_of_unknown_names() {
    let resources = resource_dir(RESOURCES);
    let logs = tempfile::tempdir().unwrap();
    let (child, api, admin) = start_control_plane(resources.path(), logs.path(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async { PolicyClient::new(fast_settings(api.to_string())) });

    rt.block_on(flood(&client, 0..WARM_UP));
    let (rss_before, series_before) = (rss_kib(child.pid()), series(admin));
    let started = Instant::now();
    rt.block_on(flood(&client, WARM_UP..WARM_UP + NAMES));
    let took = started.elapsed();
    // Every watch has ended on the control plane's side too.
    let open = rt.block_on(weft_runtime::testing::eventually(
        Duration::from_secs(10),
        || {
            let (_, page) = http_get(admin, "/metrics", "x").unwrap_or_default();
            page.contains("weft_policy_watches_active")
                && metric_sum(&page, "weft_policy_watches_active", &[]) == 0.0
        },
    ));
    assert!(
        open,
        "watch streams were still open 10 s after their clients closed them"
    );
    let (rss_after, series_after) = (rss_kib(child.pid()), series(admin));
    eprintln!(
        "{NAMES} unknown names in {took:?}: VmRSS {rss_before} KiB -> {rss_after} KiB, \
         {series_before} -> {series_after} series"
    );

    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "the control plane's resident memory grew from {rss_before} KiB to {rss_after} KiB \
         over {NAMES} names that do not exist (at most {RSS_SLACK_KIB} KiB allowed)"
    );
    assert_eq!(
        series_after, series_before,
        "names that do not exist made new metric series"
    );
    drop(client);
    rt.shutdown_timeout(Duration::from_secs(5));
    let status = child.terminate();
    assert!(status.success(), "weft-policy exited with {status}");
}

/// Watches one client holds at once in [`one_connection_carries_a_busy_proxys_watches`]: more
/// than HTTP/2's usual 200 streams per connection, as a proxy talking to a hundred-odd
/// destinations (two watches each) with interception (one per address) holds.
const HELD: usize = 400;

#[test]
fn one_connection_carries_a_busy_proxys_watches() {
    let resources = resource_dir(RESOURCES);
    let logs = tempfile::tempdir().unwrap();
    let (child, api, _admin) = start_control_plane(resources.path(), logs.path(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = PolicyClient::new(fast_settings(api.to_string()));
        let mut held: Vec<_> = (0..HELD)
            .map(|i| client.watch_endpoints("default", &format!("destination-{i}")))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (i, rx) in held.iter_mut().enumerate() {
            let got = tokio::time::timeout_at(deadline, rx.wait_for(|v| v.is_some())).await;
            assert!(
                matches!(got, Ok(Ok(_))),
                "watch {i} of {HELD} held at once on one connection got no snapshot within 30 s"
            );
        }
        assert_eq!(client.connections(), 1);
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let status = child.terminate();
    assert!(status.success(), "weft-policy exited with {status}");
}

/// `GET path` over HTTP/1.1 on a new connection from `source` to `addr`: the status, or
/// `None` when the connection is closed without an answer (within 5 s).
async fn get_from(source: Ipv4Addr, addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// An HTTP/2 connection from 127.0.0.1 held open without requests.
async fn hold(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

#[test]
fn one_address_holds_at_most_its_cap_of_connections() {
    let resources = resource_dir(RESOURCES);
    let logs = tempfile::tempdir().unwrap();
    let (child, api, _admin) = start_control_plane(
        resources.path(),
        logs.path(),
        &["--max-connections-per-ip", "2"],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let local = Ipv4Addr::new(127, 0, 0, 1);
        let path = "/v1/routes?service=api";
        let first = hold(api).await;
        let _second = hold(api).await;
        // A third from the same address is closed unanswered; another address is served.
        assert_eq!(get_from(local, api, path).await, None);
        assert_eq!(
            get_from(Ipv4Addr::new(127, 0, 0, 2), api, path).await,
            Some(200)
        );
        // Closing one frees its place.
        drop(first);
        let mut got = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.is_none() && tokio::time::Instant::now() < deadline {
            got = get_from(local, api, path).await;
            if got.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(
            got,
            Some(200),
            "closing a connection did not free its place"
        );
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let status = child.terminate();
    assert!(status.success(), "weft-policy exited with {status}");
}
