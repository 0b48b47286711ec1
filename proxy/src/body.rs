//! The one body type that flows through the proxy: a boxed stream of `Bytes` frames (data and
//! trailers), so requests from HTTP/1 and HTTP/2 clients, bodies from peers and bodies the
//! proxy makes itself all fit the same services.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

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
