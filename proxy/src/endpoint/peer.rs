//! HTTP/2 to peer proxies, driven through `h2` itself.
//!
//! hyper's HTTP/2 client hands every request to its connection's task through a channel and
//! spawns a task per request to wait for the response (a 1.5 KB future, allocated, moved and
//! scheduled per request). Here the request's own task opens the stream and waits for the
//! response; the connection's task only reads and writes frames. A request body, when there
//! is one, is sent by a task of its own, since it may go on while the response streams back
//! (gRPC's bidirectional streams).
//!
//! What hyper did and this keeps:
//! - a request a connection can no longer take (it failed, or the peer sent `GOAWAY`) is
//!   found out before the request is given to it ([`SendRequest::ready`]), so it goes out on
//!   another connection;
//! - a body is sent only as the stream's flow-control window allows, one chunk ahead, and
//!   stops when the response is dropped or the peer resets the stream;
//! - the response body gives back flow-control capacity as it is read, and ends with the
//!   trailers;
//! - an idle connection is pinged, and closed when no pong comes back in time;
//! - `Content-Length` is set on a request whose body's length is known and has none.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{HeaderMap, Method, Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::body::{self, Body};

/// A connection to a peer proxy: cloned for each request.
pub(super) type Sender = SendRequest<Bytes>;

/// How long a ping's pong may take before the connection is deemed dead (hyper's default).
const PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// At most this many bytes of request bodies wait in a connection's send buffer (hyper's
/// default).
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// The HTTP/2 handshake over `io` (mTLS to a peer proxy). Returns the connection to send on;
/// the future that drives it, which must be polled (spawned) for any request to go out; and
/// its keep-alive, which pings the peer every `keepalive` and ends, saying why, when no pong
/// came back in time: the connection is dead then, and is to be dropped. The keep-alive runs
/// apart from the connection, whose task then polls no timer on every frame.
pub(super) async fn handshake<T>(
    io: T,
    keepalive: Duration,
) -> Result<
    (
        Sender,
        h2::client::Connection<T, Bytes>,
        impl Future<Output = String> + use<T>,
    ),
    h2::Error,
>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (sender, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        // The mesh's limit and the room proxies add: what the peer's proxy checked.
        .max_header_list_size(crate::limits::H2_MAX_HEADER_LIST_SIZE)
        // A response whose client stopped reading holds its stream's window, never the
        // connection's.
        .initial_window_size(crate::limits::H2_STREAM_WINDOW)
        .initial_connection_window_size(crate::limits::H2_CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<T, Bytes>(io)
        .await?;
    let pings = conn.ping_pong();
    Ok((sender, conn, pinging(pings, keepalive)))
}

/// Every `every`, pings the peer; ends when the pong does not come within [`PONG_TIMEOUT`] (a
/// dead peer, a lost network) or the connection is gone.
async fn pinging(pings: Option<PingPong>, every: Duration) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(PONG_TIMEOUT, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("ping failed: {e}"),
            Err(_) => return format!("no answer to a ping within {PONG_TIMEOUT:?}"),
        }
    }
}

/// Sends `req` on `sender` (ready: [`SendRequest::ready`]) and waits for the response. A body
/// is sent by a task of its own; the response's body gives back flow-control capacity as it
/// is read.
pub(super) async fn request(
    mut sender: Sender,
    req: Request<Body>,
) -> Result<Response<Body>, h2::Error> {
    let (mut parts, body) = req.into_parts();
    if let Some(len) = body.size_hint().exact()
        && (len != 0 || has_payload_semantics(&parts.method))
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    let end = body.is_end_stream();
    let (response, stream) = sender.send_request(Request::from_parts(parts, ()), end)?;
    drop(sender);
    let cancel = (!end).then(|| {
        let (cancel, cancelled) = oneshot::channel();
        tokio::spawn(send_body(body, stream, cancelled));
        cancel
    });
    let (parts, recv) = response.await?.into_parts();
    let remaining = content_length(&parts.headers).or(recv.is_end_stream().then_some(0));
    let body = PeerBody {
        recv,
        remaining,
        data_done: false,
        _cancel: cancel,
    };
    Ok(Response::from_parts(parts, body::boxed(body)))
}

/// hyper's rule: a request with a known length gets `Content-Length`, unless it is empty and
/// its method defines no body.
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A peer's response body: data as it comes, its flow-control capacity given back at once
/// (the proxy holds nothing it was given), then the trailers.
struct PeerBody {
    recv: RecvStream,
    /// What `Content-Length` says is left, if it said.
    remaining: Option<u64>,
    data_done: bool,
    /// Dropped with the body: the request body's sender, if still sending, stops.
    _cancel: Option<oneshot::Sender<()>>,
}

impl http_body::Body for PeerBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Errors only when the stream is gone, which the next poll reports.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Sends a request's body (and trailers) on its stream, as its window allows; stops, resetting
/// the stream, when the response was dropped (`cancelled`) or the body failed, and stops when
/// the peer reset the stream.
async fn send_body(
    mut body: Body,
    mut stream: SendStream<Bytes>,
    mut cancelled: oneshot::Receiver<()>,
) {
    let sent = std::future::poll_fn(|cx| {
        if Pin::new(&mut cancelled).poll(cx).is_ready() {
            stream.send_reset(Reason::CANCEL);
            return Poll::Ready(Ok(()));
        }
        poll_send_body(&mut body, &mut stream, cx)
    })
    .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "request body to the peer proxy not sent in full");
    }
}

fn poll_send_body(
    body: &mut Body,
    stream: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), String>> {
    loop {
        // Room for one more chunk first: a body is read only as fast as the peer takes it.
        stream.reserve_capacity(1);
        if stream.capacity() == 0 {
            loop {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    Some(Err(e)) => return Poll::Ready(Err(e.to_string())),
                    None => return Poll::Ready(Err("the stream closed".into())),
                }
            }
        } else if let Poll::Ready(reset) = stream.poll_reset(cx) {
            return Poll::Ready(Err(match reset {
                Ok(reason) => format!("the peer reset the stream: {reason}"),
                Err(e) => e.to_string(),
            }));
        }
        let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                stream.send_reset(Reason::CANCEL);
                return Poll::Ready(Err(format!("the client's body failed: {e}")));
            }
            None => {
                return Poll::Ready(
                    stream
                        .send_data(Bytes::new(), true)
                        .map_err(|e| e.to_string()),
                );
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                stream.send_data(data, end).map_err(|e| e.to_string())?;
                if end {
                    return Poll::Ready(Ok(()));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.reserve_capacity(0);
                    return Poll::Ready(stream.send_trailers(trailers).map_err(|e| e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
