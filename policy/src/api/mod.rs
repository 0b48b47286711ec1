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

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};
use weft_identity::SpiffeId;
use weft_identity::tls::TrustBundle;
use weft_runtime::serve::ConnInfo;
use weft_runtime::serve::ErrorBody;

use crate::registry::{APP_LABEL, Registered, Registration, Workload};
use crate::resources::DEFAULT_NAMESPACE;
use crate::store::{Key, Store};
use crate::wire::{Dur, Event};

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
    /// Callers present mesh certificates verified against this bundle.
    Mtls(TrustBundle),
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
}

impl ApiSettings {
    /// The warm-up that covers one renewal of the default lease (clients renew at a third of
    /// it, and at once when they reconnect), plus a second of slack.
    pub fn warmup_for(default_lease: Duration) -> Duration {
        default_lease / 3 + Duration::from_secs(1)
    }
}

/// Shortest lease granted, whatever is asked.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            default_lease: Duration::from_secs(30),
            max_lease: Duration::from_secs(300),
            heartbeat: Duration::from_secs(10),
            registry_warmup: Self::warmup_for(Duration::from_secs(30)),
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
    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> Response<ApiBody> {
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

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<ApiBody>, Failure> {
        let peer = self.peer(conn)?;
        let path = req.uri().path().to_string();
        let query = Query::parse(req.uri().query().unwrap_or(""));
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
                    Ok(self.watch(key, version))
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
                    "no such path `{path}`: the API serves {ENDPOINTS_PATH}, {INBOUND_PATH}, {ROUTES_PATH}, {ADDRESS_PATH} and {REGISTER_PATH}"
                ),
            )),
        }
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
                weft_identity::tls::verify_client_chain(bundle, chain, SystemTime::now())
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
        };
        self.store
            .register(w, lease)
            .map_err(|c| fail(StatusCode::CONFLICT, "address_taken", c.to_string()))?;
        tracing::debug!(%namespace, service = %reg.service, address = %reg.address, ?lease, "registered");
        Ok(Registered {
            namespace,
            service: reg.service,
            address: reg.address,
            identity,
            lease: Dur(lease),
        })
    }

    fn watch(&self, key: Key, version: Option<String>) -> Response<ApiBody> {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let store = self.store.clone();
        let stop = self.stop.clone();
        let heartbeat = self.settings.heartbeat;
        let warm = self.started + self.settings.registry_warmup;
        let hold_until = (matches!(key, Key::Endpoints { .. })
            && version.is_some()
            && tokio::time::Instant::now() < warm)
            .then_some(warm);
        tokio::spawn(stream(store, key, version, tx, stop, heartbeat, hold_until));
        let mut rsp = Response::new(ChannelBody { rx }.boxed());
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(NDJSON),
        );
        rsp
    }
}

/// Feeds one watch stream until the client goes away or the server stops.
async fn stream(
    store: Arc<Store>,
    key: Key,
    mut held: Option<String>,
    tx: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
    heartbeat: Duration,
    mut hold_until: Option<tokio::time::Instant>,
) {
    let kind = key.kind();
    let metrics = store.metrics().clone();
    metrics.watch_active(kind).increment(1.0);
    let mut states = store.subscribe();
    let mut first = true;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        let state = states.borrow_and_update().clone();
        let rendered = state.render(&key);
        if hold_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            hold_until = None;
        }
        let line = if hold_until.is_some() && held.as_deref() != Some(rendered.version.as_str()) {
            // The registry is still warming up after a restart: the client keeps its list.
            None
        } else if held.as_deref() == Some(rendered.version.as_str()) {
            first.then(|| {
                event_line(&Event::<()>::Unchanged {
                    version: rendered.version.clone(),
                    revision: state.revision,
                })
            })
        } else {
            held = Some(rendered.version.clone());
            metrics.watch_event(kind).increment(1);
            Some(rendered.line.clone())
        };
        first = false;
        if let Some(line) = line
            && !send(&tx, line, &mut stop).await
        {
            break;
        }
        let warmed = async {
            match hold_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = states.changed() => if changed.is_err() { break },
            _ = warmed => {}
            _ = tick.tick() => {
                if !send(&tx, event_line(&Event::<()>::Heartbeat), &mut stop).await {
                    break;
                }
            }
            _ = tx.closed() => break,
            _ = stopped(&mut stop) => break,
        }
    }
    metrics.watch_active(kind).decrement(1.0);
}

/// Queues a line for the client; `false` when the client is gone or the server stops (a client
/// that stopped reading must not hold up shutdown).
async fn send(tx: &mpsc::Sender<Bytes>, line: Bytes, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        sent = tx.send(line) => sent.is_ok(),
        _ = stopped(stop) => false,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn event_line<T: serde::Serialize>(e: &Event<T>) -> Bytes {
    let mut v = serde_json::to_vec(e).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A response body fed by a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
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

async fn read_body(body: Incoming) -> Result<Bytes, Failure> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(fail(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
        )),
    }
}

/// A parsed query string (`a=b&c=d`, percent-decoded).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Self(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = Query::parse(
            "service=api&namespace=default&identity=spiffe%3A%2F%2Fweft.local%2Fns%2Fa%2Fsa%2Fb&x",
        );
        assert_eq!(q.get("service"), Some("api"));
        assert_eq!(q.get("identity"), Some("spiffe://weft.local/ns/a/sa/b"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(decode(&encode("spiffe://a b/%")), "spiffe://a b/%");
        assert_eq!(decode("%4"), "%4");
    }
}
