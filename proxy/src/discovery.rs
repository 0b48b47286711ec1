//! Discovery through the control plane: a watch per destination service. The balancer opens
//! one on a destination's first request and keeps it for the proxy's life, so endpoint changes
//! apply live and the last state survives a control-plane outage.

use std::sync::Arc;

use tokio::sync::watch;
use weft_policy::client::PolicyClient;
use weft_policy::registry::ServiceEndpoints;

use crate::balance::Resolve;

/// Resolves services with a [`PolicyClient`].
#[derive(Debug)]
pub struct PolicyResolver {
    client: PolicyClient,
}

impl PolicyResolver {
    pub fn new(client: PolicyClient) -> Self {
        Self { client }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceEndpoints>>> {
        self.client.watch_endpoints(namespace, service)
    }
}
