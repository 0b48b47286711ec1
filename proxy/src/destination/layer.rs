use std::sync::Arc;

use super::Destinations;

/// Builds [`Destinations`] services.
#[derive(Debug, Clone)]
pub struct DestinationLayer {
    namespace: Arc<str>,
}

impl DestinationLayer {
    /// `namespace`: the namespace of names given without one (`http://api:8080`), the
    /// workload's own.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
        }
    }
}

impl<S> tower::Layer<S> for DestinationLayer {
    type Service = Destinations<S>;

    fn layer(&self, inner: S) -> Destinations<S> {
        Destinations {
            inner,
            namespace: self.namespace.clone(),
            cache: Arc::default(),
        }
    }
}
