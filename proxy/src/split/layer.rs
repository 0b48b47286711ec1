use super::Split;

/// Builds [`Split`] services.
#[derive(Debug, Clone, Default)]
pub struct SplitLayer;

impl<S> tower::Layer<S> for SplitLayer {
    type Service = Split<S>;

    fn layer(&self, inner: S) -> Split<S> {
        Split { inner }
    }
}
