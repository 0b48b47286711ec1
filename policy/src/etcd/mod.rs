//! etcd, the store control-plane replicas share: a client of etcd's v3 API through its JSON
//! gateway (`POST /v3/...` on the client port, HTTP/1.1, TLS with a client certificate when
//! configured).
//!
//! Why the gateway: the maintained Rust clients of etcd's gRPC API generate their code with
//! `protoc` at build time, which weft's default build may not need (a fresh machine with only
//! Rust builds and tests it). The gateway is etcd's own API for clients without gRPC (the same
//! messages, as JSON, on the same port, in every etcd since 3.3), and hyper, rustls and
//! serde_json, which weft has, are all a client of it takes: [`wire`] holds the messages.
//!
//! A request goes to the member that last answered; a member that cannot be reached (the
//! request was not sent) is skipped for the next, so one member down costs a connect attempt,
//! not an error. A request that may be sent twice (all but transactions) is also sent again,
//! once, to the next member when the first gave no answer in time, had no leader (a member's
//! proposals hang while its leader is gone, until a new one is elected) or its connection
//! failed under the request. An answer
//! of etcd's own otherwise (a refused request, a failed transaction) is returned as it is.

mod conn;
pub mod follow;
pub mod registry;
#[cfg(test)]
mod tests;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::conn::Connector;
use self::wire::*;

/// How long a request to a member may take, by default (a watch: its first answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause before a request is sent again to the next member.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The longest line of a watch stream taken: a batch of events of at most etcd's request size
/// limit (1.5 MiB by default), base64-encoded.
const MAX_LINE: usize = 8 << 20;

/// Where the store's members are, and how to talk to them.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `host:port` of each member's client URL.
    pub members: Vec<String>,
    /// TLS to the members: the CA that signed their certificates, and the client's own
    /// certificate and key when the members ask for one.
    pub tls: Option<EtcdTls>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    /// The members of a store URL, `etcd://host:2379,host:2379`.
    pub fn members(url: &str) -> Result<Vec<String>, String> {
        let Some(list) = url.strip_prefix("etcd://") else {
            return Err(format!(
                "`{url}` is not an etcd store: give `etcd://host:2379[,host:2379...]`"
            ));
        };
        let members: Vec<String> = list
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect();
        if members.is_empty() {
            return Err(format!("`{url}` names no etcd member"));
        }
        for m in &members {
            let (host, port) = m
                .rsplit_once(':')
                .ok_or_else(|| format!("etcd member `{m}` has no port (`host:2379`)"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("etcd member `{m}` is not `host:port`"));
            }
        }
        Ok(members)
    }
}

/// What went wrong talking to etcd.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd member {member} is not reachable: {detail}")]
    Unreachable { member: String, detail: String },
    #[error("no etcd member could be reached ({0}): is the etcd cluster running?")]
    AllUnreachable(String),
    #[error("etcd: {0}")]
    Config(String),
    /// etcd's own error (a gRPC status): 14 `UNAVAILABLE` when the member has no leader or the
    /// cluster no quorum.
    #[error("etcd member {member} answered: {message} (gRPC code {code})")]
    Server {
        member: String,
        code: i32,
        message: String,
    },
    #[error("etcd member {member} did not answer within {after:?}")]
    Timeout { member: String, after: Duration },
    #[error("etcd member {member}'s answer could not be read: {detail}")]
    Protocol { member: String, detail: String },
}

impl EtcdError {
    /// Whether the store cannot take writes now (no member reachable, no leader, no quorum, or
    /// no answer in time), rather than refusing this request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. }
            | EtcdError::AllUnreachable(_)
            | EtcdError::Timeout { .. } => true,
            // UNAVAILABLE, DEADLINE_EXCEEDED.
            EtcdError::Server { code, .. } => matches!(code, 14 | 4),
            EtcdError::Config(_) | EtcdError::Protocol { .. } => false,
        }
    }
}

/// A client of the store. Cloning shares its connections.
#[derive(Clone, Debug)]
pub struct Etcd {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `http://host:port` or `https://host:port` of each member.
    members: Vec<String>,
    client: Client<Connector, Full<Bytes>>,
    /// The member that answered last: asked first.
    preferred: AtomicUsize,
    timeout: Duration,
}

impl Etcd {
    /// The members' URLs.
    pub fn members(&self) -> &[String] {
        &self.inner.members
    }

    pub fn new(cfg: &EtcdConfig) -> Result<Self, EtcdError> {
        if cfg.members.is_empty() {
            return Err(EtcdError::Config("no member given".into()));
        }
        let tls = cfg.tls.as_ref().map(client_tls).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members = cfg
            .members
            .iter()
            .map(|m| format!("{scheme}://{m}"))
            .collect();
        let connector = Connector {
            tls,
            timeout: cfg.timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                members,
                client,
                preferred: AtomicUsize::new(0),
                timeout: cfg.timeout,
            }),
        })
    }

    /// The value of `key` and its revisions, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let req = RangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
            serializable: false,
        };
        let rsp: RangeResponse = self.call("/v3/kv/range", &req).await?;
        Ok(rsp.kvs.into_iter().next())
    }

    /// Every key under `prefix` and the store's revision they were read at. `serializable`:
    /// from the member asked, without a quorum (what it has, maybe behind the others).
    pub async fn get_prefix(
        &self,
        prefix: &[u8],
        serializable: bool,
    ) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            serializable,
        };
        let rsp: RangeResponse = self.call("/v3/kv/range", &req).await?;
        Ok((rsp.header.revision, rsp.kvs))
    }

    /// Sets `key` (attached to `lease`, unless 0): the store's revision after.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let req = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        };
        let rsp: WriteResponse = self.call("/v3/kv/put", &req).await?;
        Ok(rsp.header.revision)
    }

    /// Deletes `key`: the store's revision after.
    pub async fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let req = DeleteRangeRequest {
            key: key.to_vec(),
            range_end: Vec::new(),
        };
        let rsp: WriteResponse = self.call("/v3/kv/deleterange", &req).await?;
        Ok(rsp.header.revision)
    }

    /// Applies `ops` at once if every one of `compare` holds: whether it did, and the store's
    /// revision.
    pub async fn txn(
        &self,
        compare: Vec<Compare>,
        ops: Vec<RequestOp>,
    ) -> Result<(bool, i64), EtcdError> {
        let req = TxnRequest {
            compare,
            success: ops,
        };
        // Sent once: sent again after an unanswered first try, a transaction that did apply
        // would be reported as failed.
        let rsp: TxnResponse = self.call_once("/v3/kv/txn", &req).await?;
        Ok((rsp.succeeded, rsp.header.revision))
    }

    /// A new lease of `ttl` (whole seconds, at least 1): its ID.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let req = LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        let rsp: LeaseGrantResponse = self.call("/v3/lease/grant", &req).await?;
        if !rsp.error.is_empty() || rsp.id == 0 {
            return Err(EtcdError::Protocol {
                member: self.member(self.preferred()).to_string(),
                detail: format!("lease not granted: {}", rsp.error),
            });
        }
        Ok(rsp.id)
    }

    /// Renews lease `id` for its TTL: `false` when the lease is gone (expired or revoked).
    pub async fn keep_alive(&self, id: i64) -> Result<bool, EtcdError> {
        #[derive(serde::Deserialize)]
        struct Line {
            #[serde(default)]
            result: LeaseKeepAliveResponse,
        }
        let line: Line = self
            .call("/v3/lease/keepalive", &LeaseIdRequest { id })
            .await?;
        Ok(line.result.ttl > 0)
    }

    /// Ends lease `id` now, and deletes the keys attached to it.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let _: WriteResponse = self
            .call("/v3/lease/revoke", &LeaseIdRequest { id })
            .await?;
        Ok(())
    }

    /// Whether some member answers and has a leader: its revision.
    pub async fn status(&self) -> Result<i64, EtcdError> {
        let rsp: StatusResponse = self
            .call("/v3/maintenance/status", &serde_json::json!({}))
            .await?;
        if rsp.leader == 0 {
            return Err(EtcdError::Server {
                member: self.member(self.preferred()).to_string(),
                code: 14,
                message: "the member has no leader".into(),
            });
        }
        Ok(rsp.header.revision)
    }

    /// Follows every change to the keys under `prefix` after `start_revision` (0: from now).
    pub async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
    ) -> Result<Watch, EtcdError> {
        let req = WatchRequest {
            create_request: WatchCreate {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                start_revision,
                progress_notify: true,
            },
        };
        let (member, body) = self.send("/v3/watch", &req).await?;
        Ok(Watch {
            member,
            body,
            buf: BytesMut::new(),
        })
    }

    fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed) % self.inner.members.len()
    }

    fn member(&self, i: usize) -> &str {
        let m = &self.inner.members[i % self.inner.members.len()];
        m.split_once("://").map_or(m.as_str(), |(_, hp)| hp)
    }

    /// One unary call that may be sent twice: sent again, once, to the next member when the
    /// first gave no answer in time or had no leader.
    async fn call<Req: Serialize, Rsp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Rsp, EtcdError> {
        match self.call_once(path, req).await {
            Err(e) if e.is_unavailable() && !matches!(e, EtcdError::AllUnreachable(_)) => {
                tracing::debug!(error = %e, "etcd: asking the next member");
                self.inner.preferred.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
                self.call_once(path, req).await
            }
            other => other,
        }
    }

    /// One unary call: the whole answer, read.
    async fn call_once<Req: Serialize, Rsp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Rsp, EtcdError> {
        let (member, body) = self.send(path, req).await?;
        let read = tokio::time::timeout(self.inner.timeout, body.collect()).await;
        let bytes = read
            .map_err(|_| EtcdError::Timeout {
                member: member.clone(),
                after: self.inner.timeout,
            })?
            .map_err(|e| EtcdError::Protocol {
                member: member.clone(),
                detail: e.to_string(),
            })?
            .to_bytes();
        parse(&member, &bytes)
    }

    /// Sends `req` to the members in turn, from the preferred one, until one takes it: that
    /// member and its answer's body (a status other than 200 is its error).
    async fn send<Req: Serialize>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<(String, hyper::body::Incoming), EtcdError> {
        let json = serde_json::to_vec(req).map_err(|e| EtcdError::Config(e.to_string()))?;
        let json = Bytes::from(json);
        let first = self.preferred();
        let mut failures = Vec::new();
        for n in 0..self.inner.members.len() {
            let i = (first + n) % self.inner.members.len();
            let member = self.member(i).to_string();
            let uri: Uri = format!("{}{path}", self.inner.members[i])
                .parse()
                .map_err(|e| EtcdError::Config(format!("{e}")))?;
            let request = http::Request::post(uri)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(json.clone()))
                .map_err(|e| EtcdError::Config(e.to_string()))?;
            let sent =
                tokio::time::timeout(self.inner.timeout, self.inner.client.request(request)).await;
            let rsp = match sent {
                Ok(Ok(rsp)) => rsp,
                // Not sent: the next member.
                Ok(Err(e)) if e.is_connect() => {
                    failures.push(format!(
                        "{member}: {}",
                        weft_runtime::process::error_chain(&e)
                    ));
                    continue;
                }
                // The connection failed under the request (the member went away): it may or
                // may not have been taken.
                Ok(Err(e)) => {
                    return Err(EtcdError::Unreachable {
                        member,
                        detail: weft_runtime::process::error_chain(&e),
                    });
                }
                Err(_) => {
                    return Err(EtcdError::Timeout {
                        member,
                        after: self.inner.timeout,
                    });
                }
            };
            self.inner.preferred.store(i, Ordering::Relaxed);
            if rsp.status() != http::StatusCode::OK {
                let bytes = tokio::time::timeout(self.inner.timeout, rsp.into_body().collect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let e: GatewayError = serde_json::from_slice(&bytes).unwrap_or_default();
                return Err(EtcdError::Server {
                    member,
                    code: e.code,
                    message: e.text().to_string(),
                });
            }
            return Ok((member, rsp.into_body()));
        }
        Err(EtcdError::AllUnreachable(failures.join("; ")))
    }
}

/// An answer's JSON, or the gateway's error in it.
fn parse<Rsp: DeserializeOwned>(member: &str, bytes: &[u8]) -> Result<Rsp, EtcdError> {
    serde_json::from_slice(bytes).map_err(|e| EtcdError::Protocol {
        member: member.to_string(),
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ),
    })
}

/// The TLS configuration for the members: their CA, and the client's certificate if given.
fn client_tls(t: &EtcdTls) -> Result<Arc<rustls::ClientConfig>, EtcdError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &PathBuf, e: &dyn std::fmt::Display| {
        EtcdError::Config(format!("cannot read {}: {e}", what.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&t.ca).map_err(|e| bad(&t.ca, &e))? {
        let cert = cert.map_err(|e| bad(&t.ca, &e))?;
        roots.add(cert).map_err(|e| bad(&t.ca, &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| EtcdError::Config(e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| EtcdError::Config(format!("the client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(EtcdError::Config(
                "give both the client certificate and its key, or neither".into(),
            ));
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A watch: batches of events, one per line of the gateway's stream.
#[derive(Debug)]
pub struct Watch {
    member: String,
    body: hyper::body::Incoming,
    buf: BytesMut,
}

impl Watch {
    /// The member followed.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The next batch (`None`: the stream ended, as when the member goes away). A batch may be
    /// empty: the watch's creation, or a progress notification carrying the revision.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, EtcdError> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(at + 1);
                let line = line.strip_suffix(b"\n").unwrap_or(&line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line: WatchLine = parse(&self.member, line)?;
                if let Some(e) = line.error {
                    return Err(EtcdError::Server {
                        member: self.member.clone(),
                        code: e.code,
                        message: e.text().to_string(),
                    });
                }
                return Ok(line.result);
            }
            if self.buf.len() > MAX_LINE {
                return Err(EtcdError::Protocol {
                    member: self.member.clone(),
                    detail: format!("a watch line over {MAX_LINE} bytes"),
                });
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(EtcdError::Protocol {
                        member: self.member.clone(),
                        detail: weft_runtime::process::error_chain(&e),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}
