use super::{ClientIdentity, Identity};

/// Builds [`Identity`] services for one connection.
#[derive(Debug, Clone)]
pub struct IdentityLayer {
    client: ClientIdentity,
}

impl IdentityLayer {
    pub fn new(client: ClientIdentity) -> Self {
        Self { client }
    }
}

impl<S> tower::Layer<S> for IdentityLayer {
    type Service = Identity<S>;

    fn layer(&self, inner: S) -> Identity<S> {
        Identity {
            inner,
            client: self.client.clone(),
        }
    }
}
