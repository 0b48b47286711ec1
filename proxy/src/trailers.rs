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
//!   head. The body is read ahead until it ends, for at most [`READ_AHEAD_WAIT`],
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

/// How long a response whose trailers are not known is read ahead, waiting for its end.
pub const READ_AHEAD_WAIT: Duration = Duration::from_millis(50);

/// At most this many frames of a response are read ahead.
pub const READ_AHEAD_FRAMES: usize = 16;

/// At most this many bytes of a response's body are read ahead.
pub const READ_AHEAD_BYTES: usize = 64 * 1024;

/// The trailer fields a gRPC server may send.
const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// What a response to `req` needs to know of it: whether the client is an HTTP/1.1 one that
/// takes trailers, and whether its response can have a body.
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

    /// `rsp`, with its trailer fields declared for this client where they can be known.
    pub async fn declare(self, rsp: Response<Body>) -> Response<Body> {
        if !self.takes_trailers
            || rsp.headers().contains_key(header::TRAILER)
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
        let grpc = is_grpc(&parts.headers);
        // gRPC's names are known: only the frames already there are read, for any others.
        let wait = if grpc {
            Duration::ZERO
        } else {
            READ_AHEAD_WAIT
        };
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

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn req(version: Version, te: Option<&str>) -> Request<()> {
        let mut b = Request::get("/").version(version);
        if let Some(te) = te {
            b = b.header("te", te);
        }
        b.body(()).unwrap()
    }

    /// A body of `hello` and then `trailers`, every frame already there.
    fn ready_body(trailers: &[(&'static str, &'static str)]) -> Body {
        let mut map = http::HeaderMap::new();
        for (k, v) in trailers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(map)),
        ];
        crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_complete_body_gets_its_trailers_declared_and_is_unchanged() {
        let rsp = Response::new(ready_body(&[("x-checksum", "5"), ("x-count", "1")]));
        let rsp = Client::of(&req(Version::HTTP_11, Some("trailers")))
            .declare(rsp)
            .await;
        assert_eq!(rsp.headers()["trailer"], "x-checksum, x-count");
        let collected = rsp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["x-checksum"], "5");
        assert_eq!(collected.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_streaming_grpc_body_gets_grpcs_trailers_declared() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let body = http_body_util::StreamBody::new(stream);
        let mut rsp = Response::new(crate::body::boxed(body));
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        let rsp = Client::of(&req(Version::HTTP_11, Some("trailers")))
            .declare(rsp)
            .await;
        assert_eq!(rsp.headers()["trailer"], GRPC_TRAILERS);
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
            tx.send(Ok(Frame::trailers(t))).await.unwrap();
        });
        let collected = rsp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    }

    /// A body fed by the test: `hello`, then after `after`, the trailer `x-checksum: 5`.
    fn later_body(after: Duration) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
                .await
                .unwrap();
            tokio::time::sleep(after).await;
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", HeaderValue::from_static("5"));
            tx.send(Ok(Frame::trailers(t))).await.unwrap();
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        crate::body::boxed(http_body_util::StreamBody::new(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_a_moment_behind_the_head_are_waited_for_a_stream_is_not() {
        let client = Client::of(&req(Version::HTTP_11, Some("trailers")));
        let soon = client
            .declare(Response::new(later_body(Duration::from_millis(5))))
            .await;
        assert_eq!(soon.headers()["trailer"], "x-checksum");

        let started = tokio::time::Instant::now();
        let stream = client
            .declare(Response::new(later_body(Duration::from_secs(10))))
            .await;
        assert_eq!(started.elapsed(), READ_AHEAD_WAIT);
        assert!(!stream.headers().contains_key("trailer"));
        // Handed on whole: what was read ahead, then the rest.
        let collected = stream.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "5");
        assert_eq!(collected.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn nothing_is_declared_for_clients_that_take_no_trailers_or_when_declared() {
        for (version, te) in [
            (Version::HTTP_11, None),
            (Version::HTTP_11, Some("gzip")),
            (Version::HTTP_10, Some("trailers")),
            (Version::HTTP_2, Some("trailers")),
        ] {
            let rsp = Response::new(ready_body(&[("x-checksum", "5")]));
            let rsp = Client::of(&req(version, te)).declare(rsp).await;
            assert!(!rsp.headers().contains_key("trailer"), "{version:?} {te:?}");
        }
        let mut rsp = Response::new(ready_body(&[("x-checksum", "5")]));
        rsp.headers_mut()
            .insert("trailer", HeaderValue::from_static("x-other"));
        let rsp = Client::of(&req(Version::HTTP_11, Some("trailers")))
            .declare(rsp)
            .await;
        assert_eq!(rsp.headers()["trailer"], "x-other");
    }
}
