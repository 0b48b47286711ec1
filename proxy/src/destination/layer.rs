use std::sync::Arc;

use super::FindDestination;

/// Builds [`FindDestination`] services.
#[derive(Debug, Clone)]
pub struct FindDestinationLayer {
    namespace: Arc<str>,
}

impl FindDestinationLayer {
    /// `namespace`: the namespace of names given without one (`http://api:8080`), the
    /// workload's own.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
        }
    }
}

impl<S> tower::Layer<S> for FindDestinationLayer {
    type Service = FindDestination<S>;

    fn layer(&self, inner: S) -> FindDestination<S> {
        FindDestination {
            inner,
            namespace: self.namespace.clone(),
            cache: Arc::default(),
        }
    }
}
