//! What the dashboard shows, gathered every interval: a scrape of every proxy's `/metrics` and
//! `/denials`, kept for the window; from them the golden signals `weft stat` and `weft routes`
//! compute, the service graph, the recent denials, and a short history of each row's signals
//! for the charts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use weft_policy::registry::Workload;
use weft_proxy::authz::denials::{Denial, DenialsPage};

use crate::stat::compute::{self, EdgeRow, RouteRow, Scrape, ServiceRow, Signals};
use crate::stat::prom;

/// How far back the charts go.
pub const HISTORY: Duration = Duration::from_secs(5 * 60);
/// The interval each chart point's rates are computed over (shorter than the window, so the
/// charts move, longer than one scrape, so they don't jitter).
const POINT_INTERVAL: Duration = Duration::from_secs(10);
/// How many denials the dashboard lists.
const MAX_DENIALS: usize = 50;

/// Where the proxies are.
#[derive(Debug, Clone)]
pub enum Source {
    /// Every workload the control plane at this admin address lists.
    ControlPlane(String),
    /// These proxy admin addresses.
    Proxies(Vec<String>),
}

/// One proxy, as the last round saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    /// Its admin address.
    pub target: String,
    /// `namespace/service` of its workload, if the control plane knows it.
    pub service: Option<String>,
    /// Why it could not be scraped.
    pub error: Option<String>,
}

/// A call from one service to another, as the called proxy saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    /// The calling services (`namespace/service`) with that identity, or the identity itself
    /// when no registered workload has it.
    pub from: String,
    /// The service called.
    pub to: String,
    /// The caller's identity, proved by mTLS (`unauthenticated` for plaintext).
    pub identity: String,
    /// Requests the called service's policy refused in the window.
    pub denied: f64,
    #[serde(flatten)]
    pub signals: Signals,
}

/// A denied request (as a proxy's `/denials` lists it) and where.
#[derive(Debug, Clone, Serialize)]
pub struct DeniedRequest {
    #[serde(flatten)]
    pub denial: Denial,
    /// The service whose proxy refused it.
    pub service: Option<String>,
    /// The services of the peer's identity, if known.
    pub from: Option<String>,
}

/// A chart: one row's signals over time.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// `service` or `route`.
    pub kind: &'static str,
    /// The service, or `service route rule` for a route.
    pub key: String,
    /// `[unix ms, rps, success rate, p99 ms]` (the last two `null` without requests).
    pub points: VecDeque<(u64, f64, Option<f64>, Option<f64>)>,
}

/// Everything the dashboard shows, as of one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    /// When, in Unix ms (0: nothing gathered yet).
    pub updated_ms: u64,
    /// The seconds the rates are over (the window, or less right after start).
    pub window_seconds: f64,
    /// Why the proxies could not be listed, if they could not.
    pub error: Option<String>,
    pub proxies: Vec<ProxyStatus>,
    /// As `weft stat -o json`.
    pub services: Vec<ServiceRow>,
    /// As `weft routes -o json`.
    pub routes: Vec<RouteRow>,
    /// As `weft routes --backends -o json`.
    pub backends: Vec<RouteRow>,
    /// Every service known, called or not.
    pub nodes: Vec<String>,
    pub edges: Vec<Edge>,
    /// Denials since the proxies started, in all.
    pub denied_total: u64,
    /// The most recent, newest first.
    pub denials: Vec<DeniedRequest>,
    pub series: Vec<Series>,
}

/// The dashboard's memory: scrapes within the window and the charts.
#[derive(Debug)]
pub struct Collector {
    source: Source,
    window: Duration,
    scrapes: VecDeque<Scrape>,
    series: BTreeMap<(&'static str, String), Series>,
}

/// One round's inputs, gathered from the network.
#[derive(Debug, Default)]
pub struct Round {
    pub workloads: Vec<Workload>,
    pub error: Option<String>,
    pub metrics: BTreeMap<String, Vec<prom::Sample>>,
    pub denials: BTreeMap<String, DenialsPage>,
    pub proxies: Vec<ProxyStatus>,
}

/// The wall clock now, in Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Collector {
    pub fn new(source: Source, window: Duration) -> Self {
        Self {
            source,
            window,
            scrapes: VecDeque::new(),
            series: BTreeMap::new(),
        }
    }

    /// Asks the control plane for the proxies (if it is the source) and scrapes each; a
    /// proxy or control plane that does not answer is reported, not fatal.
    pub fn gather(&self) -> Round {
        let mut round = Round::default();
        let targets = match &self.source {
            Source::Proxies(p) => p.clone(),
            Source::ControlPlane(admin) => match crate::stat::workloads(admin) {
                Ok(w) => {
                    round.workloads = w;
                    crate::stat::metrics_addrs(&round.workloads)
                }
                Err(e) => {
                    round.error = Some(e);
                    // Keep scraping the proxies last seen: they may well be up.
                    self.scrapes
                        .back()
                        .map(|s| s.targets.keys().cloned().collect())
                        .unwrap_or_default()
                }
            },
        };
        // Every proxy at once, so one that hangs costs a round its timeout, not one each.
        let scraped: Vec<_> = std::thread::scope(|scope| {
            let jobs: Vec<_> = targets
                .into_iter()
                .map(|t| scope.spawn(move || scrape(t)))
                .collect();
            jobs.into_iter().filter_map(|j| j.join().ok()).collect()
        });
        for (t, result) in scraped {
            let service = round
                .workloads
                .iter()
                .find(|w| w.metrics.is_some_and(|m| m.to_string() == t))
                .map(|w| format!("{}/{}", w.namespace, w.service));
            let error = match result {
                Ok((samples, denials)) => {
                    round.metrics.insert(t.clone(), samples);
                    if let Some(page) = denials {
                        round.denials.insert(t.clone(), page);
                    }
                    None
                }
                Err(e) => Some(e),
            };
            round.proxies.push(ProxyStatus {
                target: t,
                service,
                error,
            });
        }
        round
    }

    /// Takes in a round gathered at `at` (`now_ms` on the wall clock) and computes what to show.
    pub fn update(&mut self, round: Round, at: Instant, now_ms: u64) -> Overview {
        self.scrapes.push_back(Scrape {
            at,
            targets: round.metrics,
        });
        // Keep the newest scrape at least a window old, as the window's start.
        while self.scrapes.len() > 2 && at.duration_since(self.scrapes[1].at) >= self.window {
            self.scrapes.pop_front();
        }
        let (Some(first), Some(last)) = (self.scrapes.front(), self.scrapes.back()) else {
            return Overview::default();
        };
        let seconds = last.at.duration_since(first.at).as_secs_f64();
        let inc = compute::increases(first, last);
        let identities = identity_services(&round.workloads);
        let services = compute::services(&inc, seconds);
        let routes = compute::routes(&inc, seconds, None, false);
        let backends = compute::routes(&inc, seconds, None, true);
        let refused = denied(first, last, &round.proxies);
        let edges: Vec<Edge> = compute::edges(&inc, seconds)
            .into_iter()
            .map(|e| edge(e, &identities, &refused))
            .collect();
        let mut nodes: BTreeSet<String> = round
            .workloads
            .iter()
            .map(|w| format!("{}/{}", w.namespace, w.service))
            .collect();
        nodes.extend(services.iter().map(|s| s.service.clone()));
        nodes.extend(edges.iter().flat_map(|e| [e.from.clone(), e.to.clone()]));
        let (denied_total, denials) = denials(&round.denials, &round.proxies, &identities);
        self.chart(now_ms, at);
        Overview {
            updated_ms: now_ms,
            window_seconds: seconds,
            error: round.error,
            proxies: round.proxies,
            services,
            routes,
            backends,
            nodes: nodes.into_iter().collect(),
            edges,
            denied_total,
            denials,
            series: self.series.values().cloned().collect(),
        }
    }

    /// Adds a point to every row's chart, over the last [`POINT_INTERVAL`], and forgets the
    /// points (and charts) older than [`HISTORY`].
    fn chart(&mut self, now_ms: u64, at: Instant) {
        let Some(last) = self.scrapes.back() else {
            return;
        };
        let Some(from) = self
            .scrapes
            .iter()
            .rev()
            .find(|s| at.duration_since(s.at) >= POINT_INTERVAL)
            .or(self.scrapes.front())
            .filter(|s| s.at < last.at)
        else {
            return;
        };
        let seconds = last.at.duration_since(from.at).as_secs_f64();
        let inc = compute::increases(from, last);
        let point = |s: &Signals| (now_ms, s.rps, s.success_rate, s.p99_ms);
        let mut points: Vec<((&'static str, String), _)> = compute::services(&inc, seconds)
            .iter()
            .map(|r| (("service", r.service.clone()), point(&r.signals)))
            .collect();
        points.extend(
            compute::routes(&inc, seconds, None, false)
                .iter()
                .map(|r| (("route", route_key(r)), point(&r.signals))),
        );
        for ((kind, key), p) in points {
            self.series
                .entry((kind, key.clone()))
                .or_insert_with(|| Series {
                    kind,
                    key,
                    points: VecDeque::new(),
                })
                .points
                .push_back(p);
        }
        let oldest = now_ms.saturating_sub(u64::try_from(HISTORY.as_millis()).unwrap_or(0));
        self.series.retain(|_, s| {
            while s.points.front().is_some_and(|p| p.0 < oldest) {
                s.points.pop_front();
            }
            !s.points.is_empty()
        });
    }
}

/// What one proxy's scrape gave: its samples and its denials, or why not.
type Scraped = Result<(Vec<prom::Sample>, Option<DenialsPage>), String>;

/// One proxy's samples and, if it keeps them (only proxies do; another component answers
/// 404), its recent denials.
fn scrape(target: String) -> (String, Scraped) {
    let result = crate::admin::get_ok(&target, "/metrics")
        .and_then(|m| prom::parse(&m))
        .map(|samples| {
            let denials = crate::admin::get_ok(&target, "/denials")
                .and_then(|b| serde_json::from_str(&b).map_err(|e| e.to_string()))
                .ok();
            (samples, denials)
        });
    (target, result)
}

/// The chart key of a route row: `service route rule`.
pub fn route_key(r: &RouteRow) -> String {
    format!("{} {} {}", r.service, r.route, r.rule)
}

/// SPIFFE ID → the `namespace/service`s of the workloads that have it.
fn identity_services(workloads: &[Workload]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in workloads {
        if let Some(id) = &w.identity {
            out.entry(id.to_string())
                .or_default()
                .insert(format!("{}/{}", w.namespace, w.service));
        }
    }
    out
}

fn caller(identity: &str, identities: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    identities
        .get(identity)
        .map(|s| s.iter().cloned().collect::<Vec<_>>().join(","))
}

fn edge(
    e: EdgeRow,
    identities: &BTreeMap<String, BTreeSet<String>>,
    refused: &BTreeMap<(String, String), f64>,
) -> Edge {
    Edge {
        from: caller(&e.peer, identities).unwrap_or_else(|| e.peer.clone()),
        denied: refused
            .get(&(e.peer.clone(), e.service.clone()))
            .copied()
            .unwrap_or(0.0),
        to: e.service,
        identity: e.peer,
        signals: e.signals,
    }
}

/// Denials from `first` to `last` by (peer, service refusing): the authorization series have
/// no service label, so the service is that of the proxy scraped.
fn denied(
    first: &Scrape,
    last: &Scrape,
    proxies: &[ProxyStatus],
) -> BTreeMap<(String, String), f64> {
    let is_deny =
        |s: &&prom::Sample| s.name == "weft_proxy_authz_total" && s.label("decision") == "deny";
    let mut out = BTreeMap::new();
    for (target, samples) in &last.targets {
        let Some(service) = proxies
            .iter()
            .find(|p| &p.target == target)
            .and_then(|p| p.service.clone())
        else {
            continue;
        };
        let before = first.targets.get(target);
        for s in samples.iter().filter(is_deny) {
            let prev = before
                .and_then(|b| b.iter().filter(is_deny).find(|p| p.labels == s.labels))
                .map(|p| p.value);
            let inc = compute::increase(prev, s.value);
            *out.entry((s.label("peer").to_string(), service.clone()))
                .or_default() += inc;
        }
    }
    out
}

/// The total and the most recent denials of every proxy, newest first.
fn denials(
    pages: &BTreeMap<String, DenialsPage>,
    proxies: &[ProxyStatus],
    identities: &BTreeMap<String, BTreeSet<String>>,
) -> (u64, Vec<DeniedRequest>) {
    let mut total = 0;
    let mut all = Vec::new();
    for (target, page) in pages {
        total += page.total;
        let service = proxies
            .iter()
            .find(|p| &p.target == target)
            .and_then(|p| p.service.clone());
        all.extend(page.recent.iter().take(MAX_DENIALS).map(|d| DeniedRequest {
            from: caller(&d.peer, identities),
            denial: d.clone(),
            service: service.clone(),
        }));
    }
    all.sort_by_key(|d| std::cmp::Reverse(d.denial.at_ms));
    all.truncate(MAX_DENIALS);
    (total, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(service: &str, sa: &str, metrics: &str) -> Workload {
        serde_json::from_value(serde_json::json!({
            "namespace": "default",
            "service": service,
            "labels": {"app": service},
            "address": "127.0.0.1:1",
            "identity": format!("spiffe://weft.local/ns/default/sa/{sa}"),
            "metrics": metrics,
        }))
        .unwrap()
    }

    fn metrics(text: &str) -> Vec<prom::Sample> {
        prom::parse(text).unwrap()
    }

    fn inbound(peer: &str, dst: &str, ok: u32, failed: u32) -> String {
        format!(
            "weft_proxy_requests_total{{direction=\"inbound\",peer=\"{peer}\",dst_service=\"{dst}\",tls=\"true\"}} {}\n\
             weft_proxy_responses_total{{direction=\"inbound\",peer=\"{peer}\",dst_service=\"{dst}\",status_class=\"2xx\"}} {ok}\n\
             weft_proxy_responses_total{{direction=\"inbound\",peer=\"{peer}\",dst_service=\"{dst}\",status_class=\"5xx\"}} {failed}\n",
            ok + failed
        )
    }

    const WEB: &str = "spiffe://weft.local/ns/default/sa/web";
    const STRANGER: &str = "spiffe://other.org/ns/x/sa/y";

    fn round(api_ok: u32, api_failed: u32, denials: &[(&str, u64)]) -> Round {
        let workloads = vec![
            workload("web", "web", "127.0.0.1:11"),
            workload("api", "api", "127.0.0.1:12"),
        ];
        let mut m = BTreeMap::new();
        m.insert(
            "127.0.0.1:12".to_string(),
            metrics(
                &(inbound(WEB, "default/api", api_ok, api_failed)
                    + &inbound(STRANGER, "default/api", 1, 0)
                    + &format!(
                        "weft_proxy_authz_total{{decision=\"deny\",policy=\"p\",peer=\"{STRANGER}\"}} {}\n",
                        denials.len()
                    )),
            ),
        );
        let mut d = BTreeMap::new();
        d.insert(
            "127.0.0.1:12".to_string(),
            DenialsPage {
                total: denials.len() as u64,
                recent: denials
                    .iter()
                    .map(|(peer, at_ms)| Denial {
                        at_ms: *at_ms,
                        peer: peer.to_string(),
                        policy: "default/api-from-web".into(),
                        reason: "no rule allows the peer".into(),
                        method: "GET".into(),
                        path: "/".into(),
                        port: 80,
                    })
                    .collect(),
            },
        );
        Round {
            proxies: vec![
                ProxyStatus {
                    target: "127.0.0.1:11".into(),
                    service: Some("default/web".into()),
                    error: Some("connection refused".into()),
                },
                ProxyStatus {
                    target: "127.0.0.1:12".into(),
                    service: Some("default/api".into()),
                    error: None,
                },
            ],
            workloads,
            error: None,
            metrics: m,
            denials: d,
        }
    }

    #[test]
    fn rates_graph_and_denials_over_the_window() {
        let mut c = Collector::new(Source::Proxies(vec![]), Duration::from_secs(30));
        let t0 = Instant::now();
        let first = c.update(round(0, 0, &[]), t0, 1_000_000);
        assert_eq!(first.window_seconds, 0.0);
        let o = c.update(
            round(90, 10, &[(WEB, 5), (STRANGER, 9)]),
            t0 + Duration::from_secs(10),
            1_010_000,
        );
        assert_eq!(o.window_seconds, 10.0);
        let api = o
            .services
            .iter()
            .find(|s| s.service == "default/api")
            .unwrap();
        assert_eq!(api.signals.rps, 10.0);
        assert_eq!(api.signals.success_rate, Some(0.9));
        // web calls api (named by its identity's workload); the stranger by its identity.
        let from: Vec<_> = o
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        assert_eq!(
            from,
            [(STRANGER, "default/api"), ("default/web", "default/api")]
        );
        assert_eq!(o.edges[1].identity, WEB);
        assert_eq!(o.edges[1].signals.tls_percent, Some(100.0));
        assert_eq!(o.edges[1].signals.success_rate, Some(0.9));
        // Two denials in the window, both of the stranger's calls (the series counts them).
        assert_eq!((o.edges[0].denied, o.edges[1].denied), (2.0, 0.0));
        assert!(
            o.nodes.contains(&"default/web".to_string()),
            "{:?}",
            o.nodes
        );
        // Newest first, with the refusing service and the caller's service when known.
        assert_eq!(o.denied_total, 2);
        assert_eq!(o.denials[0].denial.peer, STRANGER);
        assert_eq!(o.denials[0].from, None);
        assert_eq!(o.denials[1].from.as_deref(), Some("default/web"));
        assert_eq!(o.denials[1].service.as_deref(), Some("default/api"));
        assert_eq!(o.proxies[0].error.as_deref(), Some("connection refused"));
        // A chart point for the service, over the 10 s since the first scrape.
        let s = o
            .series
            .iter()
            .find(|s| s.kind == "service" && s.key == "default/api")
            .unwrap();
        assert_eq!(s.points.len(), 1);
        assert_eq!(s.points[0], (1_010_000, 10.0, Some(0.9), None));
    }

    #[test]
    fn the_window_slides_and_charts_forget_old_points() {
        let mut c = Collector::new(Source::Proxies(vec![]), Duration::from_secs(30));
        let t0 = Instant::now();
        let mut o = Overview::default();
        for i in 0..200u32 {
            o = c.update(
                round(i * 10, 0, &[]),
                t0 + Duration::from_secs(u64::from(i) * 2),
                1_000_000 + u64::from(i) * 2000,
            );
        }
        // 30 s window at one scrape every 2 s: 10 requests a scrape → 5/s.
        assert!(
            (30.0..32.1).contains(&o.window_seconds),
            "{}",
            o.window_seconds
        );
        let api = o
            .services
            .iter()
            .find(|s| s.service == "default/api")
            .unwrap();
        assert!((api.signals.rps - 5.0).abs() < 1e-9, "{}", api.signals.rps);
        assert!(c.scrapes.len() <= 17, "{}", c.scrapes.len());
        let s = o.series.iter().find(|s| s.key == "default/api").unwrap();
        let span = s.points.back().unwrap().0 - s.points.front().unwrap().0;
        assert!(span <= HISTORY.as_millis() as u64, "{span}");
        assert!(s.points.len() >= 140, "{}", s.points.len());
    }
}
