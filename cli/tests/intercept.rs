//! Transparent interception end to end: `weft init` and `weft proxy` in one network namespace
//! (A), an HTTP app and a banner-first TCP server in another (B), joined by a veth pair. A
//! client in A that knows nothing of the proxy reaches B's servers through it, unmeshed; the
//! proxy's metrics say so; killing the proxy breaks the client's connections (no silent
//! bypass). A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs root, `ip`,
//! `iptables`, `setpriv`, `curl` and `python3`, and fails loudly without them.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{
    NS_IDENTITY_PORT, NS_POLICY_PORT, Netns, NsControlPlane, WEFT, require_tools, spawn_proxy_as,
};
use weft_identity::config::{ENV_IDENTITY_ADDR, ENV_TOKEN_FILE};
use weft_policy::config::ENV_POLICY_ADDR;
use weft_proxy::config as proxy_config;
use weft_runtime::child::Child;
use weft_runtime::testing::metric_sum;

/// The proxy's user: exempt from redirection by `weft init --proxy-uid`.
const PROXY_UID: &str = "2102";
const A_IP: &str = "10.77.0.1";
const B_IP: &str = "10.77.0.2";
const A_IP6: &str = "fd77::1";
const B_IP6: &str = "fd77::2";
const BANNER_PORT: &str = "2525";

/// Two namespaces joined by a veth pair, deleted when dropped (also when the test panics).
struct Pair {
    a: Netns,
    b: Netns,
}

fn run(argv: &[&str]) -> Output {
    Command::new(argv[0]).args(&argv[1..]).output().unwrap()
}

fn ok(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pair {
    fn new() -> Self {
        let id = std::process::id();
        let pair = Pair {
            a: Netns::new("weft-ic-a"),
            b: Netns::new("weft-ic-b"),
        };
        let (va, vb) = (
            format!("wica{}", id % 100_000),
            format!("wicb{}", id % 100_000),
        );
        ok(&[
            "ip",
            "link",
            "add",
            &va,
            "netns",
            &pair.a.name,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &pair.b.name,
        ]);
        for (ns, dev, ip, ip6) in [(&pair.a, &va, A_IP, A_IP6), (&pair.b, &vb, B_IP, B_IP6)] {
            ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", dev]);
            // No duplicate address detection: usable at once.
            ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{ip6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ok(&["ip", "link", "set", dev, "up"]);
            ns.ok(&["ip", "link", "set", "lo", "up"]);
        }
        pair
    }

    /// `curl` in A, as root (not the proxy's user: redirected), with no proxy settings.
    fn curl(&self, url: &str) -> Output {
        self.a
            .exec(&["curl", "-sS", "--noproxy", "*", "-m", "5", "-o", "-", url])
    }
}

/// An HTTP app on B:8080 (IPv4 and IPv6) answering `hello from the app`, and a server on
/// B:2525 that speaks first (`220 banner`), as SMTP and MySQL do.
const SERVERS: &str = r#"
import socket, sys, threading, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the app\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
def banner():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 2525)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"220 banner\r\n"); c.close()
class H6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
threading.Thread(target=banner, daemon=True).start()
threading.Thread(target=H6((sys.argv[2], 8080), H).serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer((sys.argv[1], 8080), H).serve_forever()
"#;

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn intercepted_traffic_goes_through_the_proxy_unmeshed() {
    require_tools(
        &["ip", "iptables", "setpriv", "curl", "python3"],
        "iproute2, iptables, util-linux, curl and python3",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The proxy's user reads its token from here.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pair = Pair::new();
    let _servers = start_servers(&pair, d);
    let (_control, client_token) = start_control_plane(&pair, d);
    let proxy_env = proxy_env(&client_token);
    let proxy = intercept(&pair, d, &proxy_env);

    let (url, url6) = (
        format!("http://{B_IP}:8080/"),
        format!("http://[{B_IP6}]:8080/"),
    );
    plain_http_goes_through_the_proxy_unmeshed(&pair, &proxy, &url, &url6);
    a_banner_on_an_opaque_port_comes_at_once(&pair);
    // 3. No proxy, no bypass: the client's connections fail.
    drop(proxy);
    no_proxy_no_bypass(&pair, &url, &url6);
    a_proxy_not_run_as_the_proxy_uid_refuses_the_loop(&pair, d, &proxy_env, &url);
    pair.a.ok(&[WEFT, "init", "--uninstall"]);
}

/// The servers in B ([`SERVERS`]), once both listen (from B: never intercepted).
fn start_servers(pair: &Pair, d: &Path) -> Child {
    let servers = pair.b.spawn(
        &["python3", "-c", SERVERS, B_IP, B_IP6],
        &[],
        &d.join("servers.log"),
    );
    // Both servers listen before anything is asked of them (from B: never intercepted).
    let deadline = Instant::now() + Duration::from_secs(30);
    for (ip, port) in [(B_IP, "8080"), (B_IP, BANNER_PORT), (B_IP6, "8080")] {
        let probe = format!("exec 3<>/dev/tcp/{ip}/{port}");
        while !pair.b.exec(&["bash", "-c", &probe]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the servers in B never listened:\n{}",
                servers.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    servers
}

/// The control plane in A, on its loopback (never redirected), and the client's token.
fn start_control_plane(pair: &Pair, d: &Path) -> (NsControlPlane, PathBuf) {
    let resources = d.join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(
        resources.join("mesh.yaml"),
        "kind: Service\nmetadata: {name: client, namespace: default}\nspec: {ports: [{port: 8080}]}\n",
    )
    .unwrap();
    let control = NsControlPlane::start(&pair.a, d, "127.0.0.1", &resources);
    let client_token = control.token(d, "client");
    (control, client_token)
}

/// The proxy's settings: the control plane in A, the banner port opaque, IPv4 and IPv6.
fn proxy_env(client_token: &Path) -> [(&'static str, String); 5] {
    [
        (ENV_TOKEN_FILE, client_token.display().to_string()),
        (ENV_IDENTITY_ADDR, format!("127.0.0.1:{NS_IDENTITY_PORT}")),
        (ENV_POLICY_ADDR, format!("127.0.0.1:{NS_POLICY_PORT}")),
        (proxy_config::ENV_OPAQUE_PORTS, BANNER_PORT.into()),
        // IPv6 too: `weft init --ipv6` redirects it to [::1].
        (
            proxy_config::ENV_OUTBOUND,
            "127.0.0.1:4140,[::1]:4140".into(),
        ),
    ]
}

/// Interception in A, and the proxy as its exempt user; ready.
fn intercept(pair: &Pair, d: &Path, proxy_env: &[(&str, String)]) -> Child {
    pair.a
        .ok(&[WEFT, "init", "--proxy-uid", PROXY_UID, "--ipv6"]);
    let uid: u32 = PROXY_UID.parse().unwrap();
    let proxy = spawn_proxy_as(&pair.a, uid, proxy_env, &d.join("proxy.log"));
    pair.a.wait_ok("http://127.0.0.1:4191/ready", &proxy);
    proxy
}

/// The proxy's metrics page, read from A.
fn metrics(pair: &Pair) -> String {
    String::from_utf8(pair.curl("http://127.0.0.1:4191/metrics").stdout).unwrap()
}

/// Check 1: plain HTTP to an address the mesh does not know: the app answers, through the
/// proxy. Over IPv6 too: the original destination is read with IP6T_SO_ORIGINAL_DST.
fn plain_http_goes_through_the_proxy_unmeshed(pair: &Pair, proxy: &Child, url: &str, url6: &str) {
    let mut unmeshed = 0.0;
    for (sent, url) in [(1.0, url), (2.0, url6)] {
        let out = pair.curl(url);
        assert!(
            out.status.success(),
            "curl {url}: {}\nproxy:\n{}",
            String::from_utf8_lossy(&out.stderr),
            proxy.logs()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the app\n");
        let metrics = metrics(pair);
        unmeshed = metric_sum(
            &metrics,
            "weft_proxy_requests_total",
            &[
                r#"direction="outbound""#,
                r#"dst_service="unmeshed""#,
                r#"tls="false""#,
            ],
        );
        assert_eq!(unmeshed, sent, "{url} went around the proxy:\n{metrics}");
    }
    eprintln!("outbound unmeshed requests in the proxy's metrics (IPv4 and IPv6): {unmeshed}");
}

/// Check 2: a server that speaks first, on an opaque port: its banner comes through at once,
/// not after the 1 s detection timeout.
fn a_banner_on_an_opaque_port_comes_at_once(pair: &Pair) {
    let started = Instant::now();
    let banner = pair.a.ok(&[
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{B_IP}/{BANNER_PORT}; head -c 12 <&3"),
    ]);
    let took = started.elapsed();
    assert_eq!(banner, "220 banner\r\n");
    assert!(
        took < Duration::from_millis(500),
        "the banner took {took:?}"
    );
    eprintln!("the banner arrived through the proxy in {took:?}");
    let metrics = metrics(pair);
    let tcp = metric_sum(
        &metrics,
        "weft_proxy_tcp_connections_total",
        &[r#"direction="outbound""#, r#"protocol="unmeshed""#],
    );
    assert_eq!(
        tcp, 1.0,
        "the banner connection went through the proxy:\n{metrics}"
    );
}

/// Check 3: with the proxy gone, the client's connections fail.
fn no_proxy_no_bypass(pair: &Pair, url: &str, url6: &str) {
    for url in [url, url6] {
        let out = pair.curl(url);
        assert!(
            !out.status.success(),
            "with the proxy gone, {url} still answered: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Check 4: a proxy that does not run as --proxy-uid (here root): its own connection to the
/// original destination is redirected back to it, and refused (never a loop), loudly.
fn a_proxy_not_run_as_the_proxy_uid_refuses_the_loop(
    pair: &Pair,
    d: &Path,
    proxy_env: &[(&str, String)],
    url: &str,
) {
    let wrong = pair
        .a
        .spawn(&[WEFT, "proxy"], proxy_env, &d.join("proxy-root.log"));
    pair.a.wait_ok("http://127.0.0.1:4191/ready", &wrong);
    let out = pair.a.exec(&[
        "curl",
        "-s",
        "--noproxy",
        "*",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "502",
        "{}",
        wrong.logs()
    );
    assert!(
        wrong
            .logs()
            .contains("run `weft proxy` as the UID given to `weft init --proxy-uid`"),
        "{}",
        wrong.logs()
    );
    let metrics = metrics(pair);
    let loops = metric_sum(
        &metrics,
        "weft_proxy_errors_total",
        &[r#"direction="outbound""#, r#"reason="loop""#],
    );
    assert_eq!(loops, 1.0, "one refused loop, not a storm:\n{metrics}");
    eprintln!("the proxy's own redirected connection was refused ({loops} loop)");
    drop(wrong);
}
