//! A connection to one replica of the control plane: TCP, then TLS when the client has it,
//! then HTTP/2 with keep-alive pings.

use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{ClientError, ClientTls, ReqBody};

/// A new HTTP/2 connection to the replica at `addr`.
pub(super) async fn connect_to(
    addr: &str,
    tls: Option<&ClientTls>,
) -> Result<SendRequest<ReqBody>, ClientError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    match tls {
        None => {
            let (sender, conn) = builder.handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        }
        Some(t) => {
            let tls = tokio_rustls::TlsConnector::from(t.config.clone())
                .connect(t.server_name.clone(), tcp)
                .await
                .map_err(|e| ClientError::Tls {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                })?;
            let (sender, conn) = builder.handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        }
    }
}
