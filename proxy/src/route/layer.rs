use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Router, Table};
use crate::discovery::Resolve;

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
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Self {
            resolver,
            table: Arc::new(Mutex::new(HashMap::new())),
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
