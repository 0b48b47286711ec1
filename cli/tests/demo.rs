//! `weft demo --duration 20s`, run as a user runs it: the whole mesh comes up, traffic shows on
//! every route of the demo with the expected success rates, the policy refuses what it should,
//! and the demo exits 0 leaving no process behind.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// A row of the table the demo prints: name, kind, pid, and its `what=addr` pairs.
#[derive(Debug)]
struct Row {
    name: String,
    kind: String,
    pid: u32,
    addrs: Vec<(String, String)>,
}

impl Row {
    fn addr(&self, what: &str) -> SocketAddr {
        let (_, a) = self.addrs.iter().find(|(k, _)| k == what).unwrap();
        a.parse().unwrap()
    }
}

fn parse_table(lines: &[String]) -> Option<Vec<Row>> {
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("NAME "))?;
    let mut rows = Vec::new();
    for line in &lines[start + 1..] {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Some(rows);
        }
        rows.push(Row {
            name: fields[0].into(),
            kind: fields[1].into(),
            pid: fields[2].parse().ok()?,
            addrs: fields[3..]
                .iter()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }
    None
}

fn metrics(admin: SocketAddr) -> String {
    http(admin, "GET", "/metrics", "x")
        .map(|r| r.1)
        .unwrap_or_default()
}

/// Requests and the share answered 2xx on web's sidecar for `rule` and `backend`.
fn route(m: &str, rule: &str, backend: &str) -> (f64, f64) {
    let labels = [
        "dst_service=\"default/api\"",
        &format!("rule=\"{rule}\""),
        &format!("backend=\"default/{backend}\""),
    ]
    .map(|s| s.to_string());
    let l: Vec<&str> = labels.iter().map(String::as_str).collect();
    let total = metric_sum(m, "weft_route_requests_total", &l);
    let mut ok_labels = l.clone();
    ok_labels.push("status_class=\"2xx\"");
    let ok = metric_sum(m, "weft_route_responses_total", &ok_labels);
    (total, if total > 0.0 { ok / total } else { 0.0 })
}

/// A running `weft demo` with its stdout lines so far.
struct Demo {
    dir: tempfile::TempDir,
    child: Child,
    lines: mpsc::Receiver<String>,
    out: Vec<String>,
    started: Instant,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(WEFT)
            .arg("demo")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("demo.stderr")).unwrap())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            dir,
            child,
            lines,
            out: Vec::new(),
            started: Instant::now(),
        }
    }

    fn report(&mut self) -> String {
        self.out.extend(self.lines.try_iter());
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.out.join("\n"),
            std::fs::read_to_string(self.dir.path().join("demo.stderr")).unwrap_or_default()
        )
    }

    /// The table of what runs where, once the mesh is up (bounded wait).
    fn table(&mut self) -> Vec<Row> {
        let deadline = self.started + Duration::from_secs(120);
        loop {
            if let Some(rows) = parse_table(&self.out) {
                return rows;
            }
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => self.out.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the demo ended early\n{}", self.report())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            assert!(Instant::now() < deadline, "no table\n{}", self.report());
        }
    }

    /// Waits (bounded) for the demo to exit.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the demo did not stop\n{}", self.report());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Demo {
    /// Asserts that the demo exits 0 within `limit`, having stopped (and reaped) every child;
    /// returns its output.
    fn stops_cleanly(&mut self, rows: &[Row], limit: Duration) -> String {
        let status = self.wait(limit);
        let report = self.report();
        assert!(status.success(), "{status}\n{report}");
        assert!(report.contains("weft demo: stopped"), "{report}");
        assert_all_gone(rows, Duration::ZERO);
        report
    }
}

/// Asserts that none of the demo's child processes is left (bounded wait, for processes
/// that exit by themselves).
fn assert_all_gone(rows: &[Row], limit: Duration) {
    let deadline = Instant::now() + limit;
    for r in rows.iter().filter(|r| r.kind != "load") {
        while std::path::Path::new(&format!("/proc/{}", r.pid)).exists() {
            assert!(
                Instant::now() < deadline,
                "{} ({}, pid {}) outlived the demo",
                r.name,
                r.kind,
                r.pid
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn the_demo_runs_a_whole_mesh_with_traffic_on_every_route_and_cleans_up() {
    // Twice the default rate, so api-v2's 10 % share reaches a sample its success rate can be
    // judged on well within the run.
    let mut demo = Demo::start(&["--duration", "20s", "--rate", "40"]);
    let rows = demo.table();
    let row = |name: &str, kind: &str| {
        rows.iter()
            .find(|r| r.name == name && r.kind == kind)
            .unwrap()
    };
    for name in ["web", "api-v1", "api-v2", "api-v3", "db"] {
        row(name, "app");
        row(name, "sidecar");
    }
    row("loadgen", "sidecar");
    row("identity", "identity");
    row("policy", "policy");
    let web = row("web", "sidecar").addr("admin");
    let db = row("db", "sidecar").addr("admin");

    // While it runs: traffic on every rule and backend of api's route, api calling db, and
    // loadgen's own calls to db refused; the success rates as configured.
    let api_id = "peer=\"spiffe://weft.local/ns/default/sa/api\"";
    let loadgen_id = "peer=\"spiffe://weft.local/ns/default/sa/loadgen\"";
    let until = Instant::now() + Duration::from_secs(25);
    let (web_m, db_m) = loop {
        let (w, d) = (metrics(web), metrics(db));
        let enough = route(&w, "split", "api-v1").0 >= 50.0
            && route(&w, "split", "api-v2").0 >= 20.0
            && route(&w, "mobile", "api-v3").0 >= 10.0
            && metric_sum(
                &d,
                "weft_proxy_requests_total",
                &["direction=\"inbound\"", api_id],
            ) > 0.0
            && metric_sum(
                &d,
                "weft_proxy_authz_total",
                &["decision=\"deny\"", loadgen_id],
            ) > 0.0;
        if enough {
            break (w, d);
        }
        assert!(
            Instant::now() < until,
            "not every route shows traffic:\nweb's sidecar:\n{w}\ndb's sidecar:\n{d}\n{}",
            demo.report()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The split: 2 % injected 503s (not retried), api-v2's own 20 % 503s retried away.
    let (v1, v1_ok) = route(&web_m, "split", "api-v1");
    let (v2, v2_ok) = route(&web_m, "split", "api-v2");
    let (v3, v3_ok) = route(&web_m, "mobile", "api-v3");
    assert!(v1_ok >= 0.85 && v2_ok >= 0.85, "{v1_ok} {v2_ok}\n{web_m}");
    assert!(v3_ok >= 0.95, "{v3_ok}\n{web_m}");
    // Roughly 90/10, and 1 in 5 requests mobile.
    assert!(v2 < v1 / 2.0, "{v1} {v2}\n{web_m}");
    assert!(v3 < v1, "{v1} {v3}\n{web_m}");
    assert_eq!(
        metric_sum(
            &db_m,
            "weft_proxy_authz_total",
            &["decision=\"allow\"", loadgen_id]
        ),
        0.0,
        "{db_m}"
    );
    // Retries hide most of api-v2's failures (20 % of its attempts fail).
    let wait_retries = Instant::now() + Duration::from_secs(10);
    loop {
        let w = metrics(web);
        if metric_sum(
            &w,
            "weft_route_retries_total",
            &["backend=\"default/api-v2\"", "outcome=\"taken\""],
        ) > 0.0
        {
            break;
        }
        assert!(Instant::now() < wait_retries, "no retry on api-v2:\n{w}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The demo stops by itself after --duration, exits 0 and leaves nothing behind.
    let report = demo.stops_cleanly(&rows, Duration::from_secs(120));
    assert!(report.contains("weft stat --policy-admin"), "{report}");
}

#[test]
fn ctrl_c_stops_the_demo_and_every_child() {
    let mut demo = Demo::start(&[]);
    let rows = demo.table();
    signal(demo.child.id(), "-INT");
    demo.stops_cleanly(&rows, Duration::from_secs(60));
}

#[test]
fn children_exit_by_themselves_when_the_demo_is_killed() {
    let mut demo = Demo::start(&[]);
    let rows = demo.table();
    signal(demo.child.id(), "-KILL");
    demo.wait(Duration::from_secs(10));
    assert_all_gone(&rows, Duration::from_secs(10));
}

#[test]
fn a_taken_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WEFT)
        .args([
            "demo",
            "--duration",
            "1s",
            "--base-port",
            &port.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} (for the identity service) is taken"))
            && stderr.contains("--base-port"),
        "{stderr}"
    );
}
