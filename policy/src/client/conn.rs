//! A connection to one replica of the control plane: TCP, then TLS when the client has it,
//! then HTTP/2 with keep-alive pings.

use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{ClientError, ClientTls, ReqBody};

/// TCP to `addr`. A name that resolves to several addresses (one per replica, as a DNS name
/// for a set of replicas does) is tried at each, from a random one on, so clients spread
/// over them and pass over one that is gone.
async fn connect_any(addr: &str) -> Result<TcpStream, ClientError> {
    let failed = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(failed)?
        .collect();
    if resolved.is_empty() {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        )));
    }
    let start = fastrand::usize(..resolved.len());
    resolved.rotate_left(start);
    connect_first(&resolved).await.map_err(failed)
}

/// The first of `addrs` that takes a connection, in order.
async fn connect_first(addrs: &[std::net::SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// A new HTTP/2 connection to the replica at `addr`.
pub(super) async fn connect_to(
    addr: &str,
    tls: Option<&ClientTls>,
) -> Result<SendRequest<ReqBody>, ClientError> {
    let tcp = connect_any(addr).await?;
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

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_address_that_is_gone_is_passed_over() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let live_addr = live.local_addr().unwrap();
        let tcp = super::connect_first(&[gone, live_addr]).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), live_addr);
        assert!(super::connect_first(&[gone]).await.is_err());
    }
}
