//! The weft sidecar proxy (`weft proxy`, `weft-proxy`): zero-config mTLS between workloads,
//! authorization by the receiving proxy, and golden-signal metrics.
//!
//! # Layout
//! - [`inbound`]: peers → local app: TLS detection, mTLS termination, authorization, forwarding.
//! - [`outbound`]: local app → services: destination resolution, endpoint choice, pooled
//!   HTTP/2 over mTLS to peer proxies, CONNECT tunnels; the [`outbound::Resolve`] seam.
//! - [`run`]: start-up (certificate, policy, registration, readiness) and graceful shutdown.
//! - [`config`]: flags and `WEFT_*` variables, each with its default.
//! - [`discovery`]: the control-plane implementation of [`outbound::Resolve`].
//! - [`tls`]: the proxy's TLS state following its identity client ([`tls::MeshTls`]).
//! - [`detect`]: protocol detection (TLS, HTTP/1, HTTP/2, opaque) with a replaying stream.
//! - [`http`]: hop-by-hop headers, authority, the original-protocol header.
//! - [`listen`]: the accept loop both listeners share.
//! - [`tcp`]: opaque byte forwarding.
//! - [`error`]: responses the proxy makes itself (`weft-error` header, reason codes).
//! - [`metrics`]: the proxy's Prometheus series.
//! - [`body`]: the one body type of the data path.

pub mod body;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod error;
pub mod http;
pub mod inbound;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod run;
pub mod tcp;
pub mod tls;
