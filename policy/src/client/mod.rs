//! The proxy's side of the API: watched items as `tokio::sync::watch` receivers, and
//! registration kept alive.
//!
//! One HTTP/2 connection per [`PolicyClient`] carries one discovery stream
//! ([`crate::stream`]), on which every watched item is a subscription, unsubscribed when its
//! last receiver is dropped (`discover.rs`), and the registrations. When the control plane is
//! away, each receiver keeps the last state it got, and the stream reconnects with jittered
//! exponential back-off, subscribing again with the version each item holds: what did not
//! change meanwhile is not sent again. Endpoints arrive as deltas.
//!
//! The control plane may be several replicas (`a:8090,b:8090`): a client starts on one of them
//! at random (so clients spread over the replicas), and when its connection is lost it
//! connects again to that one if it can, else to the next, so its watches resume, and its
//! registrations are renewed at once, on another replica within a connect attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_identity::client::Backoff;
use weft_runtime::serve::ErrorBody;

mod conn;
mod discover;
mod lines;
mod resources;
mod tls;

pub use self::lines::{LineBuffer, decode_event};
pub use self::tls::ClientTls;
use crate::api::{REGISTER_PATH, encode};
use crate::authz::WorkloadPolicy;
use crate::registry::{AddressInfo, Registered, Registration, ServiceEndpoints};
use crate::routes::ServiceRoutes;
use crate::store::Key;

/// Largest watch event accepted.
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Where the control plane is by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8090";
/// The control plane's identity in the mesh: `spiffe://<td>/ns/weft/sa/policy`.
pub const SERVICE_NAMESPACE: &str = "weft";
pub const SERVICE_WORKLOAD: &str = "policy";

/// The identity a client expects the control plane to prove.
pub fn service_identity(td: &weft_identity::TrustDomain) -> Result<SpiffeId, String> {
    td.workload(SERVICE_NAMESPACE, SERVICE_WORKLOAD)
        .map_err(|e| e.to_string())
}

/// Errors talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "connection to the control plane at {addr} failed: {source}: is `weft policy` running?"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with the control plane at {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("HTTP/2 with the control plane failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the control plane answered {status}: {} ({})", .body.message, .body.error)]
    Rejected { status: StatusCode, body: ErrorBody },
    #[error("the control plane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the watch stream ended")]
    Ended,
    #[error("cannot decode what the control plane sent: {0}")]
    Decode(String),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `host:port` of the control plane, or of each of its replicas, comma-separated.
    pub addr: String,
    /// `None`: h2c (the control plane's development mode).
    pub tls: Option<ClientTls>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    /// How long a request (not a watch) may take once connected.
    pub request_timeout: Duration,
    /// A stream that receives nothing (not even a heartbeat) for this long is reconnected.
    pub idle_timeout: Duration,
}

impl ClientSettings {
    pub fn new(addr: impl Into<String>, tls: Option<ClientTls>) -> Self {
        Self {
            addr: addr.into(),
            tls,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(35),
        }
    }
}

/// A client of the control plane. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct PolicyClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: ClientSettings,
    /// The shared connection and the certificate it presented.
    conn: tokio::sync::Mutex<Option<(SendRequest<ReqBody>, Presented)>>,
    /// The replicas' addresses (one, without replicas).
    addrs: Vec<String>,
    /// The replica connected to last: tried first.
    preferred: std::sync::atomic::AtomicUsize,
    connections: AtomicU64,
    /// Every watched item, on the discovery stream.
    discovery: discover::Discovery,
    /// Signalled on every new connection after the first: the control plane may have
    /// restarted with an empty registry, so registrations are renewed at once.
    reconnected: tokio::sync::Notify,
    /// Counts the connections made because the client's certificate was renewed: every watch
    /// then moves to the new connection (resuming, so nothing is sent again), and the old
    /// one, left without streams, closes. Without it, each renewal left one more connection
    /// open in both the proxy and the control plane (the 30-minute soak, renewing every
    /// minute, showed their memory creeping up).
    moved: watch::Sender<u64>,
}

/// The body of a request to the control plane: buffered, or the discovery stream's commands.
pub(crate) type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A watched item: `None` until the first snapshot arrives, then always the last one
/// received, also while the control plane is away.
pub type Watched<T> = watch::Receiver<Option<Arc<T>>>;

impl PolicyClient {
    pub fn new(settings: ClientSettings) -> Self {
        let mut addrs: Vec<String> = settings
            .addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if addrs.is_empty() {
            addrs.push(settings.addr.clone());
        }
        let first = fastrand::usize(..addrs.len());
        Self {
            inner: Arc::new(Inner {
                discovery: discover::Discovery::new(),
                preferred: std::sync::atomic::AtomicUsize::new(first),
                addrs,
                settings,
                conn: tokio::sync::Mutex::new(None),
                connections: AtomicU64::new(0),
                reconnected: tokio::sync::Notify::new(),
                moved: watch::channel(0).0,
            }),
        }
    }

    /// Connections established so far (1 + reconnections).
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Follows the endpoints of a service, until every receiver is dropped.
    pub fn watch_endpoints(&self, namespace: &str, service: &str) -> Watched<ServiceEndpoints> {
        discover::watch(
            &self.inner,
            Key::Endpoints {
                namespace: namespace.to_string(),
                service: service.to_string(),
            },
        )
    }

    /// Follows the inbound policy of a service's workloads.
    pub fn watch_inbound(&self, namespace: &str, service: &str) -> Watched<WorkloadPolicy> {
        discover::watch(
            &self.inner,
            Key::Inbound {
                namespace: namespace.to_string(),
                service: service.to_string(),
            },
        )
    }

    /// Follows the routes of a service.
    pub fn watch_routes(&self, namespace: &str, service: &str) -> Watched<ServiceRoutes> {
        discover::watch(
            &self.inner,
            Key::Routes {
                namespace: namespace.to_string(),
                service: service.to_string(),
            },
        )
    }

    /// Follows what the mesh knows of an IP address: the workloads and static endpoints
    /// there, with their services (transparent interception's original destinations).
    pub fn watch_address(&self, ip: std::net::IpAddr) -> Watched<AddressInfo> {
        discover::watch(&self.inner, Key::Address { ip })
    }

    /// Registers (or renews) once.
    pub async fn register(&self, reg: &Registration) -> Result<Registered, ClientError> {
        let body = serde_json::to_vec(reg).map_err(|e| ClientError::Decode(e.to_string()))?;
        let (status, body) = self
            .inner
            .request(Method::POST, REGISTER_PATH, Bytes::from(body))
            .await?;
        if !status.is_success() {
            return Err(rejected(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Removes a registration (on clean shutdown).
    pub async fn deregister(
        &self,
        namespace: &str,
        address: std::net::SocketAddr,
    ) -> Result<(), ClientError> {
        let path = format!(
            "{REGISTER_PATH}?namespace={}&address={}",
            encode(namespace),
            encode(&address.to_string())
        );
        let (status, body) = self
            .inner
            .request(Method::DELETE, &path, Bytes::new())
            .await?;
        if !status.is_success() {
            return Err(rejected(status, &body));
        }
        Ok(())
    }

    /// Keeps `reg` registered: renews at a third of the granted lease, and at once whenever the
    /// client reconnects (a restarted control plane starts with an empty registry); retries
    /// failures with jittered back-off. Stops (and the lease then lapses) when the handle is
    /// dropped.
    pub fn keep_registered(&self, reg: Registration) -> RegistrationHandle {
        let (source, regs) = watch::channel(reg);
        let mut handle = self.keep_registered_following(regs);
        handle._source = Some(source);
        handle
    }

    /// Like [`keep_registered`](Self::keep_registered), for a registration that changes (what
    /// the proxy trusts, after a CA rotation): a change is sent at once.
    pub fn keep_registered_following(
        &self,
        mut regs: watch::Receiver<Registration>,
    ) -> RegistrationHandle {
        let (tx, rx) = watch::channel(None);
        let client = self.clone();
        let task = tokio::spawn(async move {
            let s = &client.inner.settings;
            let mut backoff = Backoff::new(s.min_backoff, s.max_backoff);
            let mut failing = false;
            let mut open = true;
            loop {
                let reg = regs.borrow_and_update().clone();
                let delay = match client.register(&reg).await {
                    Ok(granted) => {
                        if failing {
                            tracing::info!(service = %reg.service, "registration renewed again");
                        }
                        failing = false;
                        backoff.reset();
                        let next = granted.lease.0 / 3;
                        tx.send_replace(Some(granted));
                        next.mul_f64(0.9 + fastrand::f64() * 0.1)
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(service = %reg.service, error = %e, "registration failed; retrying");
                        }
                        failing = true;
                        backoff.next_delay()
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = client.inner.reconnected.notified() => {
                        tracing::debug!(service = %reg.service, "reconnected to the control plane: renewing the registration now");
                    }
                    changed = async {
                        if open { regs.changed().await } else { std::future::pending().await }
                    } => {
                        // The source went away: keep renewing what it last said.
                        open = changed.is_ok();
                    }
                }
            }
        });
        RegistrationHandle {
            granted: rx,
            task,
            _source: None,
        }
    }
}

/// A registration kept alive in the background.
#[derive(Debug)]
pub struct RegistrationHandle {
    granted: watch::Receiver<Option<Registered>>,
    task: tokio::task::JoinHandle<()>,
    /// The registration's source, when it is fixed.
    _source: Option<watch::Sender<Registration>>,
}

impl RegistrationHandle {
    /// The last granted registration (`None` before the first success).
    pub fn granted(&self) -> watch::Receiver<Option<Registered>> {
        self.granted.clone()
    }
}

impl Drop for RegistrationHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rejected(status: StatusCode, body: &[u8]) -> ClientError {
    let body = serde_json::from_slice(body).unwrap_or_else(|_| ErrorBody {
        error: "unknown".into(),
        message: String::from_utf8_lossy(body).chars().take(200).collect(),
    });
    ClientError::Rejected { status, body }
}

impl Inner {
    fn uri(&self, path_and_query: &str) -> String {
        let scheme = if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let addr = &self.addrs[self.preferred.load(Ordering::Relaxed) % self.addrs.len()];
        format!("{scheme}://{addr}{path_and_query}")
    }

    /// The shared connection, (re)established if needed: also when the client's certificate
    /// was renewed since it was made. The control plane checks the certificate of a
    /// connection at every request, so one made with a certificate that has since expired
    /// would refuse every registration (a proxy dropped out of discovery one certificate
    /// lifetime after it started). The watches on the old connection then move to the new
    /// one ([`Inner::moved`]).
    async fn sender(&self) -> Result<SendRequest<ReqBody>, ClientError> {
        let mut guard = self.conn.lock().await;
        let cert = self.settings.tls.as_ref().and_then(ClientTls::current_cert);
        let mut renewed = false;
        if let Some((s, presented)) = guard.as_ref()
            && !s.is_closed()
        {
            if same_cert(presented.as_ref(), cert.as_ref()) {
                return Ok(s.clone());
            }
            renewed = true;
        }
        *guard = None;
        let sender = self.connect().await?;
        if self.connections.fetch_add(1, Ordering::Relaxed) > 0 {
            self.reconnected.notify_waiters();
        }
        *guard = Some((sender.clone(), cert));
        if renewed {
            self.moved.send_modify(|n| *n += 1);
        }
        Ok(sender)
    }

    /// A connection to the preferred replica, else to the next that takes one.
    async fn connect(&self) -> Result<SendRequest<ReqBody>, ClientError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failed = None;
        for n in 0..self.addrs.len() {
            let i = (first + n) % self.addrs.len();
            let timeout = self.settings.connect_timeout;
            let connected = tokio::time::timeout(
                timeout,
                conn::connect_to(&self.addrs[i], self.settings.tls.as_ref()),
            )
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)));
            match connected {
                Ok(sender) => {
                    if n > 0 {
                        tracing::info!(addr = %self.addrs[i], "connected to another replica of the control plane");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(sender);
                }
                Err(e) => failed = Some(e),
            }
        }
        Err(failed.unwrap_or(ClientError::Timeout(Duration::ZERO)))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut sender = self.sender().await?;
        let req = Request::builder()
            .method(method)
            .uri(self.uri(path))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body).boxed())
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let timeout = self.settings.request_timeout;
        let work = async {
            let rsp = sender.send_request(req).await?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await?.to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// The certificate a connection presented (none without TLS or without a certificate).
type Presented = Option<Arc<rustls::sign::CertifiedKey>>;

/// Whether two certificates are the one the client's store held (a renewal replaces it).
fn same_cert(
    a: Option<&Arc<rustls::sign::CertifiedKey>>,
    b: Option<&Arc<rustls::sign::CertifiedKey>>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
