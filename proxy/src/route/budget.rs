//! The retry budget: retries may add at most `ratio` of the requests of the last `ttl`, plus a
//! reserve of `min_per_second × ttl` (so a quiet route can still retry), counted over a
//! sliding window of [`SLOTS`] slots. A failing backend is never hammered: once the budget is
//! spent, failures go back to the caller as they are.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Slots of the sliding window: the window slides by `ttl / SLOTS`.
pub const SLOTS: usize = 10;

/// A route's retry budget, shared by every request on the route.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    /// Retries always allowed per window: `min_per_second × ttl`.
    reserve: f64,
    slot_len: Duration,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Per slot: the slot number (since `start`) it counts, requests and retries.
    slots: [(u64, u64, u64); SLOTS],
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_millis(SLOTS as u64));
        Self {
            ratio: ratio.max(0.0),
            reserve: f64::from(min_per_second) * ttl.as_secs_f64(),
            slot_len: ttl / SLOTS as u32,
            window: Mutex::new(Window {
                start: Instant::now(),
                slots: [(0, 0, 0); SLOTS],
            }),
        }
    }

    /// Counts a request (every request of the route, retried or not).
    pub fn deposit(&self) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let slot = self.current(&mut w);
        slot.1 += 1;
    }

    /// Takes one retry from the budget if the window allows it.
    pub fn withdraw(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now_slot = self.current(&mut w).0;
        let (requests, retries) = w
            .slots
            .iter()
            .filter(|s| s.0 + SLOTS as u64 > now_slot)
            .fold((0, 0), |(a, b), s| (a + s.1, b + s.2));
        let allowed = self.ratio * requests as f64 + self.reserve;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let i = (now_slot % SLOTS as u64) as usize;
        w.slots[i].2 += 1;
        true
    }

    /// The slot of now, cleared if it held an older slot's counts.
    fn current<'w>(&self, w: &'w mut Window) -> &'w mut (u64, u64, u64) {
        let n = (Instant::now().saturating_duration_since(w.start).as_nanos()
            / self.slot_len.as_nanos().max(1)) as u64;
        let slot = &mut w.slots[(n % SLOTS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_by_ratio_plus_reserve_over_the_window() {
        let b = Budget::new(0.2, 1, Duration::from_secs(10));
        // The reserve: 1/s × 10 s.
        for _ in 0..10 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw(), "the reserve is spent");
        for _ in 0..100 {
            b.deposit();
        }
        let taken = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(taken, 20, "20% of 100 requests");
        // A window later, the old requests and retries no longer count.
        tokio::time::advance(Duration::from_secs(11)).await;
        let taken = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(taken, 10, "only the reserve again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_slot_by_slot() {
        let b = Budget::new(0.5, 0, Duration::from_secs(10));
        for _ in 0..10 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 10);
        // 10.5 s: the first 10 requests leave the window; the second slot's 10 requests and
        // 10 retries stay, and 4 new requests allow 7 retries, which are spent.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        for _ in 0..4 {
            b.deposit();
        }
        assert!(!b.withdraw());
        // 15.5 s: only the 4 latest requests count: 2 retries.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 2);
    }
}
