//! The list+watch streams: a snapshot (or `UNCHANGED`), a new snapshot at every change of
//! the item, `HEARTBEAT`s in between.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use super::{Api, ApiBody, NDJSON, Permit};
use crate::store::{Key, Store};
pub(super) use crate::stream::ChannelBody;
use crate::wire::Event;

impl Api {
    /// Opens a watch stream; `permit`, the caller's place for it, is given back when the
    /// stream ends.
    pub(super) fn watch(
        &self,
        key: Key,
        version: Option<String>,
        permit: Permit,
    ) -> Response<ApiBody> {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let store = self.store.clone();
        let stop = self.stop.clone();
        let heartbeat = self.settings.heartbeat;
        let warm = self.started + self.settings.registry_warmup;
        let hold_until = (matches!(key, Key::Endpoints { .. })
            && version.is_some()
            && tokio::time::Instant::now() < warm)
            .then_some(warm);
        tokio::spawn(async move {
            stream(store, key, version, tx, stop, heartbeat, hold_until).await;
            drop(permit);
        });
        let mut rsp = Response::new(ChannelBody { rx }.boxed());
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(NDJSON),
        );
        rsp
    }
}

/// Feeds one watch stream until the client goes away or the server stops.
async fn stream(
    store: Arc<Store>,
    key: Key,
    mut held: Option<String>,
    tx: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
    heartbeat: Duration,
    mut hold_until: Option<tokio::time::Instant>,
) {
    let kind = key.kind();
    let metrics = store.metrics().clone();
    metrics.watch_active(kind).increment(1.0);
    let mut states = store.subscribe();
    let mut first = true;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        let state = states.borrow_and_update().clone();
        let rendered = state.render(&key);
        if hold_until.is_some_and(|t| tokio::time::Instant::now() >= t) {
            hold_until = None;
        }
        let line = if hold_until.is_some() && held.as_deref() != Some(rendered.version.as_str()) {
            // The registry is still warming up after a restart: the client keeps its list.
            None
        } else if held.as_deref() == Some(rendered.version.as_str()) {
            first.then(|| {
                event_line(&Event::<()>::Unchanged {
                    version: rendered.version.clone(),
                    revision: state.revision,
                })
            })
        } else {
            held = Some(rendered.version.clone());
            metrics.watch_event(kind).increment(1);
            Some(rendered.line.clone())
        };
        first = false;
        if let Some(line) = line
            && !send(&tx, line, &mut stop).await
        {
            break;
        }
        let warmed = async {
            match hold_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = states.changed() => if changed.is_err() { break },
            _ = warmed => {}
            _ = tick.tick() => {
                if !send(&tx, event_line(&Event::<()>::Heartbeat), &mut stop).await {
                    break;
                }
            }
            _ = tx.closed() => break,
            _ = stopped(&mut stop) => break,
        }
    }
    metrics.watch_active(kind).decrement(1.0);
}

/// Queues a line for the client; `false` when the client is gone or the server stops (a client
/// that stopped reading must not hold up shutdown).
pub(super) async fn send(
    tx: &mpsc::Sender<Bytes>,
    line: Bytes,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = tx.send(line) => sent.is_ok(),
        _ = stopped(stop) => false,
    }
}

pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn event_line<T: serde::Serialize>(e: &Event<T>) -> Bytes {
    crate::stream::json_line(e)
}
