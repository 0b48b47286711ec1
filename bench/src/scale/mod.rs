//! The control plane at scale (`weft-bench scale`): simulated proxies, each a real mTLS client
//! with its own discovery stream, on two `weft policy` replicas over a three-member etcd, with
//! 1,000 services and 10,000 endpoints, one service holding 5,000 of them.
//!
//! Measured:
//! - **delivery**: a workload registers for (then leaves) the big service, through the
//!   replicas' API, `--rounds` times; for every proxy that calls it, the time from the
//!   registration being sent to the change in its receiver (HDR percentiles);
//! - **bytes per change**: what the replicas sent for each change (their
//!   `weft_policy_discovery_bytes_total`), per proxy that got it: it should be the size of one
//!   endpoint, not of 5,000;
//! - **memory per proxy**: each replica's resident memory with its proxies connected and in
//!   sync, less what it had before any connected, over the proxies on it;
//! - **a replica restart**: one replica is killed; the time until all its proxies are on the
//!   other, what the survivor sent them (snapshots would be a resync storm: resuming by
//!   version should make it `UNCHANGED` lines), its peak CPU; then the replica comes back.
//!
//! Needs `etcd` (Debian's `etcd-server`) and a release `weft` beside this binary; loopback
//! only; bounded in count and time.

mod plane;
mod sim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use weft_policy::registry::Registration;
use weft_runtime::testing::{http_get_async, metric_sum};

use self::plane::{BIG, Plane};
use crate::Error;

/// The command line of `weft-bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub proxies: u32,
    #[arg(long, default_value_t = 1_000)]
    pub services: u32,
    /// Endpoints of the big service (the other services have 5 each).
    #[arg(long, default_value_t = 5_000)]
    pub big_endpoints: u32,
    /// Proxies that call the big service.
    #[arg(long, default_value_t = 1_000)]
    pub big_callers: u32,
    /// Endpoint changes measured.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// New proxies a second while they connect.
    #[arg(long, default_value_t = 1_000)]
    pub connect_rate: u32,
    /// The `weft` binary (default: beside this one).
    #[arg(long)]
    pub weft: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `weft-bench scale`: runs the benchmark and prints (and writes) its report as JSON.
pub fn main(a: ScaleArgs) -> Result<(), Error> {
    let weft = crate::mesh::find_weft(a.weft.as_deref())?;
    let cfg = ScaleConfig {
        proxies: a.proxies,
        services: a.services,
        big_endpoints: a.big_endpoints,
        big_callers: a.big_callers,
        rounds: a.rounds,
        connect_rate: a.connect_rate,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = rt.block_on(run(&weft, &cfg))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{json}");
    if let Some(path) = a.json {
        std::fs::write(&path, &json)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub proxies: u32,
    pub services: u32,
    pub big_endpoints: u32,
    /// Proxies that call the big service.
    pub big_callers: u32,
    /// Endpoint changes measured (each a registration or its removal).
    pub rounds: u32,
    /// New proxies a second while they connect.
    pub connect_rate: u32,
}

/// What was measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleReport {
    pub config: BTreeMap<&'static str, u32>,
    pub connect_seconds: f64,
    pub subscriptions: f64,
    pub delivery_ms: BTreeMap<&'static str, f64>,
    pub changes_delivered: u64,
    /// Bytes the replicas sent per change, per proxy that got it.
    pub bytes_per_change_per_proxy: f64,
    /// The big service's snapshot, for comparison.
    pub big_snapshot_bytes: f64,
    pub replica_memory: Vec<ReplicaMemory>,
    pub restart: Restart,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaMemory {
    pub replica: String,
    pub proxies: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_proxy: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Restart {
    pub moved_proxies: f64,
    pub resync_seconds: f64,
    pub snapshot_bytes: f64,
    pub other_bytes: f64,
    pub delta_bytes: f64,
    /// The survivor's CPU over the re-sync, in cores.
    pub survivor_cpu_cores: f64,
    /// The survivor's resident memory at its peak so far.
    pub survivor_peak_rss_kib: u64,
    /// A change after the restart, to every proxy that calls the big service: p99.
    pub delivery_after_p99_ms: f64,
}

async fn metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = http_get_async(admin, "/metrics", "localhost")
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    metric_sum(&text, name, labels)
}

/// Bytes sent by every live replica, by type.
async fn sent(plane: &Plane, kind: &str) -> f64 {
    let mut sum = 0.0;
    for r in plane.replicas.iter().filter(|r| r.proc.is_some()) {
        sum += metric(
            r.admin,
            "weft_policy_discovery_bytes_total",
            &[&format!("type=\"{kind}\"")],
        )
        .await;
    }
    sum
}

/// The bytes one replica sent: snapshots, other lines, deltas.
async fn bytes_by_type(admin: SocketAddr) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (slot, kind) in out.iter_mut().zip(["snapshot", "other", "delta"]) {
        *slot = metric(
            admin,
            "weft_policy_discovery_bytes_total",
            &[&format!("type=\"{kind}\"")],
        )
        .await;
    }
    out
}

async fn streams(admin: SocketAddr) -> f64 {
    metric(admin, "weft_policy_discovery_streams", &[]).await
}

fn rss(plane: &Plane, i: usize) -> Result<crate::procstat::Memory, Error> {
    let pid = plane.replicas[i]
        .proc
        .as_ref()
        .map(|p| p.pid())
        .ok_or("the replica is not running")?;
    crate::procstat::memory(pid)
}

/// Runs the benchmark with the `weft` binary at `weft`.
pub async fn run(weft: &Path, cfg: &ScaleConfig) -> Result<ScaleReport, Error> {
    eprintln!("starting etcd (3 members), the identity service and two replicas");
    let mut plane = Plane::start(weft, cfg.services, cfg.big_endpoints).await?;
    let before: Vec<u64> = (0..2)
        .map(|i| rss(&plane, i).map(|m| m.rss_kib))
        .collect::<Result<_, _>>()?;
    eprintln!("connecting {} simulated proxies", cfg.proxies);
    let limit = Duration::from_secs(600);
    let (fleet, connect) = sim::connect(
        &plane,
        cfg.proxies,
        cfg.services,
        cfg.big_callers,
        cfg.connect_rate,
        limit,
    )
    .await?;
    eprintln!("{} proxies in sync after {connect:?}", fleet.len());
    let mut subscriptions = 0.0;
    let mut replica_memory = Vec::new();
    for (i, r) in plane.replicas.iter().enumerate() {
        subscriptions += metric(r.admin, "weft_policy_watches_active", &[]).await;
        let on = streams(r.admin).await;
        let after = rss(&plane, i)?.rss_kib;
        replica_memory.push(ReplicaMemory {
            replica: r.name.clone(),
            proxies: on,
            rss_before_kib: before[i],
            rss_after_kib: after,
            kib_per_proxy: after.saturating_sub(before[i]) as f64 / on.max(1.0),
        });
    }

    // The workload that comes and goes: registered through the replicas' API as the big
    // service's identity.
    let big_id = weft_identity::TrustDomain::default()
        .workload("default", BIG)
        .map_err(|e| e.to_string())?;
    let registrar = sim::client(&plane, &sim::credentials(&plane, &big_id)?)?;
    let callers: Vec<_> = fleet.iter().filter_map(|p| p.big.clone()).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3).map_err(|e| e.to_string())?;
    let (mut delta_bytes, mut deliveries) = (0.0, 0u64);
    for round in 0..cfg.rounds {
        let address: SocketAddr = ([127, 0, 0, 1], 30_000 + (round / 2) as u16).into();
        let adding = round % 2 == 0;
        let bytes_before = sent(&plane, "delta").await + sent(&plane, "snapshot").await;
        let from = Instant::now();
        change(&registrar, address, adding).await?;
        let done: Arc<dyn Fn(&weft_policy::registry::ServiceEndpoints) -> bool + Send + Sync> =
            Arc::new(move |e| e.endpoints.iter().any(|x| x.address == address) == adding);
        let took = sim::arrivals(callers.clone(), from, Duration::from_secs(30), done).await?;
        for d in &took {
            let _ = hist.record(d.as_millis().max(1) as u64);
        }
        deliveries += took.len() as u64;
        // The counters are read after every proxy has its change.
        let bytes = sent(&plane, "delta").await + sent(&plane, "snapshot").await - bytes_before;
        delta_bytes += bytes;
        eprintln!(
            "change {round}: to {} proxies, p50 {:?} p99 {:?}, {:.0} bytes sent per proxy",
            took.len(),
            took[took.len() / 2],
            took[(took.len() * 99 / 100).min(took.len() - 1)],
            bytes / took.len().max(1) as f64
        );
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64;
    let delivery_ms = BTreeMap::from([
        ("p50", q(0.5)),
        ("p90", q(0.9)),
        ("p99", q(0.99)),
        ("max", hist.max() as f64),
    ]);
    let big_snapshot = {
        let e = callers[0].borrow().clone().ok_or("no big endpoints")?;
        serde_json::to_vec(&*e).map_or(0.0, |v| v.len() as f64)
    };

    let restart = restart(&mut plane, &registrar, &callers).await?;
    drop(fleet);
    Ok(ScaleReport {
        config: BTreeMap::from([
            ("proxies", cfg.proxies),
            ("services", cfg.services),
            ("big_endpoints", cfg.big_endpoints),
            ("big_callers", cfg.big_callers),
            ("rounds", cfg.rounds),
        ]),
        connect_seconds: connect.as_secs_f64(),
        subscriptions,
        delivery_ms,
        changes_delivered: deliveries,
        bytes_per_change_per_proxy: delta_bytes / deliveries.max(1) as f64,
        big_snapshot_bytes: big_snapshot,
        replica_memory,
        restart,
    })
}

/// Registers (`adding`) or removes the workload at `address`.
async fn change(
    registrar: &weft_policy::client::PolicyClient,
    address: SocketAddr,
    adding: bool,
) -> Result<(), Error> {
    if adding {
        let reg = Registration {
            trust: None,
            service: BIG.into(),
            namespace: None,
            labels: BTreeMap::new(),
            address,
            identity: None,
            lease: Some(weft_policy::wire::Dur(Duration::from_secs(300))),
            metrics: None,
        };
        registrar.register(&reg).await.map(|_| ())
    } else {
        registrar.deregister("default", address).await
    }
    .map_err(|e| format!("the change through the replicas' API failed: {e}"))
}

/// Kills the first replica, measures its proxies moving to the second, and starts it again.
async fn restart(
    plane: &mut Plane,
    registrar: &weft_policy::client::PolicyClient,
    callers: &[weft_policy::client::Watched<weft_policy::registry::ServiceEndpoints>],
) -> Result<Restart, Error> {
    let (gone, survivor) = (0, 1);
    let admin = plane.replicas[survivor].admin;
    let moved = streams(plane.replicas[gone].admin).await;
    let total = moved + streams(admin).await;
    let [snap0, other0, delta0] = bytes_by_type(admin).await;
    let pid = plane.replicas[survivor]
        .proc
        .as_ref()
        .map(|p| p.pid())
        .ok_or("no survivor")?;
    let cpu0 = crate::procstat::cpu_ticks(pid)?;
    eprintln!(
        "killing {} with {moved} proxies on it",
        plane.replicas[gone].name
    );
    let started = Instant::now();
    if let Some(mut p) = plane.replicas[gone].proc.take() {
        let _ = p.kill();
    }
    while streams(admin).await < total {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "the proxies were not all on the survivor after {:?}",
                started.elapsed()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resync = started.elapsed();
    let cpu = crate::procstat::cpu_ticks(pid)?.saturating_sub(cpu0) as f64
        / crate::procstat::clock_ticks() as f64
        / resync.as_secs_f64().max(0.001);
    let [snap1, other1, delta1] = bytes_by_type(admin).await;
    eprintln!("{moved} proxies on the survivor after {resync:?}");
    // A change now reaches every caller through the survivor.
    let address: SocketAddr = ([127, 0, 0, 1], 31_000).into();
    let from = Instant::now();
    change(registrar, address, true).await?;
    let done: Arc<dyn Fn(&weft_policy::registry::ServiceEndpoints) -> bool + Send + Sync> =
        Arc::new(move |e| e.endpoints.iter().any(|x| x.address == address));
    let took = sim::arrivals(callers.to_vec(), from, Duration::from_secs(30), done).await?;
    let p99 = took[(took.len() * 99 / 100).min(took.len() - 1)];
    let peak = crate::procstat::memory(pid)?.peak_rss_kib;
    plane.start_replica(gone)?;
    Ok(Restart {
        moved_proxies: moved,
        resync_seconds: resync.as_secs_f64(),
        snapshot_bytes: snap1 - snap0,
        other_bytes: other1 - other0,
        delta_bytes: delta1 - delta0,
        survivor_cpu_cores: cpu,
        survivor_peak_rss_kib: peak,
        delivery_after_p99_ms: p99.as_secs_f64() * 1000.0,
    })
}
