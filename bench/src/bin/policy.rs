//! Control-plane benchmark: the cost of one authorization decision, and the fan-out of one
//! resource change to many watching clients.
//!
//! - authz: `weft_policy::authz::authorize` against a port policy of 100 allow rules (exact
//!   identities, namespaces, any-authenticated, route-narrowed, regex paths), over a mix of
//!   allowed and denied requests, and over the worst case (a peer many rules admit, none on
//!   its route). Several runs; the median ns per decision is reported.
//! - fan-out: an in-process control plane (plain HTTP/2 on loopback) and `--watchers` clients,
//!   each its own connection (as each proxy has), watching the routes of one service. The
//!   resource file is edited `--rounds` times; for every watcher the time from the edit on disk
//!   to the new snapshot in its `watch::Receiver` is recorded (HDR histogram). This includes
//!   the directory poll interval (`--poll-interval`, the default 200 ms).
//!
//! Bounded in time and count; loopback only.
//!
//! `cargo run --release -p weft-bench --bin policy-bench -- [--watchers 1000] [--json out.json]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use weft_identity::SpiffeId;
use weft_policy::authz::{AllowRule, AuthzRoute, InboundPolicy, InboundPolicySpec, authorize};
use weft_policy::client::{ClientSettings, PolicyClient};
use weft_policy::server::{Listeners, Settings};
use weft_policy::wire::{Method, PathMatch, Pattern};

#[derive(Debug, Parser)]
#[command(
    name = "policy",
    about = "Authorization cost and watch fan-out of the weft control plane"
)]
struct Args {
    /// Allow rules in the benchmarked port policy.
    #[arg(long, default_value_t = 100)]
    policies: usize,
    /// Decisions per authz run.
    #[arg(long, default_value_t = 2_000_000)]
    decisions: u64,
    /// Authz runs (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Concurrent watching clients.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Resource edits, each delivered to every watcher.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The control plane's directory poll interval.
    #[arg(long, default_value = "200ms", value_parser = weft_runtime::config::parse_duration)]
    poll_interval: Duration,
    /// Longest wait for one round to reach every watcher.
    #[arg(long, default_value = "10s", value_parser = weft_runtime::config::parse_duration)]
    round_timeout: Duration,
    /// Skip the fan-out part.
    #[arg(long)]
    authz_only: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct AuthzResult {
    scenario: &'static str,
    rules: usize,
    runs: usize,
    decisions_per_run: u64,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
}

#[derive(Debug, serde::Serialize)]
struct FanoutResult {
    watchers: usize,
    rounds: usize,
    poll_interval_ms: f64,
    delivered: u64,
    missed: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// p99 minus the earliest delivery of the round, averaged: the fan-out spread itself,
    /// without the poll wait.
    spread_p99_ms: f64,
    connect_s: f64,
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://weft.local/ns/{ns}/sa/{sa}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A port policy of `n` rules of every kind.
fn policy(n: usize) -> InboundPolicy {
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let route = |p: PathMatch, methods: Vec<http::Method>| AuthzRoute {
            path: Some(p),
            methods: methods.into_iter().map(Method).collect(),
        };
        let mut r = AllowRule {
            policy: format!("default/policy-{i}"),
            ..AllowRule::default()
        };
        match i % 10 {
            // Exact identities, route-narrowed.
            0..=5 => {
                r.identities = vec![
                    id("default", &format!("client-{i}")),
                    id("prod", &format!("svc-{i}")),
                ];
                r.routes = vec![route(
                    PathMatch::Prefix(format!("/v{}/", i % 3)),
                    vec![http::Method::GET, http::Method::POST],
                )];
            }
            // Whole namespaces, narrowed by an exact path.
            6 | 7 => {
                r.namespaces = vec![format!("team-{i}"), "batch".into()];
                r.routes = vec![route(PathMatch::Exact(format!("/jobs/{i}")), vec![])];
            }
            // Any authenticated peer on a regex route.
            8 => {
                r.authenticated = true;
                r.routes = vec![route(
                    PathMatch::Regex(
                        Pattern::new(&format!("/metrics/{i}/[a-z]+"))
                            .unwrap_or_else(|e| panic!("{e}")),
                    ),
                    vec![http::Method::GET],
                )];
            }
            // Unauthenticated health checks.
            _ => {
                r.unauthenticated = true;
                r.routes = vec![route(
                    PathMatch::Exact(format!("/health/{i}")),
                    vec![http::Method::GET],
                )];
            }
        }
        rules.push(r);
    }
    InboundPolicy::new(InboundPolicySpec {
        name: "server:default/api".into(),
        rules,
    })
}

type Req = (Option<SpiffeId>, http::Method, String);

fn mixed_requests() -> Vec<Req> {
    let mut v = Vec::new();
    for i in 0..64usize {
        let j = (i * 10) % 60; // an exact-identity rule
        v.push(match i % 8 {
            0 => (
                Some(id("default", &format!("client-{j}"))),
                http::Method::GET,
                format!("/v{}/users/42", j % 3),
            ),
            1 => (
                Some(id("default", &format!("client-{j}"))),
                http::Method::DELETE,
                "/v0/users/42".into(),
            ),
            2 => (
                Some(id("batch", "worker")),
                http::Method::POST,
                "/jobs/16".into(),
            ),
            3 => (
                Some(id("batch", "worker")),
                http::Method::POST,
                "/jobs/99".into(),
            ),
            4 => (
                Some(id("other", "random")),
                http::Method::GET,
                "/v1/users".into(),
            ),
            5 => (None, http::Method::GET, "/health/9".into()),
            6 => (None, http::Method::GET, "/v1/users".into()),
            _ => (
                Some(id("other", "random")),
                http::Method::GET,
                "/metrics/8/cpu".into(),
            ),
        });
    }
    v
}

/// A peer in a namespace that 20 rules admit, on a route none of them allows, plus the 10
/// any-authenticated and 10 unauthenticated rules: every candidate's routes are checked.
fn worst_requests() -> Vec<Req> {
    vec![(
        Some(id("batch", "worker")),
        http::Method::PUT,
        "/nothing/here/at/all".into(),
    )]
}

fn time_authz(p: &InboundPolicy, reqs: &[Req], n: u64) -> f64 {
    let start = Instant::now();
    let mut allowed = 0u64;
    for i in 0..n {
        let (peer, m, path) = &reqs[(i as usize) % reqs.len()];
        if authorize(
            black_box(p),
            black_box(peer.as_ref()),
            black_box(m),
            black_box(path),
        )
        .is_allowed()
        {
            allowed += 1;
        }
    }
    black_box(allowed);
    start.elapsed().as_nanos() as f64 / n as f64
}

fn bench_authz(args: &Args) -> Vec<AuthzResult> {
    let p = policy(args.policies);
    let mut out = Vec::new();
    for (scenario, reqs) in [
        ("mixed allow/deny", mixed_requests()),
        ("worst-case deny", worst_requests()),
    ] {
        let _ = time_authz(&p, &reqs, args.decisions / 10); // warm-up
        let mut runs: Vec<f64> = (0..args.runs)
            .map(|_| time_authz(&p, &reqs, args.decisions))
            .collect();
        runs.sort_by(f64::total_cmp);
        out.push(AuthzResult {
            scenario,
            rules: args.policies,
            runs: args.runs,
            decisions_per_run: args.decisions,
            median_ns: runs[runs.len() / 2],
            min_ns: runs[0],
            max_ns: runs[runs.len() - 1],
        });
    }
    out
}

const RESOURCES: &str = "kind: Service
metadata: {name: api}
spec: {ports: [{port: 8080}]}
---
kind: Service
metadata: {name: api-v1}
spec: {ports: [{port: 8080}], selector: {app: api, version: v1}}
---
kind: Service
metadata: {name: api-v2}
spec: {ports: [{port: 8080}], selector: {app: api, version: v2}}
---
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: api, port: 8080}]
  rules:
    - backendRefs: [{name: api-v1, port: 8080, weight: W1}, {name: api-v2, port: 8080, weight: W2}]
";

fn resources(round: u32) -> String {
    RESOURCES
        .replace("W1", &(100 - round).to_string())
        .replace("W2", &round.to_string())
}

fn write(dir: &std::path::Path, content: &str) -> std::io::Result<()> {
    let tmp = dir.join(".r.tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, dir.join("resources.yaml"))
}

async fn bench_fanout(args: &Args) -> Result<FanoutResult, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    write(dir.path(), &resources(0)).map_err(|e| e.to_string())?;
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = api.local_addr().map_err(|e| e.to_string())?;
    let mut settings = Settings::insecure(dir.path());
    settings.poll_interval = args.poll_interval;
    // The watchers stand for as many proxies, but all come from 127.0.0.1 without identity,
    // so the per-client caps (per IP address in this mode) would count them as one.
    settings.api.max_watches_per_identity = usize::MAX;
    settings.api.max_connections_per_ip = usize::MAX;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(weft_policy::server::serve(
        Listeners { api, admin },
        settings,
        weft_runtime::process::wait_true(stop_rx),
    ));

    // Connect every watcher and wait for its first snapshot (in batches, to stay under the
    // listen backlog).
    let connect_started = Instant::now();
    let mut receivers = Vec::with_capacity(args.watchers);
    let mut clients = Vec::with_capacity(args.watchers);
    for batch in (0..args.watchers).collect::<Vec<_>>().chunks(100) {
        let mut pending = Vec::new();
        for _ in batch {
            let client = PolicyClient::new(ClientSettings::new(addr.to_string(), None));
            let rx = client.watch_routes("default", "api");
            clients.push(client);
            pending.push(rx.clone());
            receivers.push(rx);
        }
        for mut rx in pending {
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
                .await
                .map_err(|_| "a watcher got no first snapshot within 30 s".to_string())?
                .map_err(|e| e.to_string())?;
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!("{} watchers connected in {connect_s:.2} s", args.watchers);

    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut missed = 0u64;
    let mut spread_sum = 0.0;
    for round in 1..=args.rounds as u32 {
        let want = round;
        let edited = Instant::now();
        let tasks: Vec<_> = receivers
            .iter()
            .cloned()
            .map(|mut rx| {
                tokio::spawn(async move {
                    let got = rx
                        .wait_for(|r| {
                            r.as_ref().is_some_and(|r| {
                                r.rules
                                    .first()
                                    .and_then(|rule| rule.backends.get(1))
                                    .map(|b| b.weight)
                                    == Some(want)
                            })
                        })
                        .await
                        .is_ok();
                    got.then(Instant::now)
                })
            })
            .collect();
        write(dir.path(), &resources(round)).map_err(|e| e.to_string())?;
        let mut times = Vec::with_capacity(tasks.len());
        let deadline = edited + args.round_timeout;
        for t in tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, t).await {
                Ok(Ok(Some(at))) => times.push(at.duration_since(edited)),
                _ => missed += 1,
            }
        }
        times.sort();
        for t in &times {
            hist.record(t.as_micros().max(1) as u64)
                .map_err(|e| e.to_string())?;
        }
        if let (Some(first), Some(p99)) = (
            times.first(),
            times.get(times.len().saturating_sub(1) * 99 / 100),
        ) {
            spread_sum += (*p99 - *first).as_secs_f64() * 1000.0;
        }
        eprintln!(
            "round {round}: {} delivered, first {:?}, last {:?}",
            times.len(),
            times.first().copied().unwrap_or_default(),
            times.last().copied().unwrap_or_default()
        );
    }
    drop(receivers);
    drop(clients);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(FanoutResult {
        watchers: args.watchers,
        rounds: args.rounds,
        poll_interval_ms: args.poll_interval.as_secs_f64() * 1000.0,
        delivered: hist.len(),
        missed,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
        spread_p99_ms: spread_sum / args.rounds.max(1) as f64,
        connect_s,
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let authz = bench_authz(&args);
    println!("authorization decision ({} rules)", args.policies);
    println!(
        "{:<20} {:>10} {:>10} {:>10}",
        "scenario", "median ns", "min ns", "max ns"
    );
    for r in &authz {
        println!(
            "{:<20} {:>10.1} {:>10.1} {:>10.1}",
            r.scenario, r.median_ns, r.min_ns, r.max_ns
        );
    }
    let fanout = if args.authz_only {
        None
    } else {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match rt.block_on(bench_fanout(&args)) {
            Ok(f) => {
                println!();
                println!(
                    "fan-out: one change to {} watchers, {} rounds, poll interval {} ms",
                    f.watchers, f.rounds, f.poll_interval_ms
                );
                println!(
                    "{:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>14}",
                    "delivered", "missed", "p50 ms", "p90 ms", "p99 ms", "max ms", "spread p99 ms"
                );
                println!(
                    "{:>10} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>14.1}",
                    f.delivered, f.missed, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms, f.spread_p99_ms
                );
                Some(f)
            }
            Err(e) => {
                eprintln!("fan-out failed: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    };
    let json = serde_json::json!({ "authz": authz, "fanout": fanout });
    println!();
    println!(
        "{}",
        serde_json::to_string_pretty(&json).unwrap_or_default()
    );
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&json).unwrap_or_default())
    {
        eprintln!("cannot write {}: {e}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
