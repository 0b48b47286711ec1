//! The one HTTP client of the CLI's own: a plaintext `GET` on an admin port (`/metrics`,
//! `/ready`, `/workloads`), bounded in time. The demo waits for readiness with it,
//! `weft stat` scrapes with it and `weft check` reads the components' clocks from the `Date`
//! header of its answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting and reading may each take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// An admin endpoint's answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The `Date` header, as sent (hyper servers send one on every response).
    pub date: Option<String>,
    pub body: String,
}

/// `GET path` on `addr`: the status and the body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    fetch(addr, path).map(|r| (r.status, r.body))
}

/// `GET path` on `addr`: the status, the `Date` header and the body.
pub fn fetch(addr: &str, path: &str) -> Result<Response, String> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut tcp = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    // One write: a server that answers on the first segment and closes must not make the rest
    // of the request fail with a broken pipe.
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line}"))?;
    let date = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("date"))
        .map(|(_, value)| value.trim().to_string());
    Ok(Response {
        status,
        date,
        body: body.to_string(),
    })
}

/// The body of `GET path` on `addr`, which must answer 200.
pub fn get_ok(addr: &str, path: &str) -> Result<String, String> {
    match get(addr, path)? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("{path} answered {status}")),
    }
}
