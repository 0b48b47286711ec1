//! HTTP/2 floods written frame by frame: rapid reset (thousands of streams opened and reset at
//! once, CVE-2023-44487) and CONTINUATION floods (a header block that never ends,
//! CVE-2024-27316 and kin), at web's outbound (h2c, from web's app) and at api's inbound (over
//! mTLS as web). The proxy ends that connection (GOAWAY, then close) long before the flood is
//! spent, and nobody else notices.

use std::time::Duration;

use crate::certs::{MeshCa, mtls};
use crate::mesh::{GoodClient, Mesh, case, runtime};
use crate::raw::{
    CONTINUATION, END_HEADERS, END_STREAM, HEADERS, Outcome, RST_STREAM, flood, frame, hpack_field,
    request_block,
};

/// Streams a rapid-reset flood opens (each a request to api, reset at once).
const RAPID_RESET_STREAMS: u32 = 20_000;
/// CONTINUATION frames of a flood, 16 KiB each: 64 MiB in all, if the server took them.
const CONTINUATION_FRAMES: usize = 4096;
/// How long the proxy may take to end a flooded connection.
const FLOOD_LIMIT: Duration = Duration::from_secs(20);

/// `HEADERS` + `RST_STREAM(CANCEL)` on streams 1, 3, 5...
fn rapid_reset(authority: String) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    (0..RAPID_RESET_STREAMS).flat_map(move |i| {
        let id = 1 + 2 * i;
        let block = request_block(&authority, &format!("/rapid-reset-{i}"));
        [
            frame(HEADERS, END_STREAM | END_HEADERS, id, &block),
            frame(RST_STREAM, 0, id, &8u32.to_be_bytes()),
        ]
    })
}

/// `HEADERS` without `END_HEADERS` on stream 1, then CONTINUATION frames of 16 KiB of
/// header fields, none of them ending the block.
fn continuation(authority: String) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let first = frame(
        HEADERS,
        END_STREAM,
        1,
        &request_block(&authority, "/continuation"),
    );
    // 16 fields of ~1 KiB: 16 KiB, the default largest frame.
    let fields: Vec<u8> = (0..16)
        .flat_map(|i| hpack_field(&format!("x-flood-{i}"), &[b'c'; 1000]))
        .collect();
    std::iter::once(first).chain(
        std::iter::repeat_with(move || frame(CONTINUATION, 0, 1, &fields))
            .take(CONTINUATION_FRAMES),
    )
}

fn check(name: &str, total: usize, o: &Outcome) {
    eprintln!("{name}: {o:?} (of {total} bytes)");
    assert!(
        o.goaway.is_some() || o.closed,
        "{name}: the proxy neither sent GOAWAY nor closed in {FLOOD_LIMIT:?}: {o:?}"
    );
    assert!(
        o.closed,
        "{name}: GOAWAY but the connection stayed open: {o:?}"
    );
    assert!(
        o.sent < total,
        "{name}: the proxy took the whole flood ({total} bytes) before ending it: {o:?}"
    );
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn http2_floods_end_only_the_flooding_connection() {
    let mesh = Mesh::start();
    let cert = MeshCa::load(&mesh.data).workload("web");
    let good = GoodClient::start(&mesh);
    let rt = runtime();
    let a = mesh.authority();
    let size = |frames: Box<dyn Iterator<Item = Vec<u8>>>| frames.map(|f| f.len()).sum::<usize>();
    let rapid_total = size(Box::new(rapid_reset(a.clone())));
    let cont_total = size(Box::new(continuation(a.clone())));
    // The frame writer itself is sound: one plain request on it gets its response, no GOAWAY.
    case(&mesh, &good, "one-good-request", || {
        let one = |path: &str| {
            let block = request_block(&a, path);
            std::iter::once(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
        };
        let limit = Duration::from_secs(2);
        let (out, inb) = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(mesh.web.outbound)
                .await
                .unwrap();
            let tls = mtls(mesh.api.inbound, &cert, b"h2").await;
            (
                flood(tcp, one("/one-out"), limit).await,
                flood(tls, one("/one-in"), limit).await,
            )
        });
        for o in [out, inb] {
            assert!(o.responses == 1 && o.goaway.is_none() && !o.closed, "{o:?}");
        }
        assert_eq!(mesh.seen.count("/one-"), 2);
    });
    case(&mesh, &good, "rapid-reset-outbound", || {
        let o = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(mesh.web.outbound)
                .await
                .unwrap();
            flood(tcp, rapid_reset(a.clone()), FLOOD_LIMIT).await
        });
        check("rapid-reset-outbound", rapid_total, &o);
    });
    case(&mesh, &good, "rapid-reset-inbound", || {
        let o = rt.block_on(async {
            let tls = mtls(mesh.api.inbound, &cert, b"h2").await;
            flood(tls, rapid_reset(a.clone()), FLOOD_LIMIT).await
        });
        check("rapid-reset-inbound", rapid_total, &o);
    });
    case(&mesh, &good, "continuation-outbound", || {
        let o = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(mesh.web.outbound)
                .await
                .unwrap();
            flood(tcp, continuation(a.clone()), FLOOD_LIMIT).await
        });
        check("continuation-outbound", cont_total, &o);
    });
    case(&mesh, &good, "continuation-inbound", || {
        let o = rt.block_on(async {
            let tls = mtls(mesh.api.inbound, &cert, b"h2").await;
            flood(tls, continuation(a.clone()), FLOOD_LIMIT).await
        });
        check("continuation-inbound", cont_total, &o);
    });
    // A flooded stream never reached the app whole: no CONTINUATION request at all, and at
    // most the few rapid-reset streams that were forwarded before their reset arrived.
    assert_eq!(mesh.seen.count("/continuation"), 0);
    let reached = mesh.seen.count("/rapid-reset-");
    eprintln!("rapid-reset streams that reached the app: {reached}");
    assert!(reached < 1000, "{reached} reset streams reached the app");
}
