use std::sync::Arc;

use crate::metrics::ProxyMetrics;

use super::{Authorize, PolicyWatch};

/// Builds [`Authorize`] services following one policy watch.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: PolicyWatch,
    default_port: u16,
    metrics: Arc<ProxyMetrics>,
}

impl AuthorizeLayer {
    /// `default_port`: the application port of requests whose authority names none.
    pub fn new(policy: PolicyWatch, default_port: u16, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            policy,
            default_port,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            policy: self.policy.clone(),
            default_port: self.default_port,
            metrics: self.metrics.clone(),
        }
    }
}
