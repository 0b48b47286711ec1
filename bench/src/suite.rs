//! `weft-bench all`: every benchmark in one go, as `just bench` runs it. The identity
//! service's (`identity-bench`) and the control plane's (`policy-bench`) benchmarks run as
//! processes beside this binary, then the mesh benchmark, then (as root only; the summary says
//! when it was skipped) the interception benchmark; the results go to
//! `<out>/<date>.json` (all of them, with the machine they ran on), a Markdown summary
//! `<out>/<date>.md` and the latency-distribution plot `<out>/<date>.svg`, and the summary
//! and plot are copied to `<out>/latest.md` and `<out>/latest.svg`, which the README links.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::Error;
use crate::intercept::{self, InterceptReport};
use crate::mesh::{self, MeshConfig, write_file as write};
use crate::plot::{self, Line};
use crate::report::{MeshReport, Mode, Run, Scenario, thousands};

/// Settings of `weft-bench all`.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub out_dir: PathBuf,
    /// Short runs of every part: checks the harness, not numbers to quote.
    pub quick: bool,
    pub mesh: MeshConfig,
}

/// The machine a run was made on, as far as `/proc` and `/etc/os-release` say.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// `git describe --always --dirty` of the working directory, if it is a checkout.
    pub commit: Option<String>,
}

impl Machine {
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_string());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map_or_else(|| "unknown".into(), |v| v.trim_matches('"').to_string());
        let commit = Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            commit,
        }
    }

    /// One line: `2 cores of <cpu>, 24 GiB, Debian …, Linux …`.
    pub fn line(&self) -> String {
        format!(
            "{} cores of {}, {:.0} GiB memory, {}, Linux {}{}",
            self.cores,
            self.cpu,
            self.memory_gib,
            self.os,
            self.kernel,
            self.commit
                .as_deref()
                .map_or(String::new(), |c| format!("; weft at {c}"))
        )
    }
}

/// Everything `weft-bench all` writes to `<date>.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuiteReport {
    pub bench: &'static str,
    pub date: String,
    pub quick: bool,
    pub machine: Machine,
    pub mesh: MeshReport,
    /// The interception benchmark (two network namespaces), with the mesh's rates and
    /// durations; `None` when skipped.
    pub intercept: Option<InterceptReport>,
    /// Why the interception benchmark was skipped (not root).
    pub intercept_skipped: Option<String>,
    /// `identity-bench --json`'s output.
    pub identity: Value,
    /// `policy-bench --json`'s output.
    pub policy: Value,
}

/// The files written.
#[derive(Debug)]
pub struct Written {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub plot: PathBuf,
}

/// Runs the identity, control-plane and mesh benchmarks and writes the results.
pub fn run(cfg: &SuiteConfig) -> Result<(SuiteReport, Written), Error> {
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.out_dir.display()))?;
    let date = weft_identity::rfc3339(std::time::SystemTime::now())
        .get(..10)
        .unwrap_or("undated")
        .to_string();
    let scratch = tempfile::Builder::new()
        .prefix("weft-bench-all-")
        .tempdir()
        .map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    let (identity_args, policy_args): (&[&str], &[&str]) = if cfg.quick {
        (
            &["--duration", "2s", "--warmup", "500ms"],
            &[
                "--decisions",
                "200000",
                "--runs",
                "3",
                "--watchers",
                "100",
                "--rounds",
                "2",
            ],
        )
    } else {
        (&[], &[])
    };
    let identity = sibling(
        "identity-bench",
        identity_args,
        &scratch.path().join("identity.json"),
    )?;
    let policy = sibling(
        "policy-bench",
        policy_args,
        &scratch.path().join("policy.json"),
    )?;
    let mesh = mesh::run(&cfg.mesh)?;
    // Root only (network namespaces, iptables); without root the rest still runs, and the
    // summary says what is missing. As root, a missing tool is an error.
    let (intercept, intercept_skipped) = if intercept::is_root() {
        (Some(intercept::run(&cfg.mesh)?), None)
    } else {
        eprintln!("skipping the interception benchmark: {NOT_ROOT}");
        (None, Some(NOT_ROOT.to_string()))
    };
    let report = SuiteReport {
        bench: "weft",
        date: date.clone(),
        quick: cfg.quick,
        machine: Machine::read(),
        mesh,
        intercept,
        intercept_skipped,
        identity,
        policy,
    };
    let stem = free_stem(&cfg.out_dir, &date);
    let written = Written {
        json: cfg.out_dir.join(format!("{stem}.json")),
        markdown: cfg.out_dir.join(format!("{stem}.md")),
        plot: cfg.out_dir.join(format!("{stem}.svg")),
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| format!("JSON: {e}"))?;
    write(&written.json, &json)?;
    let svg = latency_plot(&report.mesh);
    write(&written.plot, &svg)?;
    let md = report.markdown(&format!("{stem}.svg"), &format!("{stem}.json"));
    write(&written.markdown, &md)?;
    write(
        &cfg.out_dir.join("latest.md"),
        &report.markdown("latest.svg", &format!("{stem}.json")),
    )?;
    write(&cfg.out_dir.join("latest.svg"), &svg)?;
    Ok((report, written))
}

/// Why `all` skips the interception benchmark when not root.
pub const NOT_ROOT: &str = "not run as root: the interception benchmark creates network \
    namespaces and iptables rules (run `weft-bench all` as root, or `weft-bench intercept` \
    on its own as root)";

/// `<date>`, or `<date>-2`, `-3`… when a run of the same day is there already.
pub(crate) fn free_stem(dir: &Path, date: &str) -> String {
    (1..)
        .map(|n| {
            if n == 1 {
                date.to_string()
            } else {
                format!("{date}-{n}")
            }
        })
        .find(|stem| !dir.join(format!("{stem}.json")).exists())
        .unwrap_or_else(|| date.to_string())
}

/// Runs the benchmark binary `name` beside this one with `args` and `--json json`, its
/// output shown as it goes, and returns what it wrote.
fn sibling(name: &str, args: &[&str], json: &Path) -> Result<Value, Error> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let program = exe.with_file_name(name);
    if !program.is_file() {
        return Err(format!(
            "no {name} at {}: run `cargo build --release -p weft-bench` (it builds every \
             benchmark binary)",
            program.display()
        ));
    }
    eprintln!("running {name}");
    let status = Command::new(&program)
        .args(args)
        .arg("--json")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !status.success() {
        return Err(format!("{name} failed ({status}); its messages are above"));
    }
    let text = std::fs::read_to_string(json)
        .map_err(|e| format!("{name} wrote no {}: {e}", json.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{name}'s JSON: {e}"))
}

/// The latency distribution of each scenario at the headline rate: of each scenario, the
/// repeat whose p99 is the median of its repeats (a typical run, not a blend).
pub fn latency_plot(mesh: &MeshReport) -> String {
    let rate = mesh.settings.rate;
    let lines: Vec<Line> = [Scenario::Direct, Scenario::Weft, Scenario::Peer]
        .into_iter()
        .filter_map(|s| {
            let run = median_run(&mesh.runs, s, Mode::At(rate))?;
            Some(Line {
                name: s.label().to_string(),
                points: run.load.spectrum.clone(),
            })
        })
        .collect();
    plot::latency_svg(
        &format!(
            "Latency at {} req/s, {} connections (the median run of each)",
            thousands(rate as f64),
            mesh.settings.connections
        ),
        &lines,
    )
}

/// Of `scenario`'s runs in `mode`, the one with the median p99 (the lower middle one of an
/// even count).
fn median_run(runs: &[Run], scenario: Scenario, mode: Mode) -> Option<&Run> {
    let mut of: Vec<&Run> = runs
        .iter()
        .filter(|r| r.scenario == scenario && mode.matches(&r.load) && !r.load.spectrum.is_empty())
        .collect();
    of.sort_by(|a, b| a.load.p99_ms.total_cmp(&b.load.p99_ms));
    let middle = of.len().checked_sub(1)? / 2;
    of.get(middle).copied()
}

impl SuiteReport {
    /// The summary: the machine, the mesh's tables and plot, the identity service's and the
    /// control plane's numbers.
    pub fn markdown(&self, plot: &str, json: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# weft benchmarks, {}{}\n\nMachine: {}.\n\nCommand: `just bench` (`weft-bench all`); \
             every number below is in [{json}]({json}), with each run. What each benchmark \
             measures and how: [docs/benchmarks.md](../../docs/benchmarks.md).\n",
            self.date,
            if self.quick {
                " (QUICK: a harness check, not numbers to quote)"
            } else {
                ""
            },
            self.machine.line(),
        );
        let _ = writeln!(out, "## Mesh: direct, weft, HAProxy pair\n");
        out.push_str(&self.mesh.markdown());
        let _ = writeln!(out, "\n![latency distribution]({plot})\n");
        let _ = writeln!(
            out,
            "## Transparent interception: client and app in two namespaces, direct and weft\n"
        );
        match (&self.intercept, &self.intercept_skipped) {
            (Some(r), _) => out.push_str(&r.markdown()),
            (None, Some(why)) => {
                let _ = writeln!(out, "SKIPPED: {why}.");
            }
            (None, None) => {
                let _ = writeln!(out, "SKIPPED.");
            }
        }
        out.push('\n');
        let _ = writeln!(out, "## Identity service (`identity-bench`)\n");
        write_identity(&mut out, &self.identity);
        let _ = writeln!(out, "\n## Control plane (`policy-bench`)\n");
        write_policy(&mut out, &self.policy);
        out
    }
}

/// A number from `v[key]`, shown with `decimals`, or `?`.
fn num(v: &Value, key: &str, decimals: usize) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or("?".into(), |x| format!("{x:.decimals$}"))
}

fn write_identity(out: &mut String, v: &Value) {
    let _ = writeln!(
        out,
        "Certificates issued from CSRs over keep-alive HTTPS (TLS 1.3).\n\n\
         | mode | rate | certs/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for r in v["runs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r["mode"].as_str().unwrap_or("?"),
            r["target_rate"]
                .as_u64()
                .map_or("max".into(), |x| thousands(x as f64)),
            num(r, "certs_per_second", 0),
            num(r, "p50_ms", 2),
            num(r, "p99_ms", 2),
            num(r, "p999_ms", 2),
            num(r, "max_ms", 2),
            num(r, "errors", 0),
        );
    }
}

fn write_policy(out: &mut String, v: &Value) {
    let _ = writeln!(
        out,
        "Authorization decisions (the proxy's per-request check):\n\n\
         | scenario | rules | median ns | min ns | max ns |\n|---|---|---|---|---|"
    );
    for r in v["authz"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r["scenario"].as_str().unwrap_or("?"),
            num(r, "rules", 0),
            num(r, "median_ns", 1),
            num(r, "min_ns", 1),
            num(r, "max_ns", 1),
        );
    }
    let f = &v["fanout"];
    if f.is_object() {
        let _ = writeln!(
            out,
            "\nWatch fan-out: one change delivered to {} watchers, {} rounds, poll interval {} \
             ms: delivered {}, missed {}, p50 {} ms, p99 {} ms, max {} ms.",
            num(f, "watchers", 0),
            num(f, "rounds", 0),
            num(f, "poll_interval_ms", 0),
            num(f, "delivered", 0),
            num(f, "missed", 0),
            num(f, "p50_ms", 1),
            num(f, "p99_ms", 1),
            num(f, "max_ms", 1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_is_read_from_proc() {
        let m = Machine::read();
        assert!(m.cores > 0 && m.memory_gib > 0.0, "{m:?}");
        assert!(!m.kernel.is_empty() && m.cpu != "unknown", "{m:?}");
        assert!(m.line().contains(" cores of "));
    }

    #[test]
    fn the_plot_shows_the_median_run_of_each_scenario_at_the_headline_rate() {
        use crate::report::tests::run_at;
        let mut runs = vec![];
        for (repeat, p99) in [(0, 0.9), (1, 0.5), (2, 0.7)] {
            runs.push(run_at(
                repeat,
                Scenario::Weft,
                Some(1000),
                p99,
                1000.0,
                0.1,
                0.1,
            ));
            runs.push(run_at(
                repeat,
                Scenario::Weft,
                Some(500),
                9.0,
                500.0,
                0.1,
                0.1,
            ));
        }
        let median = median_run(&runs, Scenario::Weft, Mode::At(1000)).unwrap();
        assert_eq!((median.repeat, median.load.p99_ms), (2, 0.7));
        assert!(median_run(&runs, Scenario::Direct, Mode::At(1000)).is_none());
        // An even count takes the lower middle one.
        runs.retain(|r| r.repeat != 0);
        let median = median_run(&runs, Scenario::Weft, Mode::At(1000)).unwrap();
        assert_eq!(median.load.p99_ms, 0.5);
    }

    #[test]
    fn a_second_run_of_the_day_gets_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(free_stem(dir.path(), "2026-11-25"), "2026-11-25");
        std::fs::write(dir.path().join("2026-11-25.json"), "{}").unwrap();
        assert_eq!(free_stem(dir.path(), "2026-11-25"), "2026-11-25-2");
        std::fs::write(dir.path().join("2026-11-25-2.json"), "{}").unwrap();
        assert_eq!(free_stem(dir.path(), "2026-11-25"), "2026-11-25-3");
    }

    #[test]
    fn identity_and_policy_results_become_tables() {
        let identity = serde_json::json!({"bench": "identity", "runs": [
            {"mode": "closed-loop", "target_rate": null, "certs_per_second": 1234.4,
             "p50_ms": 1.0, "p99_ms": 2.5, "p999_ms": 3.0, "max_ms": 4.0, "errors": 0},
            {"mode": "open-loop", "target_rate": 2000, "certs_per_second": 1999.0,
             "p50_ms": 0.5, "p99_ms": 0.9, "p999_ms": 1.5, "max_ms": 2.0, "errors": 0}]});
        let mut out = String::new();
        write_identity(&mut out, &identity);
        assert!(
            out.contains("| closed-loop | max | 1234 | 1.00 | 2.50 | 3.00 | 4.00 | 0 |"),
            "{out}"
        );
        assert!(out.contains("| open-loop | 2,000 | 1999 |"), "{out}");

        let policy = serde_json::json!({"authz": [
            {"scenario": "allowed, last rule", "rules": 100, "median_ns": 812.34,
             "min_ns": 800.0, "max_ns": 900.0}],
            "fanout": {"watchers": 1000, "rounds": 5, "poll_interval_ms": 200,
             "delivered": 5000, "missed": 0, "p50_ms": 110.0, "p99_ms": 190.5, "max_ms": 201.0}});
        let mut out = String::new();
        write_policy(&mut out, &policy);
        assert!(
            out.contains("| allowed, last rule | 100 | 812.3 | 800.0 | 900.0 |"),
            "{out}"
        );
        assert!(
            out.contains("delivered 5000, missed 0, p50 110.0 ms, p99 190.5 ms"),
            "{out}"
        );
        // A part that did not run (`fanout: null`) is left out, not an error.
        let mut out = String::new();
        write_policy(&mut out, &serde_json::json!({"authz": [], "fanout": null}));
        assert!(!out.contains("fan-out"), "{out}");
    }
}
