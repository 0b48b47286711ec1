//! What the outbound side follows of each destination, for as long as requests use it: a
//! bounded map whose entries hold control-plane watches (and what was made of them), released
//! when idle or when room is needed.
//!
//! Every request marks its destination's entry used (under the lock its consumer already
//! takes, no allocation). An entry not used for [`Limits::idle_timeout`] is dropped, and with
//! it its watch, which ends the watch's stream at the control plane; one whose last answer
//! was empty (a name the mesh does not know, a service without endpoints) already after
//! [`EMPTY_IDLE_TIMEOUT`]. A background task sweeps them while the cache lives. At most
//! [`Limits::capacity`] entries are kept: a new one past it evicts the least recently used,
//! empty ones first, so a flood of unknown names only ever replaces other unknown names.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a destination no request used stays followed (Linkerd drops its outbound
/// discovery after 5 s idle; here use is counted per request, not per open connection, and the
/// balancer's latency estimates and ejections live in the entry, so a little longer).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an entry whose last answer was empty stays (Linkerd's outbound idle timeout, which
/// matches Kubernetes' DNS TTL), unless [`Limits::idle_timeout`] is shorter.
pub const EMPTY_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many destinations each cache follows at once. The balancer's endpoints, the router's
/// routes and the original destinations' addresses have one cache each, every entry one
/// stream on the proxy's one connection to the control plane, which allows 200 at once:
/// 3 × 50 leaves room for the inbound policy and registrations.
pub const DEFAULT_CAPACITY: usize = 50;

/// The bounds of each discovery cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An entry no request used for this long is released.
    pub idle_timeout: Duration,
    /// At most this many entries (at least 1).
    pub capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl Limits {
    /// How long an entry whose last answer was empty stays.
    pub fn empty_idle_timeout(&self) -> Duration {
        EMPTY_IDLE_TIMEOUT.min(self.idle_timeout)
    }

    /// How often idle entries are looked for: an entry lives at most half a timeout longer.
    fn sweep_every(&self) -> Duration {
        (self.empty_idle_timeout() / 2).max(Duration::from_millis(10))
    }

    fn ttl(&self, empty: bool) -> Duration {
        if empty {
            self.empty_idle_timeout()
        } else {
            self.idle_timeout
        }
    }
}

/// What a cache entry follows.
pub trait Followed {
    /// Whether the control plane's last answer said nothing is there (no such service, no
    /// endpoints, no routes, nothing at the address): such entries go first. Not empty while
    /// no answer has come yet.
    fn is_empty(&self) -> bool;
}

/// The entries, and when each was last used.
#[derive(Debug)]
pub struct Cache<K, V> {
    limits: Limits,
    entries: HashMap<K, Entry<V>>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    used: Instant,
}

/// A cache shared by a consumer's clones, swept in the background while it lives.
pub type Shared<K, V> = Arc<Mutex<Cache<K, V>>>;

impl<K: Eq + Hash + Clone, V: Followed> Cache<K, V> {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
        }
    }

    /// A cache for a consumer's clones to share. Within a tokio runtime, a task sweeps idle
    /// entries until the cache is dropped (outside one, entries are swept only to make room).
    pub fn shared(limits: Limits) -> Shared<K, V>
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let cache = Arc::new(Mutex::new(Self::new(limits)));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep_while_alive(
                Arc::downgrade(&cache),
                limits.sweep_every(),
            ));
        }
        cache
    }

    /// Runs `f` on the entry of `key`, marked used at `now`; made with `make` first when
    /// there is none (making room first when the cache is full).
    pub fn with<R>(
        &mut self,
        key: &K,
        now: Instant,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        if let Some(e) = self.entries.get_mut(key) {
            e.used = now;
            return f(&mut e.value);
        }
        self.make_room(now);
        let mut value = make();
        let r = f(&mut value);
        self.entries.insert(key.clone(), Entry { value, used: now });
        r
    }

    /// Drops the entries idle past their timeout at `now`.
    pub fn sweep(&mut self, now: Instant) {
        let limits = self.limits;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.used) < limits.ttl(e.value.is_empty()));
    }

    /// Below capacity, by sweeping and then evicting the least recently used entries, empty
    /// ones first.
    fn make_room(&mut self, now: Instant) {
        let capacity = self.limits.capacity.max(1);
        if self.entries.len() < capacity {
            return;
        }
        self.sweep(now);
        while self.entries.len() >= capacity {
            let victim = self
                .entries
                .iter()
                .min_by_key(|(_, e)| (!e.value.is_empty(), e.used))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => self.entries.remove(&k),
                None => return,
            };
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

/// The clock of last uses: tokio's, so tests with paused time see virtual time.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sweep_while_alive<K, V>(cache: Weak<Mutex<Cache<K, V>>>, every: Duration)
where
    K: Eq + Hash + Clone,
    V: Followed,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        lock(&cache).sweep(now());
    }
}
