//! What a long run's caller sees while it goes (`weft-bench soak`): every request's outcome
//! counted, and the failures grouped into episodes with their errors, bounded.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Outcome;

/// A long run's outcomes as they come, for a caller watching it (`weft-bench soak`): every
/// request's outcome counted, warm-up included, and the failures grouped into episodes (runs of
/// failures less than [`Progress::EPISODE_GAP`] apart), each with its errors counted.
#[derive(Debug, Default)]
pub struct Progress {
    ok: AtomicU64,
    failed: AtomicU64,
    episodes: Mutex<Vec<Episode>>,
}

/// Failed requests that ended close together: when (seconds since the run's start), how many,
/// and their errors with how many had each.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Episode {
    pub from_seconds: f64,
    pub to_seconds: f64,
    pub failed: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl Progress {
    /// Failures further apart than this start a new episode.
    pub const EPISODE_GAP: f64 = 1.0;
    /// Episodes kept; failures after the last one is full join it.
    pub const MAX_EPISODES: usize = 1000;
    /// Distinct errors kept per episode; others are counted under one entry.
    const MAX_ERRORS: usize = 20;

    /// Requests answered 2xx and requests failed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// The episodes so far, in the order they began.
    pub fn episodes(&self) -> Vec<Episode> {
        self.episodes.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub(super) fn record(&self, outcome: &Outcome, since_start: Duration) {
        if *outcome == Outcome::Ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut episodes) = self.episodes.lock() {
            add_failure(
                &mut episodes,
                since_start.as_secs_f64(),
                outcome.to_string(),
            );
        }
    }
}

/// Adds a failure that ended `at` seconds into the run with `error` to `episodes`: to the last
/// one when it is close enough (or no new one may start), else as a new one.
pub fn add_failure(episodes: &mut Vec<Episode>, at: f64, error: String) {
    let joins = episodes.last().is_some_and(|e| {
        at <= e.to_seconds + Progress::EPISODE_GAP || episodes.len() >= Progress::MAX_EPISODES
    });
    if !joins {
        episodes.push(Episode {
            from_seconds: at,
            to_seconds: at,
            failed: 0,
            errors: Default::default(),
        });
    }
    let Some(e) = episodes.last_mut() else {
        return;
    };
    e.from_seconds = e.from_seconds.min(at);
    e.to_seconds = e.to_seconds.max(at);
    e.failed += 1;
    let key = if e.errors.len() < Progress::MAX_ERRORS || e.errors.contains_key(&error) {
        error
    } else {
        "(other errors)".to_string()
    };
    *e.errors.entry(key).or_default() += 1;
}

/// How a failure is told: in the episodes' errors and a run's first error.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Status(code, None) => write!(f, "answered with status {code}"),
            Outcome::Status(code, Some(reason)) => write!(
                f,
                "answered with status {code} ({}: {reason})",
                weft_proxy::error::ERROR_HEADER
            ),
            Outcome::Transport(e) => write!(f, "{e}"),
        }
    }
}
