//! The control plane's HTTP API (HTTP/2, or HTTP/1.1; TLS with ALPN, or h2c in development
//! mode).
//!
//! List+watch, Kubernetes style:
//! - `GET /v1/endpoints?namespace=N&service=S`, `GET /v1/inbound?...`, `GET /v1/routes?...`
//!   answer one `SNAPSHOT` event (JSON). With `watch=true` the answer is a stream of
//!   newline-delimited JSON events: the snapshot, then a new snapshot whenever the item
//!   changes, and `HEARTBEAT`s while it does not. With `version=V` (the version the client
//!   holds), the stream starts with `UNCHANGED` instead of a snapshot when V is current.
//! - `GET /v1/address?ip=IP` ([`crate::registry::AddressInfo`]), the same way: what the mesh
//!   knows of an IP address (the endpoints there and their services), for a proxy that
//!   intercepted a connection to it and has only its original destination.
//! - `POST /v1/register` registers or renews a workload ([`Registration`] → [`Registered`]);
//!   `DELETE /v1/register?namespace=N&address=A` removes it.
//!
//! With mTLS, every caller must present a mesh certificate, and a registration may only claim
//! the identity (and namespace) that certificate proves.
//!
//! Each caller (its identity; its IP address in development mode) may hold a bounded number of
//! open watches and of requests in flight; past either it is answered 429.
//!
//! # Layout
//! - this module: the settings, routing a request to its handler, authenticating the caller,
//!   registration, and the error answers;
//! - `watches`: the list+watch streams (newline-delimited JSON events);
//! - `limits`: the caps per caller on open watches and requests in flight;
//! - `query`: query strings (parsing, percent-decoding and [`encode`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::watch;
use weft_identity::SpiffeId;
use weft_identity::tls::TrustSource;
use weft_runtime::serve::ConnInfo;
use weft_runtime::serve::ErrorBody;

use crate::manage::{Manage, RESOURCES_PATH};
use crate::registry::{APP_LABEL, Refusal, Registered, Registration, Workload};
use crate::resources::DEFAULT_NAMESPACE;
use crate::store::{Key, Store};
use crate::stream::DISCOVER_PATH;
use crate::wire::Dur;

mod discover;
mod limits;
mod query;
mod resources;
mod watches;

pub use limits::{Caller, Held, Limits, Permit, Refused};
use query::Query;
pub use query::encode;

/// What the fuzz targets (`fuzz/`) reach besides [`Api::handle`]: not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::query::decode;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const ENDPOINTS_PATH: &str = "/v1/endpoints";
pub const INBOUND_PATH: &str = "/v1/inbound";
pub const ROUTES_PATH: &str = "/v1/routes";
pub const ADDRESS_PATH: &str = "/v1/address";
pub const REGISTER_PATH: &str = "/v1/register";
/// Content type of watch streams.
pub const NDJSON: &str = "application/x-ndjson";
/// Largest registration body.
pub const MAX_BODY: usize = 64 * 1024;

/// A response body: buffered or streaming.
pub type ApiBody = BoxBody<Bytes, Infallible>;

/// How callers are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Development mode: plain HTTP, registrations are trusted as sent.
    InsecureDev,
    /// Callers present mesh certificates verified against the bundle this holds at the time
    /// of each request (followed live through a CA rotation).
    Mtls(TrustSource),
}

/// API limits and timings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Lease granted when a registration asks for none.
    pub default_lease: Duration,
    /// Longest lease granted.
    pub max_lease: Duration,
    /// Interval of `HEARTBEAT` events on idle watches.
    pub heartbeat: Duration,
    /// After a start, how long the registry is considered incomplete: workloads registered
    /// with the previous instance have not all renewed yet. Meanwhile a client resuming an
    /// endpoints watch (it holds a version) keeps what it has instead of being sent a partial
    /// list; new clients get what there is.
    pub registry_warmup: Duration,
    /// Watch streams one caller may hold open at once.
    pub max_watches_per_identity: usize,
    /// Requests one caller may have in flight at once (a watch counts while it is opened).
    pub max_requests_per_identity: usize,
    /// Live registrations one identity may hold (the proven one; in development mode, the one
    /// a registration claims).
    pub max_registrations_per_identity: usize,
    /// Connections open at once from one IP address (before any identity is known).
    pub max_connections_per_ip: usize,
}

impl ApiSettings {
    /// The warm-up that covers one renewal of the default lease (clients renew at a third of
    /// it, and at once when they reconnect), plus a second of slack.
    pub fn warmup_for(default_lease: Duration) -> Duration {
        default_lease / 3 + Duration::from_secs(1)
    }
}

/// Default of [`ApiSettings::max_watches_per_identity`]: a proxy watches the endpoints and the
/// routes of each destination it talks to (a few hundred at most), plus its own inbound policy;
/// a thousand leaves room for that several times over.
pub const DEFAULT_MAX_WATCHES_PER_IDENTITY: usize = 1000;
/// Default of [`ApiSettings::max_requests_per_identity`]: a proxy sends one registration at a
/// time and opens its watches in bursts of a few.
pub const DEFAULT_MAX_REQUESTS_PER_IDENTITY: usize = 100;
/// Default of [`ApiSettings::max_registrations_per_identity`]: a proxy registers its one
/// inbound address; the replicas of a workload share its identity, and a thousand of them
/// is a large deployment.
pub const DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY: usize = 1000;
/// Default of [`ApiSettings::max_connections_per_ip`]: a proxy holds one connection (two for
/// a moment when it reconnects), and a host's proxies may share its address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;

/// Shortest lease granted, whatever is asked.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            default_lease: Duration::from_secs(30),
            max_lease: Duration::from_secs(300),
            heartbeat: Duration::from_secs(10),
            registry_warmup: Self::warmup_for(Duration::from_secs(30)),
            max_watches_per_identity: DEFAULT_MAX_WATCHES_PER_IDENTITY,
            max_requests_per_identity: DEFAULT_MAX_REQUESTS_PER_IDENTITY,
            max_registrations_per_identity: DEFAULT_MAX_REGISTRATIONS_PER_IDENTITY,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

/// The API handler's shared state.
#[derive(Debug)]
pub struct Api {
    pub store: Arc<Store>,
    pub auth: Auth,
    pub settings: ApiSettings,
    /// Turns `true` at shutdown: open watch streams end, so shutdown need not wait for them.
    pub stop: watch::Receiver<bool>,
    /// When this instance started serving (see [`ApiSettings::registry_warmup`]).
    pub started: tokio::time::Instant,
    /// What each caller holds, against the caps of `settings`.
    pub limits: Arc<Limits>,
    /// The stored resources, read and changed through `/v1/resources` (`None`: not served).
    pub manage: Option<Arc<Manage>>,
}

struct Failure {
    status: StatusCode,
    error: &'static str,
    message: String,
}

fn fail(status: StatusCode, error: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        status,
        error,
        message: message.into(),
    }
}

impl Api {
    /// Answers one request. Generic over the request body so the fuzz targets (`fuzz/`) can
    /// call it without a connection; the server passes hyper's `Incoming`.
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        conn: Arc<ConnInfo>,
    ) -> Response<ApiBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        match self.route(req, &conn).await {
            Ok(rsp) => rsp,
            Err(f) => {
                if f.status.is_server_error() {
                    tracing::warn!(remote = %conn.remote, error = f.error, "{}", f.message);
                } else {
                    tracing::debug!(remote = %conn.remote, error = f.error, "{}", f.message);
                }
                let body = serde_json::to_vec(&ErrorBody {
                    error: f.error.to_string(),
                    message: f.message,
                })
                .unwrap_or_default();
                full(f.status, "application/json", body)
            }
        }
    }

    async fn route<B>(&self, req: Request<B>, conn: &ConnInfo) -> Result<Response<ApiBody>, Failure>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let peer = self.peer(conn)?;
        let caller = match &peer {
            Some(id) => Caller::Identity(id.clone()),
            None => Caller::Address(conn.remote.ip()),
        };
        let _in_flight = self.permit(&caller, Held::Request)?;
        let path = req.uri().path().to_string();
        let query = Query::parse(req.uri().query().unwrap_or(""));
        if path == RESOURCES_PATH {
            return self.resources(req, &query, peer.as_ref()).await;
        }
        if path == DISCOVER_PATH {
            if req.method() != Method::POST {
                return Err(fail(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "/v1/discover takes POST: the request body is the stream of commands",
                ));
            }
            return Ok(self.discover(req.into_body(), caller));
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, ENDPOINTS_PATH | INBOUND_PATH | ROUTES_PATH | ADDRESS_PATH) => {
                let key = if path == ADDRESS_PATH {
                    let ip = query.get("ip").ok_or_else(|| {
                        fail(
                            StatusCode::BAD_REQUEST,
                            "missing_ip",
                            "give the IP address: ?ip=<address>",
                        )
                    })?;
                    let ip = ip.parse().map_err(|_| {
                        fail(
                            StatusCode::BAD_REQUEST,
                            "bad_ip",
                            format!("`{ip}` is not an IPv4 or IPv6 address"),
                        )
                    })?;
                    Key::Address { ip }
                } else {
                    service_key(&path, &query)?
                };
                let watch = matches!(query.get("watch"), Some("true" | "1"));
                let version = query.get("version").map(str::to_string);
                if watch {
                    let permit = self.permit(&caller, Held::Watch)?;
                    Ok(self.watch(key, version, permit))
                } else {
                    let state = self.store.current();
                    let r = state.render(&key);
                    Ok(full(StatusCode::OK, "application/json", r.line.clone()))
                }
            }
            (&Method::POST, REGISTER_PATH) => {
                let body = read_body(req.into_body()).await?;
                let reg: Registration = serde_json::from_slice(&body).map_err(|e| {
                    fail(
                        StatusCode::BAD_REQUEST,
                        "bad_registration",
                        format!("the body must be a registration (JSON): {e}"),
                    )
                })?;
                let answer = self.register(reg, peer.as_ref()).inspect_err(|_| {
                    self.store.metrics().registrations_rejected.increment(1);
                })?;
                self.store.metrics().registrations_ok.increment(1);
                let json = serde_json::to_vec(&answer).unwrap_or_default();
                Ok(full(StatusCode::OK, "application/json", json))
            }
            (&Method::DELETE, REGISTER_PATH) => {
                let address = query
                    .get("address")
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| {
                        fail(
                            StatusCode::BAD_REQUEST,
                            "bad_address",
                            "give the registered address: ?address=<ip:port>",
                        )
                    })?;
                let namespace = query
                    .get("namespace")
                    .map(str::to_string)
                    .or_else(|| peer.as_ref().map(|p| p.namespace().to_string()))
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
                // Without mTLS nothing is proven, so anyone may remove a registration.
                let holder = match &self.auth {
                    Auth::Mtls(_) => Some(peer.as_ref()),
                    Auth::InsecureDev => None,
                };
                if self.store.deregister(&namespace, address, holder) {
                    Ok(full(StatusCode::NO_CONTENT, "text/plain", Bytes::new()))
                } else {
                    Err(fail(
                        StatusCode::NOT_FOUND,
                        "not_registered",
                        format!("{address} is not registered in {namespace} by this identity"),
                    ))
                }
            }
            (_, ENDPOINTS_PATH | INBOUND_PATH | ROUTES_PATH | ADDRESS_PATH | REGISTER_PATH) => {
                Err(fail(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "watch paths take GET; /v1/register takes POST and DELETE",
                ))
            }
            _ => Err(fail(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such path `{path}`: the API serves {ENDPOINTS_PATH}, {INBOUND_PATH}, {ROUTES_PATH}, {ADDRESS_PATH}, {REGISTER_PATH} and {RESOURCES_PATH}"
                ),
            )),
        }
    }

    /// One more watch or request for `caller`, or the 429 that says which cap it reached.
    fn permit(&self, caller: &Caller, held: Held) -> Result<Permit, Failure> {
        self.limits.acquire(caller, held).map_err(|Refused { held, limit }| {
            let (error, what, setting) = match held {
                Held::Watch => (
                    "too_many_watches",
                    "watches open",
                    "--max-watches-per-identity",
                ),
                Held::Request => (
                    "too_many_requests",
                    "requests in flight",
                    "--max-requests-per-identity",
                ),
            };
            self.store.metrics().refused(held).increment(1);
            fail(
                StatusCode::TOO_MANY_REQUESTS,
                error,
                format!(
                    "{caller} has {limit} {what}, the most one client may have ({setting} of the control plane): close some first"
                ),
            )
        })
    }

    /// The caller's verified identity (mTLS), or `None` in development mode.
    fn peer(&self, conn: &ConnInfo) -> Result<Option<SpiffeId>, Failure> {
        match &self.auth {
            Auth::InsecureDev => Ok(None),
            Auth::Mtls(bundle) => {
                let chain = conn.peer_certs.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
                    fail(
                        StatusCode::UNAUTHORIZED,
                        "client_cert_required",
                        "present your mesh certificate (mTLS): the control plane only talks to workloads with an identity",
                    )
                })?;
                weft_identity::tls::verify_client_chain(&bundle.current(), chain, SystemTime::now())
                    .map(Some)
                    .map_err(|e| {
                        fail(
                            StatusCode::UNAUTHORIZED,
                            "client_cert_refused",
                            format!("client certificate refused: {e}"),
                        )
                    })
            }
        }
    }

    fn register(&self, reg: Registration, peer: Option<&SpiffeId>) -> Result<Registered, Failure> {
        let identity = match (&self.auth, peer) {
            (Auth::Mtls(_), Some(proven)) => {
                if let Some(claimed) = &reg.identity
                    && claimed != proven
                {
                    return Err(fail(
                        StatusCode::FORBIDDEN,
                        "identity_mismatch",
                        format!(
                            "the registration claims {claimed}, but the client certificate proves {proven}: a workload may only register as itself"
                        ),
                    ));
                }
                Some(proven.clone())
            }
            (Auth::Mtls(_), None) => {
                return Err(fail(
                    StatusCode::UNAUTHORIZED,
                    "client_cert_required",
                    "present your mesh certificate",
                ));
            }
            (Auth::InsecureDev, _) => {
                tracing::warn!(
                    service = %reg.service,
                    address = %reg.address,
                    claimed = reg.identity.as_ref().map(|i| i.as_str()).unwrap_or("-"),
                    "INSECURE development mode: registration accepted without mTLS; the claimed identity is NOT verified"
                );
                reg.identity.clone()
            }
        };
        let namespace = match (&reg.namespace, &identity) {
            (Some(ns), Some(id)) if ns != id.namespace() => {
                return Err(fail(
                    StatusCode::FORBIDDEN,
                    "namespace_mismatch",
                    format!(
                        "{id} may only register in its own namespace {}, not {ns}",
                        id.namespace()
                    ),
                ));
            }
            (Some(ns), _) => ns.clone(),
            (None, Some(id)) => id.namespace().to_string(),
            (None, None) => DEFAULT_NAMESPACE.to_string(),
        };
        if reg.service.is_empty() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "bad_registration",
                "`service` is empty",
            ));
        }
        if let Some(trust) = &reg.trust {
            trust
                .check()
                .map_err(|e| fail(StatusCode::BAD_REQUEST, "bad_registration", e))?;
        }
        let lease = reg
            .lease
            .map_or(self.settings.default_lease, |l| l.0)
            .clamp(MIN_LEASE, self.settings.max_lease.max(MIN_LEASE));
        let mut labels = reg.labels;
        labels
            .entry(APP_LABEL.to_string())
            .or_insert_with(|| reg.service.clone());
        let w = Workload {
            namespace: namespace.clone(),
            service: reg.service.clone(),
            labels,
            address: reg.address,
            identity: identity.clone(),
            metrics: reg.metrics,
            trust: reg.trust.clone(),
        };
        self.store.register(w, lease).map_err(|r| match r {
            Refusal::Taken(c) => fail(StatusCode::CONFLICT, "address_taken", c.to_string()),
            too_many @ Refusal::TooMany { .. } => {
                self.store.metrics().refused_registrations.increment(1);
                fail(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_registrations",
                    too_many.to_string(),
                )
            }
        })?;
        tracing::debug!(%namespace, service = %reg.service, address = %reg.address, ?lease, "registered");
        Ok(Registered {
            namespace,
            service: reg.service,
            address: reg.address,
            identity,
            lease: Dur(lease),
        })
    }
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ApiBody> {
    let mut rsp = Response::new(Full::new(body.into()).boxed());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}

/// The watch key of a per-service path (`/v1/endpoints`, `/v1/inbound`, `/v1/routes`) from
/// `?service=S&namespace=N` (namespace `default` when not given).
fn service_key(path: &str, query: &Query) -> Result<Key, Failure> {
    let namespace = query
        .get("namespace")
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    let service = query
        .get("service")
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "missing_service",
                "give the service: ?service=<name>&namespace=<ns>",
            )
        })?
        .to_string();
    Ok(match path {
        ENDPOINTS_PATH => Key::Endpoints { namespace, service },
        INBOUND_PATH => Key::Inbound { namespace, service },
        _ => Key::Routes { namespace, service },
    })
}

async fn read_body<B>(body: B) -> Result<Bytes, Failure>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}
