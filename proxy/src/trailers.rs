//! Response trailers for HTTP/1.1 clients.
//!
//! hyper writes an HTTP/1.1 response's trailer fields only when the client said `TE: trailers`
//! and the response's `Trailer` header names them (RFC 9110 §6.6.2 asks a sender to declare
//! them; HTTP/2 has no such rule, and gRPC servers never declare theirs). So that the fields an
//! HTTP/2 application sends reach such a client, a response to it that has none declared gets a
//! `Trailer` header naming them, as far as they can be known when its head is written:
//! - for a gRPC response, gRPC's own (`grpc-status`, `grpc-message`,
//!   `grpc-status-details-bin`), and any others its frames already received end with;
//! - for any other, the ones it ends with, when its body ends soon after its head: a small
//!   response, whose last frames may cross the hop between the proxies a moment after its
//!   head. The body is read ahead until it ends, for at most `--http1-trailers-wait` (50 ms),
//!   [`READ_AHEAD_FRAMES`] frames and [`READ_AHEAD_BYTES`], then handed on unchanged.
//!
//! What is left: a response that is neither gRPC nor over within that, whose application does
//! not declare its trailers, reaches an HTTP/1.1 client without them (its head cannot wait for
//! the end of a stream); and a client that did not send `TE: trailers` gets none (hyper's
//! rule, RFC 9110 §10.1.4). Only clients that take trailers wait: any other's response is
//! handed on as it comes.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

/// At most this many frames of a response are read ahead.
pub const READ_AHEAD_FRAMES: usize = 16;

/// At most this many bytes of a response's body are read ahead.
pub const READ_AHEAD_BYTES: usize = 64 * 1024;

/// The trailer fields a gRPC server may send.
const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// What a response to a request needs to know of it: whether its client is an HTTP/1.1 one
/// that takes trailers (and the request is not a `HEAD`, whose response has no body).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    takes_trailers: bool,
}

impl Client {
    pub fn of<B>(req: &Request<B>) -> Self {
        let te_trailers = req
            .headers()
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let token = t.split(';').next().unwrap_or("").trim();
                token.eq_ignore_ascii_case("trailers")
            });
        Self {
            takes_trailers: req.version() == Version::HTTP_11
                && te_trailers
                && req.method() != Method::HEAD,
        }
    }

    /// Whether this client takes trailers: only then is there anything to [`Client::declare`].
    pub fn takes_trailers(self) -> bool {
        self.takes_trailers
    }

    /// `rsp`, with its trailer fields declared for this client where they can be known,
    /// waiting at most `wait` for the end of a body that is not gRPC.
    pub async fn declare(self, rsp: Response<Body>, wait: Duration) -> Response<Body> {
        if !self.takes_trailers
            || rsp.headers().contains_key(header::TRAILER)
            // A gRPC trailers-only response: its status is in its head.
            || rsp.headers().contains_key("grpc-status")
            || rsp.headers().contains_key(header::CONTENT_LENGTH)
            || matches!(
                rsp.status(),
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::SWITCHING_PROTOCOLS
            )
            || rsp.status().is_informational()
            || rsp.body().is_end_stream()
        {
            return rsp;
        }
        let (mut parts, body) = rsp.into_parts();
        let grpc = crate::error::is_grpc_content(&parts.headers);
        // gRPC's names are known: only the frames already there are read, for any others.
        let wait = if grpc { Duration::ZERO } else { wait };
        let mut body = Prefetched::read_ahead(body, wait).await;
        let mut names = std::mem::take(&mut body.trailers);
        if grpc {
            names.retain(|n| !GRPC_TRAILERS.split(", ").any(|g| g == n));
            names.insert(0, GRPC_TRAILERS.to_string());
        }
        if let Ok(v) = HeaderValue::from_str(&names.join(", "))
            && !names.is_empty()
        {
            parts.headers.insert(header::TRAILER, v);
        }
        Response::from_parts(parts, crate::body::boxed(body))
    }
}

/// A body whose first frames were read ahead, then the rest of it.
struct Prefetched {
    ahead: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// Whether the frames read ahead are the whole body.
    complete: bool,
    /// The names of the trailer fields the body ends with, if it was read to its end.
    trailers: Vec<String>,
    inner: Body,
}

impl Prefetched {
    /// Reads `inner` ahead until it ends, for at most `wait` (zero: only the frames already
    /// there) and the read-ahead bounds.
    async fn read_ahead(inner: Body, wait: Duration) -> Self {
        let mut body = Self {
            ahead: VecDeque::new(),
            complete: false,
            trailers: Vec::new(),
            inner,
        };
        // Cancel-safe: a frame is taken only when it is there.
        let _ = tokio::time::timeout(wait, body.read_to_end()).await;
        if !body.complete {
            body.trailers.clear();
        }
        body
    }

    async fn read_to_end(&mut self) {
        let mut bytes = 0;
        while self.ahead.len() < READ_AHEAD_FRAMES && bytes <= READ_AHEAD_BYTES {
            match self.inner.frame().await {
                Some(Ok(frame)) => {
                    if let Some(t) = frame.trailers_ref() {
                        self.trailers = t.keys().map(|k| k.as_str().to_string()).collect();
                    }
                    bytes += frame.data_ref().map_or(0, |d| d.len());
                    self.ahead.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    self.ahead.push_back(Err(e));
                    self.complete = true;
                    return;
                }
                None => {
                    self.complete = true;
                    return;
                }
            }
        }
    }
}

impl http_body::Body for Prefetched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.ahead.pop_front() {
            return Poll::Ready(Some(f));
        }
        if self.complete {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && (self.complete || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if !self.ahead.is_empty() || self.complete {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
