//! weft's process plumbing: what every weft process (the identity service, the control plane,
//! each proxy, the `weft` CLI and the benchmarks) does the same way, apart from what it is for.
//!
//! It knows nothing of identities, policies or requests in the mesh: the crates that do
//! depend on it, never the other way round (`docs/architecture.md`, "Crates and their
//! boundaries").
//!
//! # Layout
//! - [`process`]: logging (`WEFT_LOG`), the runtime a component runs on and its exit code,
//!   shutdown on Ctrl-C or SIGTERM, and free loopback ports for child processes.
//! - [`config`]: settings as operators write them (durations such as `500ms`, `1h30m`), and
//!   read from a map of `WEFT_*` variables through clap's own argument list.
//! - [`metrics`]: a per-component Prometheus registry with the mesh's histogram buckets.
//! - [`serve`]: binding a listener, the HTTP(S) accept loop with graceful shutdown, and the
//!   JSON error body every weft API answers a refusal with.
//! - [`admin`]: the `/metrics`, `/live`, `/ready` endpoint every weft process serves.
//! - [`child`]: child processes (the demo's, the benchmarks', the tests'): started with a log
//!   file, stopped with SIGTERM then SIGKILL after a grace, killed when dropped.
//! - [`etcd`]: a real etcd cluster of loopback members (`etcd` processes), for `weft demo
//!   --store etcd` and the tests.
//! - `testing` (cargo feature `testing`, for tests and benchmarks only): plain HTTP/1 GETs on
//!   loopback, sums over a Prometheus page, bounded waits, and waiting for a child to answer.

pub mod admin;
pub mod child;
pub mod config;
pub mod etcd;
pub mod metrics;
pub mod process;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;
