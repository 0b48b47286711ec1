//! The discovery stream's server side (`POST /v1/discover`, [`crate::stream`]): the proxy's
//! commands read from the request body while events are written to the response body, both
//! for as long as the stream lasts. Each subscription holds one of the caller's watch places
//! ([`super::Limits`]), as a per-item watch does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use super::watches::{ChannelBody, send, stopped};
use super::{Api, ApiBody, BoxError, Caller, Held, Limits, NDJSON, Permit};
use crate::client::LineBuffer;
use crate::store::{Key, Rendered, State, Store};
use crate::stream::{Command, MAX_COMMAND, Sent, json_line};

/// One item a stream follows.
struct Sub {
    /// The version the client said it holds (resuming), until it is sent one.
    held: Option<String>,
    /// What it was last sent (or found to hold): what the next change is a delta from.
    sent: Option<Arc<Rendered>>,
    /// Whether anything was said of it yet.
    answered: bool,
    /// Subscribed with a version: a client resuming (held back while the registry warms up).
    resumed: bool,
    _place: Permit,
}

/// What a stream task needs of the API.
struct Stream {
    store: Arc<Store>,
    limits: Arc<Limits>,
    caller: Caller,
    tx: mpsc::Sender<Bytes>,
    stop: watch::Receiver<bool>,
    /// Until then (after a start, before workloads re-registered), a resumed endpoints
    /// subscription keeps the list it holds.
    warm_until: Option<tokio::time::Instant>,
    subs: HashMap<Key, Sub>,
}

impl Api {
    /// Opens a discovery stream for `caller`; `body` carries its commands.
    pub(super) fn discover<B>(&self, body: B, caller: Caller) -> Response<ApiBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let warm = self.started + self.settings.registry_warmup;
        let stream = Stream {
            store: self.store.clone(),
            limits: self.limits.clone(),
            caller,
            tx,
            stop: self.stop.clone(),
            warm_until: (tokio::time::Instant::now() < warm).then_some(warm),
            subs: HashMap::new(),
        };
        tokio::spawn(stream.run(Box::pin(body), self.settings.heartbeat));
        let mut rsp = Response::new(ChannelBody { rx }.boxed());
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(NDJSON),
        );
        rsp
    }
}

impl Stream {
    async fn run<B>(mut self, mut body: std::pin::Pin<Box<B>>, heartbeat: Duration)
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let metrics = self.store.metrics().clone();
        metrics.streams.increment(1.0);
        let mut states = self.store.subscribe();
        let mut lines = LineBuffer::default();
        let mut reading = true;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut stop = self.stop.clone();
        loop {
            let warmed = async {
                match self.warm_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let go_on = tokio::select! {
                frame = body.frame(), if reading => {
                    let data = match frame {
                        None => Ok(None),
                        Some(Err(_)) => Err(()),
                        Some(Ok(f)) => Ok(Some(f.into_data().unwrap_or_default())),
                    };
                    match data {
                        Err(()) => false,
                        // The client sends no more commands; what it follows is still sent.
                        Ok(None) => { reading = false; true }
                        Ok(Some(data)) => self.commands(&mut lines, data, &states).await,
                    }
                }
                changed = states.changed() => {
                    let state = states.borrow_and_update().clone();
                    changed.is_ok() && self.refresh(&state).await
                }
                _ = warmed => {
                    self.warm_until = None;
                    let state = states.borrow().clone();
                    self.refresh(&state).await
                }
                _ = tick.tick() => {
                    let beat = Bytes::from_static(b"{\"type\":\"HEARTBEAT\"}\n");
                    self.line(beat, Sent::Other).await
                }
                _ = self.tx.closed() => false,
                _ = stopped(&mut stop) => false,
            };
            if !go_on {
                break;
            }
        }
        for key in self.subs.keys() {
            metrics.watch_active(key.kind()).decrement(1.0);
        }
        metrics.streams.decrement(1.0);
    }

    /// Takes the commands in `data`; `false` when the stream must end.
    async fn commands(
        &mut self,
        lines: &mut LineBuffer,
        data: Bytes,
        states: &watch::Receiver<Arc<State>>,
    ) -> bool {
        lines.push(data);
        while let Some(line) = lines.next_line() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let command: Command = match serde_json::from_slice(&line) {
                Ok(c) => c,
                Err(e) => {
                    let message = format!(
                        "not a command ({{\"subscribe\": {{\"key\": ..., \"version\"?: ...}}}} or {{\"unsubscribe\": {{\"key\": ...}}}}): {e}"
                    );
                    if !self.refuse(None, "bad_command", message).await {
                        return false;
                    }
                    continue;
                }
            };
            let state = states.borrow().clone();
            let go_on = match command {
                Command::Subscribe { key, version } => self.subscribe(key, version, &state).await,
                Command::Unsubscribe { key } => {
                    if self.subs.remove(&key).is_some() {
                        self.store.metrics().watch_active(key.kind()).decrement(1.0);
                    }
                    true
                }
            };
            if !go_on {
                return false;
            }
        }
        if lines.pending() > MAX_COMMAND {
            let message = format!("a command is longer than {MAX_COMMAND} bytes");
            let _ = self.refuse(None, "bad_command", message).await;
            return false;
        }
        true
    }

    async fn subscribe(&mut self, key: Key, version: Option<String>, state: &State) -> bool {
        if let Some(sub) = self.subs.get_mut(&key) {
            // Subscribed again (the client's item failed its check): from what it says.
            sub.resumed = version.is_some();
            sub.held = version;
            sub.sent = None;
            sub.answered = false;
        } else {
            let place = match self.limits.acquire(&self.caller, Held::Watch) {
                Ok(p) => p,
                Err(refused) => {
                    self.store.metrics().refused(Held::Watch).increment(1);
                    let message = format!(
                        "{} has {} watches open, the most one client may have (--max-watches-per-identity of the control plane): unsubscribe some first",
                        self.caller, refused.limit
                    );
                    return self.refuse(Some(&key), "too_many_watches", message).await;
                }
            };
            self.store.metrics().watch_active(key.kind()).increment(1.0);
            self.subs.insert(
                key.clone(),
                Sub {
                    resumed: version.is_some(),
                    held: version,
                    sent: None,
                    answered: false,
                    _place: place,
                },
            );
        }
        self.update(&key, state).await
    }

    /// Sends every subscription's change in `state`.
    async fn refresh(&mut self, state: &State) -> bool {
        let keys: Vec<Key> = self.subs.keys().cloned().collect();
        for key in keys {
            if !self.update(&key, state).await {
                return false;
            }
        }
        true
    }

    /// Sends what the client needs of `key` to hold it as `state` has it.
    async fn update(&mut self, key: &Key, state: &State) -> bool {
        let warming = self.warm_until.is_some();
        let Some(sub) = self.subs.get_mut(key) else {
            return true;
        };
        let now = state.render(key);
        let holds = sub
            .sent
            .as_ref()
            .map(|r| r.version.as_str())
            .or(sub.held.as_deref());
        if holds == Some(now.version.as_str()) {
            let first = !sub.answered;
            sub.sent = Some(now.clone());
            sub.answered = true;
            if !first {
                return true;
            }
            let event = serde_json::json!({
                "type": "UNCHANGED",
                "key": key,
                "version": now.version,
                "revision": now.revision,
            });
            return self.line(json_line(&event), Sent::Other).await;
        } else if warming && sub.resumed && matches!(key, Key::Endpoints { .. }) {
            // After a start the registry is still filling: the client keeps its list.
            return true;
        }
        let (line, sent) = match &sub.sent {
            Some(before) => state.change_line(key, before, &now),
            None => (now.keyed_line(key), Sent::Snapshot),
        };
        sub.sent = Some(now);
        sub.answered = true;
        self.store.metrics().watch_event(key.kind()).increment(1);
        self.line(line, sent).await
    }

    async fn refuse(&mut self, key: Option<&Key>, error: &str, message: String) -> bool {
        let event = serde_json::json!({
            "type": "REFUSED",
            "key": key,
            "error": error,
            "message": message,
        });
        self.line(json_line(&event), Sent::Other).await
    }

    /// Queues a line (counted by what it is); `false` when the client is gone or the server
    /// stops.
    async fn line(&mut self, line: Bytes, sent: Sent) -> bool {
        let bytes = &self.store.metrics().stream_bytes;
        let counter = match sent {
            Sent::Snapshot => &bytes.snapshot,
            Sent::Delta => &bytes.delta,
            Sent::Other => &bytes.other,
        };
        counter.increment(line.len() as u64);
        send(&self.tx, line, &mut self.stop).await
    }
}
