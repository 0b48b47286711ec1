use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Balance, Dst, Resolve};
use crate::metrics::ProxyMetrics;

/// Builds [`Balance`] services over one resolver; every balancer shares what it learnt of
/// each backend.
#[derive(Clone)]
pub struct BalanceLayer {
    resolver: Arc<dyn Resolve>,
    dsts: Arc<Mutex<HashMap<Arc<str>, Dst>>>,
    metrics: Option<Arc<ProxyMetrics>>,
}

impl std::fmt::Debug for BalanceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceLayer").finish_non_exhaustive()
    }
}

impl BalanceLayer {
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Self {
            resolver,
            dsts: Arc::default(),
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
            resolver: self.resolver.clone(),
            dsts: self.dsts.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
