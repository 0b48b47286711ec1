//! Discovery: what the outbound side learns from the control plane about a destination, its
//! endpoints and its routes, each as a watch the control plane keeps current. The balancer and
//! the router open one per destination on its first request and keep it, in a [`cache`], while
//! requests use it, so changes apply live and the last state survives a control-plane outage;
//! a destination left idle, and first one the mesh does not know, is released, so a proxy can
//! meet any number of names over its life.

pub mod cache;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_policy::client::PolicyClient;
use weft_policy::registry::{AddressInfo, ServiceEndpoints};
use weft_policy::routes::ServiceRoutes;

pub use self::cache::Limits;

/// How long a request waits for the first discovery answer about its destination (its
/// endpoints, its routes, or what is at an original destination's address).
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the outbound side learns about services: the control plane client in a real proxy,
/// a fixed table in tests.
pub trait Resolve: Send + Sync + 'static {
    /// The endpoints of `namespace/service`, kept current. The value is `None` until the first
    /// answer arrives. Called once per destination while it is in use: the balancer keeps the
    /// watch in its cache, and drops it (which ends the watch) when it releases the entry.
    fn resolve(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceEndpoints>>>;

    /// The routes of `namespace/service`, kept current (`None` until the first answer).
    /// Called once per destination while it is in use: the router keeps the watch (in its
    /// cache). A resolver that knows no routes answers at once with none, so every request
    /// takes the default route.
    fn routes(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceRoutes>>> {
        watch::channel(Some(Arc::new(ServiceRoutes {
            namespace: namespace.to_string(),
            service: service.to_string(),
            rules: Vec::new(),
        })))
        .1
    }

    /// What the mesh knows of the IP address `ip` (`None` until the first answer): whether an
    /// original destination of transparent interception is a meshed workload. Called once per
    /// address while it is in use: the caller keeps the watch (in its cache). A resolver that
    /// knows no addresses answers at once that it knows nothing, so such destinations go
    /// unmeshed.
    fn address(&self, ip: IpAddr) -> watch::Receiver<Option<Arc<AddressInfo>>> {
        watch::channel(Some(Arc::new(AddressInfo {
            ip,
            endpoints: Vec::new(),
        })))
        .1
    }
}

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

    fn routes(
        &self,
        namespace: &str,
        service: &str,
    ) -> watch::Receiver<Option<Arc<ServiceRoutes>>> {
        self.client.watch_routes(namespace, service)
    }

    fn address(&self, ip: IpAddr) -> watch::Receiver<Option<Arc<AddressInfo>>> {
        self.client.watch_address(ip)
    }
}
