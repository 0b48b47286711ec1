//! The control plane's Prometheus series (`weft_policy_*`), registered once at start-up on the
//! component's own [`Registry`].

use metrics::{Counter, Gauge, Histogram};
use weft_runtime::metrics::Registry;

/// Watch kinds, the `kind` label of the watch series.
pub const WATCH_KINDS: [&str; 4] = ["endpoints", "inbound", "routes", "address"];

/// Every handle the control plane records on.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub reload_ok: Counter,
    pub reload_error: Counter,
    pub config_valid: Gauge,
    pub config_last_reload: Gauge,
    pub load_duration: Histogram,
    pub revision: Gauge,
    pub registrations_ok: Counter,
    pub registrations_rejected: Counter,
    pub leases_expired: Counter,
    pub endpoints_registered: Gauge,
    watches_active: [Gauge; WATCH_KINDS.len()],
    watch_events: [Counter; WATCH_KINDS.len()],
    refused_watches: Counter,
    refused_requests: Counter,
    pub refused_registrations: Counter,
    /// Open discovery streams (one per proxy).
    pub streams: Gauge,
    /// Bytes of events sent on discovery streams, by type.
    pub stream_bytes: StreamBytes,
}

/// `weft_policy_discovery_bytes_total{type}`.
#[derive(Clone, Debug)]
pub struct StreamBytes {
    pub snapshot: Counter,
    pub delta: Counter,
    pub other: Counter,
}

impl Metrics {
    pub fn new(r: &Registry) -> Self {
        const RELOADS: &str = "Resource directory loads, by result (ok: applied; error: rejected, the previous set stays).";
        const REGISTRATIONS: &str = "Workload registrations and renewals, by result.";
        const ACTIVE: &str = "Open watch streams, by kind.";
        const EVENTS: &str = "Snapshots sent on watch streams, by kind.";
        const BYTES: &str = "Bytes of events sent on discovery streams, by type (snapshot: whole items; delta: endpoint changes; other: unchanged, refused, heartbeat).";
        const REFUSED: &str = "Requests answered 429 because their caller held its cap, by reason (too_many_watches: open watches; too_many_requests: requests in flight; too_many_registrations: live registrations).";
        let active =
            WATCH_KINDS.map(|k| r.gauge("weft_policy_watches_active", ACTIVE, &[("kind", k)]));
        let events = WATCH_KINDS
            .map(|k| r.counter("weft_policy_watch_events_total", EVENTS, &[("kind", k)]));
        Self {
            reload_ok: r.counter("weft_policy_config_reloads_total", RELOADS, &[("result", "ok")]),
            reload_error: r.counter("weft_policy_config_reloads_total", RELOADS, &[("result", "error")]),
            config_valid: r.gauge(
                "weft_policy_config_valid",
                "1 when the resource directory's current content is valid and served, 0 when the last change was rejected.",
                &[],
            ),
            config_last_reload: r.gauge(
                "weft_policy_config_last_reload_timestamp_seconds",
                "When the served resources were last loaded, seconds since the Unix epoch.",
                &[],
            ),
            load_duration: r.histogram(
                "weft_policy_config_load_duration_seconds",
                "Time to read, validate and compile the resource directory.",
                &[],
            ),
            revision: r.gauge(
                "weft_policy_state_revision",
                "Revision of the served state; it grows with every resource or endpoint change.",
                &[],
            ),
            registrations_ok: r.counter("weft_policy_registrations_total", REGISTRATIONS, &[("result", "ok")]),
            registrations_rejected: r.counter("weft_policy_registrations_total", REGISTRATIONS, &[("result", "rejected")]),
            leases_expired: r.counter(
                "weft_policy_leases_expired_total",
                "Registered endpoints dropped because their lease lapsed without renewal.",
                &[],
            ),
            endpoints_registered: r.gauge(
                "weft_policy_endpoints_registered",
                "Workloads currently registered with a live lease.",
                &[],
            ),
            watches_active: active,
            watch_events: events,
            refused_watches: r.counter("weft_policy_requests_refused_total", REFUSED, &[("reason", "too_many_watches")]),
            refused_requests: r.counter("weft_policy_requests_refused_total", REFUSED, &[("reason", "too_many_requests")]),
            refused_registrations: r.counter("weft_policy_requests_refused_total", REFUSED, &[("reason", "too_many_registrations")]),
            streams: r.gauge(
                "weft_policy_discovery_streams",
                "Open discovery streams (one per connected proxy).",
                &[],
            ),
            stream_bytes: StreamBytes {
                snapshot: r.counter("weft_policy_discovery_bytes_total", BYTES, &[("type", "snapshot")]),
                delta: r.counter("weft_policy_discovery_bytes_total", BYTES, &[("type", "delta")]),
                other: r.counter("weft_policy_discovery_bytes_total", BYTES, &[("type", "other")]),
            },
        }
    }

    pub fn watch_active(&self, kind: usize) -> &Gauge {
        &self.watches_active[kind]
    }

    pub fn watch_event(&self, kind: usize) -> &Counter {
        &self.watch_events[kind]
    }

    /// Refusals of callers at their cap of `held`.
    pub fn refused(&self, held: crate::api::Held) -> &Counter {
        match held {
            crate::api::Held::Watch => &self.refused_watches,
            crate::api::Held::Request => &self.refused_requests,
        }
    }
}
