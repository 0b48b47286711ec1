//! Circuit breaking: an endpoint that fails `consecutiveFailures` times in a row (a 5xx or an
//! error: connect failure, reset, timeout) is ejected for `ejectionTime`, doubled on each
//! consecutive ejection (at most [`MAX_BACKOFF_DOUBLINGS`] times) and jittered by ±10 % so
//! ejected endpoints do not all come back at once. When its ejection ends, the next request
//! is its one probe: success brings it back into service, failure ejects it again for longer.
//! At most `maxEjectionPercent` of a backend's endpoints are ejected at once; when every
//! endpoint is ejected, requests fail at once with 503 `endpoints_ejected`, never hang.
//!
//! Time is tokio's, so tests with paused time run the backoff without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use weft_policy::routes::CircuitBreaker;

use super::{EndpointState, lock};
use crate::svc::Labels;

/// Ejection times double at most this many times.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 6;

/// One endpoint's health.
#[derive(Debug, Default)]
pub struct Health {
    /// Failures since the last success.
    failures: u32,
    /// Consecutive ejections (reset by a successful probe).
    ejections: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Its probe is in flight.
    probing: bool,
}

/// Whether an endpoint may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// In service.
    In,
    /// Its ejection ended: it takes this request as its probe.
    Probe,
    /// Ejected, or its probe is in flight.
    Out,
}

impl Health {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Whether the endpoint takes a request at `now`; marks the probe as sent.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.ejected_until {
            None => Admission::In,
            Some(until) if now >= until && !self.probing => {
                self.probing = true;
                Admission::Probe
            }
            Some(_) => Admission::Out,
        }
    }

    /// How long the `n`th consecutive ejection lasts: `base` doubled `n - 1` times (capped),
    /// times a jitter `j` in [0.9, 1.1).
    pub fn backoff(base: Duration, n: u32, j: f64) -> Duration {
        let doublings = n.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
        base.saturating_mul(1 << doublings).mul_f64(j)
    }

    fn eject(&mut self, cb: &CircuitBreaker, now: Instant) {
        self.ejections += 1;
        let d = Self::backoff(
            cb.ejection_time.0,
            self.ejections,
            0.9 + fastrand::f64() * 0.2,
        );
        self.ejected_until = Some(now + d);
        self.probing = false;
        self.failures = 0;
    }
}

/// The outcome of one request to an endpoint under a circuit breaker, recorded into its
/// health once. Dropped unrecorded (the request was cancelled), a probe counts as failed, so
/// the endpoint is never left waiting for a probe that will not answer.
#[derive(Debug)]
pub struct Outcome {
    cb: CircuitBreaker,
    state: Arc<EndpointState>,
    /// The backend's count of ejected endpoints.
    ejected: Arc<AtomicUsize>,
    /// The backend's number of endpoints.
    endpoints: usize,
    recorded: bool,
    /// The request's labels: whether its client went away, when it is dropped unanswered.
    labels: Option<Arc<Labels>>,
}

impl Outcome {
    pub fn new(
        cb: &CircuitBreaker,
        state: Arc<EndpointState>,
        ejected: Arc<AtomicUsize>,
        endpoints: usize,
        labels: Option<Arc<Labels>>,
    ) -> Self {
        Self {
            cb: cb.clone(),
            state,
            ejected,
            endpoints,
            recorded: false,
            labels,
        }
    }

    /// The request failed by its client's fault: nothing is recorded, and if it was the
    /// probe of an ejected endpoint, the next request probes instead.
    pub fn discard(mut self) {
        self.recorded = true;
        lock(&self.state.health).probing = false;
    }

    /// Records success or failure; `true` when this failure ejected the endpoint (not
    /// counting a failed probe's re-ejection).
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        self.recorded = true;
        let mut h = lock(&self.state.health);
        if ok {
            h.failures = 0;
            if h.is_ejected() {
                // A successful probe: back in service.
                h.ejected_until = None;
                h.ejections = 0;
                h.probing = false;
                self.ejected.fetch_sub(1, Ordering::Relaxed);
            }
            return false;
        }
        if h.is_ejected() {
            // A failed probe (or a request sent before the ejection): out again, for longer.
            if h.probing {
                h.eject(&self.cb, now);
            }
            return false;
        }
        h.failures += 1;
        if h.failures < self.cb.consecutive_failures {
            return false;
        }
        // Eject unless that would put more than the allowed share of endpoints out.
        let allowed =
            (self.cb.max_ejection_percent / 100.0 * self.endpoints as f64).floor() as usize;
        let claimed = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < allowed).then_some(n + 1)
            })
            .is_ok();
        if claimed {
            h.eject(&self.cb, now);
        }
        claimed
    }
}

impl Drop for Outcome {
    /// Unanswered: a probe that timed out fails; one whose client went away is released.
    fn drop(&mut self) {
        if !self.recorded {
            let client_gone = self
                .labels
                .as_ref()
                .is_some_and(|l| l.client_fault().is_some());
            let mut h = lock(&self.state.health);
            if h.probing {
                if client_gone {
                    h.probing = false;
                } else {
                    h.eject(&self.cb, Instant::now());
                }
            }
        }
    }
}
