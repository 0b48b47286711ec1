//! Idle client connections: what a proxy's memory becomes when many clients keep a connection
//! open and quiet, as connection pools in front of a sidecar do. Each connection makes one
//! HTTP/1.1 keep-alive request first, so the proxy holds a connection in use, not a socket
//! it has only accepted; then all stay open, idle, while the proxies' memory is read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::Error;

/// How long connecting, and each read, may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors this process needs besides the connections.
const SPARE_FDS: u64 = 128;

/// `n` connections to `target`, each after one answered `GET /` with `Host: host`.
/// The connections close when the returned vector is dropped.
pub fn open(target: SocketAddr, host: &str, n: usize) -> Result<Vec<TcpStream>, Error> {
    if !target.ip().is_loopback() {
        return Err(format!("{target} is not a loopback address"));
    }
    let needed = n as u64 + SPARE_FDS;
    if let Some(limit) = open_files_limit()
        && limit < needed
    {
        return Err(format!(
            "{n} idle connections need {needed} open files, and the limit is {limit}: raise it \
             (`ulimit -n {needed}`) and run again"
        ));
    }
    (0..n)
        .map(|i| {
            one(target, host)
                .map_err(|e| format!("idle connection {} of {n} to {target}: {e}", i + 1))
        })
        .collect()
}

fn one(target: SocketAddr, host: &str) -> Result<TcpStream, String> {
    let tcp = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    (&tcp)
        .write_all(
            format!("GET / HTTP/1.1\r\nhost: {host}\r\nuser-agent: weft-bench\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let status = read_response(&tcp)?;
    if !(200..300).contains(&status) {
        return Err(format!("answered {status}"));
    }
    Ok(tcp)
}

/// Reads one response (headers, then a body of `content-length` or chunked) and returns its
/// status, leaving the connection ready for the next request.
fn read_response(tcp: &TcpStream) -> Result<u16, String> {
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .parse()
                    .map_err(|_| format!("bad content-length {value}"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            // The chunk and its CRLF; the last chunk is followed by an empty trailer line.
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
    }
    if !r.buffer().is_empty() {
        return Err("more bytes than one response".into());
    }
    Ok(status)
}

/// This process's soft limit on open files, from `/proc/self/limits` (`None`: unlimited or
/// unknown).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_open_after_one_answered_request() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = l.local_addr().unwrap();
        rt.spawn(crate::app::accept_loop(l, bytes::Bytes::from_static(b"hi")));
        let conns = open(addr, "app", 50).unwrap();
        assert_eq!(conns.len(), 50);
        // Each is still open and usable: a second request on it is answered too.
        for c in &conns[..5] {
            (&*c)
                .write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(c).unwrap(), 200);
        }
    }

    #[test]
    fn the_open_files_limit_is_read_and_refusals_are_clear() {
        assert!(open_files_limit().is_some_and(|l| l > 0));
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = open(free, "app", 3).unwrap_err();
        assert!(err.contains("idle connection 1 of 3"), "{err}");
        let err = open("10.0.0.1:80".parse().unwrap(), "app", 1).unwrap_err();
        assert!(err.contains("loopback"), "{err}");
    }
}
