//! The control plane assembled: the store, the directory follower, lease expiry, the API and
//! the admin endpoint (with `/status`), on listeners the caller bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use weft_runtime::admin::{self, Admin};
use weft_runtime::metrics::Registry;
use weft_runtime::process::wait_true;
use weft_runtime::serve;

use crate::api::{Api, ApiSettings, Auth, Limits};
use crate::authz::DefaultPolicy;
use crate::load::{load_dir, render_errors};
use crate::metrics::Metrics;
use crate::store::Store;

/// The admin page with the served resources and the last rejected change.
pub const STATUS_PATH: &str = "/status";
/// The admin path listing the registered workloads (JSON), with their proxies' metrics
/// addresses: how `weft stat` and the dashboard find every proxy.
pub const WORKLOADS_PATH: &str = "/workloads";

/// The listeners the control plane serves on.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
}

/// How the API is secured.
#[derive(Clone)]
pub enum Security {
    /// Plain HTTP (h2c or HTTP/1.1); registrations are trusted as sent. Development only.
    InsecureDev,
    /// TLS 1.3 with the given server config (ALPN h2 and http/1.1); callers are verified
    /// against `bundle` by their client certificates.
    Mtls {
        tls: Arc<rustls::ServerConfig>,
        bundle: weft_identity::tls::TrustBundle,
    },
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Security::InsecureDev => "InsecureDev",
            Security::Mtls { .. } => "Mtls",
        })
    }
}

/// Everything [`serve`] needs besides listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub default_policy: DefaultPolicy,
    pub poll_interval: Duration,
    pub api: ApiSettings,
    pub security: Security,
}

impl Settings {
    /// Development settings for `dir`: plain HTTP, default leases.
    pub fn insecure(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            default_policy: DefaultPolicy::default(),
            poll_interval: crate::files::DEFAULT_POLL_INTERVAL,
            api: ApiSettings::default(),
            security: Security::InsecureDev,
        }
    }
}

/// Loads the directory (failing if it is invalid), then serves until `shutdown`.
pub async fn serve(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let config = load_dir(&settings.dir, settings.default_policy).map_err(|errors| {
        format!(
            "the resources in {} are invalid, nothing is served:\n{}",
            settings.dir.display(),
            render_errors(&errors)
        )
    })?;
    let registry = Registry::new();
    let metrics = Metrics::new(&registry);
    metrics.reload_ok.increment(1);
    let loaded_hash = config.summary.hash.clone();
    let store = Store::new(
        config,
        settings.dir.display().to_string(),
        metrics,
        settings.api.max_registrations_per_identity,
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_signal = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }
    });

    let (auth, tls) = match &settings.security {
        Security::InsecureDev => {
            tracing::warn!(
                "INSECURE development mode: the control plane API is plain HTTP without mTLS; registrations are not authenticated. Never use this outside a development machine."
            );
            (Auth::InsecureDev, None)
        }
        Security::Mtls { tls, bundle } => (Auth::Mtls(bundle.clone()), Some(tls.clone())),
    };
    let api_addr = listeners.api.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = listeners.admin.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        api = %api_addr,
        admin = %admin_addr,
        dir = %settings.dir.display(),
        security = ?settings.security,
        default_policy = settings.default_policy.as_str(),
        "control plane ready"
    );

    let follower = tokio::spawn(crate::files::follow(
        store.clone(),
        settings.dir.clone(),
        settings.default_policy,
        settings.poll_interval,
        loaded_hash,
        wait_true(stop_rx.clone()),
    ));
    let expiry = tokio::spawn(store.clone().expire_leases(wait_true(stop_rx.clone())));

    let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let status_store = store.clone();
    let admin_task = tokio::spawn(admin::run(
        listeners.admin,
        Admin {
            registry,
            ready: ready_rx,
            extra: Some(Arc::new(move |path: &str| match path {
                STATUS_PATH => Some(status_page(&status_store)),
                WORKLOADS_PATH => Some(workloads_page(&status_store)),
                _ => None,
            })),
        },
        wait_true(stop_rx.clone()),
    ));

    let api = Arc::new(Api {
        store,
        auth,
        settings: settings.api.clone(),
        stop: stop_rx.clone(),
        started: tokio::time::Instant::now(),
        limits: Limits::new(
            settings.api.max_watches_per_identity,
            settings.api.max_requests_per_identity,
        ),
    });
    // One connection may carry a client's whole allowance: past it the client is told so
    // (429), rather than left waiting for a stream.
    let streams = settings
        .api
        .max_watches_per_identity
        .saturating_add(settings.api.max_requests_per_identity);
    let conn_limits = serve::ConnLimits {
        max_concurrent_streams: u32::try_from(streams).unwrap_or(u32::MAX),
        max_connections_per_ip: settings.api.max_connections_per_ip,
    };
    serve::serve_with(
        listeners.api,
        tls,
        conn_limits,
        move |req, conn| api.clone().handle(req, conn),
        wait_true(stop_rx),
    )
    .await;
    let _ = ready_tx.send(false);
    let _ = stop_tx.send(true);
    let _ = follower.await;
    let _ = expiry.await;
    let _ = admin_task.await;
    stop_signal.abort();
    Ok(())
}

fn workloads_page(store: &Store) -> serve::FullResponse {
    let state = store.current();
    serve::respond(
        http::StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(&*state.workloads).unwrap_or_default(),
    )
}

fn status_page(store: &Store) -> serve::FullResponse {
    let status = store.status();
    let state = store.current();
    let body = serde_json::json!({
        "valid": status.last_error.is_none(),
        "revision": state.revision,
        "config": status,
        "endpoints_registered": state.workloads.len(),
    });
    serve::respond(
        http::StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
}
