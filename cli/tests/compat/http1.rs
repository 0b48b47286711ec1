//! HTTP/1.1 through the mesh with curl (and a client that half-closes), against python's
//! `http.server`, as directly; and `CONNECT` with curl's `--proxytunnel`.

use super::*;

/// The app: `/hello`, `/trailers` (declared), `/undeclared`, `/empty` (204), `/cached` (304 to
/// its ETag), `PUT /upload` (refused before reading), `PUT /count`.
const APP: &str = include_str!("http_app.py");

/// A client that half-closes after its request.
const HALF_CLOSE: &str = include_str!("half_close.py");

/// curl with `args`, through `proxy` as its HTTP proxy (absolute-form) or straight to the
/// server: what it printed, and whether it succeeded.
fn curl(proxy: Option<SocketAddr>, args: &[&str]) -> (String, bool) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]);
    if let Some(p) = proxy {
        cmd.args(["--proxy", &format!("http://{p}")]);
    } else {
        cmd.args(["--noproxy", "*"]);
    }
    let out = cmd.args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (text, out.status.success())
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn http1_clients_through_the_mesh_as_directly() {
    require_tools(&["python3", "curl"], "python3, curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_app, port) = py_server(d, "http_app.py", APP);
    let mesh = Mesh::start_with(port, Seen::default());
    let upload = d.join("upload.bin");
    std::fs::write(&upload, vec![b'x'; 1 << 20]).unwrap();
    let upload = upload.to_str().unwrap();
    let direct = format!("127.0.0.1:{port}");
    let authority = mesh.authority();
    for (via, proxy, base) in [
        ("directly", None, direct.as_str()),
        (
            "through the mesh",
            Some(mesh.web.outbound),
            authority.as_str(),
        ),
    ] {
        let url = |path: &str| format!("http://{base}{path}");
        // Trailers, declared and not: curl's raw output shows the chunked body and its
        // trailer section.
        for path in ["/trailers", "/undeclared"] {
            let (out, ok) = curl(proxy, &["--raw", "-H", "TE: trailers", &url(path)]);
            assert!(ok && out.contains("hello"), "{via} {path}: {out:?}");
            assert!(out.contains("x-checksum: 5\r\n"), "{via} {path}: {out:?}");
        }
        // HEAD: the length, no body.
        let (out, ok) = curl(proxy, &["-I", &url("/hello")]);
        assert!(ok && out.starts_with("HTTP/1.1 200"), "{via}: {out}");
        assert!(
            out.to_ascii_lowercase().contains("content-length: 5\r\n"),
            "{via}: {out}"
        );
        // 204 and 304: no body.
        let code = ["-o", "/dev/null", "-w", "%{http_code} %{size_download}"];
        let (out, _) = curl(proxy, &[&code[..], &[url("/empty").as_str()]].concat());
        assert_eq!(out, "204 0", "{via}");
        let (out, _) = curl(
            proxy,
            &[
                &code[..],
                &["-H", "If-None-Match: \"v1\"", url("/cached").as_str()],
            ]
            .concat(),
        );
        assert_eq!(out, "304 0", "{via}");
        // HTTP/1.0.
        let (out, ok) = curl(proxy, &["-0", "-w", " %{http_code}", &url("/hello")]);
        assert!(ok && out == "hello 200", "{via}: {out}");
        // Expect: 100-continue to a server that refuses the upload: its 413 comes first and
        // curl sends none of the megabyte; to one that takes it, all of it.
        let expect = ["-H", "Expect: 100-continue", "-T", upload];
        let sizes = ["-w", " %{http_code} %{size_upload}"];
        let (out, _) = curl(
            proxy,
            &[&expect[..], &sizes, &[url("/upload").as_str()]].concat(),
        );
        assert_eq!(out, "too large 413 0", "{via}");
        let (out, _) = curl(
            proxy,
            &[&expect[..], &sizes, &[url("/count").as_str()]].concat(),
        );
        assert_eq!(out, "1048576 bytes 200 1048576", "{via}");
        // A client that half-closes after its request gets the answer.
        let addr = proxy.map_or(direct.clone(), |p| p.to_string());
        let out = python(d, "half_close.py", HALF_CLOSE, &[&addr, base, "/hello"]);
        assert!(out.starts_with("HTTP/1.1 200"), "{via}: {out}");
        assert!(out.ends_with("hello"), "{via}: {out}");
    }
}

/// curl's `CONNECT` to `authority` through web's outbound (`--proxytunnel`), then `GET /hello`
/// in the tunnel: the CONNECT's status, the GET's output, and how long it took.
fn curl_tunnel(mesh: &Mesh, authority: &str) -> (String, String, Duration) {
    let started = Instant::now();
    let (out, _) = curl(
        Some(mesh.web.outbound),
        &[
            "--proxytunnel",
            "-w",
            "\n%{http_connect}",
            &format!("http://{authority}/hello"),
        ],
    );
    let (body, connect) = out.rsplit_once('\n').unwrap_or(("", &out));
    (connect.to_string(), body.to_string(), started.elapsed())
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn connect_tunnels_from_curl() {
    require_tools(&["python3", "curl"], "python3, curl");
    let tmp = tempfile::tempdir().unwrap();
    let (_app, port) = py_server(tmp.path(), "http_app.py", APP);
    let mesh = Mesh::start_with(port, Seen::default());
    let (connect, body, _) = curl_tunnel(&mesh, &mesh.authority());
    assert_eq!((connect.as_str(), body.as_str()), ("200", "hello"));

    // A closed port behind the peer proxy, and a name the mesh does not know: refused with
    // the reason, promptly.
    let closed = free_addr().port();
    for (authority, status) in [
        (format!("api.default:{closed}"), "502"),
        ("nosuch.default:80".to_string(), "502"),
    ] {
        let (connect, _, took) = curl_tunnel(&mesh, &authority);
        assert_eq!(connect, status, "{authority}");
        assert!(took < Duration::from_secs(2), "{authority}: {took:?}");
    }
    for reason in ["app_unavailable", "unknown_destination"] {
        let n = mesh.web.metric(
            "weft_proxy_errors_total",
            &["direction=\"outbound\"", &format!("reason=\"{reason}\"")],
        );
        assert_eq!(n, 1.0, "{reason}:\n{}", mesh.web.metrics());
    }
}
