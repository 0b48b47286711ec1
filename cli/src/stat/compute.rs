//! Golden signals from two scrapes of every proxy: rates from counter increases over the
//! window, success rates from response classes, and latency quantiles from histogram bucket
//! increases computed the way Prometheus' `histogram_quantile` does.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;

use super::prom::Sample;

/// One scrape of every proxy: samples by target (`host:port` of its `/metrics`).
#[derive(Debug, Clone)]
pub struct Scrape {
    pub at: Instant,
    pub targets: BTreeMap<String, Vec<Sample>>,
}

/// How much every series grew from `old` to `new`. A series that is new, or whose value
/// went down (its proxy restarted), counts from zero.
pub fn increases(old: &Scrape, new: &Scrape) -> Vec<Sample> {
    let mut before: HashMap<(&str, &str, &BTreeMap<String, String>), f64> = HashMap::new();
    for (target, samples) in &old.targets {
        for s in samples {
            before.insert((target.as_str(), s.name.as_str(), &s.labels), s.value);
        }
    }
    let mut out = Vec::new();
    for (target, samples) in &new.targets {
        for s in samples {
            let prev = before.get(&(target.as_str(), s.name.as_str(), &s.labels));
            let value = increase(prev.copied(), s.value);
            out.push(Sample { value, ..s.clone() });
        }
    }
    out
}

/// How much a counter grew from `before` (`None`: the series is new) to `now`; a counter that
/// went down was reset (its proxy restarted) and counts from zero.
pub fn increase(before: Option<f64>, now: f64) -> f64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

/// Requests, failures, mTLS share and latency buckets of one group.
#[derive(Debug, Default)]
struct Acc {
    requests: f64,
    failures: f64,
    tls: f64,
    tls_seen: f64,
    /// Cumulative count by upper bound (as bits of a non-negative f64, so they sort).
    buckets: BTreeMap<u64, f64>,
}

impl Acc {
    fn response(&mut self, s: &Sample) {
        self.requests += s.value;
        if s.label("status_class") == "5xx" {
            self.failures += s.value;
        }
    }

    fn bucket(&mut self, s: &Sample) {
        let le = match s.label("le") {
            "+Inf" => f64::INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => return,
            },
        };
        *self.buckets.entry(le.to_bits()).or_default() += s.value;
    }

    fn signals(&self, seconds: f64) -> Signals {
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(&le, &n)| (f64::from_bits(le), n))
            .collect();
        let q = |q| histogram_quantile(q, &buckets).map(|s| s * 1000.0);
        Signals {
            requests: self.requests,
            rps: if seconds > 0.0 {
                self.requests / seconds
            } else {
                0.0
            },
            success_rate: (self.requests > 0.0)
                .then(|| (self.requests - self.failures) / self.requests),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            tls_percent: (self.tls_seen > 0.0).then(|| 100.0 * self.tls / self.tls_seen),
        }
    }
}

/// The golden signals of one row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signals {
    /// Requests answered in the window.
    pub requests: f64,
    pub rps: f64,
    /// Share of responses that are not 5xx (`None`: no requests).
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of requests over mTLS (`None`: not known for this row).
    pub tls_percent: Option<f64>,
}

/// A service, as its own proxies see it (inbound).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceRow {
    /// `namespace/service`.
    pub service: String,
    #[serde(flatten)]
    pub signals: Signals,
}

/// A route rule (and backend, with `--backends`), as the callers' proxies see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteRow {
    /// The service called, `namespace/service`.
    pub service: String,
    /// The `HTTPRoute` (`namespace/name`) or `default`.
    pub route: String,
    pub rule: String,
    /// The backend service, with `--backends`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(flatten)]
    pub signals: Signals,
}

/// Whether `namespace/service` is the service a user named (`service` or `namespace/service`).
pub fn is_service(label: &str, named: &str) -> bool {
    label == named || label.rsplit('/').next() == Some(named)
}

/// Who calls a service: the caller's identity (as the called proxy verified it) and the
/// service called, from the inbound side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeRow {
    /// The caller's SPIFFE ID, or `unauthenticated`.
    pub peer: String,
    /// The service called, `namespace/service`.
    pub service: String,
    #[serde(flatten)]
    pub signals: Signals,
}

/// The inbound series of every proxy, grouped by `key`.
fn inbound<K: Ord>(inc: &[Sample], key: impl Fn(&Sample) -> K) -> BTreeMap<K, Acc> {
    let mut groups: BTreeMap<K, Acc> = BTreeMap::new();
    for s in inc.iter().filter(|s| s.label("direction") == "inbound") {
        let kind = s.name.as_str();
        if !matches!(
            kind,
            "weft_proxy_responses_total"
                | "weft_proxy_response_latency_seconds_bucket"
                | "weft_proxy_requests_total"
        ) {
            continue;
        }
        let acc = groups.entry(key(s)).or_default();
        match kind {
            "weft_proxy_responses_total" => acc.response(s),
            "weft_proxy_response_latency_seconds_bucket" => acc.bucket(s),
            _ => {
                acc.tls_seen += s.value;
                if s.label("tls") == "true" {
                    acc.tls += s.value;
                }
            }
        }
    }
    groups
}

/// Per service, from the inbound side of the proxies' series over a window of `seconds`.
pub fn services(inc: &[Sample], seconds: f64) -> Vec<ServiceRow> {
    inbound(inc, |s| s.label("dst_service").to_string())
        .into_iter()
        .map(|(service, acc)| ServiceRow {
            service,
            signals: acc.signals(seconds),
        })
        .collect()
}

/// Per caller identity and service called, over a window of `seconds`.
pub fn edges(inc: &[Sample], seconds: f64) -> Vec<EdgeRow> {
    inbound(inc, |s| {
        (
            s.label("peer").to_string(),
            s.label("dst_service").to_string(),
        )
    })
    .into_iter()
    .map(|((peer, service), acc)| EdgeRow {
        peer,
        service,
        signals: acc.signals(seconds),
    })
    .collect()
}

/// Per route rule of the calls to `service` (every service: `None`), per backend when
/// `backends`, from the callers' route series over a window of `seconds`.
pub fn routes(
    inc: &[Sample],
    seconds: f64,
    service: Option<&str>,
    backends: bool,
) -> Vec<RouteRow> {
    type Key = (String, String, String, Option<String>);
    let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
    for s in inc {
        let dst = s.label("dst_service");
        if service.is_some_and(|svc| !is_service(dst, svc)) {
            continue;
        }
        let key = || {
            (
                dst.to_string(),
                s.label("route").to_string(),
                s.label("rule").to_string(),
                backends.then(|| s.label("backend").to_string()),
            )
        };
        match s.name.as_str() {
            "weft_route_responses_total" => groups.entry(key()).or_default().response(s),
            "weft_route_response_latency_seconds_bucket" => {
                groups.entry(key()).or_default().bucket(s)
            }
            _ => {}
        }
    }
    groups
        .into_iter()
        .map(|((service, route, rule, backend), acc)| RouteRow {
            service,
            route,
            rule,
            backend,
            signals: acc.signals(seconds),
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), sorted by bound, as
/// Prometheus' `histogram_quantile`: linear within the bucket the rank falls in (from 0 for
/// the first); the highest finite bound when it falls in `+Inf`; `None` without samples.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !buckets.last()?.0.is_infinite() {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stat::prom::parse;

    fn scrape(text: &str) -> Scrape {
        Scrape {
            at: Instant::now(),
            targets: [("p".to_string(), parse(text).unwrap())].into(),
        }
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.5, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(histogram_quantile(0.5, &b), Some(0.1));
        // Rank 70 is half-way through the (0.1, 0.2] bucket.
        assert!((histogram_quantile(0.7, &b).unwrap() - 0.15).abs() < 1e-12);
        assert!((histogram_quantile(0.25, &b).unwrap() - 0.05).abs() < 1e-12);
        // In +Inf: the highest finite bound.
        let b = [(0.1, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &b), Some(0.1));
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn rates_success_and_latency_from_increases_with_resets() {
        let old = scrape(
            "weft_proxy_responses_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",status_class=\"2xx\"} 100\n\
             weft_proxy_responses_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",status_class=\"5xx\"} 10\n\
             weft_proxy_requests_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",tls=\"true\"} 110\n",
        );
        let new = scrape(
            "weft_proxy_responses_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",status_class=\"2xx\"} 190\n\
             weft_proxy_responses_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",status_class=\"5xx\"} 20\n\
             weft_proxy_requests_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",tls=\"true\"} 210\n\
             weft_proxy_requests_total{direction=\"inbound\",peer=\"b\",dst_service=\"default/api\",tls=\"false\"} 0\n\
             weft_proxy_response_latency_seconds_bucket{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",le=\"0.01\"} 50\n\
             weft_proxy_response_latency_seconds_bucket{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",le=\"0.1\"} 100\n\
             weft_proxy_response_latency_seconds_bucket{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",le=\"+Inf\"} 100\n\
             weft_proxy_responses_total{direction=\"outbound\",peer=\"a\",dst_service=\"default/db\",status_class=\"2xx\"} 5\n",
        );
        let rows = services(&increases(&old, &new), 10.0);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let s = &rows[0].signals;
        assert_eq!(rows[0].service, "default/api");
        assert_eq!((s.requests, s.rps), (100.0, 10.0));
        assert_eq!(s.success_rate, Some(0.9));
        assert_eq!(s.tls_percent, Some(100.0));
        assert!((s.p50_ms.unwrap() - 10.0).abs() < 1e-9);
        assert!((s.p99_ms.unwrap() - 98.2).abs() < 1e-9);
        // Per caller: `a` made them all, over mTLS; `b` made none in the window.
        let e = edges(&increases(&old, &new), 10.0);
        let calls: Vec<_> = e
            .iter()
            .map(|e| (e.peer.as_str(), e.service.as_str(), e.signals.requests))
            .collect();
        assert_eq!(
            calls,
            [("a", "default/api", 100.0), ("b", "default/api", 0.0)]
        );
        assert_eq!(e[0].signals.success_rate, Some(0.9));
        assert_eq!(e[0].signals.tls_percent, Some(100.0));
        assert_eq!(e[1].signals.tls_percent, None);
        // A restarted proxy: its counters went down and count from zero.
        let restarted = scrape(
            "weft_proxy_responses_total{direction=\"inbound\",peer=\"a\",dst_service=\"default/api\",status_class=\"2xx\"} 7\n",
        );
        let rows = services(&increases(&new, &restarted), 1.0);
        assert_eq!(rows[0].signals.requests, 7.0);
    }

    #[test]
    fn routes_group_by_rule_and_optionally_backend() {
        let old = scrape("");
        let line = |rule: &str, backend: &str, class: &str, n: u32| {
            format!(
                "weft_route_responses_total{{dst_service=\"default/api\",route=\"default/api\",rule=\"{rule}\",backend=\"{backend}\",status_class=\"{class}\"}} {n}\n"
            )
        };
        let new = scrape(
            &[
                line("split", "default/api-v1", "2xx", 90),
                line("split", "default/api-v2", "2xx", 9),
                line("split", "default/api-v2", "5xx", 1),
                line("mobile", "default/api-v3", "2xx", 20),
            ]
            .concat(),
        );
        let inc = increases(&old, &new);
        let rows = routes(&inc, 10.0, Some("api"), false);
        let names: Vec<_> = rows
            .iter()
            .map(|r| (r.rule.as_str(), r.signals.requests))
            .collect();
        assert_eq!(names, [("mobile", 20.0), ("split", 100.0)]);
        assert_eq!(rows[1].signals.success_rate, Some(0.99));
        let rows = routes(&inc, 10.0, None, true);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].backend.as_deref(), Some("default/api-v2"));
        assert_eq!(rows[2].signals.success_rate, Some(0.9));
        assert!(routes(&inc, 10.0, Some("db"), false).is_empty());
    }
}
