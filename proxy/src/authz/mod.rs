//! Inbound authorization: the control plane's policy for the application port a request is
//! for, applied to the peer identity the connection proved. A denied request never reaches the
//! application: it fails with [`ProxyError::Forbidden`] (a 403 at the edge, naming the policy),
//! is counted by policy and peer, is logged once, and is kept among the recent denials the admin
//! endpoint serves at `/denials` ([`denials`]).
//!
//! The policy is a watch that the control plane keeps current, so an edit applies to the next
//! request; while the control plane is away, the last policy stays in force. Until the first
//! policy arrives, nothing is authorized.

pub mod denials;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::Request;
use tokio::sync::watch;
use tower::filter::{Filter, FilterLayer, Predicate};
use weft_policy::authz::{Decision, WorkloadPolicy, authorize};

use crate::error::ProxyError;
use crate::identity::ClientIdentity;
use crate::metrics::ProxyMetrics;
use crate::svc::BoxError;

/// The local workload's policy, kept current by the control plane (`None` until it answers).
pub type PolicyWatch = watch::Receiver<Option<Arc<WorkloadPolicy>>>;

/// The application port a request is for (set by [`Authorize`], read by the application
/// forwarder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppPort(pub u16);

/// Lets a request through only if the policy allows its peer (tower's [`Filter`]: a denied
/// request fails at once and never reaches the application).
pub type Authorize<S> = Filter<S, CheckPolicy>;

/// Builds [`Authorize`] services following one policy watch:
/// `AuthorizeLayer::new(CheckPolicy::new(policy, default_port, metrics))`.
pub type AuthorizeLayer = FilterLayer<CheckPolicy>;

/// The check [`Authorize`] makes: the application port a request is for, and the policy of
/// that port for the peer.
#[derive(Debug, Clone)]
pub struct CheckPolicy {
    policy: PolicyWatch,
    default_port: u16,
    metrics: Arc<ProxyMetrics>,
    /// Ports no request may reach: the proxy's own.
    refused: Arc<[u16]>,
}

impl CheckPolicy {
    /// `default_port`: the application port of requests whose authority names none.
    pub fn new(policy: PolicyWatch, default_port: u16, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            policy,
            default_port,
            metrics,
            refused: Arc::from([]),
        }
    }

    /// Refuses requests for `ports` (403) whatever the policy says.
    pub fn refusing(mut self, ports: &[u16]) -> Self {
        self.refused = Arc::from(ports);
        self
    }
}

impl<B> Predicate<Request<B>> for CheckPolicy {
    type Request = Request<B>;

    fn check(&mut self, mut req: Request<B>) -> Result<Request<B>, BoxError> {
        // The port the peer dialled when `weft init` redirected the connection; else the
        // request's authority's, else the default.
        let port = match req.extensions().get::<crate::orig_dst::OrigDst>() {
            Some(o) => o.0.port(),
            None => crate::http::authority(&req)
                .and_then(|a| a.port_u16())
                .unwrap_or(self.default_port),
        };
        req.extensions_mut().insert(AppPort(port));
        if self.refused.contains(&port) {
            let peer = req
                .extensions()
                .get::<ClientIdentity>()
                .map_or_else(|| "unauthenticated".to_string(), |c| c.label.to_string());
            return Err(ProxyError::Forbidden {
                policy: "weft-proxy".into(),
                reason: format!(
                    "port {port} is one of the proxy's own (inbound, outbound or admin), not the application's"
                ),
                peer,
            }
            .into());
        }
        self.decide(&req, port)?;
        Ok(req)
    }
}

impl CheckPolicy {
    fn decide<B>(&self, req: &Request<B>, port: u16) -> Result<(), ProxyError> {
        let unauthenticated;
        let client = match req.extensions().get::<ClientIdentity>() {
            Some(c) => c,
            None => {
                unauthenticated = ClientIdentity::new(None);
                &unauthenticated
            }
        };
        let policy = self.policy.borrow().clone().ok_or(ProxyError::NotReady)?;
        match authorize(
            policy.port(port),
            client.id.as_ref(),
            req.method(),
            req.uri().path(),
        ) {
            Decision::Allow { policy } => {
                self.metrics.authz(true, &policy, &client.label);
                Ok(())
            }
            Decision::Deny { policy, reason } => {
                let reason = reason.to_string();
                self.metrics.authz(false, &policy, &client.label);
                self.metrics.denials.record(
                    &client.label,
                    &policy,
                    &reason,
                    req.method().as_str(),
                    req.uri().path(),
                    port,
                );
                tracing::info!(
                    client.id = %client.label,
                    policy = %policy,
                    reason = %reason,
                    method = %req.method(),
                    path = req.uri().path(),
                    port,
                    "request denied"
                );
                Err(ProxyError::Forbidden {
                    policy: policy.to_string(),
                    reason,
                    peer: client.label.to_string(),
                })
            }
        }
    }
}
