//! The demo's load generator, in the demo process: the client workload `loadgen`, calling
//! `web` through its own sidecar at a steady rate (one request in five with a mobile
//! user-agent, so the `mobile` rule shows), and knocking on `db` directly once a second, which
//! the policy refuses. Prints a summary every few seconds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::app::Upstream;

pub const MOBILE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0) Mobile/15E148";
pub const DESKTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) weft-demo";
const REPORT_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Tally {
    /// Status (0: no answer) → count, for calls to web.
    web: BTreeMap<u16, u64>,
    /// The same for the direct calls to db.
    db: BTreeMap<u16, u64>,
}

fn summary(t: &BTreeMap<u16, u64>) -> String {
    let total: u64 = t.values().sum();
    let parts: Vec<String> = t
        .iter()
        .map(|(s, n)| match s {
            0 => format!("{n} no answer"),
            s => format!("{n}×{s}"),
        })
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// Runs until dropped: `rate` requests a second to web, one a second to db.
pub async fn run(upstream: Upstream, rate: u32) {
    let upstream = Arc::new(upstream);
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Dropping the set (when the demo stops) cancels every request in flight.
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + REPORT_EVERY, REPORT_EVERY);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let (upstream, tally) = (upstream.clone(), tally.clone());
                let ua = if n % 5 == 0 { MOBILE_UA } else { DESKTOP_UA };
                let to_db = n % u64::from(rate.max(1)) == 0;
                tasks.spawn(async move {
                    let status = upstream.get("http://web/", Some(ua)).await.map_or(0, |r| r.0.as_u16());
                    let denied = if to_db {
                        Some(upstream.get("http://db/", Some(DESKTOP_UA)).await.map_or(0, |r| r.0.as_u16()))
                    } else {
                        None
                    };
                    if let Ok(mut t) = tally.lock() {
                        *t.web.entry(status).or_default() += 1;
                        if let Some(s) = denied {
                            *t.db.entry(s).or_default() += 1;
                        }
                    }
                });
            }
            _ = report.tick() => {
                if let Ok(mut t) = tally.lock() {
                    println!(
                        "  load, last {}s: loadgen → web {}; loadgen → db (not allowed) {}",
                        REPORT_EVERY.as_secs(),
                        summary(&t.web),
                        summary(&t.db)
                    );
                    *t = Tally::default();
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}
