use std::sync::Arc;

use crate::metrics::ProxyMetrics;

use super::InjectFaults;

/// Builds [`InjectFaults`] services.
#[derive(Debug, Clone)]
pub struct InjectFaultsLayer {
    metrics: Arc<ProxyMetrics>,
}

impl InjectFaultsLayer {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for InjectFaultsLayer {
    type Service = InjectFaults<S>;

    fn layer(&self, inner: S) -> InjectFaults<S> {
        InjectFaults {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}
