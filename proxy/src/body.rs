//! The one body type that flows through the proxy: a boxed stream of `Bytes` frames (data and
//! trailers), so requests from HTTP/1 and HTTP/2 clients, bodies from peers and bodies the
//! proxy makes itself all fit the same services.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::ProxyError;
use crate::svc::Labels;

/// Errors inside a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The proxy's body type.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    boxed(Full::new(bytes.into()))
}

/// An empty body.
pub fn empty() -> Body {
    boxed(Empty::<Bytes>::new())
}

/// A request body as its client sends it. A failure to read it (malformed, cut short, reset)
/// is the client's, and is noted in the request's [`Labels`] as the error it becomes, so the
/// layers that would otherwise blame the endpoint (the connection to it failed mid-request)
/// see whose fault it was: [`Labels::client_fault`].
#[derive(Debug)]
pub struct ClientBody {
    inner: hyper::body::Incoming,
    labels: Arc<Labels>,
}

impl ClientBody {
    pub fn new(inner: hyper::body::Incoming, labels: Arc<Labels>) -> Self {
        Self { inner, labels }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            let _ = self.labels.client_fault.set(client_fault(e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a failure to read a client's body means: a malformed body (invalid chunk framing,
/// more data than its length, an HTTP/2 protocol error in the stream) is a 400; the client
/// cutting it short or resetting its stream is the client gone.
pub fn client_fault(e: &hyper::Error) -> ProxyError {
    let detail = crate::edge::error_chain(e);
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    ProxyError::BadRequestBody { detail }
                }
                _ => ProxyError::ClientClosed { detail },
            };
        }
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            let gone = h2.is_io() || h2.is_go_away() || (h2.is_reset() && h2.is_remote());
            return if gone {
                ProxyError::ClientClosed { detail }
            } else {
                ProxyError::BadRequestBody { detail }
            };
        }
        cur = c.source();
    }
    ProxyError::ClientClosed { detail }
}
