//! The one HTTP client of the CLI's own: a plaintext `GET` on an admin port (`/metrics`,
//! `/ready`, `/workloads`), bounded in time. The demo waits for readiness with it and
//! `weft stat` scrapes with it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting and reading may each take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// `GET path` on `addr`: the status and the body.
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut tcp = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    write!(tcp, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_string())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {head}"))?;
    Ok((status, body.to_string()))
}

/// The body of `GET path` on `addr`, which must answer 200.
pub fn get_ok(addr: &str, path: &str) -> Result<String, String> {
    match get(addr, path)? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("{path} answered {status}")),
    }
}
