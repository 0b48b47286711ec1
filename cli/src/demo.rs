//! `weft demo`: a local mesh on one machine, running until Ctrl-C (or `--duration`).
//!
//! Today it runs the parts of the mesh that exist: the identity service on free loopback
//! ports, with a data directory it tells you about, and one identity client per demo workload
//! (`web`, `api`, `db`), each bootstrapping from its own token and renewing its short-lived
//! certificate exactly as a sidecar will. Every issuance and renewal is printed as it happens.
//! The sidecars, control plane, demo apps and dashboard join as their issues land.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use weft_identity::authority::{Authority, AuthorityConfig};
use weft_identity::client::{ClientSettings, IdentityClient};
use weft_identity::metrics::Registry;
use weft_identity::server::Running;

/// The demo's workloads.
const WORKLOADS: &[&str] = &["web", "api", "db"];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 20s); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = weft_identity::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Directory for the demo's CA and tokens [default: a new temporary directory].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Lifetime of workload certificates, short so renewals show.
    #[arg(long, default_value = "30s", value_parser = weft_identity::config::parse_duration)]
    pub leaf_lifetime: Duration,
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let (dir, _temp) = match args.dir {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("weft-demo-")
                .tempdir()
                .map_err(|e| format!("cannot create a demo directory: {e}"))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut cfg = AuthorityConfig::new(dir.join("identity"));
    cfg.leaf_lifetime = args.leaf_lifetime;
    let authority = Authority::load_or_create(&cfg).map_err(|e| e.to_string())?;
    let anchor = authority.anchor_fingerprint();
    let tokens: Vec<(String, String)> = WORKLOADS
        .iter()
        .map(|w| {
            let id = authority
                .trust_domain()
                .workload("default", w)
                .map_err(|e| e.to_string())?;
            let t = authority.token_key().create(
                &id,
                &anchor,
                SystemTime::now(),
                Duration::from_secs(24 * 3600),
            )?;
            Ok((w.to_string(), t))
        })
        .collect::<Result<_, String>>()?;
    let token_dir = dir.join("tokens");
    std::fs::create_dir_all(&token_dir)
        .map_err(|e| format!("cannot create {}: {e}", token_dir.display()))?;
    for (w, t) in &tokens {
        std::fs::write(token_dir.join(w), t).map_err(|e| format!("cannot write a token: {e}"))?;
    }

    let identity = Running::start(
        authority,
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
    )
    .await?;
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the identity admin port: {e}"))?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (_ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let admin = tokio::spawn(weft_identity::admin::run(
        admin_listener,
        weft_identity::admin::Admin {
            registry: identity.registry.clone(),
            ready: ready_rx,
            extra: None,
        },
        weft_identity::config::wait_true(stop_rx),
    ));

    println!("weft demo: a local mesh (identity layer)");
    println!("  data directory     {}", dir.display());
    println!(
        "  identity service   https://{} (trust anchor {anchor})",
        identity.addr
    );
    println!("  identity metrics   http://{admin_addr}/metrics");
    println!(
        "  workload tokens    {}/{{{}}}",
        token_dir.display(),
        WORKLOADS.join(",")
    );
    println!(
        "  certificates live {:?}; each workload renews at ~70% of that",
        args.leaf_lifetime
    );
    println!(
        "  try: weft cert issue --token-file {}/web --out-dir /tmp/web-cert --identity-addr {}",
        token_dir.display(),
        identity.addr
    );
    println!("Ctrl-C stops the demo.");

    let registry = Registry::new();
    let mut clients = Vec::new();
    let mut watchers = Vec::new();
    for (w, t) in tokens {
        let client =
            IdentityClient::start(ClientSettings::new(identity.addr.to_string(), t), &registry);
        let mut rx = client.credentials();
        watchers.push(tokio::spawn(async move {
            let mut last: Option<Arc<weft_identity::tls::Credentials>> = None;
            while rx.changed().await.is_ok() {
                let current = rx.borrow_and_update().clone();
                if let Some(c) = current {
                    let what = if last.is_some() { "renewed" } else { "issued" };
                    println!(
                        "  {w:<4} certificate {what}: {} until {}",
                        c.identity,
                        weft_identity::rfc3339(c.not_after)
                    );
                    last = Some(c);
                }
            }
        }));
        clients.push(client);
    }

    match args.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {},
                _ = weft_identity::config::shutdown_signal() => {},
            }
        }
        None => weft_identity::config::shutdown_signal().await,
    }
    println!("weft demo: stopping");
    drop(clients);
    for w in watchers {
        w.abort();
    }
    let _ = stop_tx.send(true);
    let _ = admin.await;
    identity.stop().await;
    Ok(())
}
