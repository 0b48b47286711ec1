//! The weft sidecar proxy (`weft proxy`, `weft-proxy`): zero-config mTLS between workloads,
//! authorization by the receiving proxy, and golden-signal metrics.
//!
//! # Layout
//! - [`stack`]: the request path of both directions, composed in request order. Its layers,
//!   each in its own module, laid out as tower's (`x/layer.rs`: `XLayer`, which builds the
//!   service `X` of `x/mod.rs`; a layer that only checks a request and adds to it is tower's
//!   `Filter` with the module's predicate, `X` and `XLayer` naming tower's types, and has no
//!   `layer.rs`): [`edge`] (errors to responses, request metrics), [`identity`]
//!   (the peer's mTLS identity), [`authz`] (inbound authorization), [`destination`] (which
//!   service), [`route`] (which HTTPRoute rule, compiled with its retry policy and budget, and
//!   its metrics), [`split`] (which backend), [`timeout`], [`fault`] (injected aborts and
//!   delays), [`retry`] (retries within the budget), [`balance`] (which endpoint, with the
//!   circuit breaker), and the services at the ends: [`endpoint`] (pooled mTLS to the peer
//!   proxy), [`app`] (the local application) and [`unmeshed`]'s switch between the mesh and
//!   original destinations.
//! - [`inbound`]: peers → local app: TLS detection, mTLS termination, authorization, forwarding.
//! - [`outbound`]: local app → services: accepts the app's connections and serves them with
//!   the outbound stack.
//! - [`run`]: start-up (certificate, policy, registration, readiness) and graceful shutdown.
//! - [`config`]: flags and `WEFT_*` variables, each with its default.
//! - [`discovery`]: what the outbound side learns of services (endpoints, routes, addresses),
//!   how long a request waits for a first answer, and its control-plane implementation.
//! - [`tls`]: the proxy's TLS state following its identity client ([`tls::MeshTls`]).
//! - [`detect`]: protocol detection (TLS, HTTP/1, HTTP/2, opaque) with a replaying stream.
//! - [`http`]: hop-by-hop headers, authority, the original-protocol header.
//! - [`limits`]: the header limits of the mesh, one set, enforced where a message enters it.
//! - [`listen`]: the accept loop and the HTTP connection serving both listeners share.
//! - [`orig_dst`]: where a connection redirected by `weft init` was going (`SO_ORIGINAL_DST`).
//! - [`user`]: the user and group the proxy runs as, which `weft init` must exempt from
//!   redirection.
//! - [`tcp`]: opaque byte forwarding.
//! - [`upgrade`] (HTTP/1.1 upgrades, WebSocket), [`expect`] (`Expect: 100-continue`),
//!   [`trailers`] (trailer fields declared for HTTP/1.1 clients): HTTP features that cross the
//!   mesh as they would cross no proxy.
//! - [`unmeshed`]: on redirected connections, what the mesh does not know goes to its original
//!   destination as it is; the proxy's own sockets, to refuse its own traffic coming back.
//! - [`error`]: responses the proxy makes itself (`weft-error` header, reason codes).
//! - [`metrics`]: the proxy's Prometheus series.
//! - [`body`]: the one body type of the data path; [`svc`]: the types all layers share, and
//!   the table of the request extensions that carry what one layer learns to the next.
//! - `testing` (tests only): what the outbound layers' unit tests share.

pub mod app;
pub mod authz;
pub mod balance;
pub mod body;
pub mod config;
pub mod destination;
pub mod detect;
pub mod discovery;
pub mod edge;
pub mod endpoint;
pub mod error;
pub mod expect;
pub mod fault;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod park;
pub mod retry;
pub mod route;
pub mod run;
pub mod split;
pub mod stack;
pub mod svc;
pub mod tcp;
#[cfg(test)]
mod testing;
pub mod timeout;
pub mod tls;
pub mod trailers;
pub mod unmeshed;
pub mod upgrade;
pub mod user;
