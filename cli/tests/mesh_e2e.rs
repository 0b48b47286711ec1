//! The whole mesh as an operator runs it: `weft identity`, `weft policy` and `weft proxy`
//! processes on loopback, two tiny HTTP apps, real tokens, real mTLS, a policy on disk.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A raw HTTP/1 exchange; `target` is the request target (absolute-form for a proxy).
fn http(addr: SocketAddr, method: &str, target: &str, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out))
}

/// A process of the mesh, killed when dropped; its stderr goes to a log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(WEFT)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self, admin: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(admin, "GET", "/ready", "x").map(|r| r.0) != Some(200) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1 app in a thread: answers `hello from <name>: <request line>`.
fn app(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    while !buf.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => buf.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let line = head.lines().next().unwrap_or("").to_string();
                    let body = format!("hello from {name}: {line}");
                    let rsp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(rsp.as_bytes()).is_err() {
                        return;
                    }
                    buf.clear();
                }
            });
        }
    });
    addr
}

fn token(data: &Path, ns: &str, workload: &str, out: &Path) {
    let o = Command::new(WEFT)
        .args(["token", "create", "--namespace", ns, "--workload", workload])
        .args(["--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(out, o.stdout).unwrap();
}

struct ProxyAddrs {
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

fn proxy_env(
    dir: &Path,
    name: &str,
    identity: SocketAddr,
    policy: SocketAddr,
    app_port: u16,
) -> (Vec<(&'static str, String)>, ProxyAddrs) {
    let addrs = ProxyAddrs {
        inbound: free_addr(),
        outbound: free_addr(),
        admin: free_addr(),
    };
    let env = vec![
        (
            "WEFT_TOKEN_FILE",
            dir.join(format!("{name}.token")).display().to_string(),
        ),
        ("WEFT_IDENTITY_ADDR", identity.to_string()),
        ("WEFT_POLICY_ADDR", policy.to_string()),
        ("WEFT_PROXY_INBOUND_LISTEN", addrs.inbound.to_string()),
        ("WEFT_PROXY_OUTBOUND_LISTEN", addrs.outbound.to_string()),
        ("WEFT_PROXY_ADMIN_LISTEN", addrs.admin.to_string()),
        ("WEFT_PROXY_APP_PORT", app_port.to_string()),
    ];
    (env, addrs)
}

fn metric_sum(text: &str, name: &str, must_contain: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| must_contain.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn two_workloads_through_real_proxies_with_a_policy_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("ca");
    let (id_api, id_admin) = (free_addr(), free_addr());
    let mut identity = Proc::start(
        d,
        "identity",
        &[
            "identity",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &id_api.to_string(),
            "--admin-listen",
            &id_admin.to_string(),
        ],
        &[],
    );
    identity.wait_ready(id_admin);
    for (ns, w) in [
        ("weft", "policy"),
        ("default", "api"),
        ("default", "web"),
        ("default", "other"),
    ] {
        token(&data, ns, w, &d.join(format!("{w}.token")));
    }

    let api_app = app("api");
    let resources = d.join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    let port = api_app.port();
    std::fs::write(
        resources.join("mesh.yaml"),
        format!(
            "kind: Service\nmetadata: {{name: api, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n---\n\
             kind: Service\nmetadata: {{name: web, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
             kind: Service\nmetadata: {{name: other, namespace: default}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
             kind: AuthorizationPolicy\nmetadata: {{name: api-from-web, namespace: default}}\nspec:\n  target: {{service: api, port: {port}}}\n  allow:\n    - identities: [\"spiffe://weft.local/ns/default/sa/web\"]\n"
        ),
    )
    .unwrap();
    let check = Command::new(WEFT)
        .args(["policy", "check"])
        .arg(&resources)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let (pol_api, pol_admin) = (free_addr(), free_addr());
    let mut policy = Proc::start(
        d,
        "policy",
        &[
            "policy",
            "--dir",
            resources.to_str().unwrap(),
            "--listen",
            &pol_api.to_string(),
            "--admin-listen",
            &pol_admin.to_string(),
        ],
        &[
            (
                "WEFT_TOKEN_FILE",
                d.join("policy.token").display().to_string(),
            ),
            ("WEFT_IDENTITY_ADDR", id_api.to_string()),
        ],
    );
    policy.wait_ready(pol_admin);

    let mut procs: HashMap<&str, (Proc, ProxyAddrs)> = HashMap::new();
    for (name, app_port) in [("api", port), ("web", 1), ("other", 1)] {
        let (env, addrs) = proxy_env(d, name, id_api, pol_api, app_port);
        let mut p = Proc::start(d, name, &["proxy"], &env);
        p.wait_ready(addrs.admin);
        procs.insert(name, (p, addrs));
    }

    // web → api: allowed, over mTLS, once the registration shows up in discovery.
    let url = format!("http://api.default:{port}/hello");
    let host = format!("api.default:{port}");
    let web_out = procs["web"].1.outbound;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let r = http(web_out, "GET", &url, &host).unwrap();
        if r.0 == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}\n{}", procs["web"].0.logs());
    assert!(
        body.contains("hello from api: GET /hello HTTP/1.1"),
        "{body}"
    );

    // other → api: 403 naming the policy.
    let (status, body) = http(procs["other"].1.outbound, "GET", &url, &host).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(
        body.to_lowercase().contains("weft-error: forbidden"),
        "{body}"
    );
    assert!(
        body.contains("spiffe://weft.local/ns/default/sa/other"),
        "{body}"
    );

    // The proxies' own metrics show the TLS 1.3 handshake between them and the deny.
    let (_, api_metrics) = http(procs["api"].1.admin, "GET", "/metrics", "x").unwrap();
    assert!(
        metric_sum(
            &api_metrics,
            "weft_proxy_tls_handshakes_total",
            &[
                "peer=\"spiffe://weft.local/ns/default/sa/web\"",
                "tls_version=\"1.3\""
            ]
        ) >= 1.0,
        "{api_metrics}"
    );
    assert_eq!(
        metric_sum(
            &api_metrics,
            "weft_proxy_authz_total",
            &["decision=\"deny\""]
        ),
        1.0,
        "{api_metrics}"
    );
    assert!(
        procs["api"].0.logs().contains("request denied"),
        "one log line per denied request"
    );

    // Clean shutdown: every process exits 0 on SIGTERM.
    for name in ["web", "other", "api"] {
        let (p, _) = procs.remove(name).unwrap();
        let status = p.terminate();
        assert!(status.success(), "{name} exited with {status}");
    }
    assert!(policy.terminate().success());
    assert!(identity.terminate().success());
}

#[test]
fn a_proxy_without_its_token_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WEFT)
        .args(["proxy"])
        .env("WEFT_TOKEN_FILE", dir.path().join("missing-token"))
        .env("WEFT_PROXY_INBOUND_LISTEN", free_addr().to_string())
        .env("WEFT_PROXY_OUTBOUND_LISTEN", free_addr().to_string())
        .env("WEFT_PROXY_ADMIN_LISTEN", free_addr().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the bootstrap token") && stderr.contains("weft token create"),
        "{stderr}"
    );
}
