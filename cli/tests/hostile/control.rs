//! Floods straight at the control plane's API, with a workload certificate the mesh's CA
//! signed (for `mallory`, a workload no policy mentions): thousands of one-shot requests and
//! a thousand watches for names that do not exist. The control plane caps what one identity
//! may hold open (429, a `too_many_*` JSON error), keeps no state for nonexistent names (its
//! RSS stays bounded), and serves everyone else meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::certs::{Cert, MeshCa, client_config, connect};
use crate::discovery::new_service_found;
use crate::mesh::{GoodClient, Mesh, RSS_GROWTH_LIMIT_KIB, case, rss_kib, runtime};

/// One-shot requests of the request flood, each for a name of its own.
const REQUESTS: usize = 10_000;
/// Watches of the watch flood: over 10 connections, past the cap of 1,000 per identity.
const WATCHES: usize = 1_200;

/// An HTTP/2 connection to the control plane presenting `cert`.
async fn cp(mesh: &Mesh, cert: &Cert) -> h2::client::SendRequest<Bytes> {
    let cfg = client_config(Some(cert.clone()), &[&rustls::version::TLS13], b"h2");
    let tls = connect(mesh.pol_api, cfg).await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// `GET path`: its status (0: no answer within 10 s) and, unless it is a 200 watch, its body
/// (at most 4 KiB); a 200 watch's body stream is returned to be held open.
async fn get(
    client: h2::client::SendRequest<Bytes>,
    pol: std::net::SocketAddr,
    path: String,
) -> (u16, String, Option<h2::RecvStream>) {
    let answer = async move {
        let mut client = client.ready().await.ok()?;
        let req = http::Request::get(format!("https://{pol}{path}"))
            .body(())
            .ok()?;
        let (rsp, _) = client.send_request(req, true).ok()?;
        let rsp = rsp.await.ok()?;
        let code = rsp.status().as_u16();
        let mut body = rsp.into_body();
        if code == 200 && path.contains("watch=true") {
            return Some((code, String::new(), Some(body)));
        }
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            text.extend_from_slice(&chunk);
            if text.len() > 4096 {
                break;
            }
        }
        Some((code, String::from_utf8_lossy(&text).into_owned(), None))
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new(), None))
}

/// What a flood got back: the count of each status, a sample body per status, and the
/// watches held open.
#[derive(Default)]
struct Answers {
    counts: BTreeMap<u16, usize>,
    samples: BTreeMap<u16, String>,
    held: Vec<h2::RecvStream>,
}

impl Answers {
    fn record(&mut self, (code, body, stream): (u16, String, Option<h2::RecvStream>)) {
        *self.counts.entry(code).or_insert(0) += 1;
        self.samples.entry(code).or_insert(body);
        self.held.extend(stream);
    }
}

/// Sends `paths` over `conns` connections, at most 64 requests waiting for an answer at once
/// (a watch stops waiting once its stream starts).
async fn flood(mesh: &Mesh, cert: &Cert, conns: usize, paths: Vec<String>) -> Answers {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(cp(mesh, cert).await);
    }
    let mut answers = Answers::default();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, path) in paths.into_iter().enumerate() {
        tasks.spawn(get(clients[i % conns].clone(), mesh.pol_api, path));
        while tasks.len() >= 64 {
            if let Some(Ok(a)) = tasks.join_next().await {
                answers.record(a);
            }
        }
    }
    while let Some(Ok(a)) = tasks.join_next().await {
        answers.record(a);
    }
    answers
}

/// `rounds` one-shot floods of [`REQUESTS`] distinct nonexistent names each: every request
/// answered. The control plane's RSS before and after each round.
fn request_flood(
    mesh: &Mesh,
    good: &GoodClient,
    rt: &tokio::runtime::Runtime,
    cert: &Cert,
    rounds: usize,
) -> Vec<u64> {
    let pid = mesh.policy.pid();
    let mut rss = vec![rss_kib(pid)];
    case(mesh, good, "control-plane-requests", || {
        for round in 0..rounds {
            let paths = (0..REQUESTS)
                .map(|i| format!("/v1/endpoints?namespace=default&service=ghost-{round}-{i}"))
                .collect();
            let a = rt.block_on(flood(mesh, cert, 4, paths));
            rss.push(rss_kib(pid));
            eprintln!(
                "round {round}: {:?}, e.g. {:?}",
                a.counts,
                a.samples.get(&200)
            );
            assert_eq!(
                a.counts.get(&0),
                None,
                "unanswered requests: {:?}",
                a.counts
            );
        }
    });
    eprintln!("control plane RSS over {rounds} × {REQUESTS} requests: {rss:?} KiB");
    rss
}

/// The watch flood, held open while web's proxy (another identity) looks up a new service:
/// what the watches got. The control plane's RSS stays bounded meanwhile.
fn watch_flood(
    mesh: &Mesh,
    good: &GoodClient,
    rt: &tokio::runtime::Runtime,
    cert: &Cert,
) -> Answers {
    let pid = mesh.policy.pid();
    let before = rss_kib(pid);
    let mut answers = Answers::default();
    case(mesh, good, "control-plane-watches", || {
        let paths = (0..WATCHES)
            .map(|i| format!("/v1/endpoints?namespace=default&service=phantom-{i}&watch=true"))
            .collect();
        let a = rt.block_on(flood(mesh, cert, 10, paths));
        eprintln!("{WATCHES} watches: {:?}, e.g. {:?}", a.counts, a.samples);
        assert_eq!(a.counts.get(&0), None, "unanswered watches: {:?}", a.counts);
        let took = new_service_found(mesh, "during-flood");
        eprintln!("new service found during the flood after {took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let after = rss_kib(pid);
        eprintln!("control plane RSS with {WATCHES} watches: {before} -> {after} KiB");
        assert!(
            after.saturating_sub(before) < RSS_GROWTH_LIMIT_KIB,
            "{WATCHES} watches grew the control plane by {} KiB",
            after.saturating_sub(before)
        );
        answers = Answers {
            counts: a.counts.clone(),
            samples: a.samples.clone(),
            held: Vec::new(),
        };
    });
    answers
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn control_plane_floods_leave_it_bounded_and_serving() {
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    let mallory = MeshCa::load(&mesh.data).workload("mallory");
    let rt = runtime();
    let rss = request_flood(&mesh, &good, &rt, &mallory, 1);
    let growth = rss[1].saturating_sub(rss[0]);
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "{REQUESTS} requests for nonexistent names grew the control plane by {growth} KiB"
    );
    watch_flood(&mesh, &good, &rt, &mallory);
}

/// Fails until the control plane keeps no state for names that do not exist: today each
/// round of 10,000 new names grows it by about 5.5 MiB, for good.
#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn control_plane_keeps_no_state_for_nonexistent_names() {
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    let mallory = MeshCa::load(&mesh.data).workload("mallory");
    let rt = runtime();
    let rss = request_flood(&mesh, &good, &rt, &mallory, 3);
    // After the first round has warmed the allocator, 20,000 more names may cost under
    // 3 MiB (150 bytes a name: less than any entry kept per name).
    let growth = rss[3].saturating_sub(rss[1]);
    assert!(
        growth < 3 * 1024,
        "20,000 more nonexistent names grew the control plane by {growth} KiB: {rss:?}"
    );
}

/// The control plane caps what one identity holds open (1,000 watches by default): the
/// watches past it are refused with 429 and a `too_many_*` reason.
#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn control_plane_watch_floods_get_429() {
    let mesh = Mesh::start();
    let good = GoodClient::start(&mesh);
    let mallory = MeshCa::load(&mesh.data).workload("mallory");
    let rt = runtime();
    let a = watch_flood(&mesh, &good, &rt, &mallory);
    let refused = a.counts.get(&429).copied().unwrap_or(0);
    assert!(refused > 0, "no watch was refused: {:?}", a.counts);
    let sample = a.samples.get(&429).cloned().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&sample).unwrap_or_default();
    let code = json["error"].as_str().unwrap_or_default();
    assert!(
        code.starts_with("too_many_"),
        "429 without a too_many_* code: {sample}"
    );
}
