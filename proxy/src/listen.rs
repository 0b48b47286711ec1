//! The accept loop both listeners share: accept until shutdown (backing off on accept errors
//! such as running out of file descriptors), hand each connection to its own task, then let
//! HTTP connections drain for a bounded grace.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::limits;
use crate::metrics::ProxyMetrics;
use crate::svc::HttpService;

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
    let (drain, _) = watch::channel(false);
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
        tokio::spawn(handle(tcp, remote, Watcher(drain.subscribe())));
    }
    drop(listener);
    drain.send_replace(true);
    let _ = tokio::time::timeout(grace, drain.closed()).await;
}

/// A connection's view of its listener's shutdown. The listener's drain lasts until every
/// watcher is dropped (or its grace ends), so a connection holds its own while it serves.
#[derive(Debug)]
pub struct Watcher(watch::Receiver<bool>);

impl Watcher {
    /// Resolves once the listener is shutting down.
    pub async fn draining(&mut self) {
        // The only change is to `true`; an error means the listener is gone, after it.
        let _ = self.0.changed().await;
    }

    /// Runs `conn` to its end; once the listener shuts down, `graceful` asks it to finish
    /// what it serves and close.
    pub async fn watch<C: Future>(
        mut self,
        conn: C,
        graceful: impl FnOnce(Pin<&mut C>),
    ) -> C::Output {
        tokio::pin!(conn);
        tokio::select! {
            ended = conn.as_mut() => return ended,
            _ = self.draining() => graceful(conn.as_mut()),
        }
        conn.await
    }
}

/// What [`serve_http`] serves a connection as.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub direction: &'static str,
    /// The client's address, for logs.
    pub remote: SocketAddr,
    /// How long an HTTP/1.1 client's response is read ahead for its trailers
    /// ([`crate::trailers`]).
    pub trailers_wait: Duration,
}

/// Serves one HTTP/1 or HTTP/2 connection with `stack` until it ends, watched for graceful
/// shutdown. An HTTP/1 connection may switch protocols ([`crate::upgrade`]) or become a
/// `CONNECT` tunnel: hyper then hands it over and this returns.
///
/// The header limits are the mesh's ([`crate::limits`]): HTTP/2 clients may send a little more
/// than the limit, so the edge answers an oversized request with its own 431 rather than the
/// `h2` crate refusing the stream (or, at four times the setting, the whole connection); an
/// HTTP/1 head over hyper's read buffer or with more than 100 fields gets the parser's own
/// 431, counted here under the same reason, and a malformed HTTP/1 head the parser's own 400,
/// counted as `bad_request`.
pub async fn serve_http<I>(
    io: I,
    stack: HttpService,
    served: Served,
    watcher: Watcher,
    metrics: &ProxyMetrics,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = crate::svc::to_hyper(stack, served.trailers_wait);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits::HTTP1_HEADER_READ_TIMEOUT)
        .max_buf_size(limits::HTTP1_MAX_BUF_SIZE)
        // A client that shuts its sending side after its request (netcat, some HTTP/1.0
        // clients, scripts) still gets the answer, as from the server directly.
        .half_close(true);
    builder
        .http2()
        .max_header_list_size(limits::H2_MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(limits::H2_STREAM_WINDOW)
        .initial_connection_window_size(limits::H2_CONNECTION_WINDOW);
    let io = TokioIo::new(io);
    let ended = watcher
        .watch(
            builder.serve_connection_with_upgrades(io, svc).into_owned(),
            auto::UpgradeableConnection::graceful_shutdown,
        )
        .await;
    if let Err(e) = ended {
        connection_failed(&*e, served, metrics);
    }
}

/// Counts and logs how an HTTP connection failed.
pub(crate) fn connection_failed(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    served: Served,
    metrics: &ProxyMetrics,
) {
    let Served {
        direction, remote, ..
    } = served;
    let hyper_error = e.downcast_ref::<hyper::Error>();
    if hyper_error.is_some_and(hyper::Error::is_parse_too_large) {
        metrics.error(direction, "headers_too_large");
        tracing::info!(direction, client.addr = %remote, error = %e, "request head over the limits: 431");
    } else if hyper_error.is_some_and(hyper::Error::is_parse) {
        // A malformed head (smuggling shapes among them): hyper's own 400.
        metrics.error(direction, "bad_request");
        tracing::info!(direction, client.addr = %remote, error = %e, "malformed request head: 400");
    } else {
        tracing::debug!(direction, client.addr = %remote, error = %e, "HTTP connection ended");
    }
}
