//! Opaque TCP forwarding: bytes both ways until either side closes, counted in metrics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::metrics::ProxyMetrics;

/// How long connecting to a local application may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` and copies bytes between it and `client` until both directions close.
pub async fn forward<I>(mut client: I, addr: SocketAddr, direction: &str, metrics: &ProxyMetrics)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics.error(direction, "app_unavailable");
            tracing::info!(%addr, error = %e, "TCP forward: connect failed");
            return;
        }
        Err(_) => {
            metrics.error(direction, "app_unavailable");
            tracing::info!(%addr, "TCP forward: connect timed out");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let mut server = server;
    relay(&mut client, &mut server, direction, metrics).await;
}

/// Copies bytes both ways between two connected streams and counts them.
pub async fn relay<A, B>(a: &mut A, b: &mut B, direction: &str, metrics: &ProxyMetrics)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(a, b).await {
        Ok((to_server, to_client)) => metrics.tcp_bytes(direction, to_server, to_client),
        Err(e) => tracing::debug!(error = %e, "TCP relay ended with an error"),
    }
}
