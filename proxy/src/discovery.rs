//! Discovery through the control plane: one watch per destination service, opened on first
//! use and shared by every request to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use weft_policy::client::{PolicyClient, Watched};
use weft_policy::registry::ServiceEndpoints;

use crate::balance::Resolve;

/// Resolves services with a [`PolicyClient`]; watches stay open for the proxy's life, so
/// endpoint changes apply live and the last state survives a control-plane outage.
#[derive(Debug)]
pub struct PolicyResolver {
    client: PolicyClient,
    watches: Mutex<HashMap<(String, String), Watched<ServiceEndpoints>>>,
}

impl PolicyResolver {
    pub fn new(client: PolicyClient) -> Self {
        Self {
            client,
            watches: Mutex::new(HashMap::new()),
        }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches
            .entry((namespace.to_string(), service.to_string()))
            .or_insert_with(|| self.client.watch_endpoints(namespace, service))
            .clone()
    }
}
