//! weft's process plumbing: what every weft process (the identity service, the control plane,
//! each proxy, the `weft` CLI and the benchmarks) does the same way, apart from what it is for.
//!
//! It knows nothing of identities, policies or requests in the mesh: the crates that do
//! depend on it, never the other way round (`docs/architecture.md`, "Crates").
//!
//! # Layout
//! - [`process`]: logging (`WEFT_LOG`), the runtime a component runs on and its exit code,
//!   shutdown on Ctrl-C or SIGTERM, and free loopback ports for child processes.
//! - [`config`]: settings as operators write them (durations such as `500ms`, `1h30m`).
//! - [`metrics`]: a per-component Prometheus registry with the mesh's histogram buckets.
//! - [`serve`]: the HTTP(S) accept loop with graceful shutdown, and the JSON error body every
//!   weft API answers a refusal with.
//! - [`admin`]: the `/metrics`, `/live`, `/ready` endpoint every weft process serves.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod process;
pub mod serve;
