//! The most recent denied requests, for operators: who was refused what, by which policy and
//! why. Metrics count denials by policy and peer; this keeps the last few whole, with method,
//! path and time, for the admin endpoint's `/denials` (which the dashboard shows).
//!
//! Bounded: the oldest record goes when a new one arrives on a full log, and a long path is
//! cut, so a flood of denied requests costs a fixed amount of memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where the admin endpoint serves the log.
pub const DENIALS_PATH: &str = "/denials";
/// How many denials the log keeps.
pub const CAPACITY: usize = 100;
/// Paths are kept up to this many bytes (cut at a character boundary).
const MAX_PATH: usize = 256;

/// One denied request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The peer's SPIFFE ID, or `unauthenticated`.
    pub peer: String,
    /// The policy that decided (`namespace/name`, or the default policy's name).
    pub policy: String,
    pub reason: String,
    pub method: String,
    pub path: String,
    /// The application port the request was for.
    pub port: u16,
}

/// The last [`CAPACITY`] denials and how many there were in all.
#[derive(Debug, Default)]
pub struct DenialLog {
    inner: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    recent: VecDeque<Denial>,
    total: u64,
}

/// What `/denials` serves: the total since start and the recent ones, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenialsPage {
    pub total: u64,
    pub recent: Vec<Denial>,
}

impl DenialLog {
    /// Records a denial now.
    pub fn record(
        &self,
        peer: &str,
        policy: &str,
        reason: &str,
        method: &str,
        path: &str,
        port: u16,
    ) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let denial = Denial {
            at_ms,
            peer: peer.to_string(),
            policy: policy.to_string(),
            reason: reason.to_string(),
            method: method.to_string(),
            path: cut(path, MAX_PATH).to_string(),
            port,
        };
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if log.recent.len() == CAPACITY {
            log.recent.pop_front();
        }
        log.recent.push_back(denial);
        log.total += 1;
    }

    /// The total and the recent denials, newest first.
    pub fn page(&self) -> DenialsPage {
        let log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        DenialsPage {
            total: log.total,
            recent: log.recent.iter().rev().cloned().collect(),
        }
    }
}

/// `s` up to `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_first_and_is_bounded() {
        let log = DenialLog::default();
        for i in 0..CAPACITY + 5 {
            log.record(
                "spiffe://t/ns/a/sa/b",
                "default/p",
                "r",
                "GET",
                &format!("/{i}"),
                80,
            );
        }
        let page = log.page();
        assert_eq!(page.total, (CAPACITY + 5) as u64);
        assert_eq!(page.recent.len(), CAPACITY);
        assert_eq!(page.recent[0].path, format!("/{}", CAPACITY + 4));
        assert_eq!(page.recent[CAPACITY - 1].path, "/5");
        assert!(page.recent[0].at_ms > 0);
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let log = DenialLog::default();
        let path = format!("/{}", "é".repeat(300));
        log.record("p", "q", "r", "GET", &path, 80);
        let kept = &log.page().recent[0].path;
        assert!(
            kept.len() <= MAX_PATH && kept.len() >= MAX_PATH - 1,
            "{}",
            kept.len()
        );
        assert!(path.starts_with(kept.as_str()));
    }
}
