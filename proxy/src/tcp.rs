//! Opaque TCP forwarding: bytes both ways until either side closes, counted in metrics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::metrics::ProxyMetrics;

/// How long connecting to a local application may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` (at most [`CONNECT_TIMEOUT`], `TCP_NODELAY` set); the error says why
/// not.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!(
            "no connection to {addr} within {CONNECT_TIMEOUT:?}"
        )),
    }
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
