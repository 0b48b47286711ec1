//! The hostile catalogue (issue 16): a real mesh of real processes (`weft identity`, `weft
//! policy`, proxies `api` and `web`, a recording app behind api), a good client calling api
//! through web's outbound every 15 ms the whole time, and each hostile case in turn. Every case
//! asserts that it is refused cleanly (a status with its `weft-error` reason, or a TLS alert,
//! and the counter that records it), that the good client saw no failure, and that the
//! proxies' resident memory stayed bounded ([`mesh::RSS_GROWTH_LIMIT_KIB`]).
//!
//! One `#[test]` per family, each with its own mesh (they run in parallel):
//! - [`tls`]: plaintext, no certificate, self-signed, foreign CA, expired, not yet valid, wrong
//!   identity, no SPIFFE ID, TLS 1.2 (`openssl s_client`), a handshake that never ends; at
//!   api's inbound.
//! - [`smuggle`]: request smuggling shapes at both listeners (web's outbound in plaintext,
//!   api's inbound over mTLS); the app never sees a smuggled request.
//! - [`limits`]: header and URI size limits (HTTP/1 and HTTP/2, the shared web→api HTTP/2
//!   connection), oversized responses, bad chunked bodies, a client gone mid-body.
//! - [`slow`]: slowloris and idle connections, at both listeners.
//! - [`floods`]: HTTP/2 rapid reset and CONTINUATION floods, on web's outbound (h2c) and api's
//!   inbound (mTLS).
//! - [`discovery`]: many distinct unknown destinations through web's outbound; a service
//!   created afterwards is still found at once.
//! - [`control`]: request and watch floods straight at the control plane's API with a workload
//!   certificate.
//!
//! System tests (`WEFT_SYSTEM_TESTS=1`): each starts five processes (a helper module holds the
//! mesh: [`mesh`], certificates: [`certs`], raw bytes and HTTP/2 frames: [`raw`]).
#![allow(clippy::unwrap_used)]

mod support;

#[path = "hostile/certs.rs"]
mod certs;
#[path = "hostile/control.rs"]
mod control;
#[path = "hostile/discovery.rs"]
mod discovery;
#[path = "hostile/floods.rs"]
mod floods;
#[path = "hostile/limits.rs"]
mod limits;
#[path = "hostile/mesh.rs"]
mod mesh;
#[path = "hostile/raw.rs"]
mod raw;
#[path = "hostile/slow.rs"]
mod slow;
#[path = "hostile/smuggle.rs"]
mod smuggle;
#[path = "hostile/tls.rs"]
mod tls;
