//! Following the resource directory: it is polled (every 200 ms by default) and its content
//! hashed; when the hash changes, the directory is loaded again, and served if valid. An
//! invalid change is logged with every error, shown on the admin `/status` page, and
//! otherwise ignored: the last valid set stays served.
//!
//! An invalid content is reported only when the next poll reads it unchanged, so a file caught
//! half-written is not reported as an error (a valid content is applied at once).
//!
//! Polling with a content hash needs no platform file-notification API, sees edits made by any
//! means (editors that replace files, `git checkout`, volume updates), and costs one read of a
//! small directory per interval.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authz::DefaultPolicy;
use crate::load::{compile, read_sources, sources_hash};
use crate::store::Store;

/// How often the directory is read by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Follows `dir` until `shutdown`. `loaded_hash` is the hash of what the store serves. The
/// directory is read under `lock`, which `weft apply` writes it under, so a change of several
/// files is seen whole.
pub async fn follow(
    store: Arc<Store>,
    dir: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
    default_policy: DefaultPolicy,
    interval: Duration,
    loaded_hash: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_hash = loaded_hash;
    let mut last_read_error: Option<String> = None;
    let mut unsettled: Option<String> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let read_dir = dir.clone();
        let reading = lock.lock().await;
        let read = tokio::task::spawn_blocking(move || read_sources(&read_dir)).await;
        drop(reading);
        let sources = match read {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let text = e.to_string();
                if last_read_error.as_ref() != Some(&text) {
                    tracing::error!(error = %text, "cannot read the resource directory; the last valid resources stay served");
                    store.config_rejected(std::slice::from_ref(&e));
                    store.metrics().reload_error.increment(1);
                    last_read_error = Some(text);
                }
                continue;
            }
            Err(_) => continue,
        };
        last_read_error = None;
        let hash = sources_hash(&sources);
        if hash == last_hash {
            continue;
        }
        let started = Instant::now();
        let result = compile(&sources, default_policy);
        store
            .metrics()
            .load_duration
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(config) => {
                last_hash = hash;
                unsettled = None;
                store.serve_changed(Ok(config), "the resource directory");
            }
            // A file caught in the middle of being written looks invalid: report an invalid
            // content only once it is the same on the next poll.
            Err(_) if unsettled.as_ref() != Some(&hash) => {
                tracing::debug!(%hash, "invalid content; checking again at the next poll in case a file is still being written");
                unsettled = Some(hash);
            }
            Err(errors) => {
                last_hash = hash;
                unsettled = None;
                store.serve_changed(Err(errors), "the resource directory");
            }
        }
    }
}
