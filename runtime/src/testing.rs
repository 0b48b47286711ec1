//! What the tests of every crate (and the benchmarks) share, behind the cargo feature
//! `testing`: plain HTTP/1 requests on loopback, sums over a Prometheus page, bounded waits
//! for a condition, the test-side handling of a [`Child`] (wait until it answers 200, stop
//! it and get its exit status), and network namespaces deleted when dropped. No weft binary
//! enables it.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::child::Child;

/// How long a child may take to become ready ([`Child::wait_for_200`]).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child has to exit after SIGTERM in [`Child::terminate`].
pub const TERMINATE_GRACE: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this much of an answer is read.
const MAX_RESPONSE: u64 = 16 << 20;

/// A raw HTTP/1.1 exchange with `Connection: close`: `method target` (absolute-form for a
/// proxy) with `Host: host`. The status and the whole response as text (status line, headers
/// and body), for tests that look at headers; `None` when nothing answers (connecting takes
/// more than 2 s or reading more than 10 s: a test's request may take a slow route).
pub fn http(addr: SocketAddr, method: &str, target: &str, host: &str) -> Option<(u16, String)> {
    exchange(addr, method, target, host, Duration::from_secs(10))
}

/// A plain HTTP/1.1 `GET path` with `Host: host` and `Connection: close`: the status and the
/// body. `None` when nothing answers (connecting takes more than 2 s or reading more than 5 s,
/// so a probe in a wait loop does not hold it up long).
pub fn http_get(addr: SocketAddr, path: &str, host: &str) -> Option<(u16, String)> {
    let (status, text) = exchange(addr, "GET", path, host, Duration::from_secs(5))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// [`http_get`] for async tests: run on tokio's blocking pool, so a server on the test's own
/// runtime (even a current-thread one) keeps serving meanwhile.
pub async fn http_get_async(addr: SocketAddr, path: &str, host: &str) -> Option<(u16, String)> {
    let (path, host) = (path.to_string(), host.to_string());
    tokio::task::spawn_blocking(move || http_get(addr, &path, &host))
        .await
        .ok()
        .flatten()
}

/// [`http`] with a read timeout: the status and the response as text (invalid UTF-8
/// replaced), at most [`MAX_RESPONSE`] bytes of it.
fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    read_timeout: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// The series of `name` in a Prometheus text page: each one's labels (`{...}`, or empty) and
/// value. Comment lines and longer names that start with `name` are not series of `name`.
pub fn metric_series<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |l| {
        let rest = l.strip_prefix(name)?;
        if !rest.starts_with(['{', ' ']) {
            return None;
        }
        let (labels, value) = rest.rsplit_once(' ')?;
        Some((labels.trim(), value.parse::<f64>().ok()?))
    })
}

/// The sum of the values of the series of `name` whose labels contain every one of
/// `must_contain` (`direction="inbound"`...); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, must_contain: &[&str]) -> f64 {
    metric_series(text, name)
        .filter(|(labels, _)| must_contain.iter().all(|m| labels.contains(m)))
        .map(|(_, value)| value)
        .sum()
}

/// Waits until `cond` holds, polling every 20 ms (on tokio's clock), up to `limit`: whether
/// it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the future `f` makes every 20 ms until it yields `Some`, and returns that value;
/// panics naming `what` after `limit` (on the wall clock, so paused tokio time does not stop
/// it).
pub async fn eventually_some<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Child {
    /// Waits until `GET path` with `Host: host` at `addr` answers 200, polling every 50 ms:
    /// an error with its log if it exits first or the answer takes more than
    /// [`READY_TIMEOUT`].
    pub fn wait_for_200(&mut self, addr: SocketAddr, path: &str, host: &str) -> Result<(), String> {
        let what = format!("GET http://{addr}{path} (Host: {host})");
        self.wait_until_200(&what, Duration::from_millis(50), || {
            http_get(addr, path, host)
        })
    }

    /// Waits until `get`, a request `what` describes, answers 200 (it answers `None` when
    /// nothing does), trying every `poll`: an error with its log if it exits first or no 200
    /// comes within [`READY_TIMEOUT`].
    pub fn wait_until_200(
        &mut self,
        what: &str,
        poll: Duration,
        mut get: impl FnMut() -> Option<(u16, String)>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match get() {
                Some((200, _)) => return Ok(()),
                Some((status, body)) => last = format!("{status}: {body}"),
                None => {}
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited with {status} before {what} answered 200; its log:\n{}",
                    self.name(),
                    self.logs()
                ));
            }
            std::thread::sleep(poll);
        }
        Err(format!(
            "{}: {what} did not answer 200 within {READY_TIMEOUT:?}, last: {last}; its log:\n{}",
            self.name(),
            self.logs()
        ))
    }

    /// Waits until its admin endpoint at `admin` is ready (`/ready` answers 200); panics with
    /// its log if it exits first or takes more than [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self, admin: SocketAddr) {
        if let Err(e) = self.wait_for_200(admin, "/ready", "x") {
            panic!("{e}");
        }
    }

    /// Stops it with SIGTERM and returns its exit status; panics if it is still running
    /// after [`TERMINATE_GRACE`] (it is killed then). Not for use inside a tokio runtime:
    /// it runs one of its own to wait.
    pub fn terminate(mut self) -> ExitStatus {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime to wait for {}: {e}", self.name()));
        let killed = rt.block_on(crate::child::stop(&mut [&mut self], TERMINATE_GRACE));
        assert!(
            killed.is_empty(),
            "{} did not stop on SIGTERM within {TERMINATE_GRACE:?}:\n{}",
            self.name(),
            self.logs()
        );
        match self.exited() {
            Some(status) => status,
            None => panic!("{} stopped but has no exit status", self.name()),
        }
    }
}

/// A network namespace made for a test or a benchmark (`ip netns add`), deleted when
/// dropped, also on error and panic: the system tests' hosts and the interception
/// benchmark's client and app.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Adds the namespace `name`; the error says what `ip` answered.
    pub fn add(name: String) -> Result<Self, String> {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| {
                format!("cannot run `ip netns add {name}`: {e} (is iproute2 installed?)")
            })?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Self { name })
    }

    /// `program` run in the namespace (`ip netns exec` execs it: a child's PID is the
    /// program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "warning: could not delete network namespace {}: {out:?}; delete it with \
                 `ip netns del {}`",
                self.name, self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_match_name_and_labels() {
        let text = "# HELP weft_proxy_requests_total x\n\
                    weft_proxy_requests_total{direction=\"inbound\",tls=\"true\"} 12\n\
                    weft_proxy_requests_total{direction=\"inbound\",tls=\"false\"} 3\n\
                    weft_proxy_requests_total{direction=\"outbound\",tls=\"true\"} 5\n\
                    weft_proxy_requests_total_other{direction=\"inbound\",tls=\"true\"} 7\n";
        let sum = |m: &[&str]| metric_sum(text, "weft_proxy_requests_total", m);
        assert_eq!(sum(&["direction=\"inbound\"", "tls=\"true\""]), 12.0);
        assert_eq!(sum(&["direction=\"inbound\""]), 15.0);
        assert_eq!(sum(&[]), 20.0);
    }
}
