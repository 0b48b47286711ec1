//! Real third-party clients and servers through a real mesh (issue 17): `weft identity`, `weft
//! policy` and two proxies (`api` in front of the server, `web` with no app of its own) on
//! loopback, each case compared with the same client talking to the server directly.
//!
//! - WebSocket: a python `websockets` echo server; python `websockets` and `websocket-client`
//!   clients sending 100 echoes and a 1 MB message, with the `Host` header naming the service
//!   and in absolute form (curl through web's outbound as its HTTP proxy); a policy that denies
//!   the caller refuses the upgrade with 403.
//!
//! - gRPC ([`grpc`]): a grpcio server and client, every call shape (unary with trailing
//!   metadata, a 1 MB message, the server's own error status, server, client and bidirectional
//!   streaming, the client's deadline), and the errors the proxies make themselves seen by the
//!   client as gRPC statuses: a route timeout `DEADLINE_EXCEEDED`, a policy's denial
//!   `PERMISSION_DENIED`, an unknown service `UNAVAILABLE`.
//! - HTTP/1.1 ([`http1`]): python's `http.server` and curl: response trailers (declared and
//!   not), a client that half-closes after its request, `Expect: 100-continue` to a server that
//!   refuses the upload (the client sends none of it) and to one that takes it, HEAD, 204, 304,
//!   HTTP/1.0; `CONNECT` through curl's `--proxytunnel` to an open port, a closed one and an
//!   unknown service, answered promptly.
//!
//! The same clients under transparent interception, and the opaque-TCP ones (redis, postgres),
//! are in `compat_intercept.rs`.
//!
//! System tests (`WEFT_SYSTEM_TESTS=1`): they need python3 with `websockets`,
//! `websocket-client` and `grpcio`, and curl (`.ci/run` installs them).
#![allow(clippy::unwrap_used)]

mod support;

#[path = "hostile/mesh.rs"]
#[allow(dead_code)]
mod mesh;

#[path = "compat/grpc.rs"]
mod grpc;
#[path = "compat/http1.rs"]
mod http1;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mesh::{Mesh, Seen};
use support::*;
use weft_runtime::child::{Child, Options};

/// A python `websockets` echo server on `port`: every message comes back as it was sent.
const ECHO_SERVER: &str = include_str!("compat/ws_echo_server.py");

/// A python `websockets` client: connects to `ws://<host>/chat` over a socket connected to
/// `addr` (so the `Host` header names the service while the bytes go to the proxy), sends 100
/// echoes and a 1 MB message, prints `ok`; a refused handshake prints `status <code>`.
const WEBSOCKETS_CLIENT: &str = include_str!("compat/ws_websockets_client.py");

/// A python `websocket-client` client, the same exchange through `addr` with `Host: <host>`.
const WEBSOCKET_CLIENT: &str = include_str!("compat/ws_websocket_client.py");

fn python(dir: &Path, name: &str, script: &str, args: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A python server (`script`, run with its port as its argument) on a free port, once it
/// accepts connections.
fn py_server(dir: &Path, name: &str, script: &str) -> (Child, u16) {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let port = free_addr().port();
    let child = Child::spawn(
        name,
        Path::new("python3"),
        &[path.to_str().unwrap(), &port.to_string()],
        &[],
        &dir.join(format!("{name}.log")),
        &Options::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not start:\n{}",
            child.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// Api's policy changed to admit only `admin`, not web: once web's requests get 403.
fn admit_only_admin(mesh: &Mesh) {
    let port = mesh.port;
    mesh.write_resource(
        "mesh.yaml",
        &format!(
            "kind: Service\nmetadata: {{name: api, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n\
             kind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
             kind: AuthorizationPolicy\nmetadata: {{name: api-from-admin, namespace: default}}\nspec:\n  target: {{service: api, port: {port}}}\n  allow:\n    - identities: [\"spiffe://weft.local/ns/default/sa/admin\"]\n"
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh.get("/").0 != 403 {
        assert!(Instant::now() < deadline, "the new policy never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// curl's upgrade request, absolute-form through `proxy` as its HTTP proxy (or straight to
/// the server without one): the response head it printed.
fn curl_upgrade(proxy: Option<SocketAddr>, authority: &str) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--http1.1", "--max-time", "3", "-o", "-"]);
    if let Some(p) = proxy {
        cmd.args(["--proxy", &format!("http://{p}")]);
    }
    cmd.args([
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("http://{authority}/chat"),
    ]);
    // curl waits on the switched connection until --max-time: its exit status says so.
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn websocket_clients_through_the_mesh_as_directly() {
    require_tools(
        &["python3", "curl"],
        "python3 (with websockets, websocket-client), curl",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (_server, port) = py_server(tmp.path(), "ws_echo_server.py", ECHO_SERVER);
    let mesh = Mesh::start_with(port, Seen::default());
    let authority = mesh.authority();
    let direct = format!("127.0.0.1:{port}");
    let outbound = mesh.web.outbound.to_string();

    for (name, script) in [
        ("websockets_client.py", WEBSOCKETS_CLIENT),
        ("websocket_client.py", WEBSOCKET_CLIENT),
    ] {
        assert_eq!(python(tmp.path(), name, script, &[&direct, &direct]), "ok");
        assert_eq!(
            python(tmp.path(), name, script, &[&outbound, &authority]),
            "ok",
            "{name} through the mesh\n{}",
            mesh.web.child.logs()
        );
    }
    let head = curl_upgrade(None, &direct);
    assert!(head.starts_with("HTTP/1.1 101"), "directly: {head}");
    let head = curl_upgrade(Some(mesh.web.outbound), &authority);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "absolute-form via the mesh: {head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    // Counted: every upgrade on both sides, and the bytes each relayed.
    let switched = |p: &mesh::Proxy, dir: &str| {
        p.metric(
            "weft_proxy_responses_total",
            &[&format!("direction=\"{dir}\""), "status_class=\"1xx\""],
        )
    };
    assert_eq!(
        switched(&mesh.web, "outbound"),
        3.0,
        "{}",
        mesh.web.metrics()
    );
    assert_eq!(
        switched(&mesh.api, "inbound"),
        3.0,
        "{}",
        mesh.api.metrics()
    );

    // A policy that no longer lets web in: the upgrade gets 403, both clients see it.
    admit_only_admin(&mesh);
    for (name, script) in [
        ("websockets_client.py", WEBSOCKETS_CLIENT),
        ("websocket_client.py", WEBSOCKET_CLIENT),
    ] {
        assert_eq!(
            python(tmp.path(), name, script, &[&outbound, &authority]),
            "status 403",
            "{name}"
        );
    }
}
