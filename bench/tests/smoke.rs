//! CI smoke test of the benchmarks: `weft-bench all --quick --out-dir <tmp>` (what `just
//! bench` runs, quick) runs the identity and control-plane benchmarks, every mesh scenario
//! (direct, weft, the HAProxy pair) at every rate, at the maximum, with a new connection per
//! request and with idle connections open, and the interception benchmark (direct and weft
//! between two network namespaces), and the harness works: exit 0, the JSON, the Markdown
//! summary and the plot are written, every scenario and rate has requests and no errors, the
//! mTLS checks and the interception check passed, and the namespaces are gone afterwards. No
//! number is asserted: CI machines are too noisy.
//!
//! A system test: it needs `haproxy` (Debian package `haproxy`), root with `ip`, `iptables`
//! and `setpriv` (iproute2, iptables, util-linux) for the interception benchmark, and the
//! `weft` binary beside `weft-bench` in the target directory (`cargo test --workspace` builds
//! it), so it runs only with `WEFT_SYSTEM_TESTS=1`, as `.ci/run` sets, and then fails loudly
//! if any of them is missing.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole quick run must finish within this (it takes about 2 minutes with debug binaries).
const TIMEOUT: Duration = Duration::from_secs(300);

/// `tool` on PATH or in /usr/sbin or /sbin, as `weft-bench` looks for its tools.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The network namespaces whose name ends in `-<pid>`: the interception benchmark's, of
/// `weft-bench` process `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("weft-bench-") && n.ends_with(&format!("-{pid}")))
        .map(String::from)
        .collect()
}

/// `bench`'s report lists exactly the scenarios `names`, in order, and each was measured at
/// every one of `rates` and in each of the modes `also` (`max`, `new_connection`), with
/// requests and no errors.
fn assert_every_scenario_measured(
    bench: &str,
    report: &serde_json::Value,
    names: &[&str],
    rates: &[u64],
    also: &[&str],
    stdout: &str,
) {
    let scenarios = report["scenarios"]
        .as_array()
        .unwrap_or_else(|| panic!("{bench}: no scenarios in {report}"));
    let listed: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().expect("a scenario's name"))
        .collect();
    assert_eq!(listed, names, "{bench}");
    for s in scenarios {
        let name = &s["scenario"];
        let at_rates = s["at_rates"].as_array().expect("at_rates");
        let measured: Vec<u64> = at_rates
            .iter()
            .map(|l| l["rate"].as_u64().expect("a rate"))
            .collect();
        assert_eq!(measured, rates, "{bench} {name}");
        for l in at_rates.iter().chain(also.iter().map(|m| &s[*m])) {
            assert!(
                l["requests"].as_u64().is_some_and(|n| n > 0),
                "{bench} {name}: no requests in {l}"
            );
            assert_eq!(l["errors"], 0, "{bench} {name}: errors in {l}\n{stdout}");
        }
    }
}

#[test]
#[cfg_attr(
    not(weft_system_tests),
    ignore = "a system test: set WEFT_SYSTEM_TESTS=1 to run it"
)]
fn the_quick_suite_runs_every_benchmark_scenario_and_rate_over_mtls_and_writes_its_files() {
    let (bench, weft) = prerequisites();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let stdout = run_the_quick_suite(bench, &weft, dir.path(), &out);

    // One date's three files, and the latest summary and plot.
    let stem = check_the_files(&out);

    let text = std::fs::read_to_string(out.join(format!("{stem}.json"))).unwrap();
    let suite: serde_json::Value = serde_json::from_str(&text).unwrap();
    check_the_identity_and_control_plane_results(&suite);
    let report = &suite["mesh"];
    let rates = check_the_mesh_results(report, &text, &stdout);
    check_the_interception_results(&suite, report, &rates, &stdout);
}

/// Fails loudly when a tool or binary the suite needs is missing; the two binaries.
fn prerequisites() -> (&'static Path, PathBuf) {
    assert!(
        tool("haproxy").is_some(),
        "haproxy is missing: install the Debian package `haproxy` (.ci/run does)"
    );
    assert!(
        weft_bench::intercept::is_root(),
        "the interception benchmark (part of `weft-bench all`) needs root: run the system \
         tests as root (.ci/run does)"
    );
    for t in ["ip", "iptables", "setpriv"] {
        assert!(
            tool(t).is_some(),
            "{t} is missing: install the Debian packages iproute2, iptables and util-linux \
             (.ci/run does)"
        );
    }
    let bench = Path::new(env!("CARGO_BIN_EXE_weft-bench"));
    // As `mesh::find_weft` looks for it: beside this binary in the target directory.
    let weft = bench.with_file_name("weft");
    assert!(
        weft.is_file(),
        "no weft binary at {}: build it with the same target directory first \
         (`cargo build -p weft -p weft-proxy`; `cargo test --workspace` does)",
        weft.display()
    );
    (bench, weft)
}

/// Runs `weft-bench all --quick` (killing it after [`TIMEOUT`]): exit 0, no network namespace
/// left behind; its stdout.
fn run_the_quick_suite(bench: &Path, weft: &Path, dir: &Path, out: &Path) -> String {
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let mut child = Command::new(bench)
        .args(["all", "--quick", "--out-dir"])
        .arg(out)
        .arg("--weft")
        .arg(weft)
        .stdin(Stdio::null())
        .stdout(log("stdout"))
        .stderr(log("stderr"))
        // A process group of its own, with everything it starts, to kill on a timeout.
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // weft-bench kills what it started when it ends, but not when it is killed:
            // kill its whole process group (its own, see `process_group` above).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            // Killed, it could not delete its network namespaces: do it here.
            for ns in namespaces_of(child.id()) {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let (stdout, stderr) = (read("stdout"), read("stderr"));
    let status = status.unwrap_or_else(|| {
        panic!("weft-bench all --quick took more than {TIMEOUT:?}\nstderr:\n{stderr}\nstdout:\n{stdout}")
    });
    assert!(
        status.success(),
        "weft-bench all --quick failed ({status})\nstderr:\n{stderr}\nstdout:\n{stdout}"
    );
    println!("{stdout}");
    let leftover = namespaces_of(child.id());
    assert!(
        leftover.is_empty(),
        "the interception benchmark left network namespaces behind: {leftover:?}"
    );
    stdout
}

/// The result files: one date's JSON, summary and plot, and the latest summary and plot; the
/// date's stem.
fn check_the_files(out: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    let stem = names[0].strip_suffix(".json").expect("<date>.json first");
    for ext in ["md", "svg"] {
        assert!(names.contains(&format!("{stem}.{ext}")), "{names:?}");
    }
    assert!(names.contains(&"latest.md".into()) && names.contains(&"latest.svg".into()));
    let summary = std::fs::read_to_string(out.join(format!("{stem}.md"))).unwrap();
    for part in [
        "Machine: ",
        "## Mesh",
        &format!("({stem}.svg)"),
        "Connection setup",
        "Idle client connections",
        "## Transparent interception",
        "Interception check (passed)",
        "## Identity service",
        "## Control plane",
    ] {
        assert!(
            summary.contains(part),
            "no {part:?} in the summary:\n{summary}"
        );
    }
    let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "a line per scenario:\n{svg}"
    );
    stem.to_string()
}

/// The suite's JSON: a quick run, the machine, the identity and control-plane benchmarks.
fn check_the_identity_and_control_plane_results(suite: &serde_json::Value) {
    assert_eq!(suite["quick"], true);
    assert!(suite["machine"]["cores"].as_u64().unwrap() > 0);
    let identity_runs = suite["identity"]["runs"].as_array().unwrap();
    assert!(
        identity_runs.len() == 2
            && identity_runs
                .iter()
                .all(|r| r["requests"].as_u64().unwrap() > 0 && r["errors"] == 0),
        "{}",
        suite["identity"]
    );
    assert!(!suite["policy"]["authz"].as_array().unwrap().is_empty());
    assert_eq!(
        suite["policy"]["fanout"]["missed"], 0,
        "{}",
        suite["policy"]
    );
}

/// The mesh benchmark: every scenario at every rate, the mTLS checks, every proxy sampled; the
/// rates.
fn check_the_mesh_results(report: &serde_json::Value, text: &str, stdout: &str) -> Vec<u64> {
    assert_eq!(report["bench"], "mesh");
    assert_eq!(report["settings"]["quick"], true);
    let rates: Vec<u64> = report["settings"]["rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_u64().unwrap())
        .collect();
    assert!(!rates.is_empty(), "{text}");

    assert_every_scenario_measured(
        "mesh",
        report,
        &["direct", "weft", "peer"],
        &rates,
        &["max", "new_connection"],
        stdout,
    );
    assert_eq!(
        report["mtls"]["ok"], true,
        "weft's mTLS check: {}",
        report["mtls"]
    );
    assert_eq!(
        report["peer_check"]["ok"], true,
        "the HAProxy pair's mTLS check: {}",
        report["peer_check"]
    );
    // Every proxy was sampled: two weft proxies, two HAProxies; with idle connections too.
    let proxies = report["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 4);
    for p in proxies {
        assert!(p["rss_idle_connections_mib"].as_f64().unwrap() > 0.0, "{p}");
        assert!(
            p["cpu_seconds_per_1000_new_connection"]["median"]
                .as_f64()
                .is_some(),
            "{p}"
        );
    }
    rates
}

/// The interception benchmark's results.
fn check_the_interception_results(
    suite: &serde_json::Value,
    report: &serde_json::Value,
    rates: &[u64],
    stdout: &str,
) {
    // The interception benchmark: both scenarios at every rate and at the maximum, with
    // requests and no errors; the probes and the counters over the runs passed.
    assert!(
        suite["intercept_skipped"].is_null(),
        "{}",
        suite["intercept_skipped"]
    );
    let ic = &suite["intercept"];
    assert_eq!(ic["bench"], "intercept", "{ic}");
    assert_eq!(ic["settings"]["quick"], true);
    assert_eq!(ic["settings"]["rates"], report["settings"]["rates"]);
    assert_every_scenario_measured(
        "intercept",
        ic,
        &["direct", "weft"],
        rates,
        &["max"],
        stdout,
    );
    let check = &ic["check"];
    assert_eq!(check["probe_ok"], true, "{check}");
    assert_eq!(check["ok"], true, "{check}");
    assert!(
        check["weft_requests_measured"].as_u64().unwrap() > 0,
        "{check}"
    );
    let proxies = ic["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{ic}");
    for p in proxies {
        assert!(
            p["cpu_seconds_per_1000_at_max"]["median"]
                .as_f64()
                .is_some(),
            "{p}"
        );
    }
}
