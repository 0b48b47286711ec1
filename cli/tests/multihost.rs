//! The mesh across three hosts with transparent interception: hosts A, B and C are network
//! namespaces on one bridge (itself in a namespace of its own), with private addresses that
//! exist only there. Each host runs a tiny app, `weft init` and `weft proxy` under a UID of its
//! own; C also runs the identity service and the control plane. The apps call each other by
//! plain address, with no proxy settings. Everything is deleted at the end, also when the test
//! fails (the processes and namespaces are dropped).
//!
//! What it shows, in order:
//! 1. A's plain `http://<B>:8080/` goes through both proxies over mTLS: both proxies' metrics
//!    say so (TLS, peer identities), and a capture on A's link (tshark) shows TLS to B's proxy
//!    and no plaintext HTTP, while a control request to a port `weft init` skips shows up
//!    there as plaintext (the capture would see a leak).
//! 2. Opaque TCP (a line-based echo, client first) and server-speaks-first (a banner) through
//!    the mesh: on a port declared opaque the banner comes at once; on an undeclared one it
//!    comes when detection gives up (1 s), counted as `detect_timeout`.
//! 3. A's proxy killed: A's app's connections fail (no plaintext bypass); restarted, its
//!    traffic resumes over mTLS.
//! 4. A policy that no longer admits A's identity: A gets 403 from B, its TCP is refused; C's
//!    calls still succeed.
//! 5. `weft init --uninstall` leaves every host's nat table as it was before (`iptables-save`),
//!    including rules the host had of its own.
//!
//! A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs root, `ip`, `iptables`,
//! `setpriv`, `curl`, `python3` and `tshark`, and fails loudly without them.
//!
//! The test reads as the list above: each step is a method of `Mesh`, called in order. The
//! hosts and their LAN are in `multihost/hosts.rs`, the packet capture in
//! `multihost/capture.rs`.
//!
//! # Why this file is long
//! It is one scenario, and its steps build on each other's state: the mesh they share, a
//! proxy killed and restarted, a policy changed, the rules removed. Each step reads best beside
//! the set-up it relies on (the ports, the apps, the resources, the hosts' proxies).
#![allow(clippy::unwrap_used)]

mod support;

#[path = "multihost/capture.rs"]
mod capture;
#[path = "multihost/hosts.rs"]
mod hosts;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capture::{Capture, packets};
use hosts::{Host, Lan};
use support::{NS_IDENTITY_PORT, NS_POLICY_PORT, NsControlPlane, require_tools};
use weft_runtime::child::Child;
use weft_runtime::testing::metric_sum;

/// Every host's app, on IPv4 and IPv6 (each proxy reaches its app at the address its client
/// dialled): HTTP on 8080 (meshed), the same on 8081 (skipped by `weft init`: plain
/// on the wire), a line echo on 7000, a banner on 2525 (declared opaque) and on 2526 (not).
const HTTP_PORT: &str = "8080";
const PLAIN_PORT: &str = "8081";
const ECHO_PORT: &str = "7000";
const BANNER_PORT: &str = "2525";
const UNDECLARED_BANNER_PORT: &str = "2526";
/// The proxies' default detection timeout.
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A banner on a port declared opaque comes well before detection could have given up.
const NO_STALL: Duration = Duration::from_millis(750);

const APP: &str = r#"
import socket, sys, threading, http.server
host = sys.argv[1]
def serve_http(port, body):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
    Server(("::", port), H).serve_forever()
def listen(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(16)
    return s
def echo(c):
    f = c.makefile("rb")
    for line in f:
        c.sendall(line)
    c.close()
def echo_server():
    s = listen(7000)
    while True:
        c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
def banner_server(port):
    s = listen(port)
    while True:
        c, _ = s.accept(); c.sendall(b"220 " + host.encode() + b" ready\r\n"); c.close()
threading.Thread(target=echo_server, daemon=True).start()
for port in (2525, 2526):
    threading.Thread(target=banner_server, args=(port,), daemon=True).start()
threading.Thread(target=serve_http, args=(8081, b"plain hello from " + host.encode() + b"\n"), daemon=True).start()
serve_http(8080, b"hello from " + host.encode() + b"\n")
"#;

/// The resources: the three services, and who may call B.
fn resources(b_callers: &[&Host]) -> String {
    let mut yaml = String::new();
    for name in ["a", "b", "c"] {
        yaml.push_str(&format!(
            "kind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{ports: [{{port: {HTTP_PORT}}}, {{port: {ECHO_PORT}}}, {{port: {BANNER_PORT}, appProtocol: opaque}}, {{port: {UNDECLARED_BANNER_PORT}}}]}}\n---\n"
        ));
    }
    let ids: Vec<String> = b_callers
        .iter()
        .map(|h| format!("\"{}\"", h.id()))
        .collect();
    yaml.push_str(&format!(
        "kind: AuthorizationPolicy\nmetadata: {{name: b-callers, namespace: default}}\n\
         spec:\n  target: {{service: b}}\n  allow:\n    - identities: [{}]\n---\n",
        ids.join(", ")
    ));
    // B's banner is also for clients outside the mesh.
    yaml.push_str(&format!(
        "kind: AuthorizationPolicy\nmetadata: {{name: b-banner, namespace: default}}\n\
         spec:\n  target: {{service: b, port: {BANNER_PORT}}}\n  allow:\n    - unauthenticated: true\n"
    ));
    yaml
}

/// Writes the resources as editors do (write, then rename), for the control plane's watch.
fn write_resources(dir: &Path, yaml: &str) {
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join("mesh.yaml")).unwrap();
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn three_hosts_call_each_other_by_address_through_the_mesh() {
    require_tools(
        &["ip", "iptables", "setpriv", "curl", "python3", "tshark"],
        "iproute2, iptables, util-linux, curl, python3 and tshark",
    );
    let mut mesh = Mesh::start();
    let pcap = mesh.a_calls_b_over_mtls();
    mesh.the_wire_shows_tls_and_only_the_control_in_clear(&pcap);
    mesh.opaque_tcp_and_banners_go_through();
    mesh.ipv6_is_intercepted_too();
    mesh.without_its_proxy_a_is_cut_off_and_resumes();
    mesh.a_policy_change_denies_a_and_admits_c();
    mesh.uninstall_leaves_every_nat_table_as_it_was();
}

/// How many requests A sends B in step 1.
const CALLS: usize = 5;

/// The mesh of the test, up. Dropped in field order: the proxies first, the namespaces and
/// the directory last.
struct Mesh {
    proxies: Vec<Child>,
    _control: NsControlPlane,
    _apps: Vec<Child>,
    lan: Lan,
    /// Every host's nat tables (IPv4, IPv6) before `weft init`.
    nat_before: Vec<(String, String)>,
    res: PathBuf,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// The three hosts with their apps, the identity service and the control plane on C,
    /// `weft init` on every host, and their proxies.
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The proxies' users read their tokens from here.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let lan = Lan::new();
        let [a, b, c] = &lan.hosts[..] else {
            unreachable!()
        };

        // A host's own nat rules, which weft must leave as they are.
        a.ns.ok(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "192.0.2.0/24",
            "-p",
            "tcp",
            "-j",
            "RETURN",
        ]);
        let nat_before: Vec<(String, String)> = lan.hosts.iter().map(nat).collect();

        let apps = start_apps(&lan, d);

        // The identity service and the control plane on C.
        let res = d.join("resources");
        std::fs::create_dir_all(&res).unwrap();
        write_resources(&res, &resources(&[a, c]));
        let control = NsControlPlane::start(&c.ns, d, "0.0.0.0", &res);
        for h in &lan.hosts {
            control.token(d, h.name);
        }

        // Interception on every host, then the proxies.
        let skip_in = format!("{NS_IDENTITY_PORT},{NS_POLICY_PORT}");
        let init: [(&Host, Vec<&str>); 3] = [
            (a, vec!["--skip-outbound-ports", PLAIN_PORT, "--ipv6"]),
            (b, vec!["--skip-inbound-ports", PLAIN_PORT, "--ipv6"]),
            (c, vec!["--skip-inbound-ports", &skip_in]),
        ];
        for (h, extra) in &init {
            let uid = h.uid.to_string();
            let mut args = vec!["init", "--proxy-uid", &uid];
            args.extend(extra);
            h.ns.weft(&args);
        }
        let proxies: Vec<Child> = lan
            .hosts
            .iter()
            .map(|h| h.start_proxy(d, &c.ip, &format!("proxy-{}.log", h.name)))
            .collect();
        Mesh {
            proxies,
            _control: control,
            _apps: apps,
            lan,
            nat_before,
            res,
            dir,
        }
    }

    /// Step 1: A calls B by address, over mTLS as both proxies' metrics say; returns a capture
    /// of A's link during the calls.
    fn a_calls_b_over_mtls(&self) -> PathBuf {
        let [a, b, _] = self.lan.abc();
        // Until B's proxy has registered, A's proxy cannot know B's address is meshed and sends
        // the request as it is; B's proxy then refuses it (plaintext, no identity): wait for the
        // mesh.
        let (_, body) = a.wait_for(&url(b, HTTP_PORT), 200, &|| logs(&self.proxies));
        assert_eq!(body, "hello from b\n");
        let (a_before, b_before) = (a.metrics(), b.metrics());
        let capture = Capture::start(&self.lan.switch, &a.link, self.dir.path());
        // The control: a port A's `weft init` skips goes on the wire as it is. Seen in the
        // capture, it also shows the capture runs.
        let plain = |path: &str| {
            assert_eq!(
                a.get(&format!("{}{path}", url(b, PLAIN_PORT))),
                (200, "plain hello from b\n".to_string())
            );
            format!("tcp.dstport=={PLAIN_PORT} && frame contains \"GET /{path}\"")
        };
        capture.wait_live(|| plain("first"));
        for _ in 0..CALLS {
            assert_eq!(
                a.get(&url(b, HTTP_PORT)),
                (200, "hello from b\n".to_string())
            );
        }
        let pcap = capture.stop_after(&plain("last"));
        let (a_after, b_after) = (a.metrics(), b.metrics());
        let (peer_a, peer_b) = (peer(a), peer(b));
        let sent = delta(
            &a_before,
            &a_after,
            "weft_proxy_requests_total",
            &[
                r#"direction="outbound""#,
                r#"dst_service="default/b""#,
                &peer_b,
                r#"tls="true""#,
            ],
        );
        assert_eq!(sent, CALLS as f64, "A's proxy, over mTLS to B:\n{a_after}");
        let received = delta(
            &b_before,
            &b_after,
            "weft_proxy_requests_total",
            &[r#"direction="inbound""#, &peer_a, r#"tls="true""#],
        );
        assert_eq!(
            received, CALLS as f64,
            "B's proxy, from A's identity:\n{b_after}"
        );
        assert!(
            metric_sum(
                &b_after,
                "weft_proxy_tls_handshakes_total",
                &[r#"direction="inbound""#, &peer_a]
            ) >= 1.0,
            "B's proxy verified A's identity in a handshake:\n{b_after}"
        );
        assert_eq!(
            metric_sum(
                &a_after,
                "weft_proxy_requests_total",
                &[r#"dst_service="unmeshed""#]
            ),
            0.0,
            "nothing from A went unmeshed:\n{a_after}"
        );
        eprintln!(
            "A → B: {sent} requests over mTLS in A's proxy, {received} from A's identity in B's"
        );
        pcap
    }

    /// Step 1 on the wire: TLS records between A and B's proxy port, never B's app port, and
    /// plaintext HTTP only on the skipped port (where the capture does see it).
    fn the_wire_shows_tls_and_only_the_control_in_clear(&self, pcap: &Path) {
        let [a, b, _] = self.lan.abc();
        // Each call is a request to B's proxy and an answer back, one after the other: at least
        // one segment of TLS application data each way per call.
        let app_data = |from: &str, to: &str| {
            packets(
                pcap,
                &format!(
                    "ip.src=={from} && ip.dst=={to} && tcp.port==4143 && tls.record.content_type==23"
                ),
                &["frame.number"],
            )
            .len()
        };
        let (sent_tls, received_tls) = (app_data(&a.ip, &b.ip), app_data(&b.ip, &a.ip));
        assert!(
            sent_tls >= CALLS && received_tls >= CALLS,
            "the capture shows {sent_tls} segments of TLS application data to B's proxy and {received_tls} back, for {CALLS} calls"
        );
        // Every packet with HTTP or the app's answer in clear, as "<src port>\t<dst port>".
        let on_plain_port = |lines: &[String]| {
            lines
                .iter()
                .all(|l| l.split('\t').any(|port| port == PLAIN_PORT))
        };
        let http = packets(pcap, "http.request", &["tcp.srcport", "tcp.dstport"]);
        assert!(
            http.len() >= 2 && on_plain_port(&http),
            "HTTP requests on the link: {http:?} (the controls on port {PLAIN_PORT}, and only they)"
        );
        let clear = packets(
            pcap,
            "frame contains \"HTTP/1.1\" || frame contains \"hello from b\"",
            &["tcp.srcport", "tcp.dstport"],
        );
        assert!(
            clear.len() >= 2 && on_plain_port(&clear),
            "plaintext HTTP on the link: {clear:?} (only the control on port {PLAIN_PORT} may be)"
        );
        let to_app = packets(
            pcap,
            &format!("ip.addr=={} && tcp.port=={HTTP_PORT}", b.ip),
            &["frame.number"],
        );
        assert!(
            to_app.is_empty(),
            "A reached B's app port on the wire directly"
        );
        eprintln!(
            "capture on A's link: TLS application data in {sent_tls} segments to B's proxy, {received_tls} back; plaintext HTTP only on the skipped port ({} requests, {} packets in clear)",
            http.len(),
            clear.len()
        );
    }

    /// Step 2: opaque TCP and server-speaks-first through the mesh, and from outside it.
    fn opaque_tcp_and_banners_go_through(&self) {
        let [a, b, _] = self.lan.abc();
        // A line echo: the client speaks first, in lowercase, so detection knows at once that it
        // is not HTTP.
        let before = (a.metrics(), b.metrics());
        let (out, took) = a.tcp(&b.ip, ECHO_PORT, "one\\ntwo\\n", "-n 2");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "one\ntwo\n",
            "{}",
            logs(&self.proxies)
        );
        assert!(took < NO_STALL, "the echo took {took:?}");
        // A banner on a port declared opaque: no detection, at once.
        let (out, banner_took) = a.tcp(&b.ip, BANNER_PORT, "", "-c 14");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "220 b ready\r\n");
        assert!(
            banner_took < NO_STALL,
            "the banner on an opaque port took {banner_took:?}"
        );
        // The same on a port nobody declared: the banner comes when detection gives up.
        let (out, late) = a.tcp(&b.ip, UNDECLARED_BANNER_PORT, "", "-c 14");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "220 b ready\r\n");
        assert!(
            late >= DETECT_TIMEOUT && late < DETECT_TIMEOUT + Duration::from_secs(4),
            "the banner on an undeclared port took {late:?}"
        );
        let after = (a.metrics(), b.metrics());
        let tunnels = delta(
            &before.0,
            &after.0,
            "weft_proxy_tcp_connections_total",
            &[r#"direction="outbound""#, r#"protocol="opaque""#],
        );
        assert_eq!(
            tunnels, 3.0,
            "A's proxy opened three mTLS tunnels:\n{}",
            after.0
        );
        let accepted = delta(
            &before.1,
            &after.1,
            "weft_proxy_tcp_connections_total",
            &[r#"direction="inbound""#, r#"protocol="opaque""#],
        );
        assert_eq!(accepted, 3.0, "B's proxy took three tunnels:\n{}", after.1);
        let fallbacks = delta(
            &before.0,
            &after.0,
            "weft_proxy_errors_total",
            &[r#"direction="outbound""#, r#"reason="detect_timeout""#],
        );
        assert_eq!(fallbacks, 1.0, "one detection timeout:\n{}", after.0);
        assert_eq!(
            delta(
                &before.0,
                &after.0,
                "weft_proxy_tcp_connections_total",
                &[r#"protocol="unmeshed""#]
            ),
            0.0
        );
        // A client outside the mesh (A's proxy's user: A's rules let it through as it is) reaches
        // B's banner in plaintext: B's proxy knows the port is opaque from B's service.
        let (out, outside) = a.tcp_as(Some(a.uid), &b.ip, BANNER_PORT, "", "-c 14");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "220 b ready\r\n");
        assert!(
            outside < NO_STALL,
            "the banner to a client outside the mesh took {outside:?}"
        );
        let b_after = b.metrics();
        assert_eq!(
            delta(
                &after.1,
                &b_after,
                "weft_proxy_tcp_connections_total",
                &[r#"direction="inbound""#, r#"protocol="opaque""#]
            ),
            1.0,
            "{b_after}"
        );
        assert_eq!(
            delta(
                &after.1,
                &b_after,
                "weft_proxy_authz_total",
                &[r#"decision="allow""#, r#"peer="unauthenticated""#]
            ),
            1.0,
            "{b_after}"
        );
        assert_eq!(
            metric_sum(
                &b_after,
                "weft_proxy_errors_total",
                &[r#"reason="detect_timeout""#]
            ),
            0.0,
            "{b_after}"
        );
        eprintln!(
            "through the mesh: echo in {took:?}, banner in {banner_took:?} (opaque port), {late:?} (undeclared port); from outside the mesh in {outside:?}"
        );
    }

    /// IPv6: A and B intercept it too (`weft init --ipv6`, both proxies on both families). B's
    /// IPv6 address is not registered, so A's proxy sends the request as it is; B's proxy reads
    /// its original destination port, 8080, and applies that port's policy: plaintext from
    /// outside the mesh is refused there.
    fn ipv6_is_intercepted_too(&self) {
        let [a, b, _] = self.lan.abc();
        let denials = |h: &Host| -> serde_json::Value {
            let out =
                h.ns.exec(&["curl", "-sf", "-m", "5", "http://127.0.0.1:4191/denials"]);
            serde_json::from_slice(&out.stdout).unwrap()
        };
        let (a_before, denied_before) = (a.metrics(), denials(b));
        let (status, body) = a.get(&format!("http://[{}]:{HTTP_PORT}/", b.ip6));
        assert_eq!(status, 403, "{body}\n{}", logs(&self.proxies));
        let unmeshed = delta(
            &a_before,
            &a.metrics(),
            "weft_proxy_requests_total",
            &[
                r#"direction="outbound""#,
                r#"dst_service="unmeshed""#,
                r#"tls="false""#,
            ],
        );
        assert_eq!(unmeshed, 1.0, "A's proxy took the IPv6 request");
        let denied = denials(b);
        assert_eq!(
            denied["total"].as_u64().unwrap(),
            denied_before["total"].as_u64().unwrap() + 1,
            "{denied}"
        );
        let last = &denied["recent"][0];
        assert_eq!(last["port"], 8080, "{denied}");
        assert_eq!(last["peer"], "unauthenticated", "{denied}");
        assert_eq!(last["policy"], "service:default/b", "{denied}");
        // B's banner, open to clients outside the mesh, over IPv6 through both proxies: A's does
        // not know the address, so it detects (and gives up after the timeout); B's knows the
        // port is opaque.
        let b_before = b.metrics();
        let (out, took6) = a.tcp(&b.ip6, BANNER_PORT, "", "-c 14");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "220 b ready\r\n");
        assert!(took6 < DETECT_TIMEOUT + Duration::from_secs(4), "{took6:?}");
        assert_eq!(
            delta(
                &b_before,
                &b.metrics(),
                "weft_proxy_authz_total",
                &[r#"decision="allow""#, r#"peer="unauthenticated""#]
            ),
            1.0
        );
        eprintln!("IPv6: A's request denied at B on port 8080's policy; B's banner in {took6:?}");
    }

    /// Step 3: A's proxy killed: A's connections fail, none goes around it; restarted, A's
    /// traffic resumes over mTLS.
    fn without_its_proxy_a_is_cut_off_and_resumes(&mut self) {
        let [a, b, c] = self.lan.abc();
        let peer_b = peer(b);
        let b_inbound = |m: &str| {
            metric_sum(
                m,
                "weft_proxy_tcp_connections_total",
                &[r#"direction="inbound""#],
            )
        };
        let b_seen = b_inbound(&b.metrics());
        drop(self.proxies.remove(0));
        let (status, body) = a.get(&url(b, HTTP_PORT));
        assert_eq!(status, 0, "with A's proxy gone, B answered: {body}");
        let (out, _) = a.tcp(&b.ip, BANNER_PORT, "", "-c 14");
        assert!(
            out.stdout.is_empty(),
            "with A's proxy gone, the banner came: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            b_inbound(&b.metrics()),
            b_seen,
            "a connection from A reached B with A's proxy gone"
        );
        // Restarted, A's traffic resumes over mTLS.
        self.proxies.insert(
            0,
            a.start_proxy(self.dir.path(), &c.ip, "proxy-a-restarted.log"),
        );
        let (_, body) = a.wait_for(&url(b, HTTP_PORT), 200, &|| logs(&self.proxies));
        assert_eq!(body, "hello from b\n");
        let resumed = metric_sum(
            &a.metrics(),
            "weft_proxy_requests_total",
            &[r#"dst_service="default/b""#, &peer_b, r#"tls="true""#],
        );
        assert!(resumed >= 1.0, "A's restarted proxy sent over mTLS");
    }

    /// Step 4: B no longer admits A: A gets 403 from B's proxy, C still gets through.
    fn a_policy_change_denies_a_and_admits_c(&self) {
        let [a, b, c] = self.lan.abc();
        let peer_a = peer(a);
        write_resources(&self.res, &resources(&[c]));
        let (_, body) = a.wait_for(&url(b, HTTP_PORT), 403, &|| logs(&self.proxies));
        assert!(!body.contains("hello from b"), "{body}");
        assert_eq!(
            c.get(&url(b, HTTP_PORT)),
            (200, "hello from b\n".to_string()),
            "{}",
            logs(&self.proxies)
        );
        let denied = |m: &str| {
            metric_sum(
                m,
                "weft_proxy_authz_total",
                &[r#"decision="deny""#, &peer_a],
            )
        };
        let m = b.metrics();
        assert!(denied(&m) >= 1.0, "B's proxy denied A's request:\n{m}");
        let (out, _) = a.tcp(&b.ip, ECHO_PORT, "one\\n", "-n 1");
        assert!(
            out.stdout.is_empty(),
            "A's TCP to B was let through: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let after = b.metrics();
        assert_eq!(
            denied(&after) - denied(&m),
            1.0,
            "B's proxy denied A's connection:\n{after}"
        );
        let m = after;
        let peer_c = peer(c);
        assert!(
            metric_sum(
                &m,
                "weft_proxy_requests_total",
                &[r#"direction="inbound""#, &peer_c, r#"tls="true""#]
            ) >= 1.0,
            "C's request reached B over mTLS:\n{m}"
        );
        eprintln!("policy: A denied (403, TCP closed) at B, C allowed");
    }

    /// Step 5: `weft init --uninstall`: every nat table as it was, and A's app reaches B's app
    /// directly again.
    fn uninstall_leaves_every_nat_table_as_it_was(&self) {
        let [a, b, _] = self.lan.abc();
        for h in &self.lan.hosts {
            let (out, _) = h.ns.weft(&["init", "--uninstall"]);
            assert!(out.contains("removed weft's"), "{out}");
        }
        for (h, before) in self.lan.hosts.iter().zip(&self.nat_before) {
            assert_eq!(
                &nat(h),
                before,
                "weft init --uninstall left {}'s nat tables (IPv4, IPv6) changed",
                h.name
            );
        }
        assert!(
            self.nat_before[0]
                .0
                .contains("-A OUTPUT -d 192.0.2.0/24 -p tcp -j RETURN")
        );
        let served = metric_sum(
            &b.metrics(),
            "weft_proxy_requests_total",
            &[r#"direction="inbound""#],
        );
        assert_eq!(
            a.get(&url(b, HTTP_PORT)),
            (200, "hello from b\n".to_string())
        );
        assert_eq!(
            metric_sum(
                &b.metrics(),
                "weft_proxy_requests_total",
                &[r#"direction="inbound""#]
            ),
            served,
            "without the rules, B's proxy is no longer in the path"
        );
    }
}

/// Every host's app, listening on all its ports.
fn start_apps(lan: &Lan, d: &Path) -> Vec<Child> {
    let apps: Vec<Child> = lan
        .hosts
        .iter()
        .map(|h| {
            h.ns.spawn(
                &["python3", "-c", APP, h.name],
                &[],
                &d.join(format!("app-{}.log", h.name)),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (h, app) in lan.hosts.iter().zip(&apps) {
        for port in [
            HTTP_PORT,
            PLAIN_PORT,
            ECHO_PORT,
            BANNER_PORT,
            UNDECLARED_BANNER_PORT,
        ] {
            let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
            while !h.ns.exec(&["bash", "-c", &probe]).status.success() {
                assert!(
                    Instant::now() < deadline,
                    "the app on {} never listened on {port}:\n{}",
                    h.name,
                    app.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    apps
}

fn url(h: &Host, port: &str) -> String {
    format!("http://{}:{port}/", h.ip)
}

/// A host's nat tables: (IPv4, IPv6).
fn nat(h: &Host) -> (String, String) {
    (h.ns.nat("iptables-save"), h.ns.nat("ip6tables-save"))
}

/// The `peer` label of a host's identity.
fn peer(h: &Host) -> String {
    format!("peer=\"{}\"", h.id())
}

/// The proxies' logs, for a failure's message.
fn logs(proxies: &[Child]) -> String {
    proxies
        .iter()
        .zip(["a", "b", "c"])
        .map(|(p, n)| format!("--- proxy {n}\n{}", p.logs()))
        .collect::<String>()
}

/// How much a metric grew between two scrapes.
fn delta(before: &str, after: &str, name: &str, labels: &[&str]) -> f64 {
    metric_sum(after, name, labels) - metric_sum(before, name, labels)
}
