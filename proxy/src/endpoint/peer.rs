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
//!   stops when the response is given up before it was read whole, or the peer resets the
//!   stream (a response read whole lets the upload go on: a server may answer early);
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
/// Streams opened before the peer's settings arrive (hyper's default; h2's is unbounded, and
/// a burst past the peer's limit would be refused).
const INITIAL_MAX_SEND_STREAMS: usize = 100;

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
        // Until the peer's settings say how many streams it takes (hyper's default).
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
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

/// Why a request to a peer failed.
#[derive(Debug)]
pub(super) enum PeerError {
    /// The connection took no stream for it: the request was not sent (the connection
    /// failed, or the peer sent `GOAWAY`, since it was found ready).
    NotSent(h2::Error),
    /// The request was sent, and its stream or the connection failed.
    Failed(h2::Error),
}

/// Sends `req` on `sender` (ready: [`SendRequest::ready`]) and waits for the response. A body
/// is sent by a task of its own; the response's body gives back flow-control capacity as it
/// is read.
pub(super) async fn request(
    mut sender: Sender,
    req: Request<Body>,
) -> Result<Response<Body>, PeerError> {
    let (mut parts, body) = req.into_parts();
    if let Some(len) = body.size_hint().exact()
        && (len != 0 || has_payload_semantics(&parts.method))
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    let end = body.is_end_stream();
    let (response, stream) = sender
        .send_request(Request::from_parts(parts, ()), end)
        .map_err(PeerError::NotSent)?;
    drop(sender);
    let cancel = (!end).then(|| {
        let (cancel, cancelled) = oneshot::channel();
        tokio::spawn(send_body(body, stream, cancelled));
        Cancel(Some(cancel))
    });
    let (parts, recv) = response.await.map_err(PeerError::Failed)?.into_parts();
    let remaining = content_length(&parts.headers).or(recv.is_end_stream().then_some(0));
    let body = PeerBody {
        recv,
        remaining,
        data_done: false,
        cancel,
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
    /// Stops the request body's upload if the body is dropped before it was read whole.
    cancel: Option<Cancel>,
}

impl Drop for PeerBody {
    fn drop(&mut self) {
        // Read whole (whether or not its reader polled it to the end): the upload goes on.
        if self.recv.is_end_stream()
            && let Some(cancel) = &mut self.cancel
        {
            cancel.release();
        }
    }
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

/// Sends a request's body (and trailers) on its stream, as its window allows. Stops,
/// resetting the stream, when the response is given up ([`Cancel`]) or the client's body
/// fails; stops when the peer resets the stream or the connection ends.
async fn send_body(body: Body, stream: SendStream<Bytes>, cancelled: oneshot::Receiver<()>) {
    let mut sending = Sending {
        body,
        stream,
        held: None,
        cancelled: Some(cancelled),
    };
    if let Err(e) = std::future::poll_fn(|cx| sending.poll(cx)).await {
        tracing::debug!(error = %e, "request body to the peer proxy not sent in full");
    }
}

/// A request body on its way to the peer.
struct Sending {
    body: Body,
    stream: SendStream<Bytes>,
    /// A chunk read from the body and waiting for the stream's window, and whether it ends
    /// the body. The body is read before any window is claimed: a claim made ahead of the data
    /// holds connection window that another stream may need (hyper#4003).
    held: Option<(Bytes, bool)>,
    /// Fires when the response is given up; `None` once the response was read whole (the
    /// upload then goes on for as long as the peer takes it).
    cancelled: Option<oneshot::Receiver<()>>,
}

impl Sending {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if let Some(cancelled) = &mut self.cancelled
            && let Poll::Ready(given_up) = Pin::new(cancelled).poll(cx)
        {
            if given_up.is_ok() {
                self.stream.send_reset(Reason::CANCEL);
                return Poll::Ready(Ok(()));
            }
            self.cancelled = None;
        }
        let stream = &mut self.stream;
        loop {
            // Watched on every pass, whatever else waits: a reset (or the connection's end)
            // stops the upload even while the client's body is quiet.
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => format!("the peer reset the stream: {reason}"),
                    Err(e) => e.to_string(),
                }));
            }
            if self.held.is_some() {
                while stream.capacity() == 0 {
                    match ready!(stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(e.to_string())),
                        None => return Poll::Ready(Err("the stream closed".into())),
                    }
                }
                if let Some((data, end)) = self.held.take() {
                    stream.send_data(data, end).map_err(|e| e.to_string())?;
                    if end {
                        return Poll::Ready(Ok(()));
                    }
                }
                continue;
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
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
                    let end = self.body.is_end_stream();
                    if data.is_empty() {
                        // Needs no window.
                        stream.send_data(data, end).map_err(|e| e.to_string())?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A claim of one byte: `send_data` raises it to what is buffered.
                    stream.reserve_capacity(1);
                    self.held = Some((data, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Poll::Ready(
                            stream.send_trailers(trailers).map_err(|e| e.to_string()),
                        );
                    }
                }
            }
        }
    }
}

/// Held by whoever waits for the response (the request's future, then its body): dropped
/// before the response was read whole, it stops the request body's upload, resetting the
/// stream. Once the response is whole it is [`released`](Cancel::release): a server may answer
/// before it has read all of the request, and the upload then goes on.
struct Cancel(Option<oneshot::Sender<()>>);

impl Cancel {
    fn release(&mut self) {
        // Dropped unsent: the upload stops watching for a cancel.
        self.0.take();
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

#[cfg(test)]
mod tests;
