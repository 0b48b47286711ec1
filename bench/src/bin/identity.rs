//! Identity service benchmark: certificates issued per second over keep-alive HTTPS
//! connections, and issuance latency (HDR histogram).
//!
//! Two runs against one in-process identity service on loopback (its own runtime):
//! - closed loop: `--connections` keep-alive TLS connections, each sending certify requests
//!   back to back: the maximum rate;
//! - open loop: a fixed `--rate` spread over the connections; latency is measured from each
//!   request's intended send time, so a stall is not hidden (coordinated omission corrected).
//!
//! Every request is a full certify: token verified, CSR parsed and its signature verified, a
//! certificate signed. CSRs (each with its own key) are made before timing starts, as a
//! workload makes its key and CSR before it calls. Bounded in time and count; loopback only.
//!
//! `cargo run --release -p weft-bench --bin identity-bench -- [--duration 10s] [--json out.json]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::server::Running;
use weft_identity::{SpiffeId, tls};

#[derive(Debug, Parser)]
#[command(
    name = "identity-bench",
    about = "Certificates per second and issuance latency of the weft identity service"
)]
struct Args {
    /// Length of each measured run.
    #[arg(long, default_value = "10s", value_parser = weft_runtime::config::parse_duration)]
    duration: Duration,
    /// Warm-up before each run (not measured).
    #[arg(long, default_value = "1s", value_parser = weft_runtime::config::parse_duration)]
    warmup: Duration,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Fixed request rate of the open-loop run (requests per second).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Worker threads of the identity service's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Upper bound on requests per run, whatever the duration.
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct RunResult {
    mode: String,
    connections: usize,
    target_rate: Option<u64>,
    requests: u64,
    errors: u64,
    seconds: f64,
    certs_per_second: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

struct Shared {
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    server_id: SpiffeId,
    bodies: Vec<Bytes>,
    bearer: String,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let authority =
        Authority::load_or_create(&AuthorityConfig::new(dir.path())).map_err(|e| e.to_string())?;
    let identity = authority
        .trust_domain()
        .workload("bench", "load")
        .map_err(|e| e.to_string())?;
    let token = authority.token_key().create(
        &identity,
        &authority.anchor_fingerprint(),
        SystemTime::now(),
        Duration::from_secs(3600),
    )?;
    let bundle = authority.bundle().clone();

    // The service gets its own runtime, as it would in its own process.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let running = server_rt.block_on(Running::start(
        authority,
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
    ))?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bodies = (0..256)
        .map(|_| {
            let (_, csr) =
                weft_identity::client::generate_csr(&identity).map_err(|e| e.to_string())?;
            serde_json::to_vec(&serde_json::json!({ "csr": csr }))
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    let server_id =
        weft_identity::server::service_identity(&"weft.local".parse().map_err(|e| format!("{e}"))?)
            .map_err(|e| e.to_string())?;
    let cfg = tls::client_config(&bundle, server_id.clone(), None, &[tls::ALPN_HTTP11])
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        addr: running.addr,
        cfg: Arc::new(cfg),
        server_id,
        bodies,
        bearer: format!("Bearer {token}"),
    });

    let results = vec![
        client_rt.block_on(run(shared.clone(), &args, None))?,
        client_rt.block_on(run(shared.clone(), &args, Some(args.rate)))?,
    ];

    println!(
        "\nweft identity service: certify over keep-alive HTTPS (TLS 1.3), {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<12} {:>5} {:>8} {:>8} {:>7} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "mode",
        "conns",
        "rate",
        "requests",
        "errors",
        "certs/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for r in &results {
        println!(
            "{:<12} {:>5} {:>8} {:>8} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>8.2}",
            r.mode,
            r.connections,
            r.target_rate.map_or("max".to_string(), |r| r.to_string()),
            r.requests,
            r.errors,
            r.certs_per_second,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms
        );
    }
    let json =
        serde_json::to_string_pretty(&serde_json::json!({ "bench": "identity", "runs": results }))
            .map_err(|e| e.to_string())?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    server_rt.block_on(running.stop());
    Ok(())
}

async fn run(shared: Arc<Shared>, args: &Args, rate: Option<u64>) -> Result<RunResult, String> {
    let conns = args.connections.max(1);
    let total = args.warmup + args.duration;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.warmup;
    let deadline = start + total;
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let shared = shared.clone();
        let count = count.clone();
        let max = args.max_requests;
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut errors = 0u64;
            let mut sender = connect(&shared).await?;
            let mut k: u64 = 0;
            loop {
                // Intended send time: back to back (closed loop) or on the fixed schedule.
                let intended = match rate {
                    None => Instant::now(),
                    Some(rate) => {
                        let n = k * conns as u64 + c as u64;
                        start + Duration::from_secs_f64(n as f64 / rate as f64)
                    }
                };
                if intended >= deadline || count.load(Ordering::Relaxed) >= max {
                    break;
                }
                if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                let body = shared.bodies[(k as usize + c * 31) % shared.bodies.len()].clone();
                let req = http::Request::post(weft_identity::server::CERTIFY_PATH)
                    .header(http::header::HOST, "localhost")
                    .header(http::header::AUTHORIZATION, &shared.bearer)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .map_err(|e| e.to_string())?;
                let ok = match sender.send_request(req).await {
                    Ok(rsp) => {
                        let status = rsp.status();
                        rsp.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                let done = Instant::now();
                if intended >= measure_from {
                    count.fetch_add(1, Ordering::Relaxed);
                    if ok {
                        let us = done.saturating_duration_since(intended).as_micros() as u64;
                        let _ = hist.record(us.max(1));
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    sender = connect(&shared).await?;
                }
                k += 1;
            }
            Ok::<_, String>((hist, errors))
        }));
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.map_err(|e| e.to_string())??;
        hist.add(h).map_err(|e| e.to_string())?;
        errors += e;
    }
    let seconds = args.duration.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(RunResult {
        mode: if rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        }
        .to_string(),
        connections: conns,
        target_rate: rate,
        requests: hist.len() + errors,
        errors,
        seconds,
        certs_per_second: hist.len() as f64 / seconds,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    })
}

async fn connect(
    shared: &Shared,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(shared.addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(shared.cfg.clone())
        .connect(tls::server_name(&shared.server_id), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}
