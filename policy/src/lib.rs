//! weft's control plane (`weft policy`, `weft-policy`): the resources operators write, the
//! endpoint registry workloads keep their leases in, and the list+watch API every proxy
//! follows, plus the client library the proxy uses to follow it.
//!
//! # Layout
//! - [`resources`]: the YAML shapes (`Service`, `Server`, `AuthorizationPolicy`, `HTTPRoute`,
//!   `MeshConfig`), unknown fields rejected.
//! - [`load`]: reading a directory, validating it (errors name file, document, field) and
//!   compiling it into a [`load::Config`]; [`load::check_dir`] for `weft policy check`.
//! - [`authz`]: compiled inbound policies and [`authz::authorize`], the decision the proxy
//!   makes for every request.
//! - [`routes`]: a service's routes as the proxy receives them, and rule matching.
//! - [`split`]: weighted backend choice.
//! - [`registry`]: endpoint types and the lease registry.
//! - [`store`]: the versioned state (config + registry) that watches follow.
//! - [`files`]: polling the resource directory and swapping in valid changes.
//! - [`api`]: the HTTP/2 API: routing, caller authentication and registration (`api/mod.rs`),
//!   watches as newline-delimited JSON streams (`api/watches.rs`), query strings
//!   (`api/query.rs`).
//! - [`client`]: the proxy's side: watches as `tokio::sync::watch` receivers, registration
//!   renewal, reconnection with jittered back-off.
//! - [`stream`]: the discovery stream's messages (one stream per proxy, endpoints sent as
//!   deltas), and computing and applying a delta.
//! - [`wire`]: value types shared by YAML and JSON (durations, regexes, matches, events).
//! - [`manage`]: changing the resources through the API (`weft apply`, `get`, `delete`):
//!   validation of the whole new set, and the compare-and-swap write to either store.
//! - [`metrics`]: the control plane's Prometheus series.
//! - [`etcd`]: the client of the etcd store control-plane replicas share (etcd's v3 JSON
//!   gateway over hyper).
//! - [`server`]: the control plane assembled on bound listeners (store, directory follower,
//!   lease expiry, API, admin endpoint with `/status`).
//! - [`config`]: flags and environment of `weft policy` / `weft policy check`, `run`,
//!   `run_main`, `check_main`.
//!
//! The resources, the API and the registry are described in `docs/policy.md`.
//!
//! YAML is parsed with `serde_yaml_ng`: `serde_yaml` is archived and unmaintained, and
//! `serde_yaml_ng` is its maintained continuation with the same API and the same
//! `serde_yaml::Value` model (which `serde_path_to_error` walks to name the failing field).

pub mod api;
pub mod authz;
pub mod client;
pub mod config;
pub mod etcd;
pub mod files;
pub mod load;
pub mod manage;
pub mod metrics;
pub mod registry;
pub mod resources;
pub mod routes;
pub mod server;
pub mod split;
pub mod store;
pub mod stream;
pub mod wire;
