use std::sync::Arc;

use crate::metrics::ProxyMetrics;

use super::Edge;

/// Builds [`Edge`] services for one direction.
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    direction: &'static str,
    dst: Option<Arc<str>>,
    metrics: Arc<ProxyMetrics>,
}

impl EdgeLayer {
    /// `dst`: the destination label when every request has the same one (inbound: the local
    /// service); otherwise layers below set it.
    pub fn new(direction: &'static str, dst: Option<Arc<str>>, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            direction,
            dst,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            direction: self.direction,
            dst: self.dst.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
