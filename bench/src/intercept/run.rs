//! Running the bench: the proxies' counters, the probes before the runs, and one measured run
//! (the load generator a process in the client namespace, the proxies' CPU over its window).

use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_runtime::testing::metric_sum;

use crate::Error;
use crate::load::{DRAIN, RunResult, Window};
use crate::mesh::{Load, MeshConfig, Pids, proxy_cpu, sample_cpu};
use crate::report::{API_PROXY, Run, Scenario, WEB_PROXY};

use super::netns::{Netns, fetch, spawn_in};
use super::{APP_IP, Bench, DIRECT_PORT, InterceptCheck, MESHED_PORT, PROXY_ADMIN};

/// How long before a run's start the load generator is started: time to exec and connect.
/// Its connections are made at once and stay quiet until the start, so this must stay well
/// under the proxy's protocol-detection timeout (`--detect-timeout`, 1 s): a client silent for
/// longer is taken for a server-speaks-first protocol and tunnelled as opaque TCP, and the
/// runs would measure that (the check after the runs would then fail: no HTTP requests
/// counted). A generator that starts late anyway still runs if it is late by less than half
/// the warm-up (see `Window::starting_at`).
const START_LEAD: Duration = Duration::from_millis(400);
/// Beyond its window and drain, how long a load generator may take to exit.
const LOAD_EXIT_GRACE: Duration = Duration::from_secs(15);
/// Requests of each probe before the runs.
const PROBE_REQUESTS: u64 = 20;

/// The SPIFFE IDs of the two workloads (`weft token create` in trust domain weft.local).
const WEB_ID: &str = "spiffe://weft.local/ns/default/sa/web";

/// Counters of the two proxies, read together.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Counters {
    /// web: outbound requests over mTLS to the app's service (`dst_service="default/api"`).
    pub client_outbound_mtls: f64,
    /// web: outbound requests sent unmeshed (plaintext to the original destination).
    pub client_unmeshed: f64,
    /// api: inbound requests over mTLS from web's identity.
    pub app_inbound_mtls: f64,
    /// api: inbound TLS handshakes from web's identity.
    pub app_inbound_handshakes: f64,
    /// Every request either proxy counted, in either direction.
    pub all_requests: f64,
    /// web: connections whose protocol detection gave up (client silent for the detection
    /// timeout) and were tunnelled as opaque TCP: no HTTP request of theirs is counted.
    pub client_detect_timeouts: f64,
}

impl Counters {
    pub(super) fn read(web: &str, api: &str) -> Self {
        let requests = "weft_proxy_requests_total";
        let peer = format!("peer=\"{WEB_ID}\"");
        Self {
            client_outbound_mtls: metric_sum(
                web,
                requests,
                &[
                    "direction=\"outbound\"",
                    "dst_service=\"default/api\"",
                    "tls=\"true\"",
                ],
            ),
            client_unmeshed: metric_sum(
                web,
                requests,
                &["direction=\"outbound\"", "dst_service=\"unmeshed\""],
            ),
            app_inbound_mtls: metric_sum(
                api,
                requests,
                &["direction=\"inbound\"", "tls=\"true\"", &peer],
            ),
            app_inbound_handshakes: metric_sum(
                api,
                "weft_proxy_tls_handshakes_total",
                &["direction=\"inbound\"", &peer],
            ),
            all_requests: metric_sum(web, requests, &[]) + metric_sum(api, requests, &[]),
            client_detect_timeouts: metric_sum(
                web,
                "weft_proxy_errors_total",
                &["direction=\"outbound\"", "reason=\"detect_timeout\""],
            ),
        }
    }

    /// `self - before`, counter by counter.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            client_outbound_mtls: self.client_outbound_mtls - before.client_outbound_mtls,
            client_unmeshed: self.client_unmeshed - before.client_unmeshed,
            app_inbound_mtls: self.app_inbound_mtls - before.app_inbound_mtls,
            app_inbound_handshakes: self.app_inbound_handshakes - before.app_inbound_handshakes,
            all_requests: self.all_requests - before.all_requests,
            client_detect_timeouts: self.client_detect_timeouts - before.client_detect_timeouts,
        }
    }
}
impl Bench {
    fn metrics(&self, ns: &Netns, what: &str) -> Result<String, Error> {
        match fetch(&self.exe, ns, PROXY_ADMIN, "/metrics") {
            Some((200, text)) => Ok(text),
            other => Err(format!(
                "cannot read {what}'s metrics at http://{PROXY_ADMIN}/metrics in {}: {other:?}",
                ns.name
            )),
        }
    }

    pub(super) fn counters(&self) -> Result<Counters, Error> {
        let web = self.metrics(&self.pair.client, "the web proxy")?;
        let api = self.metrics(&self.pair.app, "the api proxy")?;
        Ok(Counters::read(&web, &api))
    }

    /// Before the runs: [`PROBE_REQUESTS`] requests to the port behind the mesh must each
    /// show in web as outbound mTLS to api and in api as inbound mTLS from web (none
    /// unmeshed), and as many to the direct port in neither proxy.
    pub(super) fn probe(&self) -> Result<InterceptCheck, Error> {
        let send = |port: u16| -> Result<(), Error> {
            let addr = format!("{APP_IP}:{port}");
            for _ in 0..PROBE_REQUESTS {
                match fetch(&self.exe, &self.pair.client, &addr, "/") {
                    Some((200, _)) => {}
                    other => {
                        return Err(format!(
                            "probe of http://{addr}/ from the client namespace: {other:?}"
                        ));
                    }
                }
            }
            Ok(())
        };
        let c0 = self.counters()?;
        send(MESHED_PORT)?;
        let c1 = self.counters()?;
        send(DIRECT_PORT)?;
        let c2 = self.counters()?;
        Ok(InterceptCheck::from_probes(
            PROBE_REQUESTS,
            c1.since(&c0),
            c2.since(&c1),
            c2.app_inbound_handshakes,
        ))
    }

    /// One run of `scenario` loaded as `load`: the load generator as a process in the client
    /// namespace, the CPU time of the proxies on the path over the measured window.
    pub(super) fn measure(
        &self,
        cfg: &MeshConfig,
        repeat: usize,
        scenario: Scenario,
        load: Load,
        ticks: u64,
    ) -> Result<Run, Error> {
        let (port, proxies): (u16, Pids) = match scenario {
            Scenario::Direct => (DIRECT_PORT, vec![]),
            _ => (
                MESHED_PORT,
                vec![(WEB_PROXY, self.web.pid()), (API_PROXY, self.api.pid())],
            ),
        };
        let rate = match load {
            Load::Rate(r) | Load::NewConnection(r) => Some(r),
            Load::Max => None,
        };
        // The window is built from what the load generator is told, in whole milliseconds
        // (`--start-at-unix-ms`, `--warmup`, `--duration`), so the proxies' CPU is sampled over
        // the very window it measures, not one up to a millisecond off at each edge.
        let start = whole_ms(
            (SystemTime::now() + START_LEAD)
                .duration_since(UNIX_EPOCH)
                .map_err(|e| format!("the clock is before 1970: {e}"))?,
        );
        let (warmup, duration) = (whole_ms(cfg.warmup), whole_ms(cfg.duration));
        let window = Window::starting_at(UNIX_EPOCH + start, warmup, duration)
            .ok_or("the clock went back while a run was being set up")?;
        let start_ms = start.as_millis().to_string();
        let json = self.dir.path().join("run.json");
        let _ = std::fs::remove_file(&json);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut args: Vec<String> = vec![
            "load".into(),
            "--target".into(),
            format!("http://{APP_IP}:{port}/"),
            "--connections".into(),
            cfg.connections.to_string(),
            "--warmup".into(),
            ms(warmup),
            "--duration".into(),
            ms(duration),
            "--max-requests".into(),
            cfg.max_requests.to_string(),
            "--request-body-size".into(),
            cfg.request_body_size.to_string(),
            "--start-at-unix-ms".into(),
            start_ms,
            "--json".into(),
            json.display().to_string(),
        ];
        match rate {
            Some(r) => args.extend(["--rate".into(), r.to_string()]),
            None => args.push("--max".into()),
        }
        if cfg.http2 {
            args.push("--http2".into());
        }
        let sampler = sample_cpu(window, proxies.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_in(
            self.dir.path(),
            &self.pair.client,
            "load",
            &self.exe,
            &args,
            &[],
        )?;
        let limit = START_LEAD + cfg.warmup + cfg.duration + DRAIN + LOAD_EXIT_GRACE;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.exited() {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the load generator in {} did not finish within {limit:?}; its log:\n{}",
                    self.pair.client.name,
                    child.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let cpu = sampler
            .join()
            .map_err(|_| "the CPU sampling thread panicked".to_string())??;
        if !status.success() {
            return Err(format!(
                "the load generator in {} failed ({status}); its log:\n{}",
                self.pair.client.name,
                child.logs()
            ));
        }
        let text = std::fs::read_to_string(&json)
            .map_err(|e| format!("the load generator wrote no {}: {e}", json.display()))?;
        let result: RunResult =
            serde_json::from_str(&text).map_err(|e| format!("the load generator's JSON: {e}"))?;
        let run = Run {
            repeat,
            scenario,
            proxies: proxy_cpu(&proxies, cpu, ticks, result.requests),
            load: result,
        };
        eprintln!("{}", run.progress_line(cfg.repeat.max(1), (7, 12)));
        // Let the finished run's connections close before the next one.
        std::thread::sleep(Duration::from_millis(300));
        Ok(run)
    }
}

/// `d` cut to whole milliseconds: what the load generator's arguments carry.
pub(super) fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
