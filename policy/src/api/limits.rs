//! Caps per caller: watch streams open at once, and requests in flight at once. A caller is
//! the identity its client certificate proves (mTLS), or its IP address in development mode.
//!
//! A caller's counts exist only while it holds something: the entry goes when its last watch
//! closes and its last request is answered, so callers leave nothing behind.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use weft_identity::SpiffeId;

/// Whom a cap applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The identity the client certificate proves.
    Identity(SpiffeId),
    /// The peer's IP address (development mode: nothing is proven).
    Address(IpAddr),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Identity(id) => write!(f, "{id}"),
            Caller::Address(ip) => write!(f, "the client at {ip}"),
        }
    }
}

/// What a permit holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// An open watch stream.
    Watch,
    /// A request being answered (a registration, a one-shot read, a watch being opened).
    Request,
}

#[derive(Debug, Default)]
struct Counts {
    watches: usize,
    requests: usize,
}

impl Counts {
    fn of(&mut self, held: Held) -> &mut usize {
        match held {
            Held::Watch => &mut self.watches,
            Held::Request => &mut self.requests,
        }
    }
}

/// The caps and what every caller holds now.
#[derive(Debug)]
pub struct Limits {
    max_watches: usize,
    max_requests: usize,
    held: Mutex<HashMap<Caller, Counts>>,
}

/// A caller at its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub held: Held,
    pub limit: usize,
}

/// One watch or request a caller holds; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    caller: Caller,
    held: Held,
}

impl Limits {
    /// At most `max_watches` open watches and `max_requests` requests in flight per caller.
    pub fn new(max_watches: usize, max_requests: usize) -> Arc<Self> {
        Arc::new(Self {
            max_watches,
            max_requests,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// One more `held` for `caller`, unless it holds its cap already.
    pub fn acquire(self: &Arc<Self>, caller: &Caller, held: Held) -> Result<Permit, Refused> {
        let limit = match held {
            Held::Watch => self.max_watches,
            Held::Request => self.max_requests,
        };
        let mut all = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if all.get_mut(caller).map_or(0, |c| *c.of(held)) >= limit {
            return Err(Refused { held, limit });
        }
        *all.entry(caller.clone()).or_default().of(held) += 1;
        Ok(Permit {
            limits: self.clone(),
            caller: caller.clone(),
            held,
        })
    }

    /// How many callers hold something now.
    pub fn callers(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut all = self.limits.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.get_mut(&self.caller) {
            let n = c.of(self.held);
            *n = n.saturating_sub(1);
            if c.watches == 0 && c.requests == 0 {
                all.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_per_caller_and_released() {
        let limits = Limits::new(2, 1);
        let a = Caller::Identity(SpiffeId::parse("spiffe://weft.local/ns/default/sa/a").unwrap());
        let b = Caller::Address("127.0.0.1".parse().unwrap());
        let w1 = limits.acquire(&a, Held::Watch).unwrap();
        let _w2 = limits.acquire(&a, Held::Watch).unwrap();
        assert_eq!(
            limits.acquire(&a, Held::Watch).unwrap_err(),
            Refused {
                held: Held::Watch,
                limit: 2
            }
        );
        // The other kind, and another caller, have their own counts.
        let r = limits.acquire(&a, Held::Request).unwrap();
        assert!(limits.acquire(&a, Held::Request).is_err());
        let _b = limits.acquire(&b, Held::Watch).unwrap();
        drop(w1);
        let w3 = limits.acquire(&a, Held::Watch).unwrap();
        assert_eq!(limits.callers(), 2);
        // Nothing is kept for a caller that holds nothing.
        drop((r, w3, _w2, _b));
        assert_eq!(limits.callers(), 0);
    }
}
