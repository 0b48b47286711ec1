//! The first layer of the inbound path: the peer's identity, learnt once per connection from
//! its certificate during the mTLS handshake, attached to every request on that connection.

mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use weft_identity::SpiffeId;

pub use self::layer::IdentityLayer;
use crate::svc::Labels;

/// Who is on the other end of a connection, as the layers after this one see it (a request
/// extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The SPIFFE ID the client proved with its certificate; `None` for plaintext.
    pub id: Option<SpiffeId>,
    /// The metric label: the SPIFFE ID, or `unauthenticated`.
    pub label: Arc<str>,
}

impl ClientIdentity {
    pub fn new(id: Option<SpiffeId>) -> Self {
        let label = id
            .as_ref()
            .map_or_else(|| Arc::from("unauthenticated"), |i| Arc::from(i.as_str()));
        Self { id, label }
    }
}

/// Attaches the connection's [`ClientIdentity`] to each request.
#[derive(Debug, Clone)]
pub struct Identity<S> {
    inner: S,
    client: ClientIdentity,
}

impl<S, B> tower::Service<Request<B>> for Identity<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let tls = self.client.id.is_some();
        Labels::set_peer(&req, || self.client.label.clone(), tls);
        req.extensions_mut().insert(self.client.clone());
        self.inner.call(req)
    }
}
