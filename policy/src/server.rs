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
use crate::etcd::follow::{EtcdResources, Files};
use crate::etcd::registry::EtcdRegistry;
use crate::load::{load_dir, render_errors};
use crate::manage::{Backend, Manage};
use crate::metrics::Metrics;
use crate::store::Store;

/// The admin page with the served resources and the last rejected change.
pub const STATUS_PATH: &str = "/status";
/// The admin path listing the registered workloads (JSON), with their proxies' metrics
/// addresses: how `weft stat` and the dashboard find every proxy.
pub const WORKLOADS_PATH: &str = "/workloads";
/// The admin path saying what this replica trusts (JSON [`TrustReport`]): the anchors it
/// verifies proxies with and the issuer of its own certificate, so `weft ca rotate` can wait
/// for the control plane as it waits for the proxies. Not served in development mode.
pub const TRUST_PATH: &str = "/trust";

/// How often a replica checks that etcd has its quorum.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

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
    /// by their client certificates against the bundle `bundle` holds at each request.
    Mtls {
        tls: Arc<rustls::ServerConfig>,
        bundle: weft_identity::tls::TrustSource,
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
    /// The resource directory, when the resources are not in etcd.
    pub dir: PathBuf,
    /// The resources in etcd (`--store etcd://...`) instead of the directory.
    pub etcd: Option<EtcdResources>,
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
            etcd: None,
            default_policy: DefaultPolicy::default(),
            poll_interval: crate::files::DEFAULT_POLL_INTERVAL,
            api: ApiSettings::default(),
            security: Security::InsecureDev,
        }
    }
}

/// Loads the resources (failing if they are invalid; from etcd, once it answers), then
/// serves until `shutdown`.
pub async fn serve(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_signal = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        }
    });
    let loaded = match &settings.etcd {
        None => Loaded::dir(&settings),
        Some(res) => {
            let stopped = wait_true(stop_rx.clone());
            tokio::select! {
                loaded = Loaded::etcd(res, &settings) => loaded,
                _ = stopped => return Ok(()),
            }
        }
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            stop_signal.abort();
            return Err(e);
        }
    };
    let registry = Registry::new();
    let metrics = Metrics::new(&registry);
    metrics.reload_ok.increment(1);
    let loaded_hash = loaded.config.summary.hash.clone();
    let store = Store::new(
        loaded.config,
        loaded.source,
        metrics,
        settings.api.max_registrations_per_identity,
    );

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
    let source = store.status().dir;
    tracing::info!(
        api = %api_addr,
        admin = %admin_addr,
        store = %source,
        security = ?settings.security,
        default_policy = settings.default_policy.as_str(),
        "control plane ready"
    );

    let expiry = tokio::spawn(store.clone().expire_leases(wait_true(stop_rx.clone())));
    let dir_lock = Arc::new(tokio::sync::Mutex::new(()));
    let manage = Manage {
        backend: match &settings.etcd {
            Some(res) => Backend::Etcd(res.clone()),
            None => Backend::Dir {
                dir: settings.dir.clone(),
                lock: dir_lock.clone(),
            },
        },
        default_policy: settings.default_policy,
    };
    let followers = follow(
        &store,
        &settings,
        loaded.files,
        (loaded_hash, dir_lock),
        &stop_rx,
    );

    let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
    let status_store = store.clone();
    let trust = match &settings.security {
        Security::Mtls { bundle, .. } => Some(bundle.clone()),
        Security::InsecureDev => None,
    };
    let admin_task = tokio::spawn(admin::run(
        listeners.admin,
        Admin {
            registry,
            ready: ready_rx,
            extra: Some(Arc::new(move |path: &str| match path {
                "/ready" => store_unavailable_page(&status_store),
                STATUS_PATH => Some(status_page(&status_store)),
                WORKLOADS_PATH => Some(workloads_page(&status_store)),
                TRUST_PATH => trust.as_ref().map(trust_page),
                _ => None,
            })),
        },
        wait_true(stop_rx.clone()),
    ));
    weft_runtime::process::notify_ready();
    let mut api_settings = settings.api.clone();
    if settings.etcd.is_some() {
        // The registry is in etcd: a replica that starts has it whole at once, nothing to
        // wait for.
        api_settings.registry_warmup = Duration::ZERO;
    }
    let api = Arc::new(Api {
        store,
        auth,
        settings: api_settings,
        stop: stop_rx.clone(),
        started: tokio::time::Instant::now(),
        limits: Limits::new(
            settings.api.max_watches_per_identity,
            settings.api.max_requests_per_identity,
        ),
        manage: Some(Arc::new(manage)),
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
    let _ = expiry.await;
    for t in followers {
        let _ = t.await;
    }
    let _ = admin_task.await;
    stop_signal.abort();
    Ok(())
}

/// The tasks that follow the store until `stop`: the resources (from the directory or etcd)
/// and, over etcd, the registrations shared with the other replicas (followed, and written).
fn follow(
    store: &Arc<Store>,
    settings: &Settings,
    files: Option<Files>,
    (loaded_hash, dir_lock): (String, Arc<tokio::sync::Mutex<()>>),
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some((res, files)) = settings.etcd.as_ref().zip(files) else {
        return vec![tokio::spawn(crate::files::follow(
            store.clone(),
            settings.dir.clone(),
            dir_lock,
            settings.default_policy,
            settings.poll_interval,
            loaded_hash,
            wait_true(stop.clone()),
        ))];
    };
    let registry = EtcdRegistry {
        etcd: res.etcd.clone(),
        prefix: res.prefix.clone(),
    };
    let writes = store.share();
    let held = store.clone();
    vec![
        tokio::spawn(res.clone().follow(
            store.clone(),
            settings.default_policy,
            files,
            wait_true(stop.clone()),
        )),
        tokio::spawn(res.clone().probe(
            store.clone(),
            STORE_PROBE_INTERVAL,
            wait_true(stop.clone()),
        )),
        tokio::spawn(
            registry
                .clone()
                .follow(store.clone(), wait_true(stop.clone())),
        ),
        tokio::spawn(registry.write(
            writes,
            move || held.held_workloads(),
            wait_true(stop.clone()),
        )),
    ]
}

/// The first resource set served, and where it came from.
struct Loaded {
    config: crate::load::Config,
    /// The directory, or the store's members and prefix (for `/status`).
    source: String,
    /// The files as read from etcd, which the follower goes on from.
    files: Option<Files>,
}

impl Loaded {
    fn dir(settings: &Settings) -> Result<Self, String> {
        let config = load_dir(&settings.dir, settings.default_policy).map_err(|errors| {
            format!(
                "the resources in {} are invalid, nothing is served:\n{}",
                settings.dir.display(),
                render_errors(&errors)
            )
        })?;
        Ok(Self {
            config,
            source: settings.dir.display().to_string(),
            files: None,
        })
    }

    /// The resources in etcd, once it answers (every failure logged, tried again with
    /// back-off): nothing can be served before.
    async fn etcd(res: &EtcdResources, settings: &Settings) -> Result<Self, String> {
        let mut pause = Duration::from_millis(100);
        let files = loop {
            match res.load().await {
                Ok(files) => break files,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the resources from etcd yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        };
        let source = format!("etcd {}", res.resources_prefix());
        let config = res
            .compile(&files.files, settings.default_policy)
            .map_err(|errors| {
                format!(
                    "the resources in {source} are invalid, nothing is served:\n{}",
                    render_errors(&errors)
                )
            })?;
        Ok(Self {
            config,
            source,
            files: Some(files),
        })
    }
}

fn workloads_page(store: &Store) -> serve::FullResponse {
    let state = store.current();
    serve::respond(
        http::StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(&*state.workloads).unwrap_or_default(),
    )
}

fn trust_page(trust: &weft_identity::tls::TrustSource) -> serve::FullResponse {
    let report = match trust.credentials() {
        Some(c) => crate::registry::TrustReport::of(&c),
        None => crate::registry::TrustReport {
            anchors: trust.current().fingerprints(),
            issuer: String::new(),
        },
    };
    serve::respond(
        http::StatusCode::OK,
        "application/json",
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    )
}

/// `/ready` while the store (etcd) cannot be followed: 503, saying so. The replica goes on
/// serving the last valid resources to proxies meanwhile.
fn store_unavailable_page(store: &Store) -> Option<serve::FullResponse> {
    let status = store.status();
    let error = status.store_error?;
    Some(serve::respond(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        format!(
            "not ready: the store ({}) is unavailable: {error}; the last valid resources stay served to proxies, and changes (`weft apply`) are refused until it is back\n",
            status.dir
        ),
    ))
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
