use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Balance, Dst, Resolve};

/// Builds [`Balance`] services over one resolver.
#[derive(Clone)]
pub struct BalanceLayer {
    resolver: Arc<dyn Resolve>,
    dsts: Arc<Mutex<HashMap<Arc<str>, Dst>>>,
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
        }
    }
}

impl<S> tower::Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance {
            inner,
            resolver: self.resolver.clone(),
            dsts: self.dsts.clone(),
        }
    }
}
