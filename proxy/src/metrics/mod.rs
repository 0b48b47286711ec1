//! The proxy's Prometheus series. Labels are bounded: direction, peer identity, destination
//! service, status class, reason codes; never raw paths or addresses of clients.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram};
use weft_runtime::metrics::Registry;

/// How a family registers one series: registry, name, help, label pairs.
type Make<M> = fn(&Registry, &'static str, &'static str, &[(&'static str, &str)]) -> M;

/// A labelled family whose series are registered on first use and cached.
struct Family<M> {
    registry: Registry,
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Cache<M>,
    make: Make<M>,
}

fn key_hash(values: &[&str]) -> u64 {
    let mut h = LabelHasher(0);
    values.hash(&mut h);
    h.finish()
}

/// A fast, non-keyed hash of label values (FxHash's word-at-a-time mix). Label values are
/// bounded and come from the mesh's own names, and every bucket still compares the values
/// themselves: SipHash's flooding resistance buys nothing here, and it cost ~4,000
/// instructions per request over the six lookups of a request (callgrind).
struct LabelHasher(u64);

impl LabelHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for LabelHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A cache keyed by label values whose entries are made on first use: one lookup finds
/// everything a request records under the same labels.
struct Cache<V> {
    /// Keyed by a hash of the label values; each bucket holds the values it was made for,
    /// so a lookup (every request) allocates nothing.
    entries: RwLock<HashMap<u64, Vec<Entry<V>>, BuildLabelHasher>>,
}

/// One entry of a [`Cache`]: its label values and its value.
type Entry<V> = (Box<[Box<str>]>, V);

#[derive(Default, Clone, Copy)]
struct BuildLabelHasher;

impl std::hash::BuildHasher for BuildLabelHasher {
    type Hasher = LabelHasher;
    fn build_hasher(&self) -> LabelHasher {
        LabelHasher(0)
    }
}

impl<V> Default for Cache<V> {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::with_hasher(BuildLabelHasher)),
        }
    }
}

impl<V: Clone> Cache<V> {
    fn get(&self, values: &[&str], make: impl FnOnce() -> V) -> V {
        let hash = key_hash(values);
        if let Some(v) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .and_then(|b| find(b, values))
        {
            return v.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let bucket = entries.entry(hash).or_default();
        if let Some(v) = find(bucket, values) {
            return v.clone();
        }
        let v = make();
        bucket.push((values.iter().map(|v| Box::from(*v)).collect(), v.clone()));
        v
    }
}

fn find<'a, V>(bucket: &'a [Entry<V>], values: &[&str]) -> Option<&'a V> {
    bucket
        .iter()
        .find(|(k, _)| k.iter().map(|s| &**s).eq(values.iter().copied()))
        .map(|(_, m)| m)
}

impl<M: Clone> Family<M> {
    fn get(&self, values: &[&str]) -> M {
        self.series.get(values, || {
            let pairs: Vec<(&'static str, &str)> = self
                .labels
                .iter()
                .copied()
                .zip(values.iter().copied())
                .collect();
            (self.make)(&self.registry, self.name, self.help, &pairs)
        })
    }
}

/// The series the edge records every request in, for one (direction, peer, destination):
/// found with one lookup per request, each series registered when first used (so the
/// exposition lists exactly the series that have counted something).
#[derive(Default)]
struct EdgeSeries {
    /// By `tls` (false, true).
    requests: [OnceLock<Counter>; 2],
    /// By status class (1xx … 5xx).
    responses: [OnceLock<Counter>; 5],
    latency: OnceLock<Histogram>,
}

/// The series of one route rule and backend (see [`EdgeSeries`]).
#[derive(Default)]
struct RouteSeries {
    requests: OnceLock<Counter>,
    /// By status class (1xx … 5xx).
    responses: [OnceLock<Counter>; 5],
    latency: OnceLock<Histogram>,
}

/// Every series of a proxy.
pub struct ProxyMetrics {
    pub registry: Registry,
    requests: Family<Counter>,
    responses: Family<Counter>,
    latency: Family<Histogram>,
    authz: Family<Counter>,
    errors: Family<Counter>,
    tls_handshakes: Family<Counter>,
    tls_failures: Family<Counter>,
    tcp_opened: Family<Counter>,
    tcp_open: Family<Gauge>,
    http1_idle: Family<Gauge>,
    tcp_bytes: Family<Counter>,
    route_requests: Family<Counter>,
    route_responses: Family<Counter>,
    route_latency: Family<Histogram>,
    route_retries: Family<Counter>,
    route_faults: Family<Counter>,
    ejections: Family<Counter>,
    edge: Cache<Arc<EdgeSeries>>,
    route: Cache<Arc<RouteSeries>>,
    pub cert_expiry: Gauge,
    /// Not a series: the recent denied requests, served at the admin endpoint's `/denials`.
    pub denials: crate::authz::denials::DenialLog,
}

/// The labels of a route's series: destination service, route, rule and backend.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabels<'a> {
    pub dst: &'a str,
    pub route: &'a str,
    pub rule: &'a str,
    pub backend: &'a str,
}

/// The outcome of a response the retry layer could have retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Retried.
    Taken,
    /// Not retried: the retry budget was spent.
    SkippedBudget,
    /// Not retried: the request body was too large (or of unknown length) to replay.
    SkippedBody,
}

impl RetryOutcome {
    fn label(self) -> &'static str {
        match self {
            RetryOutcome::Taken => "taken",
            RetryOutcome::SkippedBudget => "skipped_budget",
            RetryOutcome::SkippedBody => "skipped_body",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyMetrics").finish_non_exhaustive()
    }
}

fn counter(r: &Registry, n: &'static str, h: &'static str, l: &[(&'static str, &str)]) -> Counter {
    r.counter(n, h, l)
}
fn gauge(r: &Registry, n: &'static str, h: &'static str, l: &[(&'static str, &str)]) -> Gauge {
    r.gauge(n, h, l)
}
fn histogram(
    r: &Registry,
    n: &'static str,
    h: &'static str,
    l: &[(&'static str, &str)],
) -> Histogram {
    r.histogram(n, h, l)
}

impl ProxyMetrics {
    pub fn new(registry: Registry) -> Arc<Self> {
        let fam_c = |name, help, labels| Family {
            registry: registry.clone(),
            name,
            help,
            labels,
            series: Cache::default(),
            make: counter,
        };
        let m = Self {
            requests: fam_c(
                "weft_proxy_requests_total",
                "HTTP requests, by direction, peer identity, destination service and whether the hop was mTLS.",
                &["direction", "peer", "dst_service", "tls"],
            ),
            responses: fam_c(
                "weft_proxy_responses_total",
                "HTTP responses, by direction, peer identity, destination service and status class.",
                &["direction", "peer", "dst_service", "status_class"],
            ),
            latency: Family {
                registry: registry.clone(),
                name: "weft_proxy_response_latency_seconds",
                help: "Time from request to response headers, by direction, peer and destination service.",
                labels: &["direction", "peer", "dst_service"],
                series: Cache::default(),
                make: histogram,
            },
            authz: fam_c(
                "weft_proxy_authz_total",
                "Inbound authorization decisions, by decision, policy and peer identity.",
                &["decision", "policy", "peer"],
            ),
            errors: fam_c(
                "weft_proxy_errors_total",
                "Responses and connection refusals the proxy made itself, by direction and reason.",
                &["direction", "reason"],
            ),
            tls_handshakes: fam_c(
                "weft_proxy_tls_handshakes_total",
                "Completed mTLS handshakes (both certificates verified), by direction, peer identity and negotiated TLS version.",
                &["direction", "peer", "tls_version"],
            ),
            tls_failures: fam_c(
                "weft_proxy_tls_handshake_failures_total",
                "Failed TLS handshakes, by direction and reason.",
                &["direction", "reason"],
            ),
            tcp_opened: fam_c(
                "weft_proxy_tcp_connections_total",
                "Accepted (inbound) or opened (outbound) TCP connections, by direction and detected protocol.",
                &["direction", "protocol"],
            ),
            tcp_open: Family {
                registry: registry.clone(),
                name: "weft_proxy_tcp_open_connections",
                help: "TCP connections open now, by direction.",
                labels: &["direction"],
                series: Cache::default(),
                make: gauge,
            },
            http1_idle: Family {
                registry: registry.clone(),
                name: "weft_proxy_http1_idle_connections",
                help: "HTTP/1 client connections idle between requests now (held without buffers), by direction.",
                labels: &["direction"],
                series: Cache::default(),
                make: gauge,
            },
            tcp_bytes: fam_c(
                "weft_proxy_tcp_bytes_total",
                "Bytes forwarded on opaque TCP connections, by direction and flow (from client to server, or back).",
                &["direction", "flow"],
            ),
            route_requests: fam_c(
                "weft_route_requests_total",
                "Outbound HTTP requests by route rule and backend (labels are route names, never paths).",
                &["dst_service", "route", "rule", "backend"],
            ),
            route_responses: fam_c(
                "weft_route_responses_total",
                "Outbound HTTP responses by route rule, backend and status class (after retries; timeouts and faults included).",
                &["dst_service", "route", "rule", "backend", "status_class"],
            ),
            route_latency: Family {
                registry: registry.clone(),
                name: "weft_route_response_latency_seconds",
                help: "Time from request to response headers by route rule and backend, retries and injected delays included.",
                labels: &["dst_service", "route", "rule", "backend"],
                series: Cache::default(),
                make: histogram,
            },
            route_retries: fam_c(
                "weft_route_retries_total",
                "Retryable failures by route rule and backend, and what became of them: taken, skipped_budget (the retry budget was spent), skipped_body (the request body could not be replayed).",
                &["dst_service", "route", "rule", "backend", "outcome"],
            ),
            route_faults: fam_c(
                "weft_route_faults_total",
                "Injected faults by route rule and kind (abort or delay).",
                &["dst_service", "route", "rule", "kind"],
            ),
            ejections: fam_c(
                "weft_balance_ejections_total",
                "Endpoints ejected by the circuit breaker after consecutive failures, by backend service.",
                &["backend"],
            ),
            cert_expiry: registry.gauge(
                "weft_proxy_certificate_expiry_timestamp_seconds",
                "When the proxy's current certificate expires, in Unix seconds.",
                &[],
            ),
            edge: Cache::default(),
            route: Cache::default(),
            denials: Default::default(),
            registry,
        };
        for dir in ["inbound", "outbound"] {
            for code in crate::error::ProxyError::CODES {
                let _ = m.errors.get(&[dir, code]);
            }
            let _ = m.tcp_open.get(&[dir]);
            let _ = m.http1_idle.get(&[dir]);
        }
        Arc::new(m)
    }

    pub fn request(&self, direction: &str, peer: &str, dst: &str, tls: bool) {
        self.edge_series(direction, peer, dst)
            .request(self, [direction, peer, dst], tls);
    }

    pub fn response(&self, direction: &str, peer: &str, dst: &str, status: u16, seconds: f64) {
        self.edge_series(direction, peer, dst).response(
            self,
            [direction, peer, dst],
            status,
            seconds,
        );
    }

    /// A request the edge saw answered with `status` after `seconds`: [`request`] and
    /// [`response`] with one lookup of their series.
    ///
    /// [`request`]: Self::request
    /// [`response`]: Self::response
    pub fn request_answered(
        &self,
        direction: &str,
        (peer, dst, tls): (&str, &str, bool),
        status: u16,
        seconds: f64,
    ) {
        let s = self.edge_series(direction, peer, dst);
        let labels = [direction, peer, dst];
        s.request(self, labels, tls);
        s.response(self, labels, status, seconds);
    }

    fn edge_series(&self, direction: &str, peer: &str, dst: &str) -> Arc<EdgeSeries> {
        self.edge.get(&[direction, peer, dst], Arc::default)
    }

    /// One request on a route, answered with `status` after `seconds`.
    pub fn route_response(&self, l: RouteLabels<'_>, status: u16, seconds: f64) {
        let labels = [l.dst, l.route, l.rule, l.backend];
        let s = self.route.get(&labels, Arc::default);
        s.requests
            .get_or_init(|| self.route_requests.get(&labels))
            .increment(1);
        let class = status_class_index(status);
        s.responses[class]
            .get_or_init(|| {
                self.route_responses.get(&[
                    l.dst,
                    l.route,
                    l.rule,
                    l.backend,
                    STATUS_CLASSES[class],
                ])
            })
            .increment(1);
        s.latency
            .get_or_init(|| self.route_latency.get(&labels))
            .record(seconds);
    }

    pub fn retry(&self, l: RouteLabels<'_>, outcome: RetryOutcome) {
        self.route_retries
            .get(&[l.dst, l.route, l.rule, l.backend, outcome.label()])
            .increment(1);
    }

    /// An injected fault: `kind` is `abort` or `delay`.
    pub fn fault(&self, l: RouteLabels<'_>, kind: &'static str) {
        self.route_faults
            .get(&[l.dst, l.route, l.rule, kind])
            .increment(1);
    }

    pub fn ejection(&self, backend: &str) {
        self.ejections.get(&[backend]).increment(1);
    }

    pub fn authz(&self, allowed: bool, policy: &str, peer: &str) {
        self.authz
            .get(&[if allowed { "allow" } else { "deny" }, policy, peer])
            .increment(1);
    }

    pub fn error(&self, direction: &str, reason: &str) {
        self.errors.get(&[direction, reason]).increment(1);
    }

    pub fn tls_handshake(
        &self,
        direction: &str,
        peer: &str,
        version: Option<rustls::ProtocolVersion>,
    ) {
        let version = match version {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "other",
        };
        self.tls_handshakes
            .get(&[direction, peer, version])
            .increment(1);
    }

    pub fn tls_failure(&self, direction: &str, reason: &str) {
        self.tls_failures.get(&[direction, reason]).increment(1);
    }

    /// Counts a connection and returns a guard that keeps it in the open gauge.
    pub fn tcp_open(&self, direction: &str, protocol: &str) -> OpenConn {
        self.tcp_opened.get(&[direction, protocol]).increment(1);
        let g = self.tcp_open.get(&[direction]);
        g.increment(1.0);
        OpenConn(g)
    }

    /// The gauge of HTTP/1 client connections idle between requests.
    pub fn http1_idle(&self, direction: &str) -> Gauge {
        self.http1_idle.get(&[direction])
    }

    pub fn tcp_bytes(&self, direction: &str, to_server: u64, to_client: u64) {
        self.tcp_bytes
            .get(&[direction, "to_server"])
            .increment(to_server);
        self.tcp_bytes
            .get(&[direction, "to_client"])
            .increment(to_client);
    }
}

impl EdgeSeries {
    fn request(&self, m: &ProxyMetrics, [direction, peer, dst]: [&str; 3], tls: bool) {
        self.requests[usize::from(tls)]
            .get_or_init(|| {
                m.requests
                    .get(&[direction, peer, dst, if tls { "true" } else { "false" }])
            })
            .increment(1);
    }

    fn response(&self, m: &ProxyMetrics, labels: [&str; 3], status: u16, seconds: f64) {
        let [direction, peer, dst] = labels;
        let class = status_class_index(status);
        self.responses[class]
            .get_or_init(|| {
                m.responses
                    .get(&[direction, peer, dst, STATUS_CLASSES[class]])
            })
            .increment(1);
        self.latency
            .get_or_init(|| m.latency.get(&labels))
            .record(seconds);
    }
}

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub struct OpenConn(Gauge);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Why a TLS handshake failed, as a bounded reason label.
pub fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    if weft_identity::tls::identity_mismatch(inner).is_some() {
        return "identity_mismatch";
    }
    use weft_identity::tls::PeerCertError as P;
    match inner {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(_) => {
            match weft_identity::tls::classify_cert_error(inner) {
                P::Expired | P::NotYetValid => "certificate_expired",
                P::Untrusted => "untrusted_peer",
                P::WrongUsage => "wrong_usage",
                P::Malformed | P::NoIdentity(_) => "invalid_certificate",
            }
        }
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "protocol_error",
    }
}

#[cfg(test)]
mod tests;
