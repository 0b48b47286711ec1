//! Measuring the proxies: their CPU time over a run's measured window and at rest, their
//! memory with idle client connections open, and the check that the runs through the mesh went
//! over mTLS (the api proxy's counters).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_runtime::testing::metric_sum;

use crate::Error;
use crate::load::Window;
use crate::procstat;
use crate::report::{IdleConnectionsRss, MtlsCheck, ProxyCpu, Run, Scenario};

use super::Pids;
use super::scenarios::Harness;
use super::start::{Mesh, get_200};

/// How long the proxies get to settle after idle connections open or close.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// How long the proxies' CPU use at rest is sampled before the runs.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

impl Harness {
    /// The resident memory of each of `proxies` that is on `scenario`'s path (`None` for the
    /// others) just before and with `n` idle keep-alive client connections open to `front`
    /// (each after one answered request).
    pub(super) fn rss_with_idle_connections(
        &self,
        front: SocketAddr,
        n: usize,
        proxies: &[(Scenario, &'static str, u32)],
        scenario: Scenario,
    ) -> Result<Vec<Option<IdleConnectionsRss>>, Error> {
        let rss = || -> Result<Vec<Option<u64>>, Error> {
            proxies
                .iter()
                .map(|(s, _, pid)| {
                    (*s == scenario)
                        .then(|| procstat::memory(*pid).map(|m| m.rss_kib))
                        .transpose()
                })
                .collect()
        };
        eprintln!("{n} idle connections to {}", scenario.label());
        let before = rss()?;
        let conns = crate::idle::open(front, &self.mesh.host(), n)?;
        // Let the proxies finish with the requests (pool, buffers) before reading.
        std::thread::sleep(IDLE_SETTLE);
        let with = rss()?;
        drop(conns);
        std::thread::sleep(IDLE_SETTLE);
        Ok(before
            .into_iter()
            .zip(with)
            .map(|(b, w)| {
                Some(IdleConnectionsRss {
                    before_kib: b?,
                    with_kib: w?,
                })
            })
            .collect())
    }
}

impl Mesh {
    fn api_metrics(&self) -> Result<String, Error> {
        get_200(self.api.admin, "/metrics", "the api proxy's metrics")
    }

    pub(crate) fn web_metrics(&self) -> Result<String, Error> {
        get_200(self.web.admin, "/metrics", "the web proxy's metrics")
    }

    /// TLS handshakes the api proxy completed inbound with web's identity.
    fn inbound_handshakes_from_web(&self) -> Result<f64, Error> {
        Ok(metric_sum(
            &self.api_metrics()?,
            "weft_proxy_tls_handshakes_total",
            &[
                "direction=\"inbound\"",
                "peer=\"spiffe://weft.local/ns/default/sa/web\"",
            ],
        ))
    }

    /// Requests the api proxy took in over mTLS so far.
    pub(crate) fn inbound_mtls_requests(&self) -> Result<f64, Error> {
        Ok(metric_sum(
            &self.api_metrics()?,
            "weft_proxy_requests_total",
            &["direction=\"inbound\"", "tls=\"true\""],
        ))
    }

    /// Whether the runs through the mesh went over mTLS: api counted handshakes from web,
    /// and at least as many inbound mTLS requests since `inbound_before` as the load
    /// generator measured through the mesh.
    pub(crate) fn mtls_check(&self, inbound_before: f64, runs: &[Run]) -> Result<MtlsCheck, Error> {
        let weft_requests_measured = runs
            .iter()
            .filter(|r| {
                matches!(
                    r.scenario,
                    Scenario::Weft | Scenario::Minimal | Scenario::Full
                )
            })
            .map(|r| r.load.requests)
            .sum();
        let inbound_handshakes = self.inbound_handshakes_from_web()?;
        let inbound_mtls_requests = self.inbound_mtls_requests()? - inbound_before;
        Ok(MtlsCheck {
            inbound_handshakes,
            inbound_mtls_requests,
            weft_requests_measured,
            ok: inbound_handshakes > 0.0
                && weft_requests_measured > 0
                && inbound_mtls_requests >= weft_requests_measured as f64,
        })
    }
}

/// CPU ticks each of `pids` used between the window's start and its end, sampled by a
/// thread of its own so the load generator's runtime is not disturbed.
pub(crate) fn sample_cpu(
    window: Window,
    pids: Vec<(&'static str, u32)>,
) -> std::thread::JoinHandle<Result<Vec<u64>, Error>> {
    std::thread::spawn(move || {
        let sample = |at: Instant| {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            cpu_ticks(&pids)
        };
        let before = sample(window.measure_from)?;
        let after = sample(window.deadline)?;
        Ok(after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect())
    })
}

/// Each of `proxies`' CPU time over a run, from the clock ticks it used there (as
/// [`sample_cpu`] returns them, in the same order; `clock_ticks` a second): in seconds, and
/// per 1,000 of the `requests` the run measured.
pub(crate) fn proxy_cpu(
    proxies: &Pids,
    ticks_used: Vec<u64>,
    clock_ticks: u64,
    requests: u64,
) -> Vec<ProxyCpu> {
    proxies
        .iter()
        .zip(ticks_used)
        .map(|((name, _), ticks_used)| {
            let cpu_seconds = ticks_used as f64 / clock_ticks as f64;
            ProxyCpu {
                proxy: name.to_string(),
                cpu_seconds,
                cpu_seconds_per_1000_requests: cpu_seconds * 1000.0 / requests.max(1) as f64,
            }
        })
        .collect()
}

/// Each of `pids`' CPU use at rest (percent of a core over `IDLE_WINDOW`, all sampled over
/// the same window) and resident memory, before any load.
pub(super) fn at_rest(pids: &[(&'static str, u32)], ticks: u64) -> Result<Vec<(f64, u64)>, Error> {
    let before = cpu_ticks(pids)?;
    std::thread::sleep(IDLE_WINDOW);
    let after = cpu_ticks(pids)?;
    pids.iter()
        .zip(before.iter().zip(&after))
        .map(|((_, pid), (b, a))| {
            let percent =
                a.saturating_sub(*b) as f64 / ticks as f64 / IDLE_WINDOW.as_secs_f64() * 100.0;
            Ok((percent, procstat::memory(*pid)?.rss_kib))
        })
        .collect()
}

/// CPU ticks used so far by each of `pids`.
fn cpu_ticks(pids: &[(&'static str, u32)]) -> Result<Vec<u64>, Error> {
    pids.iter()
        .map(|(_, pid)| procstat::cpu_ticks(*pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{API_PROXY, WEB_PROXY};

    #[test]
    fn a_proxys_cpu_is_its_ticks_in_seconds_and_per_1000_requests() {
        let proxies: Pids = vec![(WEB_PROXY, 11), (API_PROXY, 12)];
        // 100 ticks a second: 2.5 s and 1 s over 5,000 requests.
        let cpu = proxy_cpu(&proxies, vec![250, 100], 100, 5000);
        let got: Vec<(&str, f64, f64)> = cpu
            .iter()
            .map(|p| {
                (
                    p.proxy.as_str(),
                    p.cpu_seconds,
                    p.cpu_seconds_per_1000_requests,
                )
            })
            .collect();
        assert_eq!(got, [(WEB_PROXY, 2.5, 0.5), (API_PROXY, 1.0, 0.2)]);
        // A run that measured no request does not divide by zero.
        assert_eq!(
            proxy_cpu(&proxies, vec![10, 0], 100, 0)[0].cpu_seconds_per_1000_requests,
            100.0
        );
    }
}
