//! Real third-party clients and servers through a real mesh with transparent interception
//! (issue 17): hosts A, B and C are network namespaces on one bridge (`multihost/hosts.rs`). C
//! runs the identity service and the control plane; B runs the servers, A the clients, and both
//! run `weft init` and `weft proxy`, so the clients know nothing of the proxy: they call B's
//! address. Every client runs first directly (before `weft init`, on the plain network), then
//! through the mesh, and must see the same results:
//!
//! - WebSocket: a python `websockets` echo server; the `websockets` and `websocket-client`
//!   clients, 100 echoes and a 1 MB message each.
//! - gRPC: a grpcio server and client: unary with trailing metadata, 1 MB, the server's own
//!   status, server, client and bidirectional streaming, the client's deadline.
//! - Redis (client first, left to protocol detection): `redis-cli` SET and GET, then
//!   `redis-benchmark` (SET and GET, 10 connections).
//! - PostgreSQL (its port declared `appProtocol: opaque`): `psql` `select 1`, then `pgbench`
//!   (initialise, then 4 clients × 50 transactions, none failed).
//!
//! Through the mesh, both proxies' metrics show each case went over mTLS from A's identity to
//! B's: the upgrades (`1xx`), the gRPC requests (`tls="true"`), the opaque tunnels; and none of
//! it went unmeshed or waited for detection to give up.
//!
//! B's servers listen on B's address only, not on every address: B's proxy reaches them where
//! A meant to, as without the mesh. A server B listens to on its loopback only stays out of
//! A's reach through the mesh as it is without it (B's proxy does not open it to the network).
//!
//! A system test: it runs with WEFT_SYSTEM_TESTS=1 and then needs root, `ip`, `iptables`,
//! `setpriv`, `curl`, `python3` with `websockets`, `websocket-client` and `grpcio`,
//! `redis-server`, `redis-cli`, `redis-benchmark`, `psql`, `pgbench` and PostgreSQL's server
//! (`/usr/lib/postgresql/<version>/bin`), and fails loudly without them. Everything is deleted
//! at the end, also when the test fails (the processes and namespaces are dropped).
#![allow(clippy::unwrap_used)]

mod support;

#[path = "multihost/hosts.rs"]
#[allow(dead_code)]
mod hosts;
#[path = "compat/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hosts::{Host, Lan, run_ok};
use postgres::Postgres;
use support::{NsControlPlane, require_tools};
use weft_runtime::child::Child;
use weft_runtime::testing::metric_sum;

/// B's servers.
const WS_PORT: &str = "8765";
const GRPC_PORT: &str = "50051";
const REDIS_PORT: &str = "6379";
const PG_PORT: &str = "5432";
/// A server B listens to on its loopback only: not for the network, with the mesh or without.
const LOCAL_PORT: &str = "9000";
/// The python servers and clients.
const COMPAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat");
/// What the WebSocket server answers a plain GET (no upgrade): how A sees that it reaches B's
/// server through the mesh.
const WS_PLAIN_GET: u16 = 426;

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn third_party_clients_through_an_intercepting_mesh_as_directly() {
    require_tools(
        &words(
            "ip iptables setpriv curl python3 redis-server redis-cli redis-benchmark psql pgbench",
        ),
        "iproute2, iptables, util-linux, curl, python3, redis-server, redis-tools, postgresql \
         and postgresql-client",
    );
    let modules = Command::new("python3")
        .args(["-c", "import websockets, websocket, grpc"])
        .output()
        .unwrap();
    assert!(
        modules.status.success(),
        "python3 lacks websockets, websocket-client or grpcio (pip, see .ci/run): {}",
        String::from_utf8_lossy(&modules.stderr)
    );
    let started = Instant::now();
    let mut mesh = Mesh::start();
    for case in &CASES {
        mesh.directly(case);
    }
    mesh.loopback_only_stays_closed(false);
    mesh.intercept();
    for case in &CASES {
        mesh.through_the_mesh(case);
    }
    mesh.loopback_only_stays_closed(true);
    mesh.traffic_routed_through_b_is_not_relayed();
    eprintln!("done in {:?}", started.elapsed());
}

/// A client case: what it prints, directly and through the mesh, and what the proxies count.
struct Case {
    name: &'static str,
    run: fn(&Mesh) -> String,
    expect: &'static str,
    seen: Seen,
}

/// What A's and B's proxies count for one case through the mesh.
enum Seen {
    /// One WebSocket upgrade: a `101` on both sides, then an upgraded connection.
    Upgrade,
    /// gRPC calls over mTLS (HTTP/2) from A's identity to B.
    Grpc,
    /// Opaque TCP: each connection through an mTLS tunnel from A's proxy to B's.
    Opaque,
}

const CASES: [Case; 5] = [
    Case {
        name: "websockets",
        run: |m| m.python("ws_websockets_client.py", WS_PORT, ""),
        expect: "ok",
        seen: Seen::Upgrade,
    },
    Case {
        name: "websocket-client",
        run: |m| m.python("ws_websocket_client.py", WS_PORT, ""),
        expect: "ok",
        seen: Seen::Upgrade,
    },
    Case {
        name: "grpcio",
        run: |m| m.python("grpc_client.py", GRPC_PORT, "all"),
        expect: "ok",
        seen: Seen::Grpc,
    },
    Case {
        name: "redis-cli and redis-benchmark",
        run: Mesh::redis,
        expect: "OK v; redis-benchmark: SET, GET",
        seen: Seen::Opaque,
    },
    Case {
        name: "psql and pgbench",
        run: Mesh::postgres,
        expect: "select 1: 1; pgbench: number of transactions actually processed: 200/200; \
                 number of failed transactions: 0 (0.000%)",
        seen: Seen::Opaque,
    },
];

/// The proxies' metrics the test reads (docs/proxy.md#metrics).
const REQUESTS: &str = "weft_proxy_requests_total";
const RESPONSES: &str = "weft_proxy_responses_total";
const TCP: &str = "weft_proxy_tcp_connections_total";

/// gRPC calls `grpc_client.py all` makes: 3 unary, 3 streaming, 1 past its deadline.
const GRPC_CALLS: f64 = 7.0;

/// The resources: services `a` and `b` with every server's port (PostgreSQL's opaque: its
/// SSL reply comes from the server), and A may call B.
fn resources(a: &Host) -> String {
    let mut yaml = String::new();
    for name in ["a", "b"] {
        yaml.push_str(&format!(
            "kind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{ports: [{{port: {WS_PORT}}}, {{port: {GRPC_PORT}}}, {{port: {REDIS_PORT}}}, {{port: {PG_PORT}, appProtocol: opaque}}, {{port: {LOCAL_PORT}}}]}}\n---\n"
        ));
    }
    yaml.push_str(&format!(
        "kind: AuthorizationPolicy\nmetadata: {{name: b-callers, namespace: default}}\n\
         spec:\n  target: {{service: b}}\n  allow:\n    - identities: [\"{}\"]\n",
        a.id()
    ));
    yaml
}

/// The hosts, B's servers and C's control plane; A's and B's proxies once `intercept` ran.
/// Dropped in field order: the proxies first, the namespaces and the directory last.
struct Mesh {
    /// A's, then B's.
    proxies: Vec<Child>,
    _control: NsControlPlane,
    servers: Vec<Child>,
    _postgres: Postgres,
    lan: Lan,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// The hosts, B's servers listening, the identity service and the control plane on C; no
    /// interception yet.
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The proxies' users read their tokens from here, PostgreSQL's keeps its data here.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let lan = Lan::new();
        let [a, b, c] = lan.abc();
        let redis = format!(
            "redis-server --bind {} --port {REDIS_PORT} --appendonly no --protected-mode no \
             --daemonize no --dir {}",
            b.ip,
            d.display()
        );
        let mut redis = words(&redis);
        redis.extend(["--save", ""]);
        let ws = format!("python3 {COMPAT}/ws_echo_server.py {WS_PORT} {}", b.ip);
        let grpc = format!("python3 {COMPAT}/grpc_server.py {GRPC_PORT} {}", b.ip);
        let local = format!("python3 -m http.server {LOCAL_PORT} --bind 127.0.0.1");
        let servers: Vec<Child> = [
            ("ws-server", words(&ws)),
            ("grpc-server", words(&grpc)),
            ("redis-server", redis),
            ("local-server", words(&local)),
        ]
        .iter()
        .map(|(name, argv)| b.ns.spawn(argv, &[], &d.join(format!("{name}.log"))))
        .collect();
        let postgres = Postgres::start(b, d);
        let deadline = Instant::now() + Duration::from_secs(30);
        let ports = [
            (&b.ip[..], WS_PORT),
            (&b.ip, GRPC_PORT),
            (&b.ip, REDIS_PORT),
        ];
        let ports = ports.into_iter().chain([("127.0.0.1", LOCAL_PORT)]);
        for ((ip, port), server) in ports.zip(&servers) {
            let probe = format!("exec 3<>/dev/tcp/{ip}/{port}");
            while !b.ns.exec(&["bash", "-c", &probe]).status.success() {
                assert!(
                    Instant::now() < deadline,
                    "B's server never listened on {port}:\n{}",
                    server.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        postgres.wait_ready(b, deadline);

        let res = d.join("resources");
        std::fs::create_dir_all(&res).unwrap();
        std::fs::write(res.join("mesh.yaml"), resources(a)).unwrap();
        let control = NsControlPlane::start(&c.ns, d, "0.0.0.0", &res);
        for h in [a, b] {
            control.token(d, h.name);
        }
        Mesh {
            proxies: Vec::new(),
            _control: control,
            servers,
            _postgres: postgres,
            lan,
            dir,
        }
    }

    /// `weft init` on A and B, their proxies, and until A reaches B's servers through them.
    fn intercept(&mut self) {
        let [a, b, c] = self.lan.abc();
        let url = format!("http://{}:{WS_PORT}/", b.ip);
        assert_eq!(a.get(&url).0, WS_PLAIN_GET, "a plain GET, directly");
        for h in [a, b] {
            h.ns.weft(&["init", "--proxy-uid", &h.uid.to_string()]);
        }
        let started = Instant::now();
        self.proxies = [a, b]
            .iter()
            .map(|h| h.start_proxy(self.dir.path(), &c.ip, &format!("proxy-{}.log", h.name)))
            .collect();
        // Until B's proxy has registered, A's proxy cannot know B's address is meshed and sends
        // A's request as it is; B's proxy then refuses it (plaintext, no identity): wait for
        // the WebSocket server's own answer to a plain GET, now through the mesh.
        a.wait_for(&url, WS_PLAIN_GET, &|| self.logs());
        eprintln!("the mesh is up in {:?}", started.elapsed());
    }

    /// B's server bound to its loopback only is not reached from A: directly the connection is
    /// refused; through the mesh B's proxy connects where A meant to connect (B's address, where
    /// nothing listens), not to its own loopback, and says so.
    fn loopback_only_stays_closed(&self, meshed: bool) {
        let [a, b, _] = self.lan.abc();
        let (status, body) = a.get(&format!("http://{}:{LOCAL_PORT}/", b.ip));
        if meshed {
            assert_eq!(status, 502, "{body}\n{}", self.logs());
            assert!(
                body.contains(&format!(
                    "the application at {}:{LOCAL_PORT} is not reachable",
                    b.ip
                )),
                "{body}"
            );
        } else {
            assert_eq!(status, 0, "{body}");
        }
        let served = self.servers[3].logs();
        assert!(
            !served.contains("GET /"),
            "the loopback-only server was reached:\n{served}"
        );
    }

    /// A connection routed through B rather than to it (B as A's gateway to a network B is
    /// not on): B's interception takes it, and B's proxy relays it nowhere (not to that
    /// address, not to its own loopback), counting it as `not_local`.
    fn traffic_routed_through_b_is_not_relayed(&self) {
        let [a, b, _] = self.lan.abc();
        a.ns.ok(&["ip", "route", "add", "192.0.2.0/24", "via", &b.ip]);
        let before = b.metrics();
        let (out, _) = a.tcp("192.0.2.7", REDIS_PORT, "PING\r\n", "-c 7");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let wanted = ["direction=\"inbound\"", "reason=\"not_local\""];
        let deadline = Instant::now() + Duration::from_secs(5);
        while delta(&before, &b.metrics(), "weft_proxy_errors_total", &wanted) < 1.0 {
            assert!(
                Instant::now() < deadline,
                "B's proxy never refused it:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A case on the plain network: what it must print.
    fn directly(&self, case: &Case) {
        let started = Instant::now();
        assert_eq!((case.run)(self), case.expect, "{} directly", case.name);
        eprintln!("{}: directly in {:?}", case.name, started.elapsed());
    }

    /// A case through the mesh: what it printed directly, over mTLS as both proxies say,
    /// nothing unmeshed, no errors but the one the case makes.
    fn through_the_mesh(&self, case: &Case) {
        let [a, b, _] = self.lan.abc();
        let before = [a.metrics(), b.metrics()];
        let started = Instant::now();
        let printed = (case.run)(self);
        let took = started.elapsed();
        let what = format!("{} through the mesh", case.name);
        assert_eq!(printed, case.expect, "{what}\n{}", self.logs());
        // Every request answered (or given up by its client) on both sides: B's proxy may answer
        // the call past its deadline a moment after the client is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut m = Scrapes {
            before,
            after: [a.metrics(), b.metrics()],
            logs: String::new(),
        };
        while !m.settled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            m.after = [a.metrics(), b.metrics()];
        }
        m.logs = self.logs();
        assert!(m.settled(), "{}: requests left unanswered\n{m}", case.name);
        let counted = m.seen(case, a, b);
        let unmeshed = (
            m.a(TCP, &[r#"protocol="unmeshed""#]),
            m.a(REQUESTS, &[r#"dst_service="unmeshed""#]),
        );
        assert_eq!(unmeshed, (0.0, 0.0), "{}: unmeshed traffic\n{m}", case.name);
        // No connection waited for detection to give up, none failed. gRPC's call past its
        // deadline ends on both sides at once: the client cancels it, the server answers
        // DEADLINE_EXCEEDED itself (`grpc-timeout`); a proxy counts the cancellation (499
        // `client_closed`) if it comes first, else the server's answer.
        let cancelled = if matches!(case.seen, Seen::Grpc) {
            1.0
        } else {
            0.0
        };
        for (proxy, i) in [("A's", 0), ("B's", 1)] {
            let grew = |labels: &[&str]| {
                delta(&m.before[i], &m.after[i], "weft_proxy_errors_total", labels)
            };
            let (all, cancels) = (grew(&[]), grew(&[r#"reason="client_closed""#]));
            let what = format!("{}: {proxy} proxy's errors", case.name);
            assert!(all == cancels && cancels <= cancelled, "{what}\n{m}");
        }
        eprintln!("{}: through the mesh in {took:?}, {counted}", case.name);
    }

    /// `argv` from A's app (root: redirected once `weft init` ran, no proxy settings), for at
    /// most a minute: its stdout, trimmed; fails with its output and the proxies' logs.
    fn client(&self, argv: &[&str]) -> String {
        let mut timed = vec!["timeout", "60"];
        timed.extend_from_slice(argv);
        let out = self.lan.abc()[0].ns.exec(&timed);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "{argv:?} from A: {}\n{stdout}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        stdout
    }

    /// `python3 <script> <B:port> <B:port> <args>`: the client connects to B's address and
    /// names it in `Host` (`:authority`).
    fn python(&self, script: &str, port: &str, args: &str) -> String {
        let b = format!("{}:{port}", self.lan.abc()[1].ip);
        self.client(&words(&format!("python3 {COMPAT}/{script} {b} {b} {args}")))
    }

    /// `redis-cli` SET and GET, then `redis-benchmark`: the replies, and the tests the
    /// benchmark reports a rate for.
    fn redis(&self) -> String {
        let cli = format!("redis-cli -h {} -p {REDIS_PORT}", self.lan.abc()[1].ip);
        let set = self.client(&words(&format!("{cli} SET k v")));
        let get = self.client(&words(&format!("{cli} GET k")));
        let bench = format!(
            "redis-benchmark -h {} -p {REDIS_PORT} -n 2000 -c 10 -t set,get -q",
            self.lan.abc()[1].ip
        );
        let bench = self.client(&words(&bench));
        // Its progress lines end in '\r', its results (`SET: 9345.79 requests per second,
        // p50=...`) in '\n'.
        let mut tests: Vec<&str> = bench
            .split(['\r', '\n'])
            .filter(|l| l.contains("requests per second"))
            .filter_map(|l| l.split_once(':').map(|(test, _)| test.trim()))
            .collect();
        tests.dedup();
        format!("{set} {get}; redis-benchmark: {}", tests.join(", "))
    }

    /// `psql` `select 1`, then `pgbench` initialised and run: the answer, and what the run
    /// says of its transactions.
    fn postgres(&self) -> String {
        let to_b = format!("-h {} -p {PG_PORT} -U postgres", self.lan.abc()[1].ip);
        let psql = format!("psql -X -A -t {to_b} -c");
        let one = self.client(&[words(&psql), vec!["select 1"]].concat());
        self.client(&words(&format!("pgbench {to_b} -i -s 1 postgres")));
        let run = self.client(&words(&format!("pgbench {to_b} -c 4 -t 50 postgres")));
        let facts: Vec<&str> = run
            .lines()
            .filter(|l| {
                l.starts_with("number of transactions actually processed")
                    || l.starts_with("number of failed transactions")
            })
            .collect();
        format!("select 1: {one}; pgbench: {}", facts.join("; "))
    }

    /// The proxies' logs, for a failure's message.
    fn logs(&self) -> String {
        self.proxies
            .iter()
            .zip(["a", "b"])
            .map(|(p, n)| format!("--- proxy {n}\n{}", p.logs()))
            .collect()
    }
}

/// A's and B's proxies' metrics before and after a case, and their logs.
struct Scrapes {
    before: [String; 2],
    after: [String; 2],
    logs: String,
}

impl std::fmt::Display for Scrapes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b] = &self.after;
        write!(f, "{}--- A's metrics\n{a}--- B's metrics\n{b}", self.logs)
    }
}

impl Scrapes {
    /// How much a metric of A's proxy grew.
    fn a(&self, name: &str, labels: &[&str]) -> f64 {
        delta(&self.before[0], &self.after[0], name, labels)
    }

    /// How much a metric of B's proxy grew.
    fn b(&self, name: &str, labels: &[&str]) -> f64 {
        delta(&self.before[1], &self.after[1], name, labels)
    }

    /// Whether each proxy answered (or counted as given up) every request it took.
    fn settled(&self) -> bool {
        self.a(RESPONSES, &[]) == self.a(REQUESTS, &[])
            && self.b(RESPONSES, &[]) == self.b(REQUESTS, &[])
    }

    /// Checks what the proxies counted for `case` (A calling B over mTLS, with their
    /// identities); says it in a few words.
    fn seen(&self, case: &Case, a: &Host, b: &Host) -> String {
        let (peer_a, peer_b) = (peer(a), peer(b));
        let (outbound, inbound) = (r#"direction="outbound""#, r#"direction="inbound""#);
        let to_b = r#"dst_service="default/b""#;
        match case.seen {
            Seen::Upgrade => {
                let switched = r#"status_class="1xx""#;
                let upgraded = r#"protocol="upgraded""#;
                let sent = self.a(RESPONSES, &[outbound, to_b, &peer_b, switched]);
                let received = self.b(RESPONSES, &[inbound, &peer_a, switched]);
                let relayed = (
                    self.a(TCP, &[outbound, upgraded]),
                    self.b(TCP, &[inbound, upgraded]),
                );
                assert_eq!(
                    (sent, received, relayed),
                    (1.0, 1.0, (1.0, 1.0)),
                    "{}: one upgrade from A's identity to B, relayed by both proxies\n{self}",
                    case.name
                );
                "one upgrade (101) from A's identity to B's, relayed by both proxies".into()
            }
            Seen::Grpc => {
                let tls = r#"tls="true""#;
                let sent = self.a(REQUESTS, &[outbound, to_b, &peer_b, tls]);
                let received = self.b(REQUESTS, &[inbound, &peer_a, tls]);
                assert_eq!(
                    (sent, received),
                    (GRPC_CALLS, GRPC_CALLS),
                    "{}: every call over mTLS from A's identity to B\n{self}",
                    case.name
                );
                format!("{sent} calls over mTLS from A's identity to B's")
            }
            Seen::Opaque => {
                let opaque = r#"protocol="opaque""#;
                let tunnels = self.a(TCP, &[outbound, opaque]);
                let accepted = self.b(TCP, &[inbound, opaque]);
                let verified = self.b("weft_proxy_tls_handshakes_total", &[inbound, &peer_a]);
                assert!(
                    tunnels >= 1.0 && accepted == tunnels && verified == tunnels,
                    "{}: {tunnels} tunnels from A's proxy, {accepted} taken by B's, {verified} \
                     handshakes with A's identity there\n{self}",
                    case.name
                );
                format!("{tunnels} connections, each its own mTLS tunnel from A's identity")
            }
        }
    }
}

/// The `peer` label of a host's identity.
fn peer(h: &Host) -> String {
    format!("peer=\"{}\"", h.id())
}

/// How much a metric grew between two scrapes.
fn delta(before: &str, after: &str, name: &str, labels: &[&str]) -> f64 {
    metric_sum(after, name, labels) - metric_sum(before, name, labels)
}

/// A command line's words (none of them with a space).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}
