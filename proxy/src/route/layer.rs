use std::sync::Arc;

use super::{Router, Table};
use crate::discovery::cache::Cache;
use crate::discovery::{Limits, Resolve};

/// Builds [`Router`]s over one resolver; every router shares the routes it learnt.
#[derive(Clone)]
pub struct RouterLayer {
    resolver: Arc<dyn Resolve>,
    table: Table,
}

impl std::fmt::Debug for RouterLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterLayer").finish_non_exhaustive()
    }
}

impl RouterLayer {
    /// With the default discovery limits.
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Self::with_limits(resolver, Limits::default())
    }

    /// Keeping the routes of at most `limits.capacity` destinations, each while in use.
    pub fn with_limits(resolver: Arc<dyn Resolve>, limits: Limits) -> Self {
        Self {
            resolver,
            table: Cache::shared(limits),
        }
    }
}

impl<S> tower::Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Router<S> {
        Router {
            inner,
            resolver: self.resolver.clone(),
            table: self.table.clone(),
        }
    }
}
