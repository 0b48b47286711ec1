//! Start-up and shutdown of a proxy process.
//!
//! With nothing but its token file, the proxy: serves `/live` at once; gets its certificate
//! from the identity service (retrying, and saying so, while it is unreachable); connects to
//! the control plane over mTLS; follows its workload's inbound policy; registers its inbound
//! address; and reports `/ready` once it holds a certificate and its first policy. SIGTERM:
//! not ready, deregister, stop accepting, let requests in flight finish (bounded), exit 0.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_identity::client::{ClientSettings as IdentitySettings, IdentityClient};
use weft_identity::tls::{Credentials, TrustSource};
use weft_policy::client::{ClientSettings as PolicySettings, ClientTls, PolicyClient};
use weft_policy::registry::{Registration, TrustReport};
use weft_runtime::metrics::{Registry, unix_seconds};
use weft_runtime::serve::bind;

use crate::authz::PolicyWatch;
use crate::authz::denials::DENIALS_PATH;
use crate::config::{ENV_TOKEN_FILE, ProxyArgs};
use crate::discovery::PolicyResolver;
use crate::inbound::{Inbound, InboundConfig};
use crate::metrics::ProxyMetrics;
use crate::outbound::{Outbound, OutboundConfig};
use crate::tls::MeshTls;

/// How often recorded latency samples are folded into their histogram buckets. Until then
/// each sample is kept (8 bytes, in blocks): every request records two in the outbound proxy,
/// so at 10,000 requests per second the admin server's 5-second upkeep let ~1 MB pile up
/// (peak RSS under load); every second keeps it to a fifth.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Aborts its task when dropped (when `run_on` returns, however it returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The proxy's listeners, bound before it runs (tests bind port 0).
#[derive(Debug)]
pub struct ProxyListeners {
    pub inbound: TcpListener,
    /// One per `--outbound-listen` address (IPv4 and IPv6 loopback with `weft init --ipv6`).
    pub outbound: Vec<TcpListener>,
    pub admin: TcpListener,
}

impl ProxyListeners {
    pub async fn bind(args: &ProxyArgs) -> Result<Self, String> {
        use crate::config::{ENV_ADMIN, ENV_INBOUND, ENV_OUTBOUND};
        let mut outbound = Vec::with_capacity(args.outbound_listen.len());
        for addr in &args.outbound_listen {
            outbound.push(bind(*addr, "outbound listener", ENV_OUTBOUND).await?);
        }
        Ok(Self {
            inbound: bind(args.inbound_listen, "inbound listener", ENV_INBOUND).await?,
            outbound,
            admin: bind(args.admin_listen, "admin listener", ENV_ADMIN).await?,
        })
    }
}

/// Binds the listeners of `args` and runs until `shutdown`.
pub async fn run(args: ProxyArgs, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    check_user(&args)?;
    let listeners = ProxyListeners::bind(&args).await?;
    run_on(listeners, args, shutdown).await
}

/// Refuses to run as a user `weft init` does not exempt (`--proxy-uid`/`--proxy-gid`), and
/// says which user the proxy runs as, for `weft init`.
fn check_user(args: &ProxyArgs) -> Result<(), String> {
    let me = crate::user::RunningAs::current()?;
    me.check(args.proxy_uid, args.proxy_gid)?;
    if args.proxy_uid.is_none() && args.proxy_gid.is_none() {
        tracing::info!(
            uid = me.uid,
            gid = me.gid,
            "running as this user: with transparent interception, give `weft init --proxy-uid {}` (and `weft proxy --proxy-uid {}` to have it checked)",
            me.uid,
            me.uid
        );
    } else {
        tracing::info!(
            uid = me.uid,
            gid = me.gid,
            "running as the user `weft init` exempts from redirection"
        );
    }
    Ok(())
}

/// Runs a proxy on bound listeners until `shutdown`.
pub async fn run_on(
    listeners: ProxyListeners,
    args: ProxyArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    run_in_phases(listeners, args, shutdown, std::future::ready(())).await
}

/// Runs a proxy on bound listeners, stopping in two steps. When `inbound_end` ends (during
/// start-up: the proxy just stops) the proxy turns not ready, deregisters and stops taking
/// inbound connections, letting those in flight finish; its app's outbound calls still go
/// through until `outbound_end` ends too, then they are drained the same way. `weft run`
/// ends the first on SIGTERM and the second once the app exited, so an app draining its own
/// work can still call out.
pub async fn run_in_phases(
    listeners: ProxyListeners,
    args: ProxyArgs,
    inbound_end: impl Future<Output = ()>,
    outbound_end: impl Future<Output = ()>,
) -> Result<(), String> {
    tokio::pin!(inbound_end);
    let token = read_token(&args)?;
    let registry = Registry::new();
    let metrics = ProxyMetrics::new(registry.clone());
    let inbound_addr = listeners.inbound.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = listeners.admin.local_addr().map_err(|e| e.to_string())?;
    let admin = AdminEndpoint::start(listeners.admin, &registry, &metrics);
    let _upkeep = metrics_upkeep(registry.clone());

    // 1. A certificate.
    let mut identity = start_identity_client(&args, token, &registry)?;
    let creds = tokio::select! {
        c = identity.ready() => c,
        _ = &mut inbound_end => return admin.stop().await,
    };
    let (tls, _follower) = mesh_tls(&identity, &metrics);
    let me = creds.identity.clone();
    let namespace = me.namespace().to_string();
    let service = args
        .service
        .clone()
        .unwrap_or_else(|| me.workload().to_string());

    // 2. The control plane.
    let policy_client = policy_client(&args, &identity, &creds, &tls)?;
    let mut policy = policy_client.watch_inbound(&namespace, &service);
    tracing::info!(control_plane = %args.policy_addr, %namespace, %service, "waiting for the inbound policy");
    tokio::select! {
        r = policy.wait_for(|p| p.is_some()) => { r.map_err(|_| "the policy watch ended".to_string())?; }
        _ = &mut inbound_end => return admin.stop().await,
    }

    // 3. Registration.
    let advertise = match args.advertise_addr {
        Some(a) => a,
        None => advertise_addr(inbound_addr, &args.policy_addr),
    };
    let registration = registration(&args, &me, &namespace, &service, advertise, admin_addr)?;
    let (registration, _trust_reporter) = report_trust(registration, identity.credentials());
    let registration = policy_client.keep_registered_following(registration);

    // 4. The data path.
    let inbound = inbound(&args, &namespace, &service, &tls, policy, &metrics);
    let outbound = outbound(&args, &namespace, &tls, &policy_client, &metrics);
    let grace = args.shutdown_grace;
    let (stop_inbound, inbound_stopped) = watch::channel(false);
    let data_path = DataPath::serve(
        inbound,
        listeners.inbound,
        &outbound,
        listeners.outbound,
        (&inbound_stopped, &admin.stop_rx),
        grace,
    );

    // 5. Ready.
    let _ = admin.ready.send(true);
    weft_runtime::process::notify_ready();
    tracing::info!(
        identity = %me,
        inbound = %inbound_addr,
        advertised = %advertise,
        "proxy ready"
    );

    // 6. Shutdown: the inbound side, then the rest.
    inbound_end.await;
    tracing::info!(grace = ?grace, "shutting down: draining requests in flight");
    weft_runtime::process::notify_stopping();
    let _ = admin.ready.send(false);
    drop(registration);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        policy_client.deregister(&namespace, advertise),
    )
    .await;
    let _ = stop_inbound.send(true);
    outbound_end.await;
    let _ = admin.stop.send(true);
    let _ = data_path.inbound.await;
    for task in data_path.outbound {
        let _ = task.await;
    }
    let _ = admin.task.await;
    drop(identity);
    Ok(())
}

/// Reads the bootstrap token file.
fn read_token(args: &ProxyArgs) -> Result<String, String> {
    std::fs::read_to_string(&args.token_file).map_err(|e| {
        format!(
            "cannot read the bootstrap token {}: {e}: create one with `weft token create --namespace <ns> --workload <name>` and put it there, or set {ENV_TOKEN_FILE}",
            args.token_file.display()
        )
    })
}

/// The admin endpoint's task, and the two switches the proxy turns: `/ready`, and stop (which
/// also stops the data path's listeners).
struct AdminEndpoint {
    ready: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminEndpoint {
    /// Serves the admin endpoint at once, not ready until the proxy says so.
    fn start(listener: TcpListener, registry: &Registry, metrics: &Arc<ProxyMetrics>) -> Self {
        let (ready_tx, ready_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(weft_runtime::admin::run(
            listener,
            weft_runtime::admin::Admin {
                registry: registry.clone(),
                ready: ready_rx,
                extra: Some(denials_page(metrics.clone())),
            },
            weft_runtime::process::wait_true(stop_rx.clone()),
        ));
        Self {
            ready: ready_tx,
            stop: stop_tx,
            stop_rx,
            task,
        }
    }

    /// Stops the admin endpoint when shutdown comes during start-up.
    async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        Ok(())
    }
}

/// Folds recorded latency samples into their histogram buckets every [`METRICS_UPKEEP`].
fn metrics_upkeep(upkeep_registry: Registry) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep_registry.upkeep();
        }
    }))
}

/// Step 1: starts getting (and renewing) a certificate with the bootstrap token.
fn start_identity_client(
    args: &ProxyArgs,
    token: String,
    registry: &Registry,
) -> Result<IdentityClient, String> {
    let mut id_settings = IdentitySettings::new(args.identity_addr.clone(), token);
    id_settings.trust_refresh = args.identity_trust_refresh;
    let claims = id_settings.claims().map_err(|e| {
        format!(
            "the bootstrap token {} is unusable: {e}",
            args.token_file.display()
        )
    })?;
    tracing::info!(identity = %claims.sub, identity_service = %args.identity_addr, "getting a certificate");
    Ok(IdentityClient::start(id_settings, registry))
}

/// The proxy's TLS, following the identity client's certificates (and their expiry metric).
fn mesh_tls(
    identity: &IdentityClient,
    metrics: &ProxyMetrics,
) -> (Arc<MeshTls>, tokio::task::JoinHandle<()>) {
    let tls = MeshTls::new();
    let expiry = metrics.cert_expiry.clone();
    let follower = tls.clone().follow(identity.credentials(), move |c| {
        expiry.set(unix_seconds(c.not_after))
    });
    (tls, follower)
}

/// Step 2: the control plane's client, over mTLS with the proxy's certificate unless
/// `--policy-insecure-dev`.
fn policy_client(
    args: &ProxyArgs,
    identity: &IdentityClient,
    creds: &Credentials,
    tls: &MeshTls,
) -> Result<PolicyClient, String> {
    let me = &creds.identity;
    let policy_tls = if args.policy_insecure_dev {
        tracing::warn!(control_plane = %args.policy_addr, "INSECURE: talking to the control plane without mTLS (--policy-insecure-dev); never do this outside development");
        None
    } else {
        let td = weft_identity::TrustDomain::new(me.trust_domain()).map_err(|e| e.to_string())?;
        let expected = weft_policy::client::service_identity(&td)?;
        // Verified against the bundle the proxy holds at each handshake: a CA rotation reaches
        // this connection as it reaches the data path.
        let trust = TrustSource::following(identity.credentials(), creds.bundle.clone());
        Some(ClientTls::mesh(trust, expected, Some(tls.cert_store()))?)
    };
    Ok(PolicyClient::new(PolicySettings::new(
        args.policy_addr.clone(),
        policy_tls,
    )))
}

/// The registration with what the proxy trusts now, kept current as its credentials change
/// (a CA rotation), so the control plane's `/workloads` says which proxies follow it.
fn report_trust(
    mut reg: Registration,
    mut creds: watch::Receiver<Option<Arc<Credentials>>>,
) -> (watch::Receiver<Registration>, tokio::task::JoinHandle<()>) {
    reg.trust = creds.borrow_and_update().as_deref().map(TrustReport::of);
    let (tx, rx) = watch::channel(reg);
    let task = tokio::spawn(async move {
        while creds.changed().await.is_ok() {
            let now = creds.borrow_and_update().as_deref().map(TrustReport::of);
            tx.send_if_modified(|r| {
                let changed = r.trust != now;
                r.trust = now;
                changed
            });
        }
    });
    (rx, task)
}

/// Step 3: what the proxy registers: its inbound address under its identity.
fn registration(
    args: &ProxyArgs,
    me: &SpiffeId,
    namespace: &str,
    service: &str,
    advertise: SocketAddr,
    admin_addr: SocketAddr,
) -> Result<Registration, String> {
    Ok(Registration {
        trust: None,
        service: service.to_string(),
        namespace: Some(namespace.to_string()),
        labels: args.label_map()?,
        address: advertise,
        identity: Some(me.clone()),
        lease: None,
        // Where operators' tools scrape this proxy: its admin port, at the advertised IP when
        // it listens on every address.
        metrics: Some(if admin_addr.ip().is_unspecified() {
            std::net::SocketAddr::new(advertise.ip(), admin_addr.port())
        } else {
            admin_addr
        }),
    })
}

/// Step 4: the inbound proxy, enforcing the workload's policy.
fn inbound(
    args: &ProxyArgs,
    namespace: &str,
    service: &str,
    tls: &Arc<MeshTls>,
    policy: PolicyWatch,
    metrics: &Arc<ProxyMetrics>,
) -> Arc<Inbound> {
    Inbound::new(
        InboundConfig {
            app_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            default_app_port: args.app_port,
            detect_timeout: args.detect_timeout,
            http1_trailers_wait: args.http1_trailers_wait,
            service: format!("{namespace}/{service}"),
            intercept: args.interception(),
        },
        tls.clone(),
        policy,
        metrics.clone(),
    )
}

/// Step 4: the outbound proxy, resolving destinations through the control plane.
fn outbound(
    args: &ProxyArgs,
    namespace: &str,
    tls: &Arc<MeshTls>,
    policy_client: &PolicyClient,
    metrics: &Arc<ProxyMetrics>,
) -> Arc<Outbound> {
    Outbound::new(
        OutboundConfig {
            namespace: namespace.to_string(),
            detect_timeout: args.detect_timeout,
            http1_trailers_wait: args.http1_trailers_wait,
            intercept: args.interception(),
            discovery: args.discovery_limits(),
        },
        tls.clone(),
        Arc::new(PolicyResolver::new(policy_client.clone())),
        metrics.clone(),
    )
}

/// The data path's accept loops: one inbound, one per outbound listener.
struct DataPath {
    inbound: tokio::task::JoinHandle<()>,
    outbound: Vec<tokio::task::JoinHandle<()>>,
}

impl DataPath {
    /// Serves the inbound listener until `stop.0` turns true and the outbound ones until
    /// `stop.1` does, then lets requests in flight finish for up to `grace`.
    fn serve(
        inbound: Arc<Inbound>,
        inbound_listener: TcpListener,
        outbound: &Arc<Outbound>,
        outbound_listeners: Vec<TcpListener>,
        (stop_inbound, stop): (&watch::Receiver<bool>, &watch::Receiver<bool>),
        grace: Duration,
    ) -> Self {
        let inbound_task = tokio::spawn(inbound.serve(
            inbound_listener,
            weft_runtime::process::wait_true(stop_inbound.clone()),
            grace,
        ));
        let outbound_tasks: Vec<_> = outbound_listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(outbound.clone().serve(
                    listener,
                    weft_runtime::process::wait_true(stop.clone()),
                    grace,
                ))
            })
            .collect();
        Self {
            inbound: inbound_task,
            outbound: outbound_tasks,
        }
    }
}

/// The address peers should use: the inbound port on the local address that routes to the
/// control plane (its first replica, when it has several), when the inbound listener is on a
/// wildcard address.
fn advertise_addr(inbound: SocketAddr, policy_addr: &str) -> SocketAddr {
    if !inbound.ip().is_unspecified() {
        return inbound;
    }
    let first = policy_addr.split(',').next().unwrap_or(policy_addr).trim();
    let ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(first).map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    SocketAddr::new(ip, inbound.port())
}

/// Runs a proxy as a process: exits 1 with the error on a start-up failure.
pub fn run_main(args: ProxyArgs) -> ExitCode {
    let workers = args.workers;
    weft_runtime::process::run_process_on(
        "proxy",
        workers,
        run(args, weft_runtime::process::shutdown_signal()),
    )
}

/// The admin endpoint's `/denials`: the recent denied requests as JSON, newest first.
fn denials_page(metrics: Arc<ProxyMetrics>) -> weft_runtime::admin::ExtraPage {
    Arc::new(move |path| {
        (path == DENIALS_PATH).then(|| match serde_json::to_string(&metrics.denials.page()) {
            Ok(json) => {
                weft_runtime::serve::respond(http::StatusCode::OK, "application/json", json)
            }
            Err(e) => weft_runtime::serve::respond(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("cannot encode the denials: {e}\n"),
            ),
        })
    })
}
