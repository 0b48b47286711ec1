//! The transparent-interception scenario (`weft-bench intercept`): the same app, the same
//! client, the same veth, reached directly and through both proxies, as other meshes are
//! compared (p50/p99/p99.9 added at fixed rates, the maximum throughput ratio, CPU per 1,000
//! requests of each proxy).
//!
//! Two network namespaces of its own, joined by a veth pair:
//!
//! - **app** (`10.78.0.2`): the app (`weft-bench app`, one process on two ports: `9080`
//!   behind the mesh, `9081` reached directly), `weft identity` and `weft policy` (listening
//!   on the veth address), `weft init --proxy-uid 2102 --skip-inbound-ports 9081,8443,8090`
//!   and the `api` proxy running as UID 2102 (`setpriv`);
//! - **client** (`10.78.0.1`): `weft init --proxy-uid 2102 --skip-outbound-ports 9081`, the
//!   `web` proxy as UID 2102, and the load generator (`weft-bench load`, this binary
//!   re-executed) as root with no proxy settings, sending to `http://10.78.0.2:<port>/`.
//!
//! So the **weft** path is load generator → iptables → web outbound (original destination,
//! control-plane address lookup) → mTLS HTTP/2 → iptables → api inbound → app, and the
//! **direct** path is the same client to the same app over the same veth, around both
//! proxies. Before the runs, probes show that the port behind the mesh is reached over mTLS
//! through both proxies and the direct port through neither; after them, the proxies' counters
//! must cover every request measured on the weft path. Either failing fails the benchmark.
//!
//! Each repeat runs open loop at each fixed rate, then closed loop, the two scenarios one after
//! the other (direct, weft, direct, weft, …). The load generator runs as a process in the
//! client namespace; it and this process agree on the run's window through a wall-clock start
//! time (`load --start-at-unix-ms`), so the proxies' CPU is sampled over the measured window
//! only. Every process is killed and both namespaces are deleted when the benchmark ends, on
//! error and panic too (drop guards). Needs root, `ip` (iproute2), `iptables` and `setpriv`
//! (util-linux).
//!
//! The code: `netns.rs` the namespaces and what runs in them; `start.rs` setting the bench up,
//! step by step; `run.rs` the probes, the counters and the measured runs; `report.rs` the
//! report.

use std::path::PathBuf;

use weft_runtime::child::Child;
use weft_runtime::testing::http_get;

use crate::Error;
use crate::mesh::{self, Load, MeshConfig, find_weft, rates_with};
use crate::procstat;
use crate::report::{Scenario, Settings};

mod netns;
pub mod report;
mod run;
mod start;

pub use report::{InterceptCheck, InterceptReport};
pub use run::Counters;

use netns::{Pair, remove_stale_namespaces};

/// The proxies' user, exempted from redirection by `weft init` (Linkerd's).
pub const PROXY_UID: u32 = 2102;
/// The veth pair's network and its two ends.
pub const CLIENT_IP: &str = "10.78.0.1";
pub const APP_IP: &str = "10.78.0.2";
/// The app's port behind the mesh (intercepted in both namespaces).
pub const MESHED_PORT: u16 = 9080;
/// The app's port reached directly: skipped by `weft init` inbound (app) and outbound (client).
pub const DIRECT_PORT: u16 = 9081;
/// The identity service and the control plane, on the app namespace's veth address (skipped
/// inbound, so the client namespace's proxy reaches them).
const IDENTITY_PORT: u16 = 8443;
const POLICY_PORT: u16 = 8090;
/// Admin endpoints, on each namespace's loopback.
const IDENTITY_ADMIN: &str = "127.0.0.1:9990";
const POLICY_ADMIN: &str = "127.0.0.1:9991";
/// The proxy's default admin address (`weft init --admin-port` default).
const PROXY_ADMIN: &str = "127.0.0.1:4191";
/// Namespace names start with this, then `c-`/`a-` and the benchmark's PID.
const NS_PREFIX: &str = "weft-bench";

/// Whether this process runs as root (effective UID 0, from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective UID (the second field of `Uid:`) in the text of `/proc/<pid>/status`.
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Root and the tools, or an error saying what is missing and what to install.
pub fn preflight() -> Result<(), Error> {
    if !is_root() {
        return Err(
            "weft-bench intercept creates network namespaces and iptables rules in them: run \
             it as root (e.g. `sudo target/release/weft-bench intercept`)"
                .into(),
        );
    }
    let missing: Vec<&str> = ["ip", "iptables", "iptables-restore", "setpriv"]
        .into_iter()
        .filter(|t| on_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "weft-bench intercept needs {} on PATH: install the Debian packages iproute2, \
             iptables and util-linux (.ci/run does)",
            missing.join(", ")
        ));
    }
    Ok(())
}

/// `tool` in a directory of `PATH`, where the benchmark (and `weft init`) run it from.
fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Sets up both namespaces, proves the two paths are what they claim, runs every scenario at
/// every rate and at the maximum `repeat` times, proves the weft runs went over mTLS, and
/// reports. Tears everything down whatever happens.
pub fn run(cfg: &MeshConfig) -> Result<InterceptReport, Error> {
    preflight()?;
    let rates = rates_with(&cfg.rates, cfg.rate)?;
    let weft = find_weft(cfg.weft.as_deref())?;
    remove_stale_namespaces();
    eprintln!(
        "starting the interception bench: namespaces {NS_PREFIX}-c-{pid} ({CLIENT_IP}) and \
         {NS_PREFIX}-a-{pid} ({APP_IP}) ({})",
        weft.display(),
        pid = std::process::id()
    );
    let bench = Bench::start(&weft, cfg)?;
    let mut check = bench.probe()?;
    if !check.probe_ok {
        return Err(format!(
            "the paths are not what they claim, nothing measured: {}",
            check.detail.join("; ")
        ));
    }
    let before = bench.counters()?;

    let modes: Vec<Load> = rates
        .iter()
        .map(|&r| Load::Rate(r))
        .chain([Load::Max])
        .collect();
    let ticks = procstat::clock_ticks();
    let mut runs = Vec::new();
    for repeat in 0..cfg.repeat.max(1) {
        for &load in &modes {
            for scenario in [Scenario::Direct, Scenario::Weft] {
                runs.push(bench.measure(cfg, repeat, scenario, load, ticks)?);
            }
        }
    }
    let after = bench.counters()?;
    check.conclude_runs(&before, &after, &runs);
    let settings = Settings {
        rates,
        ..mesh::settings(cfg, ticks, &weft)
    };
    Ok(InterceptReport::new(settings, runs, check))
}

/// The running bench. Fields drop in order: every process is killed, then the namespaces are
/// deleted, then the directory (tokens, CA, resources, logs) is removed.
#[derive(Debug)]
struct Bench {
    web: Child,
    api: Child,
    _policy: Child,
    _identity: Child,
    _app: Child,
    pair: Pair,
    /// This binary, re-executed in the namespaces as the app, the load generator and `fetch`.
    exe: PathBuf,
    dir: tempfile::TempDir,
}

/// `weft-bench fetch ADDR PATH`: one `GET` (with `Connection: close`), printed as the status on
/// the first line and the body after it; `Err` when nothing answered.
pub fn fetch_main(addr: &str, path: &str) -> Result<String, Error> {
    let sock = addr
        .parse()
        .map_err(|e| format!("{addr} is not an IP address and port: {e}"))?;
    let (status, body) = http_get(sock, path, addr)
        .ok_or_else(|| format!("nothing answered GET http://{addr}{path}"))?;
    Ok(format!("{status}\n{body}"))
}

#[cfg(test)]
mod tests;
