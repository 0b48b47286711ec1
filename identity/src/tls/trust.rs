//! Where a long-lived TLS config finds the trust bundle: fixed, or followed live from a
//! workload's credentials, so an anchor rotation reaches every new handshake without a
//! restart.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Credentials, TrustBundle};

/// The trust bundle a verifier reads at each handshake.
#[derive(Clone)]
pub struct TrustSource(Source);

#[derive(Clone)]
enum Source {
    Fixed(TrustBundle),
    /// The bundle of the current credentials; `initial` until there are any.
    Credentials {
        rx: watch::Receiver<Option<Arc<Credentials>>>,
        initial: TrustBundle,
    },
}

impl TrustSource {
    /// Always `bundle` (tools, tests, one-shot exchanges).
    pub fn fixed(bundle: TrustBundle) -> Self {
        Self(Source::Fixed(bundle))
    }

    /// The bundle of whatever credentials `rx` holds at the time of a handshake (an identity
    /// client's watch), `initial` while it holds none.
    pub fn following(rx: watch::Receiver<Option<Arc<Credentials>>>, initial: TrustBundle) -> Self {
        Self(Source::Credentials { rx, initial })
    }

    /// The credentials followed, when there are any.
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        match &self.0 {
            Source::Fixed(_) => None,
            Source::Credentials { rx, .. } => rx.borrow().clone(),
        }
    }

    /// The bundle to verify with now.
    pub fn current(&self) -> TrustBundle {
        match &self.0 {
            Source::Fixed(b) => b.clone(),
            Source::Credentials { rx, initial } => match rx.borrow().as_ref() {
                Some(c) => c.bundle.clone(),
                None => initial.clone(),
            },
        }
    }
}

impl From<&TrustBundle> for TrustSource {
    fn from(b: &TrustBundle) -> Self {
        Self::fixed(b.clone())
    }
}

impl From<TrustBundle> for TrustSource {
    fn from(b: TrustBundle) -> Self {
        Self::fixed(b)
    }
}

impl fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Source::Fixed(_) => "fixed",
            Source::Credentials { .. } => "following credentials",
        };
        f.debug_struct("TrustSource")
            .field("kind", &kind)
            .field("anchors", &self.current().fingerprints())
            .finish()
    }
}
