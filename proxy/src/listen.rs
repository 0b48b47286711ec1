//! The accept loop both listeners share: accept until shutdown (backing off on accept errors
//! such as running out of file descriptors), hand each connection to its own task, then let
//! HTTP connections drain for a bounded grace.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listener` until `shutdown`; every connection gets `TCP_NODELAY` and its own
/// task running `handle`. Afterwards, waits up to `grace` for watched connections to finish.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    direction: &'static str,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, Watcher) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(direction, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handle(tcp, remote, graceful.watcher()));
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}
