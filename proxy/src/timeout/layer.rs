use super::{Scope, Timeout};

/// Builds [`Timeout`] services.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    scope: Scope,
}

impl TimeoutLayer {
    /// The route's request timeout.
    pub fn request() -> Self {
        Self {
            scope: Scope::Request,
        }
    }

    /// The route's per-attempt timeout.
    pub fn per_try() -> Self {
        Self {
            scope: Scope::PerTry,
        }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            scope: self.scope,
        }
    }
}
