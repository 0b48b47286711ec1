//! Responses the proxy makes itself. Each carries a `weft-error` header with a short reason
//! code and a body saying what happened and which policy, identity or endpoint was involved,
//! so an operator never has to guess why a request failed.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// The header naming why the proxy answered itself.
pub const ERROR_HEADER: &str = "weft-error";

/// The status the metrics record for a request whose client went away (nginx's 499 "client
/// closed request"; nobody receives it).
pub fn client_closed_status() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Whether `req` is a gRPC call (`content-type: application/grpc`, alone or with a `+format`
/// or parameters; gRPC-Web is not: its errors travel in its own body).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    is_grpc_content(req.headers())
}

/// Whether a message with `headers` carries gRPC (not gRPC-Web): see [`is_grpc`].
pub fn is_grpc_content(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// gRPC status codes (grpc/doc/statuscodes.md) the proxy's errors map to.
mod grpc_code {
    pub const CANCELLED: u8 = 1;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

/// Why the proxy answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Authorization denied the request (403).
    Forbidden {
        policy: String,
        reason: String,
        peer: String,
    },
    /// The destination has no endpoints (503).
    NoEndpoints { destination: String },
    /// Every endpoint of the destination is ejected by the circuit breaker (503).
    EndpointsEjected { destination: String },
    /// The destination is not a service the mesh knows (502).
    UnknownDestination { destination: String },
    /// Connecting to an endpoint failed (502).
    ConnectFailed { endpoint: String, detail: String },
    /// The endpoint proved an identity other than the one discovery gave for it (502).
    IdentityMismatch {
        endpoint: String,
        expected: String,
        found: String,
    },
    /// The request did not complete in time (504).
    Timeout { destination: String, after_ms: u64 },
    /// The local application could not be reached (502).
    AppUnavailable { app: String, detail: String },
    /// The client spoke HTTP/2 to an application that does not (502): it answered the
    /// connection's preface with bytes that are not HTTP/2 frames (an HTTP/1 server's
    /// `HTTP/1.1 400`, read as a frame, is one far over the size limit).
    ProtocolMismatch { app: String, detail: String },
    /// The request itself is not proxyable (400).
    BadRequest { detail: String },
    /// The request's header block is over the mesh's limits (431), refused where it enters
    /// the mesh ([`crate::limits`]).
    HeadersTooLarge { detail: String },
    /// The response's header block is over the mesh's limits (502), refused where it enters
    /// the mesh: the proxy of the application that made it.
    ResponseHeadersTooLarge { detail: String },
    /// The client's request body could not be read: malformed (a bad chunk size, more or
    /// less than its length says) (400). The client's fault, not the endpoint's.
    BadRequestBody { detail: String },
    /// The client went away (closed or reset its connection or stream) before its request
    /// was complete or answered. Nobody gets this response: it is the 499 of the metrics, in
    /// nginx's sense. The client's fault, not the endpoint's.
    ClientClosed { detail: String },
    /// The upstream connection failed mid-request (502).
    Upstream { endpoint: String, detail: String },
    /// The proxy has no certificate or no policy yet (503).
    NotReady,
}

impl ProxyError {
    /// The reason code: the `weft-error` header and the `reason` label of
    /// `weft_proxy_errors_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::NoEndpoints { .. } => "no_endpoints",
            ProxyError::EndpointsEjected { .. } => "endpoints_ejected",
            ProxyError::UnknownDestination { .. } => "unknown_destination",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::IdentityMismatch { .. } => "identity_mismatch",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::AppUnavailable { .. } => "app_unavailable",
            ProxyError::ProtocolMismatch { .. } => "protocol_mismatch",
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::ResponseHeadersTooLarge { .. } => "response_headers_too_large",
            ProxyError::BadRequestBody { .. } => "bad_request_body",
            ProxyError::ClientClosed { .. } => "client_closed",
            ProxyError::Upstream { .. } => "upstream_failed",
            ProxyError::NotReady => "not_ready",
        }
    }

    /// Every reason code, so metrics can show zeros.
    pub const CODES: &'static [&'static str] = &[
        "forbidden",
        "no_endpoints",
        "endpoints_ejected",
        "unknown_destination",
        "connect_failed",
        "identity_mismatch",
        "timeout",
        "app_unavailable",
        "protocol_mismatch",
        "bad_request",
        "headers_too_large",
        "response_headers_too_large",
        "bad_request_body",
        "client_closed",
        "upstream_failed",
        "not_ready",
    ];

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::NoEndpoints { .. }
            | ProxyError::EndpointsEjected { .. }
            | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest { .. } | ProxyError::BadRequestBody { .. } => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ClientClosed { .. } => client_closed_status(),
            ProxyError::UnknownDestination { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::IdentityMismatch { .. }
            | ProxyError::AppUnavailable { .. }
            | ProxyError::ProtocolMismatch { .. }
            | ProxyError::ResponseHeadersTooLarge { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the client caused it: its request or its going away, not the endpoint or the
    /// proxy. Such failures never count against an endpoint (circuit breaker, latency
    /// estimate) and are never retried.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::BadRequestBody { .. }
                | ProxyError::ClientClosed { .. }
        )
    }

    /// The gRPC status a gRPC client gets for it, as Envoy and Linkerd map such failures
    /// (and gRPC's own HTTP-to-gRPC mapping: 400 is INTERNAL, 502, 503 and 504 UNAVAILABLE):
    /// the proxy could not reach a server (no endpoints, connect or TLS failure, unknown name,
    /// a peer gone mid-call, not ready) is UNAVAILABLE, which clients may retry.
    pub fn grpc_status(&self) -> u8 {
        use grpc_code::*;
        match self {
            ProxyError::Forbidden { .. } => PERMISSION_DENIED,
            ProxyError::Timeout { .. } => DEADLINE_EXCEEDED,
            ProxyError::HeadersTooLarge { .. } | ProxyError::ResponseHeadersTooLarge { .. } => {
                RESOURCE_EXHAUSTED
            }
            ProxyError::BadRequest { .. } | ProxyError::BadRequestBody { .. } => INTERNAL,
            ProxyError::ClientClosed { .. } => CANCELLED,
            ProxyError::NoEndpoints { .. }
            | ProxyError::EndpointsEjected { .. }
            | ProxyError::UnknownDestination { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::IdentityMismatch { .. }
            | ProxyError::AppUnavailable { .. }
            | ProxyError::ProtocolMismatch { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::NotReady => UNAVAILABLE,
        }
    }

    /// The response a gRPC client gets: trailers-only (HTTP 200, `grpc-status` and
    /// `grpc-message` in the only header block, which ends the stream), with the `weft-error`
    /// header as on every answer of the proxy's own.
    pub fn grpc_response(&self) -> Response<Body> {
        let mut rsp = Response::new(body::empty());
        let h = rsp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&self.to_string())) {
            h.insert("grpc-message", v);
        }
        rsp
    }

    /// The response the application (or peer) gets.
    pub fn response(&self) -> Response<Body> {
        let mut rsp = Response::new(body::full(Bytes::from(format!("{self}\n"))));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        h.insert(ERROR_HEADER, HeaderValue::from_static(self.code()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Forbidden {
                policy,
                reason,
                peer,
            } => write!(
                f,
                "weft: request denied by policy {policy}: {reason} (peer: {peer})"
            ),
            ProxyError::NoEndpoints { destination } => {
                write!(f, "weft: {destination} has no available endpoints")
            }
            ProxyError::EndpointsEjected { destination } => write!(
                f,
                "weft: every endpoint of {destination} is ejected by the circuit breaker after consecutive failures; each is probed again when its ejection ends"
            ),
            ProxyError::UnknownDestination { destination } => write!(
                f,
                "weft: {destination} is not a service known to the mesh (check the Service resources of the control plane)"
            ),
            ProxyError::ConnectFailed { endpoint, detail } => {
                write!(
                    f,
                    "weft: connecting to endpoint {endpoint} failed: {detail}"
                )
            }
            ProxyError::IdentityMismatch {
                endpoint,
                expected,
                found,
            } => write!(
                f,
                "weft: endpoint {endpoint} proved the identity {found}, but discovery expects {expected}: connection refused"
            ),
            ProxyError::Timeout {
                destination,
                after_ms,
            } => write!(
                f,
                "weft: request to {destination} timed out after {after_ms} ms"
            ),
            ProxyError::AppUnavailable { app, detail } => write!(
                f,
                "weft: the application at {app} is not reachable: {detail}"
            ),
            ProxyError::ProtocolMismatch { app, detail } => write!(
                f,
                "weft: the client speaks HTTP/2 and the application at {app} does not: it answered HTTP/2's preface with something else ({detail}); serve HTTP/2 cleartext (h2c, prior knowledge) there, or have the client speak HTTP/1.1"
            ),
            ProxyError::BadRequest { detail } => write!(f, "weft: bad request: {detail}"),
            ProxyError::HeadersTooLarge { detail } => write!(
                f,
                "weft: request header fields too large: {detail} (the mesh's limits: {} bytes of header list, counted as HTTP/2 does, and {} fields)",
                crate::limits::MAX_HEADER_LIST_SIZE,
                crate::limits::MAX_HEADER_FIELDS
            ),
            ProxyError::ResponseHeadersTooLarge { detail } => write!(
                f,
                "weft: the application's response header fields are too large: {detail} (the mesh's limits: {} bytes of header list, counted as HTTP/2 does, and {} fields)",
                crate::limits::MAX_HEADER_LIST_SIZE,
                crate::limits::MAX_HEADER_FIELDS
            ),
            ProxyError::BadRequestBody { detail } => {
                write!(f, "weft: the request body is malformed: {detail}")
            }
            ProxyError::ClientClosed { detail } => {
                write!(f, "weft: the client went away: {detail}")
            }
            ProxyError::Upstream { endpoint, detail } => {
                write!(f, "weft: the connection to {endpoint} failed: {detail}")
            }
            ProxyError::NotReady => write!(
                f,
                "weft: the proxy is not ready: it has no certificate or no policy yet (are the identity service and the control plane reachable?)"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// `text` as a `grpc-message` value: percent-encoded, every byte outside printable ASCII and
/// `%` itself (the gRPC HTTP/2 protocol's rule).
fn grpc_message(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}
