//! Idle HTTP/1 client connections without their buffers.
//!
//! hyper's HTTP/1 server keeps an 8 KiB read buffer and an 8 KiB write buffer for as long as a
//! connection lives, so each idle keep-alive connection of an application's pool cost the
//! proxy about 16 KiB. Here a connection is *parked* between requests: its hyper connection is
//! taken apart (`into_parts`), which frees the buffers, and the task waits for the socket to
//! become readable holding only the socket and the service. The next request gets a new hyper
//! connection, built as the first one was.
//!
//! Taking hyper's connection apart is safe only between messages, with nothing unsent:
//! - *Between messages.* hyper arms its header-read timer ([`HeadTimer`]) while it waits for a
//!   request head, which it does only once the previous request has been read to its end and
//!   its response written to its end; it drops the timer once a head has arrived. Bytes of a
//!   next head already read come back from `into_parts` and are replayed into the next
//!   connection, which then serves that head before the connection may park again.
//! - *Nothing unsent.* [`Tracked`] sees hyper's writes and flushes: hyper flushes the socket
//!   only once its own buffer is empty, so a completed flush with no write since means no
//!   response byte is held.
//!
//! Nothing else in hyper's HTTP/1 state outlives a message (the client's HTTP version and
//! keep-alive are read from each request), so the new connection answers the next request as
//! the old one would have. A parked connection keeps the limits hyper applied while it waited:
//! it is closed when the header-read deadline passes, and at once on shutdown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::detect::Prefixed;
use crate::limits;
use crate::listen::{Served, Watcher};
use crate::metrics::ProxyMetrics;
use crate::svc::{HttpService, HyperService};

/// How long a busy connection must be idle before it parks: taking hyper's connection apart and
/// building it again costs about a tenth of what a request costs, too much to pay between
/// every two requests of a busy connection, so a connection parks at once only when its last
/// park was at least this long.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// What the hyper connection's parts tell the loop that serves it.
#[derive(Debug, Default)]
struct Shared {
    /// hyper waits for a request head (its header-read timer is armed).
    waiting_head: AtomicBool,
    /// Bytes were written since the last completed flush.
    dirty: AtomicBool,
    /// A head's bytes were replayed into a new connection: it is served before parking again.
    hold: AtomicBool,
    /// The connection was busy lately (its last park was short): it parks only once idle for
    /// [`PARK_AFTER`], not as soon as it is idle.
    hot: AtomicBool,
    /// A hot connection has been idle for [`PARK_AFTER`].
    park_due: AtomicBool,
    /// When the head hyper waits for must have arrived.
    deadline: Mutex<Option<Instant>>,
}

impl Shared {
    fn parkable(&self) -> bool {
        self.waiting_head.load(Ordering::Relaxed)
            && !self.dirty.load(Ordering::Relaxed)
            && !self.hold.load(Ordering::Relaxed)
            && (!self.hot.load(Ordering::Relaxed) || self.park_due.load(Ordering::Relaxed))
    }

    /// Notes that hyper waits for a head that must arrive by `deadline`; returns the deadline
    /// (a replayed head keeps the one it had) and, on a hot connection, when to wake it to park.
    fn waiting_for_head(&self, deadline: Instant) -> (Instant, Option<Instant>) {
        let deadline = {
            let mut kept = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = match *kept {
                Some(kept) if self.hold.load(Ordering::Relaxed) => kept.min(deadline),
                _ => deadline,
            };
            *kept = Some(deadline);
            deadline
        };
        self.park_due.store(false, Ordering::Relaxed);
        self.waiting_head.store(true, Ordering::Relaxed);
        let wake_at = self
            .hot
            .load(Ordering::Relaxed)
            .then(|| Instant::now() + PARK_AFTER)
            .filter(|at| *at < deadline);
        (deadline, wake_at)
    }

    /// The deadline of the head hyper waited for, cleared.
    fn take_deadline(&self) -> Option<Instant> {
        self.deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Serves an HTTP/1 client connection as [`crate::listen::serve_http`] does, parking it
/// between requests.
pub fn serve_http1(
    io: Prefixed<TcpStream>,
    stack: HttpService,
    served: Served,
    watcher: Watcher,
    metrics: &ProxyMetrics,
) -> impl Future<Output = ()> + Send + '_ {
    let shared = Arc::new(Shared::default());
    let io = Tracked {
        inner: io,
        shared: shared.clone(),
    };
    let svc = crate::svc::to_hyper(stack, served.trailers_wait);
    serve(io, svc, served, watcher, metrics)
}

/// The loop of [`serve_http1`]. What it holds while parked is what an idle connection costs, so
/// its future is kept small: the hyper connection is boxed, and each phase (serving, parked)
/// is a future of its own, which the loop's future holds one at a time.
async fn serve(
    mut io: Tracked,
    mut svc: HyperService,
    served: Served,
    mut watcher: Watcher,
    metrics: &ProxyMetrics,
) {
    let idle = metrics.http1_idle(served.direction);
    loop {
        match until_parkable(io, svc, &mut watcher).await {
            Ok(Some((parked_io, parked_svc))) => (io, svc) = (parked_io, parked_svc),
            Ok(None) => return,
            Err(e) => return crate::listen::connection_failed(&e, served, metrics),
        }
        if !parked(&io, &mut watcher, &idle).await {
            return;
        }
    }
}

/// Serves requests on a new hyper connection until it ends (`None`) or waits for a head with
/// nothing unsent: then its parts.
async fn until_parkable(
    io: Tracked,
    svc: HyperService,
    watcher: &mut Watcher,
) -> hyper::Result<Option<(Tracked, HyperService)>> {
    let shared = io.shared.clone();
    let mut conn = hyper_connection(io, svc);
    loop {
        let drain = watcher.draining();
        tokio::pin!(drain);
        let mut draining = false;
        let ended = std::future::poll_fn(|cx| {
            if !draining && drain.as_mut().poll(cx).is_ready() {
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            match Pin::new(&mut *conn).poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending if !draining && shared.parkable() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if let Some(ended) = ended {
            return ended.map(|()| None);
        }
        // Waiting for a head with nothing unsent: take it apart.
        let Some(parts) = conn.into_parts() else {
            return Ok(None);
        };
        let mut io = parts.io.into_inner();
        if parts.read_buf.is_empty() {
            return Ok(Some((io, parts.service)));
        }
        // Part of the next head: replayed into a new connection, which keeps this head's
        // deadline and serves it before the connection may park.
        io.inner.unread(&parts.read_buf);
        shared.hold.store(true, Ordering::Relaxed);
        conn = hyper_connection(io, parts.service);
    }
}

type Http1Connection = http1::UpgradeableConnection<TokioIo<Tracked>, HyperService>;

/// A hyper connection serving `io`, boxed: it is freed when the connection parks.
fn hyper_connection(io: Tracked, svc: HyperService) -> Box<Http1Connection> {
    let mut builder = http1::Builder::new();
    builder
        .timer(HeadTimer(io.shared.clone()))
        .header_read_timeout(limits::HTTP1_HEADER_READ_TIMEOUT)
        .max_buf_size(limits::HTTP1_MAX_BUF_SIZE)
        // A client that shuts its sending side after its request still gets the answer.
        .half_close(true);
    Box::new(
        builder
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades(),
    )
}

/// Waits, parked, until the client sends again (`true`), or the connection is to close: the
/// client closed it, the proxy shuts down, the socket fails, or the head's deadline passes
/// (hyper closes a connection idle that long).
async fn parked(io: &Tracked, watcher: &mut Watcher, idle: &Gauge) -> bool {
    if io.inner.has_prefix() {
        // Bytes wait to be replayed (hyper reads them at once, so this does not happen): they
        // are served, not waited behind.
        return true;
    }
    let deadline = io.shared.take_deadline();
    idle.increment(1.0);
    let since = Instant::now();
    let mut first = [0u8; 1];
    let woken = tokio::select! {
        // A client closing its idle connection (0 bytes) is done with here, with no hyper
        // connection built for it.
        read = io.inner.inner().peek(&mut first) => matches!(read, Ok(n) if n > 0),
        _ = watcher.draining() => false,
        _ = until(deadline) => false,
    };
    idle.decrement(1.0);
    // Woken soon: the connection is busy, and waits to be idle a while before parking again.
    io.shared
        .hot
        .store(since.elapsed() < PARK_AFTER, Ordering::Relaxed);
    woken
}

/// Resolves at `deadline`, if there is one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The connection's socket as hyper sees it, noting writes and completed flushes.
struct Tracked {
    inner: Prefixed<TcpStream>,
    shared: Arc<Shared>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.dirty.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.dirty.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.shared.dirty.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's timer on a parking connection: used only for the header-read timeout, so a sleep
/// exists exactly while hyper waits for a head.
#[derive(Clone)]
struct HeadTimer(Arc<Shared>);

impl HeadTimer {
    fn head_sleep(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let (deadline, wake_at) = self.0.waiting_for_head(deadline);
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until(wake_at.unwrap_or(deadline).into()),
            deadline,
            early: wake_at.is_some(),
            shared: self.0.clone(),
        })
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.head_sleep(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.head_sleep(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        // hyper restarts the timer for a new head: the same sleep, a new deadline.
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(head) => head.arm(new_deadline),
            None => *sleep = self.head_sleep(new_deadline),
        }
    }
}

pin_project_lite::pin_project! {
    /// The header-read timer: while it lives, hyper waits for a head. On a hot connection it
    /// first wakes the connection once after [`PARK_AFTER`], to park it.
    struct HeadSleep {
        #[pin]
        sleep: tokio::time::Sleep,
        // The header-read deadline.
        deadline: Instant,
        // Whether `sleep` is set for the park, before the deadline.
        early: bool,
        shared: Arc<Shared>,
    }

    impl PinnedDrop for HeadSleep {
        fn drop(this: Pin<&mut Self>) {
            let shared = &this.shared;
            shared.waiting_head.store(false, Ordering::Relaxed);
            shared.hold.store(false, Ordering::Relaxed);
            shared.park_due.store(false, Ordering::Relaxed);
        }
    }
}

impl HeadSleep {
    /// Starts waiting for another head, which must arrive by `deadline`.
    fn arm(self: Pin<&mut Self>, deadline: Instant) {
        let this = self.project();
        let (deadline, wake_at) = this.shared.waiting_for_head(deadline);
        *this.deadline = deadline;
        *this.early = wake_at.is_some();
        this.sleep.reset(wake_at.unwrap_or(deadline).into());
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        ready!(this.sleep.as_mut().poll(cx));
        if !*this.early {
            return Poll::Ready(());
        }
        // Idle long enough: the connection is woken to park, and the sleep goes on to the
        // header-read deadline.
        *this.early = false;
        this.shared.park_due.store(true, Ordering::Relaxed);
        this.sleep.reset((*this.deadline).into());
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Sleep for HeadSleep {}
