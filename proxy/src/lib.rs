//! The weft sidecar proxy (`weft proxy`, `weft-proxy`): zero-config mTLS between workloads,
//! authorization by the receiving proxy, and golden-signal metrics.
//!
//! # Layout
//! - [`inbound`]: peers → local app: TLS detection, mTLS termination, authorization, forwarding.
//! - [`outbound`]: local app → services: destination resolution, endpoint choice, pooled
//!   HTTP/2 over mTLS to peer proxies, CONNECT tunnels; the [`outbound::Resolve`] seam.
//! - [`tls`]: the proxy's TLS state following its identity client ([`tls::MeshTls`]).
//! - [`detect`]: protocol detection (TLS, HTTP/1, HTTP/2, opaque) with a replaying stream.
//! - [`http`]: hop-by-hop headers, authority, the original-protocol header.
//! - [`tcp`]: opaque byte forwarding.
//! - [`error`]: responses the proxy makes itself (`weft-error` header, reason codes).
//! - [`metrics`]: the proxy's Prometheus series.
//! - [`body`]: the one body type of the data path.

pub mod body;
pub mod detect;
pub mod error;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod tcp;
pub mod tls;
