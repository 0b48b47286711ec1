//! Slow and idle connections at both listeners (web's outbound in plaintext, api's inbound
//! over mTLS as web): a slowloris sending its header one byte a second is cut off, silent
//! connections are closed or cost little, and the good client never notices.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::certs::{MeshCa, mtls};
use crate::mesh::{GoodClient, Mesh, case, errors, runtime, wait_errors};
use crate::raw::read_until_closed;

/// How long the proxy gives a client to send a whole request head, or to start the next one
/// on a kept-alive connection.
const HEADER_READ_TIMEOUT: Duration = weft_proxy::limits::HTTP1_HEADER_READ_TIMEOUT;

/// Sends `head` at once, then one byte of a header line a second, while reading: how long
/// until the proxy closed the connection (`None`: still open after `limit`), and what it said.
async fn slowloris<S>(io: S, head: String, limit: Duration) -> (Option<Duration>, String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for b in b"X-Slow: ".iter().chain([b'a'; 120].iter()) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    });
    let (text, closed) = read_until_closed(&mut rd, limit).await;
    writer.abort();
    (closed.then(|| started.elapsed()), text)
}

/// One request on a kept-alive connection, then silence: how long until the proxy closed it,
/// and what it said.
async fn idle_after_one<S>(mut io: S, req: String, limit: Duration) -> (Option<Duration>, String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    io.write_all(req.as_bytes()).await.unwrap();
    let (text, closed) = read_until_closed(&mut io, limit).await;
    (closed.then(|| started.elapsed()), text)
}

/// A slowloris at each listener, and a kept-alive connection left idle at each: all cut off
/// once the header read timeout runs out (the idle ones after their one answer).
fn slowloris_case(mesh: &Mesh, rt: &tokio::runtime::Runtime, cert: &crate::certs::Cert) {
    let head = format!("GET /slowloris HTTP/1.1\r\nHost: {}\r\n", mesh.authority());
    let req = format!(
        "GET /idle-after-one HTTP/1.1\r\nHost: {}\r\n\r\n",
        mesh.authority()
    );
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(15);
    let results = rt.block_on(async {
        let out = || tokio::net::TcpStream::connect(mesh.web.outbound);
        let inb = || mtls(mesh.api.inbound, cert, b"http/1.1");
        let (o1, o2) = (out().await.unwrap(), out().await.unwrap());
        let (i1, i2) = (inb().await, inb().await);
        tokio::join!(
            slowloris(o1, head.clone(), limit),
            slowloris(i1, head.clone(), limit),
            idle_after_one(o2, req.clone(), limit),
            idle_after_one(i2, req.clone(), limit),
        )
    });
    let (a, b, c, d) = results;
    let named = [
        ("slowloris at outbound", a, 0),
        ("slowloris at inbound", b, 0),
        ("idle after one request at outbound", c, 1),
        ("idle after one request at inbound", d, 1),
    ];
    for (what, (took, text), answers) in named {
        let took = took.unwrap_or_else(|| panic!("{what}: kept its connection for {limit:?}"));
        eprintln!("{what}: cut off after {took:?}");
        assert!(
            took >= HEADER_READ_TIMEOUT - Duration::from_secs(1) && took < limit,
            "{what}: cut off after {took:?}"
        );
        assert_eq!(
            text.matches("HTTP/1.1 200 ").count(),
            answers,
            "{what}: {text}"
        );
    }
}

/// Connections that never send a byte, and connections left idle after one request.
fn idle_case(mesh: &Mesh, rt: &tokio::runtime::Runtime, cert: &crate::certs::Cert) {
    let before = errors(&mesh.web, "outbound", "detect_timeout");
    let a = mesh.authority();
    rt.block_on(async {
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(
                tokio::net::TcpStream::connect(mesh.web.outbound)
                    .await
                    .unwrap(),
            );
            silent.push(
                tokio::net::TcpStream::connect(mesh.api.inbound)
                    .await
                    .unwrap(),
            );
        }
        // Past the handshake, silent: detection gives up and tunnels them to the app.
        let mut tls = Vec::new();
        for _ in 0..50 {
            tls.push(mtls(mesh.api.inbound, cert, b"http/1.1").await);
        }
        // One request each, then idle on a kept-alive connection.
        let mut kept = Vec::new();
        for i in 0..100 {
            let mut tcp = tokio::net::TcpStream::connect(mesh.web.outbound)
                .await
                .unwrap();
            let req = format!("GET /kept-{i} HTTP/1.1\r\nHost: {a}\r\n\r\n");
            tcp.write_all(req.as_bytes()).await.unwrap();
            kept.push(tcp);
        }
        // Detection gives up after a second: the plaintext ones are closed (outbound: no
        // destination; inbound: the policy lets no unauthenticated peer in).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for (i, mut s) in silent.into_iter().enumerate() {
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (text, closed) = read_until_closed(&mut s, limit).await;
            assert!(closed && text.is_empty(), "silent connection {i}: {text:?}");
        }
        drop(tls);
        drop(kept);
    });
    wait_errors(
        &mesh.web,
        "outbound",
        "detect_timeout",
        before,
        200.0,
        "silent",
    );
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn slow_and_idle_clients_are_cut_off_and_cost_little() {
    let mesh = Mesh::start();
    let cert = MeshCa::load(&mesh.data).workload("web");
    let good = GoodClient::start(&mesh);
    let rt = runtime();
    case(&mesh, &good, "idle", || idle_case(&mesh, &rt, &cert));
    case(&mesh, &good, "slowloris", || {
        slowloris_case(&mesh, &rt, &cert)
    });
    // One byte a second from the first byte: detection gives up after a second, and the
    // connection, now opaque with no destination, is closed.
    case(&mesh, &good, "slow-from-the-first-byte", || {
        let before = errors(&mesh.web, "outbound", "detect_timeout");
        let (took, text) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(mesh.web.outbound)
                .await
                .unwrap();
            slowloris(tcp, "G".into(), Duration::from_secs(15)).await
        });
        let took = took.expect("still open after 15 s");
        assert!(
            took < Duration::from_secs(5),
            "closed after {took:?}: {text}"
        );
        wait_errors(
            &mesh.web,
            "outbound",
            "detect_timeout",
            before,
            1.0,
            "first byte",
        );
    });
    // The kept-alive connections were answered: the app saw each request once.
    assert_eq!(mesh.seen.count("/kept-"), 100);
}
