//! The memory the soak follows: each weft process's resident set (`VmRSS`) sampled over the
//! run, and its drift: the mean over the last 10 % of the run against the mean over a window
//! of the same length right after the warm-up.

use crate::procstat;

/// The windows the drift compares, in seconds from the soak's start.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Windows {
    /// Not compared: the processes fill their pools, caches and allocator arenas.
    pub warmup: f64,
    /// Right after the warm-up, as long as `end`.
    pub baseline: (f64, f64),
    /// The last 10 % of the run (samples taken as it ends included).
    pub end: (f64, f64),
}

/// The share of the run each window covers.
const WINDOW_SHARE: f64 = 0.1;
/// The longest default warm-up.
const MAX_DEFAULT_WARMUP: f64 = 120.0;

impl Windows {
    /// The windows of a run of `duration` seconds with `warmup` seconds of warm-up [default:
    /// 10 % of the run or 2 minutes, whichever is smaller].
    pub fn of(duration: f64, warmup: Option<f64>) -> Self {
        let share = duration * WINDOW_SHARE;
        let warmup = warmup.unwrap_or(share.min(MAX_DEFAULT_WARMUP));
        Self {
            warmup,
            baseline: (warmup, warmup + share),
            end: (duration - share, duration),
        }
    }
}

/// One process's memory over the run, as reported.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub component: String,
    /// Whether its drift is judged: every process that lives the whole run (not the second
    /// api instance, a new process each life).
    pub judged: bool,
    /// `(seconds from the start, VmRSS in KiB)`; `None` while it was not running.
    pub samples: Vec<(f64, Option<u64>)>,
    pub first_kib: Option<u64>,
    pub last_kib: Option<u64>,
    pub peak_kib: Option<u64>,
    /// The mean over the baseline window.
    pub baseline_kib: Option<f64>,
    /// The mean over the end window.
    pub end_kib: Option<f64>,
    /// `(end − baseline) / baseline`, in percent.
    pub drift_percent: Option<f64>,
}

impl Memory {
    pub fn new(component: &str, judged: bool) -> Self {
        Self {
            component: component.to_string(),
            judged,
            samples: Vec::new(),
            first_kib: None,
            last_kib: None,
            peak_kib: None,
            baseline_kib: None,
            end_kib: None,
            drift_percent: None,
        }
    }

    /// Samples process `pid` (`None`: not running) at `at` seconds; a process that is gone
    /// counts as not running.
    pub fn sample(&mut self, at: f64, pid: Option<u32>) {
        let kib = pid
            .and_then(|p| procstat::memory(p).ok())
            .map(|m| m.rss_kib);
        self.samples.push((at, kib));
    }

    /// Fills in the figures from the samples.
    pub fn finish(&mut self, w: &Windows) {
        let present = || self.samples.iter().filter_map(|(_, k)| *k);
        self.first_kib = present().next();
        self.last_kib = present().next_back();
        self.peak_kib = present().max();
        self.baseline_kib = mean_in(&self.samples, w.baseline.0, w.baseline.1);
        self.end_kib = mean_in(&self.samples, w.end.0, f64::INFINITY);
        self.drift_percent = match (self.baseline_kib, self.end_kib) {
            (Some(b), Some(e)) if b > 0.0 => Some((e - b) / b * 100.0),
            _ => None,
        };
    }
}

/// The mean of the samples taken from `from` to `to` seconds (both included) while the
/// process ran; `None` when there is none.
pub fn mean_in(samples: &[(f64, Option<u64>)], from: f64, to: f64) -> Option<f64> {
    let values: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| (from..=to).contains(t))
        .filter_map(|(_, k)| k.map(|k| k as f64))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}
