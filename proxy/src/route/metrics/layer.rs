use std::sync::Arc;

use crate::metrics::ProxyMetrics;

use super::RouteMetrics;

/// Builds [`RouteMetrics`] services.
#[derive(Debug, Clone)]
pub struct RouteMetricsLayer {
    metrics: Arc<ProxyMetrics>,
}

impl RouteMetricsLayer {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RouteMetricsLayer {
    type Service = RouteMetrics<S>;

    fn layer(&self, inner: S) -> RouteMetrics<S> {
        RouteMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}
