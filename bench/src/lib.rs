//! weft's benchmarks. The `weft-bench` binary (`src/main.rs`) has one subcommand per part:
//! `app` (the app behind the mesh), `load` (the load generator), `mesh` (direct against
//! app → weft → weft → app over mTLS and against the same hop made by two HAProxies, side by
//! side in one run), `stack` (the outbound
//! proxy's full stack, every layer an HTTPRoute configures, against its minimal stack, in one
//! run), `intercept` (direct against both proxies with transparent interception, between
//! two network namespaces; root only) and `soak` (steady load for a long time while the mesh
//! changes; failures and memory over time). `identity-bench` and
//! `policy-bench` (`src/bin/`) measure the identity service and the control plane on their
//! own. Everything runs on loopback (`intercept`: on a private veth pair) and is bounded in
//! time and count; see `docs/benchmarks.md` for what each one measures and the numbers.
//!
//! # Layout
//! - `app`: a tiny HTTP/1.1 + h2c server answering every request with a fixed body; run as
//!   its own process by `mesh`.
//! - `idle`: many idle keep-alive client connections, held open while memory is read.
//! - `intercept`: two network namespaces over a veth pair (client; app, identity service and
//!   control plane), `weft init` and a proxy under its own UID in each; direct and weft
//!   alternately, the load generator a process in the client namespace; probes and counters
//!   proving the weft path is mTLS through both proxies and the direct one through neither.
//!   `intercept/netns.rs` the namespaces and what runs in them, `intercept/start.rs` the
//!   set-up step by step, `intercept/run.rs` the probes, counters and measured runs,
//!   `intercept/report.rs` its report.
//! - `load`: the load generator: keep-alive client connections, open loop at a fixed rate
//!   (paced by a thread, latency from each request's intended send time) or closed loop at
//!   the maximum rate; HDR histograms; errors counted by kind.
//! - `mesh`: starts the app, `weft identity`, `weft policy` and two `weft proxy` processes in a
//!   temporary directory, runs the direct, weft and peer scenarios alternately at each fixed
//!   rate and at the maximum, samples the proxies' CPU and memory, checks the path was mTLS;
//!   the harness (mesh, load runtime, one measured run) that `stack` shares. `mesh/start.rs`
//!   the mesh it starts, `mesh/scenarios.rs` the scenarios it runs (the harness),
//!   `mesh/proxies.rs` measuring the proxies.
//! - `peer`: the HAProxy pair of the peer scenario: certificates from the mesh's identity
//!   service, the two configurations (`peer/config.rs`), the processes, the probes showing
//!   the hop is mTLS over TLS 1.3 only (`peer/checks.rs`).
//! - `plot`: the plots (SVG): the latency distribution, one line per scenario; values over
//!   time (the soak's memory), one line per process.
//! - `procstat`: a process's CPU time and resident memory from `/proc`.
//! - `report`: what the benchmarks report: the data model (`report/mod.rs`: scenarios, runs,
//!   settings, medians and spreads over the repeats, differences and ratios paired repeat by
//!   repeat); `report/mesh.rs` and `report/stack.rs` the mesh and stack reports and their
//!   Markdown; `report/targets.rs` the goals, judged; `report/markdown.rs` the Markdown
//!   helpers every report shares (`intercept/report.rs` too): numbers, tables, the latency
//!   table, the checks.
//! - `soak`: `weft-bench soak`: steady open-loop load through the mesh for a long time while
//!   certificates rotate, the control plane's resources are edited and a second api instance
//!   comes and goes; failed requests and every weft process's memory over time, judged.
//!   `soak/churn.rs` the edits and the second instance, `soak/memory.rs` the samples and the
//!   drift, `soak/report.rs` its report (JSON, Markdown, plot) and verdict.
//! - `suite`: `weft-bench all` (`just bench`): the identity and control-plane benchmarks, then
//!   the mesh benchmark; writes the JSON, the Markdown summary and the plot of one date.
//! - `stack`: on the same mesh, direct, minimal stack and full stack alternately; writes and
//!   removes the full-stack HTTPRoute in the control plane's directory while the mesh runs,
//!   and waits until the control plane and the web proxy show each change.

pub mod app;
pub mod idle;
pub mod intercept;
pub mod load;
pub mod mesh;
pub mod peer;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod scale;
pub mod soak;
pub mod stack;
pub mod suite;

/// Errors of the benchmark: a message saying what failed and what to do.
pub type Error = String;
