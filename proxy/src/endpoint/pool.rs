//! The HTTP/2 connections to peer proxies, one per address, with the identity each proved.
//!
//! A connection leaves the pool when it ends (the peer went away, drained or failed) and when
//! no request took it for the idle timeout: endpoints come and go at new addresses over a
//! proxy's life, and a pool that kept what it once reached would grow with every one of them.
//! A connection released while idle closes once the requests still on it (a long stream, say)
//! are done, as `h2` closes a connection whose senders are all gone.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use metrics::Gauge;
use tokio::time::Instant;
use weft_identity::SpiffeId;

use super::peer::Sender;
use crate::metrics::ProxyMetrics;

/// The pool; cloning shares it.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Mutex<Conns>>,
    idle_timeout: Duration,
    /// Connections to peer proxies open now.
    open: Gauge,
}

#[derive(Default)]
struct Conns {
    by_addr: HashMap<SocketAddr, Pooled>,
    next_id: u64,
}

struct Pooled {
    identity: SpiffeId,
    sender: Sender,
    /// Tells this connection from a later one to the same address.
    id: u64,
    last_used: Instant,
}

impl Pool {
    pub(super) fn new(metrics: &ProxyMetrics, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::default(),
            idle_timeout,
            open: metrics.registry.gauge(
                "weft_proxy_peer_connections",
                "HTTP/2 connections to peer proxies open now (pooled, or closing once their requests are done).",
                &[],
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection to `addr` that proved `identity`, marked used, and its id (for
    /// [`Self::forget`]). One that failed or is going away stays until its task ends:
    /// [`Sender::ready`] tells.
    pub(super) fn get(&self, addr: SocketAddr, identity: &SpiffeId) -> Option<(Sender, u64)> {
        let mut conns = self.lock();
        let pooled = conns
            .by_addr
            .get_mut(&addr)
            .filter(|p| &p.identity == identity)?;
        pooled.last_used = Instant::now();
        Some((pooled.sender.clone(), pooled.id))
    }

    /// Pools a new connection (replacing any other to `addr`) and drives it: `conn` runs until
    /// the connection ends, or until `keepalive` ends (the peer no longer answers); the
    /// connection leaves the pool then, or when idle. The connection's task polls nothing
    /// else: the idle check and the keep-alive run in a task of their own, woken by their
    /// timers only.
    pub(super) fn insert<C, K>(
        &self,
        addr: SocketAddr,
        identity: &SpiffeId,
        sender: Sender,
        conn: C,
        keepalive: K,
    ) -> u64
    where
        C: Future<Output = Result<(), h2::Error>> + Send + 'static,
        K: Future<Output = String> + Send + 'static,
    {
        let id = {
            let mut conns = self.lock();
            let id = conns.next_id;
            conns.next_id += 1;
            let pooled = Pooled {
                identity: identity.clone(),
                sender,
                id,
                last_used: Instant::now(),
            };
            conns.by_addr.insert(addr, pooled);
            id
        };
        let pool = Arc::downgrade(&self.inner);
        let idle_timeout = self.idle_timeout;
        let open = self.open.clone();
        open.increment(1.0);
        let mut conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection to peer proxy ended");
            }
        });
        tokio::spawn(async move {
            let release = async {
                let mut check_at = Some(Instant::now() + idle_timeout);
                while let Some(at) = check_at {
                    tokio::time::sleep_until(at).await;
                    check_at = release_if_idle(&pool, addr, id, idle_timeout);
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                // The connection's end first: a ping cut short by a close is no dead peer.
                biased;
                _ = &mut conn => {}
                dead = keepalive => {
                    tracing::info!(%addr, reason = %dead, "the peer proxy stopped answering: connection dropped");
                    conn.abort();
                }
                () = release => {}
            }
            open.decrement(1.0);
            remove(&pool, addr, id);
        });
        id
    }

    /// Takes connection `id` to `addr` out of the pool (it failed); a newer one to the same
    /// address stays.
    pub(super) fn forget(&self, addr: SocketAddr, id: u64) {
        self.lock().remove(addr, id);
    }
}

/// Releases connection `id` to `addr` if no request took it for `idle_timeout`; else when to
/// look again. `None`: it is out of the pool, nothing more to watch.
fn release_if_idle(
    pool: &Weak<Mutex<Conns>>,
    addr: SocketAddr,
    id: u64,
    idle_timeout: Duration,
) -> Option<Instant> {
    let pool = pool.upgrade()?;
    let mut conns = pool.lock().unwrap_or_else(|e| e.into_inner());
    let last_used = conns.by_addr.get(&addr).filter(|p| p.id == id)?.last_used;
    if last_used.elapsed() >= idle_timeout {
        tracing::debug!(%addr, "releasing an idle connection to a peer proxy");
        conns.by_addr.remove(&addr);
        None
    } else {
        Some(last_used + idle_timeout)
    }
}

impl Conns {
    /// Takes connection `id` to `addr` out of the pool if it is still there.
    fn remove(&mut self, addr: SocketAddr, id: u64) {
        if self.by_addr.get(&addr).is_some_and(|p| p.id == id) {
            self.by_addr.remove(&addr);
        }
    }
}

/// [`Conns::remove`] on the pool, if it is still there.
fn remove(pool: &Weak<Mutex<Conns>>, addr: SocketAddr, id: u64) {
    let Some(pool) = pool.upgrade() else { return };
    pool.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(addr, id);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use std::convert::Infallible;

    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio::sync::oneshot;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://weft.local/ns/default/sa/api").unwrap()
    }

    impl Pool {
        fn len(&self) -> usize {
            self.lock().by_addr.len()
        }
    }

    /// An HTTP/2 connection over memory to a server answering 200; the server's side reports
    /// when the connection ended, and stops when `stop` fires.
    async fn connection(
        pool: &Pool,
        addr: SocketAddr,
    ) -> (oneshot::Sender<()>, oneshot::Receiver<()>) {
        connection_dying(pool, addr, None).await
    }

    /// [`connection`], whose keep-alive finds the peer dead when `dead` fires.
    async fn connection_dying(
        pool: &Pool,
        addr: SocketAddr,
        dead: Option<oneshot::Receiver<()>>,
    ) -> (oneshot::Sender<()>, oneshot::Receiver<()>) {
        let (client, server) = tokio::io::duplex(64 << 10);
        let (stop, stopped) = oneshot::channel::<()>();
        let (ended, ended_rx) = oneshot::channel();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, Infallible>(http::Response::new(crate::body::empty()))
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(server), service);
            tokio::select! {
                _ = conn => {}
                _ = stopped => {}
            }
            let _ = ended.send(());
        });
        let (sender, conn, keepalive) =
            super::super::peer::handshake(client, Duration::from_secs(3600))
                .await
                .unwrap();
        match dead {
            None => _ = pool.insert(addr, &id(), sender, conn, keepalive),
            Some(dead) => {
                _ = pool.insert(addr, &id(), sender, conn, async move {
                    let _ = dead.await;
                    "no answer to a ping".to_string()
                })
            }
        }
        (stop, ended_rx)
    }

    /// Waits until `a`'s connection left the pool; `b`'s still answers, and is the only one
    /// counted.
    async fn only_b_left(pool: &Pool, metrics: &ProxyMetrics, a: SocketAddr, b: SocketAddr) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.len() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert!(pool.get(a, &id()).is_none());
        assert_eq!(request(pool, b).await, 200);
        let rendered = metrics.registry.render();
        assert!(
            rendered.contains("weft_proxy_peer_connections 1\n"),
            "{rendered}"
        );
    }

    async fn request(pool: &Pool, addr: SocketAddr) -> u16 {
        let sender = pool.get(addr, &id()).unwrap().0.ready().await.unwrap();
        let req = http::Request::builder()
            .uri("http://api.default:80/")
            .body(crate::body::empty())
            .unwrap();
        let rsp = super::super::peer::request(sender, req).await.unwrap();
        rsp.status().as_u16()
    }

    /// Endpoints come and go at new addresses: the connection of one that went away leaves
    /// the pool (it stayed there for the proxy's life).
    #[tokio::test]
    async fn a_connection_that_ended_leaves_the_pool() {
        let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
        let pool = Pool::new(&metrics, Duration::from_secs(3600));
        let (a, b) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let (stop_a, ended_a) = connection(&pool, a).await;
        let (_stop_b, _ended_b) = connection(&pool, b).await;
        assert_eq!(request(&pool, a).await, 200);
        assert_eq!(pool.len(), 2);
        stop_a.send(()).unwrap();
        ended_a.await.unwrap();
        only_b_left(&pool, &metrics, a, b).await;
    }

    /// A connection no request took for the idle timeout is released and closes; one in use
    /// stays.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_released_and_closes() {
        let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
        let idle = Duration::from_secs(30);
        let pool = Pool::new(&metrics, idle);
        let (a, b) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let (_stop_a, mut ended_a) = connection(&pool, a).await;
        let (_stop_b, mut ended_b) = connection(&pool, b).await;
        // b is used every 10 s; a is not after its first request.
        assert_eq!(request(&pool, a).await, 200);
        for _ in 0..6 {
            tokio::time::sleep(idle / 3).await;
            assert_eq!(request(&pool, b).await, 200);
        }
        assert!(pool.get(a, &id()).is_none(), "a idle for 60 s is released");
        // Its connection closes: the server's side ends.
        tokio::time::timeout(Duration::from_secs(5), &mut ended_a)
            .await
            .expect("the released connection closes")
            .unwrap();
        assert!(ended_b.try_recv().is_err(), "b, in use, stays open");
        assert_eq!(pool.len(), 1);
        let rendered = metrics.registry.render();
        assert!(
            rendered.contains("weft_proxy_peer_connections 1\n"),
            "{rendered}"
        );
    }

    /// A connection whose keep-alive finds the peer dead is dropped: out of the pool, closed,
    /// no longer counted; the others stay.
    #[tokio::test]
    async fn a_connection_whose_peer_stopped_answering_is_dropped() {
        let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
        let pool = Pool::new(&metrics, Duration::from_secs(3600));
        let (a, b) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let (kill, dead) = oneshot::channel();
        let (_stop_a, ended_a) = connection_dying(&pool, a, Some(dead)).await;
        let (_stop_b, mut ended_b) = connection(&pool, b).await;
        assert_eq!(request(&pool, a).await, 200);
        // A request still holding the connection (a long stream, say) would keep it open.
        let _held = pool.get(a, &id()).unwrap();
        kill.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), ended_a)
            .await
            .expect("the dead peer's connection is closed")
            .unwrap();
        only_b_left(&pool, &metrics, a, b).await;
        assert!(ended_b.try_recv().is_err());
    }

    /// A request that failed on an old connection forgets that one only: a newer connection
    /// to the same address stays.
    #[tokio::test]
    async fn forgetting_an_old_connection_keeps_a_newer_one() {
        let metrics = ProxyMetrics::new(weft_runtime::metrics::Registry::new());
        let pool = Pool::new(&metrics, Duration::from_secs(3600));
        let a = "127.0.0.1:1".parse().unwrap();
        let (_stop_old, _ended_old) = connection(&pool, a).await;
        let (_, old) = pool.get(a, &id()).unwrap();
        let (_stop_new, _ended_new) = connection(&pool, a).await;
        let (_, new) = pool.get(a, &id()).unwrap();
        assert_ne!(old, new);
        pool.forget(a, old);
        assert_eq!(pool.get(a, &id()).unwrap().1, new, "the newer one stays");
        pool.forget(a, new);
        assert!(pool.get(a, &id()).is_none());
    }
}
