//! The mesh scenario: the same load, in one invocation, on three paths to the same app:
//!
//! - direct: load generator → app;
//! - weft: load generator → `web` proxy outbound (HTTP/1.1, `Host: api.default:<port>`) →
//!   pooled HTTP/2 over mTLS → `api` proxy inbound → app;
//! - peer: load generator → HAProxy `web` → HTTP/1.1 over mTLS → HAProxy `api` → app, with
//!   the same certificates (see the `peer` module; skipped with `--no-peer`).
//!
//! Every component is its own process, as an operator runs them: the app (`weft-bench app`,
//! this binary re-executed), `weft identity`, `weft policy` with a resource directory, two
//! proxies (`weft-proxy`, else `weft proxy`) and two HAProxies, in a temporary directory, on
//! loopback. Each repeat measures open loop at each fixed rate, then closed loop (the maximum
//! rate), and at each of those runs the scenarios one after the other (A B C A B C …), so
//! drift weighs on all of them alike and the runs compared ran next to each other. The
//! proxies' CPU time is sampled at the edges of each measured window; their memory at rest
//! before the runs and at the end. Every process is killed when the benchmark ends, on error
//! too.
//!
//! The code: `start.rs` the mesh it starts (its processes, their files, the calls to them);
//! `scenarios.rs` the scenarios it runs ([`Harness`]: where each one's load goes, one measured
//! run, the settings reported); `proxies.rs` measuring the proxies (CPU over a window and at
//! rest, memory with idle connections, the mTLS check).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::peer::{self, Peer};
use crate::procstat;
use crate::report::{MeshReport, ProxyFootprint, Scenario};

mod proxies;
mod scenarios;
pub(crate) mod start;

pub(crate) use proxies::{proxy_cpu, sample_cpu};
pub(crate) use scenarios::{Harness, settings};
pub(crate) use start::{
    Mesh, Proxy, WORKLOADS, app_args, as_strs, free_addr, proxy_command, server_args, spawn, token,
    write_file,
};
pub use start::{POLICY_NAME, RESOURCES_FILE, WEB_ID, resources_yaml, services_yaml};

use proxies::at_rest;

/// How long a process may take to become ready, and the mesh to route the first request.
pub(crate) const READY_TIMEOUT: Duration = weft_runtime::testing::READY_TIMEOUT;
/// At most this many fixed rates in one invocation.
pub const MAX_RATES: usize = 8;

/// Settings of `weft-bench mesh` (and `stack`, which uses `rate` only).
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// The headline rate: the targets are judged at it; one of `rates`.
    pub rate: u64,
    /// The fixed rates of the open-loop runs, increasing (see [`rates_with`]).
    pub rates: Vec<u64>,
    /// `--quick`: short runs for a harness check, reported as such.
    pub quick: bool,
    /// Skip the HAProxy pair.
    pub no_peer: bool,
    /// The `haproxy` binary [default: on `PATH`, else `/usr/sbin/haproxy`].
    pub haproxy: Option<PathBuf>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub repeat: usize,
    pub body_size: usize,
    /// Bytes in each request body (0: `GET`s).
    pub request_body_size: usize,
    pub max_requests: u64,
    pub http2: bool,
    /// The `weft` binary [default: `weft` beside this binary].
    pub weft: Option<PathBuf>,
    /// The rate of the runs with a new connection per request (the connection-setup cost);
    /// `None`: not measured.
    pub setup_rate: Option<u64>,
    /// Idle client connections held open to each front proxy while the proxies' memory is
    /// read, after the runs; 0: not measured.
    pub idle_connections: usize,
}

/// How a run loads its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Open loop at a fixed rate over keep-alive connections.
    Rate(u64),
    /// Closed loop: the maximum rate.
    Max,
    /// Open loop at a fixed rate, each request on a new connection.
    NewConnection(u64),
}

/// The `weft` binary: `explicit`, else `weft` in the directory of this binary (both are
/// built into `target/release/`).
pub fn find_weft(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return given_file("--weft", p);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let beside = exe.with_file_name("weft");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(format!(
        "no weft binary at {}: run `cargo build --release -p weft` (with the same \
         CARGO_TARGET_DIR as this benchmark), or pass --weft PATH",
        beside.display()
    ))
}

/// `p`, given on the command line as `flag`, when it is a file; else an error saying so.
pub(crate) fn given_file(flag: &str, p: &Path) -> Result<PathBuf, Error> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(format!("{flag} {}: no such file", p.display()))
    }
}

/// `rates` with `headline` added, increasing, each once; an error for a zero rate or more
/// than [`MAX_RATES`].
pub fn rates_with(rates: &[u64], headline: u64) -> Result<Vec<u64>, Error> {
    let mut all: Vec<u64> = rates.iter().copied().chain([headline]).collect();
    if all.contains(&0) {
        return Err("a rate of 0 requests per second cannot be measured".into());
    }
    all.sort_unstable();
    all.dedup();
    if all.len() > MAX_RATES {
        return Err(format!(
            "{} rates ({all:?}): at most {MAX_RATES} in one invocation",
            all.len()
        ));
    }
    Ok(all)
}

/// Starts the mesh and (unless `no_peer`) the HAProxy pair, runs every scenario at every
/// rate and at the maximum `repeat` times, and reports.
pub fn run(cfg: &MeshConfig) -> Result<MeshReport, Error> {
    let rates = rates_with(&cfg.rates, cfg.rate)?;
    // Before anything starts: a missing haproxy is an error that says what to install.
    let haproxy = if cfg.no_peer {
        None
    } else {
        Some(peer::find_haproxy(cfg.haproxy.as_deref())?)
    };
    let mut h = Harness::start(cfg, |_| vec![])?;
    if let Some(haproxy) = haproxy {
        h.peer = Some(Peer::start(&h.mesh, &h.weft, &haproxy)?);
    }
    let inbound_before = h.mesh.inbound_mtls_requests()?;
    let mut proxies: Vec<(Scenario, &'static str, u32)> = h
        .mesh
        .proxy_pids()
        .into_iter()
        .map(|(name, pid)| (Scenario::Weft, name, pid))
        .collect();
    let mut scenarios = vec![Scenario::Direct, Scenario::Weft];
    if let Some(p) = &h.peer {
        proxies.extend(
            p.pids()
                .into_iter()
                .map(|(name, pid)| (Scenario::Peer, name, pid)),
        );
        scenarios.push(Scenario::Peer);
    }
    let pids: Vec<(&'static str, u32)> = proxies.iter().map(|(_, n, p)| (*n, *p)).collect();
    let at_rest = at_rest(&pids, h.ticks)?;

    let modes: Vec<Load> = rates
        .iter()
        .map(|&r| Load::Rate(r))
        .chain([Load::Max])
        .chain(cfg.setup_rate.map(Load::NewConnection))
        .collect();
    let mut runs = Vec::new();
    for repeat in 0..cfg.repeat.max(1) {
        for &load in &modes {
            for &scenario in &scenarios {
                runs.push(h.measure(cfg, repeat, scenario, load)?);
            }
        }
    }

    let mut footprints = at_rest
        .into_iter()
        .zip(&proxies)
        .map(
            |((idle_cpu_percent, rss_before_kib), (scenario, name, pid))| {
                Ok(ProxyFootprint {
                    proxy: name.to_string(),
                    scenario: *scenario,
                    idle_cpu_percent,
                    rss_before_kib,
                    memory: procstat::memory(*pid)?,
                    idle_connections: None,
                })
            },
        )
        .collect::<Result<Vec<_>, Error>>()?;
    if cfg.idle_connections > 0 {
        for &scenario in &scenarios {
            let Some(front) = h.front(scenario) else {
                continue;
            };
            let rss =
                h.rss_with_idle_connections(front, cfg.idle_connections, &proxies, scenario)?;
            for (f, rss) in footprints.iter_mut().zip(rss) {
                if rss.is_some() {
                    f.idle_connections = rss;
                }
            }
        }
    }
    let mtls = h.mesh.mtls_check(inbound_before, &runs)?;
    let peer_check = h.peer.as_ref().map(|p| p.check(&runs)).transpose()?;
    let mut settings = h.settings(cfg);
    settings.rates = rates;
    settings.setup_rate = cfg.setup_rate;
    settings.idle_connections = cfg.idle_connections;
    Ok(MeshReport::new(
        settings, runs, footprints, mtls, peer_check,
    ))
}

/// Processes by the name the report gives them, and their PIDs.
pub(crate) type Pids = Vec<(&'static str, u32)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_rate_is_one_of_the_rates() {
        assert_eq!(
            rates_with(&[2000, 500, 1000], 1000),
            Ok(vec![500, 1000, 2000])
        );
        assert_eq!(rates_with(&[500, 2000], 1000), Ok(vec![500, 1000, 2000]));
        assert_eq!(rates_with(&[], 1000), Ok(vec![1000]));
        assert_eq!(rates_with(&[500, 500], 500), Ok(vec![500]));
        assert!(rates_with(&[0, 500], 1000).is_err());
        assert!(rates_with(&[500], 0).is_err());
        let many: Vec<u64> = (1..=MAX_RATES as u64).map(|r| r * 100).collect();
        assert!(rates_with(&many, 100).is_ok());
        assert!(rates_with(&many, 50).unwrap_err().contains("at most"));
    }
}
