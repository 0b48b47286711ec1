//! A per-component Prometheus registry.
//!
//! Each component (identity service, control plane, every proxy) owns its own registry instead
//! of the process-global `metrics` recorder, so several of them can run in one process (the
//! in-process test harness, `weft demo`) and each `/metrics` shows only its own series. Metric
//! handles are registered once and kept, so recording on a request path is one atomic update.

use std::fmt;
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Histogram buckets (seconds) for request and operation latencies: fine below a millisecond,
/// where a proxy's added latency lives, and out to 30 s for timeouts.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets for sizes in bytes.
pub const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// A component's metric registry. Cloning shares it.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

static METADATA: Metadata<'static> = Metadata::new("weft", metrics::Level::INFO, None);

impl Registry {
    /// A registry whose histograms ending in `_seconds` use [`LATENCY_BUCKETS`] and whose
    /// histograms ending in `_bytes` use [`BYTES_BUCKETS`]. No histogram renders as a summary.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
            .and_then(|b| b.set_buckets(LATENCY_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self {
            inner: Arc::new(Inner { recorder, handle }),
        }
    }

    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        self.inner
            .recorder
            .describe_counter(KeyName::from_const_str(name), None, help.into());
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        self.inner
            .recorder
            .describe_gauge(KeyName::from_const_str(name), None, help.into());
        self.inner
            .recorder
            .register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        self.inner
            .recorder
            .describe_histogram(KeyName::from_const_str(name), None, help.into());
        self.inner
            .recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.inner.handle.run_upkeep();
        self.inner.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; the admin server calls it
    /// periodically so memory stays flat between scrapes.
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// Seconds since the Unix epoch, as Prometheus timestamps-as-values are given.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_with_buckets_and_help() {
        let r = Registry::new();
        r.counter("weft_test_total", "A test counter.", &[("reason", "x")])
            .increment(2);
        r.histogram("weft_test_duration_seconds", "A test latency.", &[])
            .record(0.0003);
        let text = r.render();
        assert!(
            text.contains("# HELP weft_test_total A test counter."),
            "{text}"
        );
        assert!(text.contains("weft_test_total{reason=\"x\"} 2"), "{text}");
        assert!(
            text.contains("weft_test_duration_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "{text}");
        // A second registry is independent.
        assert!(!Registry::new().render().contains("weft_test_total"));
    }
}
