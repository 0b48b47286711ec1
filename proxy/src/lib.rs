//! The weft sidecar proxy (built in the sidecar issue).
//!
//! # Layout
//! Nothing yet: the data path lands with the sidecar issue.
