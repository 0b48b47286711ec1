use std::sync::Arc;

use crate::metrics::ProxyMetrics;

use super::RetryFailures;

/// Builds [`RetryFailures`] services.
#[derive(Debug, Clone)]
pub struct RetryFailuresLayer {
    metrics: Arc<ProxyMetrics>,
}

impl RetryFailuresLayer {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RetryFailuresLayer {
    type Service = RetryFailures<S>;

    fn layer(&self, inner: S) -> RetryFailures<S> {
        RetryFailures {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}
