//! What the process tests that kill and change parts of a running mesh share: steady traffic
//! through a proxy with every answer kept, bounded waits for a condition, a proxy's metric, and
//! the tail of every log in a test's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_runtime::testing::{http, metric_sum};

/// `GET http://<host>/` through `outbound` every `every`, at most `max` times, every answer
/// (status and body) kept; stops when dropped or [`finish`](Self::finish)ed.
pub struct Traffic {
    answers: Arc<Mutex<Vec<(u16, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(outbound: SocketAddr, host: &'static str, every: Duration, max: usize) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (answers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let url = format!("http://{host}/");
            for _ in 0..max {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let answer = http(outbound, "GET", &url, host).unwrap_or((0, "no answer".into()));
                a.lock().unwrap().push(answer);
                std::thread::sleep(every);
            }
        });
        Self {
            answers,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }

    /// The answers that were not 200, with how many there were in all.
    pub fn failures(&self) -> (Vec<(u16, String)>, usize) {
        let all = self.answers.lock().unwrap();
        (
            all.iter().filter(|a| a.0 != 200).cloned().collect(),
            all.len(),
        )
    }

    pub fn assert_none_failed(&self, step: &str) {
        let (failed, all) = self.failures();
        assert!(
            failed.is_empty(),
            "{step}: {} of {all} requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }

    /// Waits (at most `limit`) until the last 10 answers all come from `app`.
    pub fn wait_all_from(&self, app: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            {
                let all = self.answers.lock().unwrap();
                if all.len() >= 10 && all[all.len() - 10..].iter().all(|a| a.1.contains(app)) {
                    return;
                }
            }
            if Instant::now() >= deadline {
                let all = self.answers.lock().unwrap();
                let last = &all[all.len().saturating_sub(10)..];
                panic!("the answers never all came from {app}: the last ones: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `n` more requests were answered (at most a minute).
    pub fn go_on_for(&self, n: usize) {
        let until = self.count() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count() < until {
            assert!(Instant::now() < deadline, "the traffic stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the traffic; its failures, with how many requests there were in all.
    pub fn finish(mut self) -> (Vec<(u16, String)>, usize) {
        self.halt();
        self.failures()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits until `cond` holds, failing after `limit`; returns how long it took.
pub fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// The sum of `name`'s series with `labels` in the `/metrics` of the admin at `admin` (0 when
/// it does not answer).
pub fn admin_metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = http(admin, "GET", "/metrics", "x")
        .map(|r| r.1)
        .unwrap_or_default();
    metric_sum(&text, name, labels)
}

/// The last `n` lines of every `.log` in `dir`, each under its file's name.
pub fn log_tails(dir: &Path, n: usize) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p: PathBuf = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(n).collect();
            out.push_str(&format!(
                "--- {}\n{}\n",
                p.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    out
}
