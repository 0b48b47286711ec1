//! Peak-EWMA load of one endpoint: a latency estimate that jumps up to any slower response at
//! once and comes back down smoothly, times the requests in flight. Power of two choices
//! compares two endpoints' loads and sends the request to the lighter one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How fast the estimate forgets: after this long without responses, an old estimate has
/// decayed to 1/e of itself, so an endpoint that was slow is tried again.
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint of a destination that has no measured endpoint yet. A new
/// endpoint of a destination with measured ones starts at their mean instead, so it gets its
/// share of traffic at once.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// The load of one endpoint.
#[derive(Debug)]
pub struct Load {
    estimate: Mutex<Estimate>,
    in_flight: AtomicU32,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Seconds.
    rtt: f64,
    at: Instant,
}

impl Default for Load {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Load {
    pub fn new(now: Instant) -> Self {
        Self::with_estimate(DEFAULT_RTT.as_secs_f64(), now)
    }

    /// A load starting from an estimate of `rtt` seconds.
    pub fn with_estimate(rtt: f64, now: Instant) -> Self {
        Self {
            estimate: Mutex::new(Estimate { rtt, at: now }),
            in_flight: AtomicU32::new(0),
        }
    }

    /// The current latency estimate, in seconds.
    pub fn estimate(&self, now: Instant) -> f64 {
        decayed(
            *self.estimate.lock().unwrap_or_else(|e| e.into_inner()),
            now,
        )
    }

    /// The cost of sending one more request here now: the decayed latency estimate times the
    /// requests in flight plus this one.
    pub fn cost(&self, now: Instant) -> f64 {
        let e = *self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        let pending = f64::from(self.in_flight.load(Ordering::Relaxed)) + 1.0;
        decayed(e, now) * pending
    }

    /// Records a response that took `rtt`: a slower one than the estimate replaces it (the
    /// peak), a faster one pulls it down by how long ago the estimate was made.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let mut e = self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        let rtt = rtt.as_secs_f64();
        let current = decayed(*e, now);
        let next = if rtt > current {
            rtt
        } else {
            let w = weight(*e, now);
            e.rtt * w + rtt * (1.0 - w)
        };
        *e = Estimate { rtt: next, at: now };
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// How much of the old estimate survives the time since it was made.
fn weight(e: Estimate, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
    (-elapsed / DECAY.as_secs_f64()).exp()
}

fn decayed(e: Estimate, now: Instant) -> f64 {
    e.rtt * weight(e, now)
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Power of two choices: two distinct random candidates out of `n`, the one with the lower
/// cost wins. `random(n)` draws an index below `n`.
pub fn p2c(n: usize, cost: impl Fn(usize) -> f64, mut random: impl FnMut(usize) -> usize) -> usize {
    match n {
        0 | 1 => 0,
        _ => {
            let a = random(n);
            // A second, different index: shift by 1..n.
            let b = (a + 1 + random(n - 1)) % n;
            if cost(b) < cost(a) { b } else { a }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_jumps_to_peaks_and_decays_smoothly() {
        let t0 = Instant::now();
        let load = Load::new(t0);
        assert!((load.cost(t0) - DEFAULT_RTT.as_secs_f64()).abs() < 1e-9);
        // A slow response is believed at once.
        load.observe(Duration::from_millis(50), t0);
        assert!((load.cost(t0) - 0.050).abs() < 1e-9);
        // A fast one right after barely moves it; one much later mostly replaces it.
        load.observe(Duration::from_millis(1), t0 + Duration::from_millis(10));
        assert!(load.cost(t0 + Duration::from_millis(10)) > 0.049);
        let later = t0 + DECAY * 3;
        load.observe(Duration::from_millis(1), later);
        assert!(load.cost(later) < 0.004, "{}", load.cost(later));
        // Without responses the estimate forgets, so a once-slow endpoint is tried again.
        let load = Load::new(t0);
        load.observe(Duration::from_millis(100), t0);
        assert!(load.cost(t0 + DECAY * 5) < 0.001);
    }

    #[test]
    fn requests_in_flight_multiply_the_cost() {
        let t0 = Instant::now();
        let load = std::sync::Arc::new(Load::new(t0));
        let one = load.cost(t0);
        let a = load.start();
        let _b = load.start();
        assert_eq!(load.in_flight(), 2);
        assert!((load.cost(t0) - 3.0 * one).abs() < 1e-12);
        drop(a);
        assert_eq!(load.in_flight(), 1);
    }

    #[test]
    fn p2c_compares_two_distinct_candidates() {
        // Any draw: the two candidates differ and the cheaper one wins.
        let costs = [5.0, 1.0, 3.0, 2.0];
        for first in 0..4 {
            for second in 0..3 {
                let mut draws = [first, second].into_iter();
                let chosen = p2c(4, |i| costs[i], |_| draws.next().unwrap());
                let b = (first + 1 + second) % 4;
                assert_ne!(first, b);
                assert_eq!(chosen, if costs[b] < costs[first] { b } else { first });
            }
        }
        assert_eq!(p2c(1, |_| 1.0, |_| unreachable!()), 0);
        // Over many random draws, the costliest of three is never chosen: it always meets a
        // cheaper one.
        let costs = [1.0, 1.0, 10.0];
        let picks: Vec<usize> = (0..1000)
            .map(|_| p2c(3, |i| costs[i], |n| fastrand::usize(..n)))
            .collect();
        assert!(!picks.contains(&2));
        assert!(picks.iter().filter(|&&i| i == 0).count() > 300);
    }
}
