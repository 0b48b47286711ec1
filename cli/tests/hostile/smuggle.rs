//! Request smuggling shapes, at web's outbound (plaintext, from web's app) and at api's inbound
//! (over mTLS as web): each is refused with 400, or read as exactly one request on a connection
//! that is then closed; the app never sees the request hidden behind it.

use std::time::Duration;

use crate::certs::{Cert, MeshCa, mtls};
use crate::mesh::{GoodClient, Mesh, case, errors, runtime, wait_errors};
use crate::raw::{exchange, status};

/// How a shape must be answered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 400, nothing more.
    BadRequest,
    /// One response (of whatever status), then the connection closes.
    One,
}

/// The shapes: a name, the head's header lines after `Host`, the bytes after the head (the
/// smuggled request `GET /smuggled-<name>` among them), and what must come back.
fn shapes() -> Vec<(&'static str, &'static str, &'static str, Expect)> {
    use Expect::*;
    vec![
        // TE wins over CL; hyper then closes the connection (RFC 9112 6.1).
        (
            "cl-te",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
            One,
        ),
        (
            "te-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            "0\r\n\r\n",
            One,
        ),
        (
            "two-cl",
            "Content-Length: 0\r\nContent-Length: 47\r\n",
            "",
            BadRequest,
        ),
        ("cl-list", "Content-Length: 0, 47\r\n", "", BadRequest),
        ("cl-plus", "Content-Length: +0\r\n", "", BadRequest),
        (
            "te-obs-fold",
            "Transfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n",
            "0\r\n\r\n",
            BadRequest,
        ),
        (
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n",
            BadRequest,
        ),
        (
            "te-xchunked",
            "Transfer-Encoding: xchunked\r\nContent-Length: 0\r\n",
            "0\r\n\r\n",
            BadRequest,
        ),
        (
            "te-space-colon",
            "Transfer-Encoding : chunked\r\nContent-Length: 0\r\n",
            "0\r\n\r\n",
            BadRequest,
        ),
        (
            "bare-cr",
            "X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            "0\r\n\r\n",
            BadRequest,
        ),
        (
            "nul-in-value",
            "X-A: a\0b\r\nContent-Length: 0\r\n",
            "",
            BadRequest,
        ),
    ]
}

/// The bytes of one shape, its request aimed at `authority`; `path` carries the shape's name.
fn bytes(authority: &str, name: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /{name} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n{body}\
         GET /smuggled-{name} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .into_bytes()
}

/// Request lines the parser must refuse, whatever follows them.
fn bad_lines(authority: &str) -> Vec<(&'static str, Vec<u8>)> {
    let smuggled = format!("GET /smuggled-line HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    [
        ("space-in-uri", format!("GET /a b/smuggled-x HTTP/1.1\r\nHost: {authority}\r\n\r\n")),
        ("http10-te", format!("POST / HTTP/1.0\r\nHost: {authority}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}")),
        ("no-version", format!("GET /x\r\nHost: {authority}\r\n\r\n{smuggled}")),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.into_bytes()))
    .collect()
}

/// Sends `req` to web's outbound (plaintext) and to api's inbound (mTLS as web); checks each
/// answer, and that each refusal with 400 is counted as `bad_request` by the proxy that made it.
fn both(
    mesh: &Mesh,
    rt: &tokio::runtime::Runtime,
    cert: &Cert,
    name: &str,
    req: &[u8],
    expect: Expect,
) {
    let limit = Duration::from_secs(5);
    for (proxy, direction) in [(&mesh.web, "outbound"), (&mesh.api, "inbound")] {
        let before = errors(proxy, direction, "bad_request");
        let (answer, closed) = rt.block_on(async {
            if direction == "outbound" {
                let tcp = tokio::net::TcpStream::connect(mesh.web.outbound)
                    .await
                    .unwrap();
                exchange(tcp, req, limit).await
            } else {
                exchange(mtls(mesh.api.inbound, cert, b"http/1.1").await, req, limit).await
            }
        });
        check(name, direction, &answer, closed, expect);
        if expect == Expect::BadRequest {
            wait_errors(proxy, direction, "bad_request", before, 1.0, name);
        }
    }
}

fn check(name: &str, listener: &str, answer: &str, closed: bool, expect: Expect) {
    let responses = answer.matches("HTTP/1.1 ").count();
    match expect {
        Expect::BadRequest => assert_eq!(status(answer), 400, "{listener} {name}: {answer}"),
        Expect::One => assert_eq!(responses, 1, "{listener} {name}: {answer}"),
    }
    assert!(
        closed,
        "{listener} {name}: the connection stayed open after {answer}"
    );
    assert!(responses <= 1, "{listener} {name}: {answer}");
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn smuggling_shapes_are_refused_at_both_listeners() {
    let mesh = Mesh::start();
    let web_cert = MeshCa::load(&mesh.data).workload("web");
    let good = GoodClient::start(&mesh);
    let rt = runtime();
    let a = mesh.authority();
    for (name, headers, body, expect) in shapes() {
        case(&mesh, &good, name, || {
            both(
                &mesh,
                &rt,
                &web_cert,
                name,
                &bytes(&a, name, headers, body),
                expect,
            )
        });
    }
    for (name, req) in bad_lines(&a) {
        case(&mesh, &good, name, || {
            both(&mesh, &rt, &web_cert, name, &req, Expect::BadRequest)
        });
    }
    // Give anything smuggled time to arrive, then look: the app saw none of it.
    good.check("after the shapes");
    let smuggled: Vec<String> = mesh
        .seen
        .paths()
        .into_iter()
        .filter(|p| p.contains("smuggled"))
        .collect();
    assert!(
        smuggled.is_empty(),
        "the app saw smuggled requests: {smuggled:?}"
    );
}
