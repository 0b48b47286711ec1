//! The load generator. One hyper client connection per `connections` (HTTP/1.1 keep-alive, or
//! HTTP/2 with prior knowledge); each connection sends one request at a time.
//!
//! - Open loop (`rate: Some(r)`), as wrk2 does: connection `c` of `n` has intended send times
//!   `start + (k·n + c) / r` for k = 0, 1, 2…, a fixed interval `n / r` apart and offset so
//!   the connections are spread evenly. Latency runs from the intended send time to the end
//!   of the response body, so a stall shows in the latency of every request it delayed
//!   (coordinated omission corrected). A thread paces the sends with `thread::sleep`, which
//!   wakes within tens of microseconds; tokio's timer has a 1 ms tick, which would add up to
//!   a millisecond to every request of a sub-millisecond path.
//! - Closed loop (`rate: None`): every connection sends back to back; the result is the
//!   maximum rate.
//! - New connection per request (`new_connection`): each request makes its own connection
//!   when it is due and closes it after the answer, so the latency includes the TCP (and, behind
//!   a proxy, whatever the proxy does for a new client) setup: the connection-setup cost.
//!
//! A request counts when its intended send time (closed loop: its send time) falls in the
//! measured window, after the warm-up. Non-2xx answers and transport errors (connect, I/O,
//! timeout) are counted apart and never enter the latency histogram; a request still unsent
//! when the run's hard stop comes is counted as unsent. Bounded: at most `max_requests` per
//! run, each request times out, and the run ends `DRAIN` after its window at the latest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Semaphore;

use crate::Error;

mod progress;
pub use progress::{Episode, Progress, add_failure};

/// How long one request may take before it counts as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after its window a run may go on sending requests it is behind on.
pub const DRAIN: Duration = Duration::from_secs(10);
/// The `user-agent` of every request: real clients send one, and the full-stack HTTPRoute of
/// `weft-bench stack` has a header rule that must evaluate it (and not match).
pub const USER_AGENT: &str = "weft-bench";
/// Pause after a transport error before the connection is made again, so a refused connect
/// does not become a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What to send, where, and how hard.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `http://IP:PORT/path`: a loopback or private (RFC 1918) address, such as the veth
    /// addresses of `weft-bench intercept`; the path is the request's.
    pub target: http::Uri,
    /// The `Host` header (HTTP/2: the `:authority`) [default: the target's authority].
    pub host: Option<String>,
    pub connections: usize,
    /// Requests per second over all connections; `None`: closed loop, as fast as answered.
    pub rate: Option<u64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Upper bound on requests sent in one run, warm-up included.
    pub max_requests: u64,
    pub http2: bool,
    /// Every request on a connection of its own (HTTP/1.1 `connection: close`), made when the
    /// request is due: the latency includes the connection's setup.
    pub new_connection: bool,
    /// Bytes in each request's body: 0 sends `GET` without a body, more a `POST` with one.
    pub request_body_size: usize,
}

/// When a run starts, when its measured window opens and when it closes.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub deadline: Instant,
}

impl Window {
    /// A window starting shortly from now (time to open the connections), after `warmup`.
    pub fn after_warmup(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + Duration::from_millis(100);
        Self {
            start,
            measure_from: start + warmup,
            deadline: start + warmup + duration,
        }
    }

    /// A window starting at `start` (wall clock), after `warmup`: how two processes (the
    /// benchmark sampling CPU, the load generator in another network namespace) agree on one
    /// window. A start up to half the warm-up in the past is taken as it is: the open loop
    /// then sends its backlog at once, within the warm-up, which is not measured. `None` when
    /// `start` is further in the past (the burst would reach the measured window).
    pub fn starting_at(start: SystemTime, warmup: Duration, duration: Duration) -> Option<Self> {
        let now = Instant::now();
        let start = match start.duration_since(SystemTime::now()) {
            Ok(ahead) => now + ahead,
            Err(e) if e.duration() <= warmup / 2 => now.checked_sub(e.duration())?,
            Err(_) => return None,
        };
        Some(Self {
            start,
            measure_from: start + warmup,
            deadline: start + warmup + duration,
        })
    }
}

/// Whether `ip` can be one of the benchmark's own processes: loopback, or a private IPv4
/// network (RFC 1918), where `weft-bench intercept` puts its namespaces' veth pair. Anything
/// else could be somebody else's server.
fn on_this_machine(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// `open-loop` or `closed-loop`.
    pub mode: String,
    /// Every request on a new connection (the connection-setup cost).
    pub new_connection: bool,
    pub connections: usize,
    pub target_rate: Option<u64>,
    /// 2xx answers in the measured window.
    pub requests: u64,
    /// Answers with a status other than 2xx.
    pub status_errors: u64,
    /// Connections refused or broken, requests timed out.
    pub transport_errors: u64,
    /// Open loop: requests due in the window that could not be sent before the hard stop.
    pub unsent: u64,
    /// The first transport error or unexpected status, to say what went wrong.
    pub first_error: Option<String>,
    /// The run stopped at `max_requests` before its window ended.
    pub capped: bool,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Latency (ms) at each of [`crate::plot::QUANTILES`], for the distribution plot.
    pub spectrum: Vec<(f64, f64)>,
}

impl RunResult {
    pub fn errors(&self) -> u64 {
        self.status_errors + self.transport_errors + self.unsent
    }
}

/// Offset from the run's start of connection `c`'s `k`-th intended send, with `conns`
/// connections sharing `rate` requests per second.
pub fn intended_offset(c: usize, k: u64, conns: usize, rate: u64) -> Duration {
    let slot = k as u128 * conns as u128 + c as u128;
    let nanos = slot * 1_000_000_000 / rate.max(1) as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Runs the load described by `cfg` over `window`, on the current tokio runtime.
pub async fn run(cfg: &LoadConfig, window: Window) -> Result<RunResult, Error> {
    run_observed(cfg, window, None).await
}

/// [`run`], with every outcome also reported to `progress` as it comes.
pub async fn run_observed(
    cfg: &LoadConfig,
    window: Window,
    progress: Option<Arc<Progress>>,
) -> Result<RunResult, Error> {
    let target = Target::new(cfg)?;
    let conns = cfg.connections.max(1);
    let sent = Arc::new(AtomicU64::new(0));
    let permits: Vec<Arc<Semaphore>> = (0..conns).map(|_| Arc::new(Semaphore::new(0))).collect();
    let pacer = cfg.rate.map(|rate| {
        let permits = permits.clone();
        let max = cfg.max_requests;
        tokio::task::spawn_blocking(move || pace(window, &permits, rate, max))
    });
    let mut tasks = Vec::with_capacity(conns);
    for (c, permit) in permits.into_iter().enumerate() {
        let tally = Tally::new()?;
        let conn = Connection {
            target: target.clone(),
            index: c,
            count: conns,
            rate: cfg.rate,
            max_requests: cfg.max_requests,
            window,
            sent: sent.clone(),
            permit,
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(conn.drive(tally)));
    }
    let mut total = Tally::new()?;
    for t in tasks {
        let tally = t
            .await
            .map_err(|e| format!("a load connection task failed: {e}"))?;
        total.merge(tally)?;
    }
    if let Some(p) = pacer {
        p.await
            .map_err(|e| format!("the pacing thread failed: {e}"))?;
    }
    let capped = sent.load(Ordering::Relaxed) >= cfg.max_requests;
    Ok(total.result(cfg, conns, capped, window))
}

/// Gives connection `slot % n` its permit to send at each intended time, in order, until the
/// window closes or `max` requests were allowed. A connection that is behind finds its
/// permits waiting and sends at once: the open loop does not slow down with the server.
fn pace(window: Window, permits: &[Arc<Semaphore>], rate: u64, max: u64) {
    let conns = permits.len();
    for slot in 0..max {
        let c = (slot % conns as u64) as usize;
        let at = window.start + intended_offset(c, slot / conns as u64, conns, rate);
        if at >= window.deadline {
            break;
        }
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        permits[c].add_permits(1);
    }
}

/// Where requests go and what they look like.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    uri: http::Uri,
    host: http::HeaderValue,
    http2: bool,
    new_connection: bool,
    /// Empty: `GET`; else `POST` with this body.
    body: Bytes,
}

impl Target {
    fn new(cfg: &LoadConfig) -> Result<Self, Error> {
        let authority = cfg
            .target
            .authority()
            .ok_or_else(|| format!("the target {} names no address", cfg.target))?;
        let addr: SocketAddr = authority.as_str().parse().map_err(|_| {
            format!(
                "the target {} must be an IP address and port, e.g. http://127.0.0.1:8080/",
                cfg.target
            )
        })?;
        if !on_this_machine(addr.ip()) {
            return Err(format!(
                "the target {addr} is neither a loopback nor a private address: the benchmark \
                 loads only its own processes (loopback, or the private veth network of \
                 `weft-bench intercept`)"
            ));
        }
        let host = cfg.host.clone().unwrap_or_else(|| authority.to_string());
        let path = cfg
            .target
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        // HTTP/1.1: origin-form plus a Host header (the weft outbound proxy routes by Host).
        // HTTP/2: the host goes in :authority.
        let uri = if cfg.http2 {
            format!("http://{host}{path}")
        } else {
            path
        };
        Ok(Self {
            addr,
            uri: uri
                .parse()
                .map_err(|e| format!("bad request target {uri}: {e}"))?,
            host: host
                .parse()
                .map_err(|e| format!("bad Host header {host}: {e}"))?,
            http2: cfg.http2,
            new_connection: cfg.new_connection,
            body: Bytes::from(vec![b'x'; cfg.request_body_size]),
        })
    }

    fn request(&self) -> http::Request<Full<Bytes>> {
        // `Full` of an empty `Bytes` is a body that is empty at once, as `Empty` is.
        let mut req = http::Request::new(Full::new(self.body.clone()));
        *req.uri_mut() = self.uri.clone();
        if !self.body.is_empty() {
            *req.method_mut() = http::Method::POST;
        }
        if !self.http2 {
            req.headers_mut()
                .insert(http::header::HOST, self.host.clone());
        }
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
        if self.new_connection && !self.http2 {
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        req
    }

    async fn connect(&self) -> Result<Sender, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        if self.http2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake with {}: {e}", self.addr))?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake with {}: {e}", self.addr))?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// A status other than 2xx, and the reason a weft proxy gave in its `weft-error` header.
    Status(u16, Option<String>),
    Transport(String),
}

impl Sender {
    /// Sends one request and reads the whole answer.
    async fn exchange(&mut self, req: http::Request<Full<Bytes>>) -> Outcome {
        let rsp = match self {
            Sender::H1(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
            Sender::H2(s) => match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            },
        };
        let rsp = match rsp {
            Ok(rsp) => rsp,
            Err(e) => return Outcome::Transport(format!("request: {e}")),
        };
        let status = rsp.status();
        let reason = (!status.is_success())
            .then(|| rsp.headers().get(weft_proxy::error::ERROR_HEADER))
            .flatten()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Err(e) = rsp.into_body().collect().await {
            return Outcome::Transport(format!("response body: {e}"));
        }
        if status.is_success() {
            Outcome::Ok
        } else {
            Outcome::Status(status.as_u16(), reason)
        }
    }
}

/// One client connection of a run, with its share of the schedule.
struct Connection {
    target: Target,
    index: usize,
    count: usize,
    rate: Option<u64>,
    max_requests: u64,
    window: Window,
    /// Requests sent by all connections of the run.
    sent: Arc<AtomicU64>,
    /// Open loop: one permit per intended send, from the pacing thread.
    permit: Arc<Semaphore>,
    progress: Option<Arc<Progress>>,
}

impl Connection {
    async fn drive(self, mut tally: Tally) -> Tally {
        let hard_stop = self.window.deadline + DRAIN;
        // Connect before the run starts, so the first request does not pay for it (unless
        // paying for it is what is measured).
        let mut sender = if self.target.new_connection {
            None
        } else {
            self.target.connect().await.ok()
        };
        tokio::time::sleep_until(self.window.start.into()).await;
        for k in 0..self.max_requests {
            // The intended send time: on the schedule (open loop) or now (closed loop).
            let intended = match self.rate {
                Some(rate) => {
                    let at = self.window.start + intended_offset(self.index, k, self.count, rate);
                    let slot = k * self.count as u64 + self.index as u64;
                    if at >= self.window.deadline || slot >= self.max_requests {
                        break;
                    }
                    match tokio::time::timeout_at(hard_stop.into(), self.permit.acquire()).await {
                        Ok(Ok(p)) => p.forget(),
                        Ok(Err(_)) => break,
                        Err(_) => {
                            tally.unsent += self.due_in_window(k, rate);
                            break;
                        }
                    }
                    at
                }
                None => {
                    let now = Instant::now();
                    if now >= self.window.deadline {
                        break;
                    }
                    now
                }
            };
            if self.sent.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
                break;
            }
            let outcome = self.send(&mut sender).await;
            let done = Instant::now();
            if intended >= self.window.measure_from {
                tally.record(&outcome, done.saturating_duration_since(intended));
            }
            if let Some(p) = &self.progress {
                p.record(&outcome, done.saturating_duration_since(self.window.start));
            }
            if sender.is_none() && self.rate.is_none() {
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
        tally
    }

    /// Sends one request on the connection, making it first if needed; a transport error
    /// drops the connection, so the next request makes a new one.
    async fn send(&self, sender: &mut Option<Sender>) -> Outcome {
        if sender.is_none() {
            match self.target.connect().await {
                Ok(s) => *sender = Some(s),
                Err(e) => return Outcome::Transport(e),
            }
        }
        let Some(s) = sender.as_mut() else {
            return Outcome::Transport("no connection".into());
        };
        let req = self.target.request();
        let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, s.exchange(req)).await {
            Ok(o) => o,
            Err(_) => Outcome::Transport(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        if matches!(outcome, Outcome::Transport(_)) || self.target.new_connection {
            *sender = None;
        }
        outcome
    }

    /// Open loop: how many of this connection's sends from the `k`-th on were due in the
    /// measured window (they are unsent when the hard stop comes first).
    fn due_in_window(&self, k: u64, rate: u64) -> u64 {
        (k..self.max_requests)
            .map(|j| self.window.start + intended_offset(self.index, j, self.count, rate))
            .take_while(|at| *at < self.window.deadline)
            .filter(|at| *at >= self.window.measure_from)
            .count() as u64
    }
}

/// Latencies (µs) and error counts of one connection, or of a whole run once merged.
#[derive(Debug)]
struct Tally {
    hist: Histogram<u64>,
    status_errors: u64,
    transport_errors: u64,
    unsent: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Result<Self, Error> {
        Ok(Self {
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| format!("histogram: {e}"))?,
            status_errors: 0,
            transport_errors: 0,
            unsent: 0,
            first_error: None,
        })
    }

    fn record(&mut self, outcome: &Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => self
                .hist
                .saturating_record((latency.as_micros() as u64).max(1)),
            Outcome::Status(..) => {
                self.status_errors += 1;
                self.first_error.get_or_insert_with(|| outcome.to_string());
            }
            Outcome::Transport(e) => {
                self.transport_errors += 1;
                self.first_error.get_or_insert_with(|| e.clone());
            }
        }
    }

    fn merge(&mut self, other: Tally) -> Result<(), Error> {
        self.hist
            .add(other.hist)
            .map_err(|e| format!("histogram: {e}"))?;
        self.status_errors += other.status_errors;
        self.transport_errors += other.transport_errors;
        self.unsent += other.unsent;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }

    fn result(&self, cfg: &LoadConfig, conns: usize, capped: bool, window: Window) -> RunResult {
        let h = &self.hist;
        let ms = |us: u64| us as f64 / 1000.0;
        // A capped run measured only until it stopped.
        let window_len = window.deadline - window.measure_from;
        let seconds = if capped {
            Instant::now()
                .saturating_duration_since(window.measure_from)
                .min(window_len)
        } else {
            window_len
        }
        .as_secs_f64()
        .max(1e-9);
        RunResult {
            mode: if cfg.rate.is_some() {
                "open-loop"
            } else {
                "closed-loop"
            }
            .to_string(),
            new_connection: cfg.new_connection,
            connections: conns,
            target_rate: cfg.rate,
            requests: h.len(),
            status_errors: self.status_errors,
            transport_errors: self.transport_errors,
            unsent: self.unsent,
            first_error: self.first_error.clone(),
            capped,
            seconds,
            requests_per_second: h.len() as f64 / seconds,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            spectrum: crate::plot::QUANTILES
                .iter()
                .map(|&q| (q, ms(h.value_at_quantile(q))))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
