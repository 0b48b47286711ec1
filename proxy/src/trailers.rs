//! Response trailers for HTTP/1.1 clients.
//!
//! hyper writes an HTTP/1.1 response's trailer fields only when the client said `TE: trailers`
//! and the response's `Trailer` header names them (RFC 9110 §6.6.2 asks a sender to declare
//! them; HTTP/2 has no such rule, and gRPC servers never declare theirs). So that the fields an
//! HTTP/2 application sends reach such a client, a response to it that has none declared gets a
//! `Trailer` header naming them, as far as they can be known when its head is written:
//! - the ones it ends with, when its whole body has already arrived (a unary call, a small
//!   response: the frames already received are read without waiting, at most
//!   [`PREFETCH_FRAMES`] of them, then handed on unchanged);
//! - otherwise, for a gRPC response, gRPC's own (`grpc-status`, `grpc-message`,
//!   `grpc-status-details-bin`).
//!
//! What is left: a streaming response that is not gRPC, from an HTTP/2 application that does
//! not declare its trailers, reaches an HTTP/1.1 client without them (the head cannot wait for
//! the end of a stream); and a client that did not send `TE: trailers` gets none (hyper's
//! rule, RFC 9110 §10.1.4).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// How many frames of a response are read ahead, without waiting, to learn its trailers.
pub const PREFETCH_FRAMES: usize = 16;

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
    pub fn declare(self, rsp: Response<Body>) -> Response<Body> {
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
        let mut body = Prefetched::read_ahead(body);
        let names = match &body.trailers {
            Some(names) => HeaderValue::from_str(names).ok(),
            None if is_grpc(&parts.headers) => Some(HeaderValue::from_static(GRPC_TRAILERS)),
            None => None,
        };
        if let Some(v) = names {
            parts.headers.insert(header::TRAILER, v);
        }
        body.trailers = None;
        Response::from_parts(parts, crate::body::boxed(body))
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A body whose first frames were read ahead (those already received), then the rest of it.
struct Prefetched {
    ahead: VecDeque<Result<Frame<Bytes>, BoxError>>,
    /// Whether the frames read ahead are the whole body.
    complete: bool,
    /// The names of the trailer fields the body ends with, if it was read to its end.
    trailers: Option<String>,
    inner: Body,
}

impl Prefetched {
    fn read_ahead(mut inner: Body) -> Self {
        let mut ahead = VecDeque::new();
        let mut complete = false;
        let mut trailers = None;
        // Only what is there: a waker that nobody needs (the next poll, by the connection,
        // registers its own).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while ahead.len() < PREFETCH_FRAMES {
            match Pin::new(&mut inner).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(t) = frame.trailers_ref() {
                        let names: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
                        trailers = Some(names.join(", "));
                    }
                    ahead.push_back(Ok(frame));
                }
                Poll::Ready(Some(Err(e))) => {
                    ahead.push_back(Err(e));
                    complete = true;
                    break;
                }
                Poll::Ready(None) => {
                    complete = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Self {
            ahead,
            complete,
            trailers: trailers.filter(|_| complete),
            inner,
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
    use http_body_util::BodyExt;

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
        let rsp = Client::of(&req(Version::HTTP_11, Some("trailers"))).declare(rsp);
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
        let rsp = Client::of(&req(Version::HTTP_11, Some("trailers"))).declare(rsp);
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

    #[test]
    fn nothing_is_declared_for_clients_that_take_no_trailers_or_when_declared() {
        for (version, te) in [
            (Version::HTTP_11, None),
            (Version::HTTP_11, Some("gzip")),
            (Version::HTTP_10, Some("trailers")),
            (Version::HTTP_2, Some("trailers")),
        ] {
            let rsp = Response::new(ready_body(&[("x-checksum", "5")]));
            let rsp = Client::of(&req(version, te)).declare(rsp);
            assert!(!rsp.headers().contains_key("trailer"), "{version:?} {te:?}");
        }
        let mut rsp = Response::new(ready_body(&[("x-checksum", "5")]));
        rsp.headers_mut()
            .insert("trailer", HeaderValue::from_static("x-other"));
        let rsp = Client::of(&req(Version::HTTP_11, Some("trailers"))).declare(rsp);
        assert_eq!(rsp.headers()["trailer"], "x-other");
    }
}
