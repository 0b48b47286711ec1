//! The mesh's limits on a message's header block: one set, enforced where a message enters the
//! mesh, so that no proxy is ever sent a message another proxy would refuse; and the HTTP/2
//! flow-control windows that keep one stalled stream from stopping the others on a shared
//! connection.
//!
//! A request is checked by the proxy it enters (the client's own proxy on the outbound side;
//! the server's proxy on the inbound side, for a client outside the mesh) and refused with 431
//! `headers_too_large` there. A response is checked by the proxy of the application that made
//! it, which answers 502 `response_headers_too_large` instead. Between proxies, every message
//! has passed those checks, and each proxy accepts a little more than the limit
//! ([`H2_MAX_HEADER_LIST_SIZE`]: room for the few headers a proxy adds), so one request can
//! never make a peer refuse it at the level of the connection: HTTP/2 (the `h2` crate) ends a
//! whole connection, with every request it carries, when a header block is over four times
//! the size the receiver advertised.
//!
//! The sizes are counted as HTTP/2 counts a header list (RFC 9113 §6.5.2: each field's name
//! and value plus 32 octets), pseudo-header fields included, whichever protocol carried the
//! message, so the URI counts too. Envoy's defaults are 60 KiB and 100 fields; hyper's HTTP/1
//! parser stops at 100 fields.

use http::{HeaderMap, Request, Response};

use crate::error::ProxyError;

/// The largest header list of a message in the mesh, in bytes as HTTP/2 counts them.
pub const MAX_HEADER_LIST_SIZE: usize = 64 * 1024;
/// The most header fields (values) a message in the mesh may have. HTTP/1 messages with more
/// are refused by the HTTP/1 parser itself (431, counted as `headers_too_large` too).
pub const MAX_HEADER_FIELDS: usize = 100;
/// What the proxies accept from each other and from HTTP/2 applications (`SETTINGS_MAX_HEADER_LIST_SIZE`):
/// the limit and room for the headers a proxy adds on the way (`weft-orig-proto`, a `Host`).
pub const H2_MAX_HEADER_LIST_SIZE: u32 = (MAX_HEADER_LIST_SIZE + 16 * 1024) as u32;
/// The largest HTTP/1 message head the proxy reads (hyper's read buffer; its default is about
/// 400 KiB). A head over [`MAX_HEADER_LIST_SIZE`] and under this gets the proxy's 431 with its
/// reason; a longer one, the HTTP/1 parser's own 431 (counted the same).
pub const HTTP1_MAX_BUF_SIZE: usize = 256 * 1024;
/// How long an HTTP/1 client has to send a whole request head, counted from when the proxy
/// starts reading it: a slowloris (a head sent a byte at a time) is cut off then, and so is a
/// kept-alive connection on which no next request starts (hyper cannot tell the two apart).
/// hyper's default, set here so that it stays a decision of ours; nginx's
/// `client_header_timeout` is 60 s.
pub const HTTP1_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most requests in flight at once on one HTTP/2 connection a proxy serves. hyper's
/// default, 200, made the 201st request between two proxies wait behind the others, so 200
/// long polls from one client stopped every other client of the service. A stream waiting
/// for its response holds no flow-control window, only its state and the request to the app.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 2_000;
/// How much of one HTTP/2 stream's body a receiver takes before its reader has consumed it
/// (the protocol's default, and Linkerd's): what a stream whose reader stopped holds.
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// How many streams whose readers stopped (a client that does not read its download, an app
/// that does not read its upload) a connection carries before the others wait.
pub const H2_STALLED_STREAMS: u32 = 200;
/// How much of all streams' bodies a receiver takes before they are consumed: the window of
/// [`H2_STALLED_STREAMS`] streams, so that a few stalled readers can never stop the other
/// streams of a connection that many clients share. At most 12.5 MiB is held, and only while
/// readers stall. (hyper's defaults, 1 or 5 MiB per connection and 1 or 2 MiB per stream, let
/// three stalled downloads stop every response between two proxies.)
pub const H2_CONNECTION_WINDOW: u32 = H2_STREAM_WINDOW * H2_STALLED_STREAMS;

/// What each field costs in an HTTP/2 header list, beside its name and value.
const FIELD_OVERHEAD: usize = 32;

/// The size of a header map's fields as HTTP/2 counts them.
fn fields_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + FIELD_OVERHEAD)
        .sum()
}

/// The size of a request's header list as HTTP/2 counts it: `:method`, `:scheme`,
/// `:authority`, `:path` and the fields.
pub fn request_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let pseudo = |name: &str, value: usize| name.len() + value + FIELD_OVERHEAD;
    pseudo(":method", req.method().as_str().len())
        + pseudo(":scheme", uri.scheme_str().map_or(4, str::len))
        + uri
            .authority()
            .map_or(0, |a| pseudo(":authority", a.as_str().len()))
        + pseudo(
            ":path",
            uri.path_and_query().map_or(1, |p| p.as_str().len()),
        )
        + fields_size(req.headers())
}

/// The size of a response's header list as HTTP/2 counts it: `:status` and the fields.
pub fn response_size<B>(rsp: &Response<B>) -> usize {
    ":status".len() + 3 + FIELD_OVERHEAD + fields_size(rsp.headers())
}

/// Why a header block of `size` bytes and `fields` fields is over the limits, if it is.
fn over(size: usize, fields: usize) -> Option<String> {
    if fields > MAX_HEADER_FIELDS {
        Some(format!("{fields} header fields"))
    } else if size > MAX_HEADER_LIST_SIZE {
        Some(format!("a header list of {size} bytes"))
    } else {
        None
    }
}

/// Refuses a request over the limits (431 `headers_too_large`).
pub fn check_request<B>(req: &Request<B>) -> Result<(), ProxyError> {
    match over(request_size(req), req.headers().len()) {
        Some(detail) => Err(ProxyError::HeadersTooLarge { detail }),
        None => Ok(()),
    }
}

/// Refuses a response over the limits (502 `response_headers_too_large`).
pub fn check_response<B>(rsp: &Response<B>) -> Result<(), ProxyError> {
    match over(response_size(rsp), rsp.headers().len()) {
        Some(detail) => Err(ProxyError::ResponseHeadersTooLarge { detail }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_counted_as_http2_counts_them() {
        let req = Request::get("http://api.default:8080/a?b")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        // :method GET, :scheme http, :authority, :path, x-a.
        let want = (7 + 3 + 32) + (7 + 4 + 32) + (10 + 16 + 32) + (5 + 4 + 32) + (3 + 5 + 32);
        assert_eq!(request_size(&req), want);
        let rsp = Response::builder().header("x-a", "1").body(()).unwrap();
        assert_eq!(response_size(&rsp), (7 + 3 + 32) + (3 + 1 + 32));
    }

    #[test]
    fn a_request_at_the_limit_passes_and_one_byte_more_does_not() {
        let base = Request::get("/").header("x-big", "").body(()).unwrap();
        let room = MAX_HEADER_LIST_SIZE - request_size(&base);
        let at = Request::get("/")
            .header("x-big", "a".repeat(room))
            .body(())
            .unwrap();
        assert!(check_request(&at).is_ok());
        let over = Request::get("/")
            .header("x-big", "a".repeat(room + 1))
            .body(())
            .unwrap();
        let e = check_request(&over).unwrap_err();
        assert_eq!(e.code(), "headers_too_large");
        assert_eq!(
            e.status(),
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn too_many_fields_are_refused_in_both_directions() {
        let mut req = Request::get("/").body(()).unwrap();
        let mut rsp = Response::new(());
        for i in 0..=MAX_HEADER_FIELDS {
            let v = http::HeaderValue::from(i);
            req.headers_mut().append("x-n", v.clone());
            rsp.headers_mut().append("x-n", v);
        }
        assert!(
            check_request(&req)
                .unwrap_err()
                .to_string()
                .contains("101 header fields")
        );
        assert_eq!(
            check_response(&rsp).unwrap_err().code(),
            "response_headers_too_large"
        );
    }
}
