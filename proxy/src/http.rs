//! HTTP helpers shared by both directions: the plaintext client, hop-by-hop headers, authority
//! and port of a request (HTTP/1 origin-form with `Host`, absolute-form, or HTTP/2
//! `:authority`), and the header that carries an HTTP/1 request's original protocol across the HTTP/2 hop between
//! proxies.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::uri::Authority;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;

/// Set by the client proxy when the application spoke HTTP/1 (the hop between proxies is
/// always HTTP/2); the server proxy speaks HTTP/1 to its application again and removes it.
pub const ORIG_PROTO_HEADER: &str = "weft-orig-proto";
pub const ORIG_PROTO_HTTP1: &str = "HTTP/1.1";

/// Connection-specific headers, which must not be forwarded (RFC 9110 §7.6.1) and are illegal
/// in HTTP/2. `Trailer` is not one (RFC 9110 §6.6.2: it names the trailer fields end to end),
/// and must pass: hyper writes an HTTP/1.1 response's trailer fields only when its `Trailer`
/// header names them.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// [`ORIG_PROTO_HEADER`] as a header name, made once (removing by `&str` parses the name on
/// every request).
pub static ORIG_PROTO: HeaderName = HeaderName::from_static(ORIG_PROTO_HEADER);

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is hop-by-hop whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == KEEP_ALIVE || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers, including those named by `Connection`. `te: trailers` is kept:
/// gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (standard names compare as integers)
    // instead of nine removals that each hash a name (callgrind: ~2,900 instructions per
    // request in each proxy, for the request and its response).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let keep_te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("trailers"));
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    if keep_te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// The authority a request is for: the URI's (absolute-form, HTTP/2) or the `Host` header.
pub fn authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse().ok())
}

/// `uri` in origin-form, as an HTTP/1 client sends it to a server: its path and query only
/// (shared, not copied; `/` when empty).
pub fn origin_form(uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// A response from upstream (endpoint, peer proxy, app) as it goes back: hop-by-hop headers
/// removed, the body boxed.
pub fn forwarded(rsp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = rsp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, crate::body::boxed(body))
}

/// The path and query of a request's URI (`/` when empty).
pub fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

/// Pooled plaintext HTTP clients that speak a request's own protocol: HTTP/2 with prior
/// knowledge for an HTTP/2 request, HTTP/1.1 otherwise. For the local application and for
/// endpoints without a proxy.
#[derive(Debug, Clone)]
pub struct PlainClient {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl PlainClient {
    /// Connections get `TCP_NODELAY` and at most `connect_timeout` to be established.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        Self {
            http1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .http2_max_header_list_size(crate::limits::H2_MAX_HEADER_LIST_SIZE)
                .http2_initial_stream_window_size(crate::limits::H2_STREAM_WINDOW)
                .http2_initial_connection_window_size(crate::limits::H2_CONNECTION_WINDOW)
                .timer(TokioTimer::new())
                .build(connector),
        }
    }

    /// Sends `req` (its URI absolute) in the protocol of its version.
    pub fn request(&self, req: Request<Body>) -> ResponseFuture {
        if req.version() == Version::HTTP_2 {
            self.http2.request(req)
        } else {
            self.http1.request(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_headers_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(h.contains_key("x-kept"));
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn authority_from_uri_or_host() {
        let r = Request::get("http://api.default:8080/x").body(()).unwrap();
        assert_eq!(authority(&r).unwrap().as_str(), "api.default:8080");
        let r = Request::get("/x")
            .header("host", "api:9090")
            .body(())
            .unwrap();
        assert_eq!(authority(&r).unwrap().port_u16(), Some(9090));
        let r = Request::get("/x").body(()).unwrap();
        assert!(authority(&r).is_none());
    }
}
