use std::sync::Arc;

use super::{Backends, Balance, Resolve};
use crate::discovery::Limits;
use crate::metrics::ProxyMetrics;

/// Builds [`Balance`] services over one discovery cache ([`Backends`]); every balancer shares
/// what it learnt of each backend.
#[derive(Clone)]
pub struct BalanceLayer {
    backends: Backends,
    metrics: Option<Arc<ProxyMetrics>>,
}

impl std::fmt::Debug for BalanceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceLayer").finish_non_exhaustive()
    }
}

impl BalanceLayer {
    /// Over a cache of its own with the default limits.
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Self::over(Backends::new(resolver, Limits::default()))
    }

    /// Over `backends`, which others may share.
    pub fn over(backends: Backends) -> Self {
        Self {
            backends,
            metrics: None,
        }
    }

    /// Counts ejections in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<ProxyMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<S> tower::Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            backends: self.backends.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
