//! The peer scenario of `weft-bench mesh`: the hop weft makes, made by what users would
//! otherwise run for service-to-service mTLS, two HAProxy instances (Debian package
//! `haproxy`):
//!
//! load generator → HAProxy `web` (plain HTTP/1.1 on loopback) → HTTP/1.1 over mTLS, TLS 1.3
//! only → HAProxy `api` (TLS frontend requiring and verifying a client certificate, TLS 1.3
//! only) → the same app as the other scenarios.
//!
//! Both get their certificates from the mesh's own identity service, with the tokens the mesh
//! minted for the `web` and `api` workloads (`weft cert issue`), so they present the same
//! SPIFFE identities as the weft proxies and verify each other against the same trust bundle.
//! Each runs one thread (`nbthread 1`), as each weft proxy runs one runtime thread; both keep
//! connections alive on both sides and share idle backend connections (`http-reuse always`),
//! as weft's pooled connection does. The configurations are written by [`web_config`] and
//! [`api_config`], in the mesh's temporary directory beside the logs.
//!
//! Before the runs, [`Peer::start`] checks that the hop really is mTLS over TLS 1.3: probes of
//! the api HAProxy's TLS port (plain text, TLS 1.3 without a client certificate and a TLS 1.2
//! hello get no answer; TLS 1.3 with web's certificate gets a 200 from a server proving api's
//! SPIFFE ID) and a 200 through the web HAProxy. After them, [`Peer::check`] compares the api
//! HAProxy's TLS frontend's 2xx count with the requests the load generator measured.
//!
//! The code: `config.rs` the two HAProxy configurations and the certificates they name;
//! this file the processes ([`Peer`]); `checks.rs` the probes of the hop and the statistics
//! read after the runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_runtime::child::Child;

use crate::Error;
use crate::mesh::{self, Mesh, free_addr, write_file};
use crate::report::{HAPROXY_API, HAPROXY_WEB, PeerCheck, Run, Scenario};

mod checks;
mod config;

pub use checks::{dechunk, frontend_2xx, tls12_client_hello};
pub use config::{API_FRONTEND, api_config, web_config};

use checks::{probe, stats_csv};
use config::issue;

/// The Debian package that provides `haproxy`.
pub const HAPROXY_PACKAGE: &str = "haproxy";
/// Where `haproxy` is looked for after `PATH` (Debian installs it in `/usr/sbin`, which is not
/// on a normal user's `PATH`).
const HAPROXY_PLACES: &[&str] = &["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"];

/// The `haproxy` binary: `explicit`, else `haproxy` on `PATH`, else `/usr/sbin/haproxy`.
pub fn find_haproxy(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return mesh::given_file("--haproxy", p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("haproxy"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(HAPROXY_PLACES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "haproxy is not installed (not on PATH, nor at {}): the mesh benchmark's peer \
                 scenario needs it; install the Debian package `{HAPROXY_PACKAGE}` \
                 (`apt-get install {HAPROXY_PACKAGE}`), pass --haproxy PATH, or skip the peer \
                 scenario with --no-peer",
                HAPROXY_PLACES.join(" or ")
            )
        })
}

/// `haproxy -v`'s first line, e.g. `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - …`.
pub fn haproxy_version(haproxy: &Path) -> Result<String, Error> {
    let o = Command::new(haproxy)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} -v: {e}", haproxy.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    match text.lines().next() {
        Some(line) if o.status.success() => Ok(line.trim().to_string()),
        _ => Err(format!(
            "{} -v failed: {}",
            haproxy.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
    }
}

/// The running HAProxy pair. Dropping it kills both.
#[derive(Debug)]
pub(crate) struct Peer {
    web: Child,
    api: Child,
    /// Where the load goes: the web HAProxy's plain HTTP port.
    pub(crate) web_addr: SocketAddr,
    stats: SocketAddr,
    /// `haproxy -v`'s first line.
    pub(crate) version: String,
    /// The probes' results, before the runs.
    probes: PeerCheck,
    /// The api frontend's 2xx count after the probes.
    frontend_2xx_before: f64,
}

impl Peer {
    /// Gets web's and api's certificates from the mesh's identity service, writes both
    /// configurations, starts both HAProxies, waits until a request through web answers 200,
    /// and probes the hop.
    pub(crate) fn start(mesh: &Mesh, weft: &Path, haproxy: &Path) -> Result<Self, Error> {
        let version = haproxy_version(haproxy)?;
        let d = mesh.dir();
        let web_certs = issue(weft, d, "web", mesh.identity_api)?;
        let api_certs = issue(weft, d, "api", mesh.identity_api)?;

        let (api_addr, stats, web_addr) = (free_addr()?, free_addr()?, free_addr()?);
        let api_cfg = d.join("haproxy-api.cfg");
        write_file(
            &api_cfg,
            &api_config(
                api_addr,
                mesh.app,
                stats,
                &api_certs.combined,
                &api_certs.bundle,
            ),
        )?;
        let web_cfg = d.join("haproxy-web.cfg");
        write_file(
            &web_cfg,
            &web_config(web_addr, api_addr, &web_certs.combined, &web_certs.bundle),
        )?;

        let start = |name: &'static str, cfg: &Path| {
            let cfg = cfg.display().to_string();
            // -db: in the foreground, not as a daemon, so it is our child and dies with us.
            mesh::spawn(d, name, haproxy, &["-db", "-f", &cfg], &[])
        };
        let mut api = start("haproxy-api", &api_cfg)?;
        api.wait_for_200(stats, "/stats", "localhost")?;
        let mut web = start("haproxy-web", &web_cfg)?;
        // The readiness wait is also the check that a request through web arrives.
        web.wait_for_200(web_addr, "/", &mesh.host())
            .map_err(|e| format!("{e}\nthe api HAProxy's log:\n{}", api.logs()))?;

        let probes = probe(api_addr, &web_certs, &mesh.host())?;
        // Fail before measuring anything: the pair would not be a peer of weft's hop.
        let failures = probes.probe_failures();
        if !failures.is_empty() {
            return Err(format!(
                "the HAProxy pair's hop is not mTLS over TLS 1.3 only: {}; the api HAProxy's \
                 log:\n{}\nthe web HAProxy's log:\n{}",
                failures.join("; "),
                api.logs(),
                web.logs()
            ));
        }
        let mut peer = Self {
            web,
            api,
            web_addr,
            stats,
            version,
            probes,
            frontend_2xx_before: 0.0,
        };
        peer.frontend_2xx_before = peer.frontend_2xx()?;
        eprintln!(
            "HAProxy pair up ({}): web {web_addr} → mTLS → api {api_addr}",
            peer.version
        );
        Ok(peer)
    }

    /// The two HAProxies, as the reports name them, and their process ids.
    pub(crate) fn pids(&self) -> Vec<(&'static str, u32)> {
        vec![(HAPROXY_WEB, self.web.pid()), (HAPROXY_API, self.api.pid())]
    }

    /// 2xx answers of the api HAProxy's TLS frontend so far.
    fn frontend_2xx(&self) -> Result<f64, Error> {
        let csv = match stats_csv(self.stats) {
            Some(csv) => csv,
            None => {
                return Err(format!(
                    "cannot read the api HAProxy's statistics at http://{}/stats;csv; its \
                     log:\n{}",
                    self.stats,
                    self.api.logs()
                ));
            }
        };
        frontend_2xx(&csv, API_FRONTEND).ok_or_else(|| {
            format!("the api HAProxy's statistics have no hrsp_2xx for {API_FRONTEND}: {csv}")
        })
    }

    /// The probes' results and whether the api frontend answered at least as many requests
    /// over the runs as the load generator measured through the pair.
    pub(crate) fn check(&self, runs: &[Run]) -> Result<PeerCheck, Error> {
        let peer_requests_measured = runs
            .iter()
            .filter(|r| r.scenario == Scenario::Peer)
            .map(|r| r.load.requests)
            .sum();
        Ok(PeerCheck {
            api_frontend_2xx: self.frontend_2xx()? - self.frontend_2xx_before,
            peer_requests_measured,
            ..self.probes.clone()
        }
        .conclude())
    }
}
