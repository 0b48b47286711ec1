//! `weft demo --duration 20s`, run as a user runs it: the whole mesh comes up, its dashboard's
//! JSON shows traffic on every route of the demo with the expected success rates and the policy
//! refusing what it should, and the demo exits 0 leaving no process behind.
#![allow(clippy::unwrap_used)]

mod support;

/// `weft demo --store etcd`.
#[path = "demo/etcd.rs"]
mod etcd;

/// The operator commands find the running demo.
#[path = "demo/context.rs"]
mod context;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;
use weft_runtime::testing::{http, metric_sum};

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

/// The dashboard's `/api/overview`, once it has data.
fn overview(dashboard: SocketAddr) -> Option<serde_json::Value> {
    let (status, response) = http(dashboard, "GET", "/api/overview", "x")?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    let o: serde_json::Value = serde_json::from_str(body).ok()?;
    (status == 200 && o["updated_ms"].as_u64() > Some(0)).then_some(o)
}

fn find(
    rows: &serde_json::Value,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Option<&serde_json::Value> {
    rows.as_array()?.iter().find(|r| pick(r))
}

/// The row of a backend of api's route (`null` if none).
fn backend<'a>(o: &'a serde_json::Value, rule: &str, backend: &str) -> &'a serde_json::Value {
    find(&o["backends"], |r| {
        r["service"] == "default/api"
            && r["rule"] == rule
            && r["backend"] == format!("default/{backend}").as_str()
    })
    .unwrap_or(&serde_json::Value::Null)
}

/// The service graph's edge from one service to another (`null` if none).
fn edge<'a>(o: &'a serde_json::Value, from: &str, to: &str) -> &'a serde_json::Value {
    find(&o["edges"], |e| e["from"] == from && e["to"] == to).unwrap_or(&serde_json::Value::Null)
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
            // Its announcement (`current.json`) goes here, not to the user's ~/.weft.
            .env("WEFT_HOME", dir.path().join("home"))
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
        match wait_exit(&mut self.child, limit) {
            Some(s) => s,
            None => panic!("the demo did not stop\n{}", self.report()),
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
    let dashboard = row("dashboard", "dashboard").addr("http");

    // While it runs, the dashboard's JSON: traffic on every rule and backend of api's route
    // and on the default routes of web and db, api calling db, and loadgen's own calls to db
    // refused by db's policy.
    let until = Instant::now() + Duration::from_secs(25);
    let o = loop {
        let o = overview(dashboard);
        let enough = o.as_ref().is_some_and(|o| {
            backend(o, "split", "api-v1")["requests"].as_f64() >= Some(50.0)
                && backend(o, "split", "api-v2")["requests"].as_f64() >= Some(20.0)
                && backend(o, "mobile", "api-v3")["requests"].as_f64() >= Some(10.0)
                && edge(o, "default/api", "default/db")["requests"].as_f64() > Some(0.0)
                && edge(o, "default/loadgen", "default/db")["denied"].as_f64() > Some(0.0)
        });
        if enough {
            break o.unwrap();
        }
        assert!(
            Instant::now() < until,
            "the dashboard does not show traffic on every route:\n{o:#?}\n{}",
            demo.report()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let report = format!("{o:#}");
    // Every route of the demo has traffic, at the expected success rates: web and the split
    // see the 2 % injected 503s (retries hide most of api-v2's own 20 %), the rest none.
    for (service, route, rule, min_success) in [
        ("default/web", "default", "default", 0.9),
        ("default/api", "default/api", "split", 0.9),
        ("default/api", "default/api", "mobile", 0.95),
        ("default/db", "default", "default", 0.99),
    ] {
        let r = find(&o["routes"], |r| {
            r["service"] == service && r["route"] == route && r["rule"] == rule
        })
        .unwrap_or_else(|| panic!("no route {service} {route} {rule}:\n{report}"));
        assert!(r["rps"].as_f64().unwrap() > 0.0, "{r}\n{report}");
        let success = r["success_rate"].as_f64().unwrap();
        assert!(success >= min_success, "{r}\n{report}");
    }
    for b in ["api-v1", "api-v2"] {
        let r = backend(&o, "split", b);
        assert!(r["success_rate"].as_f64().unwrap() >= 0.85, "{r}\n{report}");
    }
    // Roughly 90/10, and 1 in 5 requests mobile.
    let rps = |rule, b| backend(&o, rule, b)["rps"].as_f64().unwrap();
    let (v1, v2, v3) = (
        rps("split", "api-v1"),
        rps("split", "api-v2"),
        rps("mobile", "api-v3"),
    );
    assert!(v2 > 0.0 && v2 < v1 / 2.0, "{v1} {v2}\n{report}");
    assert!(v3 > 0.0 && v3 < v1, "{v1} {v3}\n{report}");
    // Per service: all over mTLS; the graph names the callers by service and identity.
    for s in ["default/web", "default/api", "default/db"] {
        let row = find(&o["services"], |r| r["service"] == s)
            .unwrap_or_else(|| panic!("no service {s}:\n{report}"));
        assert!(row["rps"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["tls_percent"].as_f64(), Some(100.0), "{row}");
    }
    let web_api = edge(&o, "default/web", "default/api");
    assert_eq!(
        web_api["identity"], "spiffe://weft.local/ns/default/sa/web",
        "{report}"
    );
    // The denied calls, listed with the policy that denied them; none was allowed.
    let denial = find(&o["denials"], |d| d["service"] == "default/db")
        .unwrap_or_else(|| panic!("no denial listed:\n{report}"));
    assert_eq!(denial["from"], "default/loadgen", "{report}");
    assert_eq!(denial["policy"], "service:default/db", "{report}");
    let loadgen_id = "peer=\"spiffe://weft.local/ns/default/sa/loadgen\"";
    assert_eq!(
        metric_sum(
            &metrics(db),
            "weft_proxy_authz_total",
            &["decision=\"allow\"", loadgen_id]
        ),
        0.0
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
    assert!(
        report.contains("stats:     weft stat ") && report.contains("elsewhere: --policy-admin"),
        "{report}"
    );
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

/// Runs headless Chromium (Debian `chromium`) with `args` on `url`, bounded in time; returns
/// its standard output and standard error. Panics if it is missing: system tests never skip
/// silently.
fn chromium(args: &[&str], url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Console messages (errors included) go to stderr as `INFO:CONSOLE` lines.
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium ({e}): install it (Debian package `chromium`, see .ci/run) \
                 or unset WEFT_SYSTEM_TESTS"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish in 90 s:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "chromium failed: {status}\n{err}");
    (out, err)
}

/// The part of `dom` from the table with `id` to its end.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id} in:\n{dom}"));
    let len = dom[start..].find("</table>").unwrap();
    &dom[start..start + len]
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn the_dashboard_in_a_real_browser_shows_services_and_routes_without_console_errors() {
    let mut demo = Demo::start(&["--duration", "90s", "--rate", "40"]);
    let rows = demo.table();
    let dashboard = rows
        .iter()
        .find(|r| r.kind == "dashboard")
        .unwrap()
        .addr("http");
    // Wait until every route has traffic, so the page has numbers to show.
    let until = Instant::now() + Duration::from_secs(30);
    while !overview(dashboard).is_some_and(|o| {
        o["routes"].as_array().map_or(0, |r| {
            r.iter().filter(|r| r["rps"].as_f64() > Some(0.0)).count()
        }) >= 4
    }) {
        assert!(
            Instant::now() < until,
            "no traffic on the dashboard\n{}",
            demo.report()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let url = format!("http://{dashboard}/");

    // The page as the browser built it, after its script polled and drew (virtual time runs
    // the 2 s poll twice), and everything the page logged to the console.
    let (dom, log) = chromium(&["--virtual-time-budget=5000", "--dump-dom"], &url);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "the page logged to the console:\n{}",
        console.join("\n")
    );
    assert!(
        !dom.contains("data-js-errors"),
        "the page caught errors:\n{dom}"
    );
    assert!(dom.contains("prox"), "no status line:\n{dom}");
    let services = table(&dom, "services");
    for s in ["default/web", "default/api", "default/db"] {
        assert!(
            services.contains(&format!(">{s}</td>")),
            "no {s}:\n{services}"
        );
    }
    let percent = regex::Regex::new(r">\d{1,3}\.\d\d%</td>").unwrap();
    let millis = regex::Regex::new(r">\d+\.\d+ ms</td>").unwrap();
    assert!(percent.find_iter(services).count() >= 3, "{services}");
    assert!(millis.find_iter(services).count() >= 9, "{services}");
    let routes = table(&dom, "routes");
    for rule in [">mobile</td>", ">split</td>", ">default/api</td>"] {
        assert!(routes.contains(rule), "no {rule}:\n{routes}");
    }
    assert!(percent.find_iter(routes).count() >= 4, "{routes}");
    assert!(
        table(&dom, "backends").contains(">default/api-v2</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("aria-label=\"service graph\""),
        "no graph:\n{dom}"
    );
    assert!(
        table(&dom, "denials").contains("service:default/db"),
        "no denial:\n{dom}"
    );

    // A screenshot, kept as the test's artifact.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            "--virtual-time-budget=5000",
            "--window-size=1400,1800",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());

    signal(demo.child.id(), "-INT");
    demo.stops_cleanly(&rows, Duration::from_secs(60));
}
