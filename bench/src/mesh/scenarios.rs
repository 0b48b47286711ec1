//! The scenarios the mesh benchmark runs: where each one's load goes and which proxies are on
//! its path, one measured run, and the settings reported.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::load::{self, LoadConfig, Window};
use crate::peer::Peer;
use crate::procstat;
use crate::report::{Run, Scenario, Settings};

use super::proxies::{proxy_cpu, sample_cpu};
use super::start::{ExtraResources, Mesh};
use super::{Load, MeshConfig, Pids, find_weft};

/// A running mesh and the load generator's runtime: what every scenario measures with.
#[derive(Debug)]
pub(crate) struct Harness {
    /// The HAProxy pair of the peer scenario, if started; declared before `mesh` so it is
    /// killed before the mesh's directory (its configuration and logs) goes.
    pub(crate) peer: Option<Peer>,
    pub(crate) mesh: Mesh,
    rt: tokio::runtime::Runtime,
    pub(super) ticks: u64,
    pub(super) weft: PathBuf,
}

impl Harness {
    /// Starts the mesh (with `extra` resource files, see [`Mesh::start`]) and the load
    /// generator's runtime.
    pub(crate) fn start(cfg: &MeshConfig, extra: ExtraResources) -> Result<Self, Error> {
        let weft = find_weft(cfg.weft.as_deref())?;
        eprintln!("starting the mesh ({})", weft.display());
        let mesh = Mesh::start(&weft, cfg.body_size, extra, &[])?;
        // The load generator gets one worker thread, in every scenario alike: the 2 cores
        // are shared by it, the app and the two proxies, and the same generator on every
        // path keeps the ratios fair.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the load generator's runtime: {e}"))?;
        Ok(Self {
            peer: None,
            mesh,
            rt,
            ticks: procstat::clock_ticks(),
            weft,
        })
    }

    /// Where the load of `scenario` goes, and the proxies on its path.
    fn path(&self, scenario: Scenario) -> Result<(SocketAddr, Pids), Error> {
        let mesh = &self.mesh;
        Ok(match scenario {
            Scenario::Direct => (mesh.app, vec![]),
            Scenario::Weft | Scenario::Minimal | Scenario::Full => {
                (mesh.web.outbound, mesh.proxy_pids())
            }
            Scenario::Peer => {
                let peer = self
                    .peer
                    .as_ref()
                    .ok_or("the peer scenario without the HAProxy pair started")?;
                (peer.web_addr, peer.pids())
            }
        })
    }

    /// The address of the proxy the load generator talks to in `scenario`; `None` for the
    /// direct path.
    pub(super) fn front(&self, scenario: Scenario) -> Option<SocketAddr> {
        match self.path(scenario) {
            Ok((addr, proxies)) if !proxies.is_empty() => Some(addr),
            _ => None,
        }
    }

    /// One run of `scenario` loaded as `load`, with the CPU time of the proxies on its path
    /// over the measured window.
    pub(crate) fn measure(
        &self,
        cfg: &MeshConfig,
        repeat: usize,
        scenario: Scenario,
        load: Load,
    ) -> Result<Run, Error> {
        let mesh = &self.mesh;
        let (target, proxies) = self.path(scenario)?;
        let (rate, new_connection) = match load {
            Load::Rate(r) => (Some(r), false),
            Load::Max => (None, false),
            Load::NewConnection(r) => (Some(r), true),
        };
        let load = LoadConfig {
            target: format!("http://{target}/")
                .parse()
                .map_err(|e| format!("bad target {target}: {e}"))?,
            // The same request on every path; the app ignores the Host header.
            host: Some(mesh.host()),
            connections: cfg.connections,
            rate,
            warmup: cfg.warmup,
            duration: cfg.duration,
            max_requests: cfg.max_requests,
            http2: cfg.http2 && !new_connection,
            new_connection,
            request_body_size: cfg.request_body_size,
        };
        let window = Window::after_warmup(cfg.warmup, cfg.duration);
        let sampler = sample_cpu(window, proxies.clone());
        let result = self.rt.block_on(load::run(&load, window))?;
        let cpu = sampler
            .join()
            .map_err(|_| "the CPU sampling thread panicked".to_string())??;
        let run = Run {
            repeat,
            scenario,
            proxies: proxy_cpu(&proxies, cpu, self.ticks, result.requests),
            load: result,
        };
        eprintln!("{}", run.progress_line(cfg.repeat.max(1), (12, 14)));
        // Let the finished run's connections close before the next one.
        std::thread::sleep(Duration::from_millis(300));
        Ok(run)
    }

    /// The settings, as reported.
    pub(crate) fn settings(&self, cfg: &MeshConfig) -> Settings {
        Settings {
            haproxy: self.peer.as_ref().map(|p| p.version.clone()),
            ..settings(cfg, self.ticks, &self.weft)
        }
    }
}

/// The settings of `cfg` as reported, for a benchmark run with `weft` on a machine of
/// `clock_ticks`: the headline rate only, and no peer, connection-setup or idle-connection
/// runs; each benchmark fills in what else it ran.
pub(crate) fn settings(cfg: &MeshConfig, clock_ticks: u64, weft: &Path) -> Settings {
    Settings {
        rate: cfg.rate,
        rates: vec![cfg.rate],
        quick: cfg.quick,
        connections: cfg.connections,
        warmup_seconds: cfg.warmup.as_secs_f64(),
        duration_seconds: cfg.duration.as_secs_f64(),
        repeat: cfg.repeat.max(1),
        body_size: cfg.body_size,
        request_body_size: cfg.request_body_size,
        http2: cfg.http2,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        clock_ticks,
        weft: weft.display().to_string(),
        haproxy: None,
        setup_rate: None,
        idle_connections: 0,
    }
}
