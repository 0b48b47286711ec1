//! Keep-alive HTTP/1.1 connections to the local application, each carrying one request at a
//! time: a connection goes back to the pool when its response body has been read to the end
//! (a response dropped earlier closes its connection).
//!
//! The inbound proxy sends every HTTP/1 request here. hyper-util's general client did the
//! same job with a pool keyed by scheme and authority (SipHash per checkout and return), a
//! boxed connector and a future of its own per request: ~12,000 instructions per request in
//! the api proxy, one sixth of its whole cost (callgrind). HTTP/2 requests to the application
//! still go through hyper-util's client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{self, Body, BoxError};

/// At most this many idle connections are kept per application address.
const MAX_IDLE: usize = 64;

/// Idle connections to the application, by address (under interception the application is
/// reached at the address each client dialled, so one port may be at several addresses).
#[derive(Debug)]
pub struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<SendRequest<Body>>>>,
    connect_timeout: Duration,
}

impl Http1Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection, else on a
    /// new one. A request an idle connection did not take (the application had closed it) is
    /// sent once on a new connection.
    pub async fn request(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, BoxError> {
        let (sender, rsp) = match self.checkout(addr) {
            Some(mut s) => match s.try_send_request(req).await {
                Ok(rsp) => (s, rsp),
                Err(mut e) => {
                    let Some(req) = e.take_message() else {
                        return Err(e.into_error().into());
                    };
                    let mut s = self.connect(addr).await?;
                    let rsp = s.send_request(req).await?;
                    (s, rsp)
                }
            },
            None => {
                let mut s = self.connect(addr).await?;
                let rsp = s.send_request(req).await?;
                (s, rsp)
            }
        };
        Ok(rsp.map(|inner| {
            body::boxed(Returning {
                inner,
                sender: Some(sender),
                pool: self.clone(),
                addr,
                done: false,
            })
        }))
    }

    /// An idle connection to `addr` ready for a request: closed ones are dropped, busy ones
    /// (still finishing a response) stay.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(&addr)?;
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(s) = conns.pop() {
            if s.is_closed() {
                continue;
            }
            if s.is_ready() {
                found = Some(s);
                break;
            }
            busy.push(s);
        }
        conns.append(&mut busy);
        found
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.entry(addr).or_default();
        if conns.len() < MAX_IDLE {
            conns.push(sender);
        }
    }

    /// A new connection to `addr`, with `TCP_NODELAY`, within the connect timeout.
    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, BoxError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection within {:?}", self.connect_timeout))??;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection to the application ended");
            }
        });
        Ok(sender)
    }
}

/// A response body that gives its connection back to the pool once read to the end.
struct Returning {
    inner: Incoming,
    sender: Option<SendRequest<Body>>,
    pool: Arc<Http1Pool>,
    addr: SocketAddr,
    done: bool,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.done = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if (self.done || http_body::Body::is_end_stream(&self.inner))
            && let Some(s) = self.sender.take()
        {
            self.pool.put(self.addr, s);
        }
    }
}

#[cfg(test)]
mod tests;
