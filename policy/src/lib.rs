//! The weft control plane (built in the control-plane issue).
//!
//! # Layout
//! Nothing yet.
