//! The identity service run inside another process (tests, `weft demo`).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::IdentityService;
use crate::authority::Authority;
use weft_runtime::metrics::Registry;

/// An identity service running in this process (tests, `weft demo`).
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub service: Arc<IdentityService>,
    pub registry: Registry,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts `authority`'s API on `listen` (port 0 picks a free port).
    pub async fn start(authority: Authority, listen: std::net::SocketAddr) -> Result<Self, String> {
        let registry = Registry::new();
        let service = IdentityService::new(authority, &registry, vec!["localhost".into()])?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(
            service
                .clone()
                .run(listener, weft_runtime::process::wait_true(stop_rx)),
        );
        Ok(Self {
            addr,
            service,
            registry,
            stop,
            task,
        })
    }

    /// Stops accepting, lets open requests finish, and waits until the listener is closed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
