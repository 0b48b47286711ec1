//! gRPC through the mesh with grpcio's server and client (python), as directly; and the
//! errors the proxies make themselves, seen by the client as the gRPC statuses they stand for.

use super::*;

/// A grpcio server of raw-bytes methods (`/compat.Echo/...`).
const SERVER: &str = include_str!("grpc_server.py");

/// A grpcio client of it: every call shape (`all`), or one call's status (`status`).
const CLIENT: &str = include_str!("grpc_client.py");

/// One unary call of `method` on `target`, naming `authority`, with a deadline of 10 s: `OK`,
/// or the status code's name and its message.
fn status(dir: &Path, target: &str, authority: &str, method: &str) -> String {
    python(
        dir,
        "grpc_client.py",
        CLIENT,
        &[target, authority, "status", method, "10"],
    )
}

/// [`status`] until it starts with `want` (a change of resources takes a moment to reach the
/// proxies), for at most 30 s: the last answer.
fn wait_status(dir: &Path, mesh: &Mesh, method: &str, want: &str) -> String {
    let (target, authority) = (mesh.web.outbound.to_string(), mesh.authority());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = status(dir, &target, &authority, method);
        if got.starts_with(want) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{method} never got {want} (last: {got}):\n{}",
            mesh.web.child.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn grpc_clients_through_the_mesh_as_directly() {
    require_tools(&["python3"], "python3 (with grpcio)");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_server, port) = py_server(d, "grpc_server.py", SERVER);
    // A gRPC server does not answer `GET /` over HTTP/1: ready once a call goes through.
    let mesh = Mesh::start_unready(port, Seen::default());
    wait_status(d, &mesh, "Unary", "OK");
    let (direct, outbound) = (format!("127.0.0.1:{port}"), mesh.web.outbound.to_string());

    // Every call shape, as directly.
    assert_eq!(
        python(d, "grpc_client.py", CLIENT, &[&direct, &direct, "all"]),
        "ok"
    );
    assert_eq!(
        python(
            d,
            "grpc_client.py",
            CLIENT,
            &[&outbound, &mesh.authority(), "all"]
        ),
        "ok",
        "through the mesh:\n{}",
        mesh.web.child.logs()
    );
    let calls = mesh.api.metric(
        "weft_proxy_requests_total",
        &["direction=\"inbound\"", "tls=\"true\""],
    );
    assert!(calls >= 8.0, "api's proxy saw {calls} calls over mTLS");

    // A route's timeout: DEADLINE_EXCEEDED, with the proxy's message.
    mesh.write_resource(
        "routes.yaml",
        &format!(
            "kind: HTTPRoute\nmetadata: {{name: api-slow, namespace: default}}\nspec:\n  parentRefs: [{{name: api, port: {port}}}]\n  rules:\n    - name: slow\n      matches: [{{path: {{type: Exact, value: /compat.Echo/Slow}}}}]\n      timeouts: {{request: 300ms}}\n    - name: rest\n"
        ),
    );
    let got = wait_status(d, &mesh, "Slow", "DEADLINE_EXCEEDED");
    assert!(got.contains("timed out after 300 ms"), "{got}");

    // A name the mesh does not know: UNAVAILABLE, saying so.
    let got = status(d, &outbound, "nosuch.default:50051", "Unary");
    assert!(got.starts_with("UNAVAILABLE"), "{got}");
    assert!(got.contains("not a service known to the mesh"), "{got}");

    // A policy that no longer lets web in: PERMISSION_DENIED, naming the policy.
    admit_only_admin(&mesh);
    let got = wait_status(d, &mesh, "Unary", "PERMISSION_DENIED");
    assert!(got.contains("denied by policy"), "{got}");
}
