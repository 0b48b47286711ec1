//! The client's side of the discovery stream ([`crate::stream`]): every watched item of a
//! [`super::PolicyClient`] is a subscription on its one stream.
//!
//! - Each item is an entry ([`Discovery::entries`]) holding the `watch` sender its receivers
//!   read and the version it holds. Watching an item already followed shares its entry; when
//!   an item's last receiver is dropped, it is unsubscribed (a proxy's destination cache drops
//!   the destinations it has not used for a while, so what it follows stays bounded).
//! - One task (started with the first watch) keeps the stream open: it connects (to the
//!   replica it was on if it can, else the next), subscribes again to every entry with the
//!   version it holds, so whatever did not change meanwhile is answered `UNCHANGED`, and then
//!   passes on new subscriptions and applies what arrives: snapshots, and endpoint deltas
//!   (applied only to the version they start from, and checked by the count of endpoints
//!   they lead to; a mismatch asks for a snapshot).
//! - A subscription the control plane refuses (the caller holds its cap of watches) is asked
//!   for again after a back-off, while it is still wanted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use weft_identity::client::Backoff;

use super::{ClientError, Inner, LineBuffer, MAX_LINE, Watched, rejected};
use crate::authz::WorkloadPolicy;
use crate::registry::{AddressInfo, ServiceEndpoints};
use crate::routes::ServiceRoutes;
use crate::store::Key;
use crate::stream::{ChannelBody, Command, DISCOVER_PATH, EndpointsDelta, Incoming};

pub(super) type Sender<T> = Arc<watch::Sender<Option<Arc<T>>>>;

/// Where one item's states go.
#[derive(Clone)]
pub(super) enum Slot {
    Endpoints(Sender<ServiceEndpoints>),
    Inbound(Sender<WorkloadPolicy>),
    Routes(Sender<ServiceRoutes>),
    Address(Sender<AddressInfo>),
}

struct Entry {
    slot: Slot,
    /// The version held: sent when subscribing again.
    version: Option<String>,
}

/// Every followed item, and the way to the stream's task.
#[derive(Debug)]
pub(super) struct Discovery {
    entries: Mutex<HashMap<Key, Entry>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by the stream's task when it starts (with the first watch).
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    pub(super) fn new() -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        Self {
            entries: Mutex::new(HashMap::new()),
            commands,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The item kinds, each with its slot.
pub(super) trait Item: DeserializeOwned + Send + Sync + 'static {
    fn slot(tx: &Sender<Self>) -> Slot;
    fn sender(slot: &Slot) -> Option<&Sender<Self>>;
}

macro_rules! item {
    ($t:ty, $variant:ident) => {
        impl Item for $t {
            fn slot(tx: &Sender<Self>) -> Slot {
                Slot::$variant(tx.clone())
            }
            fn sender(slot: &Slot) -> Option<&Sender<Self>> {
                match slot {
                    Slot::$variant(tx) => Some(tx),
                    _ => None,
                }
            }
        }
    };
}

item!(ServiceEndpoints, Endpoints);
item!(WorkloadPolicy, Inbound);
item!(ServiceRoutes, Routes);
item!(AddressInfo, Address);

/// Follows `key`: its entry's receiver, the entry made (and subscribed) if new.
pub(super) fn watch<T: Item>(inner: &Arc<Inner>, key: Key) -> Watched<T> {
    let discovery = &inner.discovery;
    if let Some(rx) = discovery
        .entries()
        .get(&key)
        .and_then(|e| T::sender(&e.slot))
        .map(|tx| tx.subscribe())
    {
        return rx;
    }
    let tx: Sender<T> = Arc::new(watch::channel(None).0);
    let rx = tx.subscribe();
    discovery.entries().insert(
        key.clone(),
        Entry {
            slot: T::slot(&tx),
            version: None,
        },
    );
    let _ = discovery.commands.send(Command::Subscribe {
        key: key.clone(),
        version: None,
    });
    if let Some(commands) = discovery
        .receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        tokio::spawn(run(Arc::downgrade(inner), commands));
    }
    tokio::spawn(release(inner.clone(), key, tx));
    rx
}

/// Unsubscribes `key` once nobody reads it. Until then the client lives on (its stream's task
/// holds it only weakly), also when every handle of it was dropped.
async fn release<T: Item>(inner: Arc<Inner>, key: Key, tx: Sender<T>) {
    loop {
        tx.closed().await;
        let mut entries = inner.discovery.entries();
        // Watched again meanwhile: go on.
        if tx.receiver_count() > 0 {
            continue;
        }
        let ours = entries
            .get(&key)
            .and_then(|e| T::sender(&e.slot))
            .is_some_and(|t| Arc::ptr_eq(t, &tx));
        if ours {
            entries.remove(&key);
            let _ = inner
                .discovery
                .commands
                .send(Command::Unsubscribe { key: key.clone() });
        }
        return;
    }
}

/// The stream's task: connects, subscribes, applies, and starts again whenever the stream
/// breaks, until the client is dropped.
async fn run(inner: Weak<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut failures = 0u32;
    let mut backoff = None::<Backoff>;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let s = &strong.settings;
        let backoff = backoff.get_or_insert_with(|| Backoff::new(s.min_backoff, s.max_backoff));
        let mut moved = strong.moved.subscribe();
        moved.borrow_and_update();
        drop(strong);
        let result = session(&inner, &mut commands, &mut moved, backoff, &mut failures).await;
        let e = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        failures += 1;
        if failures == 1 {
            tracing::warn!(error = %e, "control plane stream interrupted; keeping the last state and reconnecting");
        } else {
            tracing::debug!(error = %e, failures, "control plane stream still down");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One stream, until it breaks (`Err`) or the client is dropped (`Ok`).
async fn session(
    weak: &Weak<Inner>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    moved: &mut watch::Receiver<u64>,
    backoff: &mut Backoff,
    failures: &mut u32,
) -> Result<(), ClientError> {
    let Some(inner) = weak.upgrade() else {
        return Ok(());
    };
    let mut sender = inner.sender().await?;
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(256);
    // What the entries say is all there is to subscribe to: queued commands are stale.
    while commands.try_recv().is_ok() {}
    let resubscribe: Vec<Command> = inner
        .discovery
        .entries()
        .iter()
        .map(|(key, e)| Command::Subscribe {
            key: key.clone(),
            version: e.version.clone(),
        })
        .collect();
    let mut queued = resubscribe.into_iter().map(|c| c.line()).peekable();
    let body = ChannelBody { rx: body_rx }.boxed();
    let req = Request::builder()
        .method(Method::POST)
        .uri(inner.uri(DISCOVER_PATH))
        .header(http::header::CONTENT_TYPE, crate::api::NDJSON)
        .body(body)
        .map_err(|e| ClientError::Decode(e.to_string()))?;
    let timeout = inner.settings.request_timeout;
    let idle = inner.settings.idle_timeout;
    drop(inner);
    let rsp = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    let status = rsp.status();
    let mut rsp_body = rsp.into_body();
    if !status.is_success() {
        let bytes = tokio::time::timeout(timeout, rsp_body.collect())
            .await
            .map_err(|_| ClientError::Timeout(timeout))??
            .to_bytes();
        return Err(rejected(status, &bytes));
    }
    let mut lines = LineBuffer::default();
    loop {
        // Subscriptions of the entries first (they fill the body's channel at most).
        while let Some(line) = queued.peek() {
            match body_tx.try_send(line.clone()) {
                Ok(()) => {
                    queued.next();
                }
                Err(_) => break,
            }
        }
        let waiting = queued.peek().cloned();
        tokio::select! {
            sent = async { body_tx.send(waiting.clone().unwrap_or_default()).await }, if waiting.is_some() => {
                sent.map_err(|_| ClientError::Ended)?;
                queued.next();
            }
            command = commands.recv(), if waiting.is_none() => match command {
                None => return Ok(()),
                Some(c) => body_tx.send(c.line()).await.map_err(|_| ClientError::Ended)?,
            },
            frame = tokio::time::timeout(idle, rsp_body.frame()) => {
                let frame = match frame {
                    Err(_) => return Err(ClientError::Timeout(idle)),
                    Ok(None) => return Err(ClientError::Ended),
                    Ok(Some(f)) => f?,
                };
                let Ok(data) = frame.into_data() else { continue };
                lines.push(data);
                if lines.over_limit() {
                    return Err(ClientError::Decode(format!("{DISCOVER_PATH}: an event is larger than {MAX_LINE} bytes")));
                }
                let Some(inner) = weak.upgrade() else { return Ok(()) };
                while let Some(line) = lines.next_line() {
                    let again = take(&inner, &line)?;
                    if let Some(key) = again {
                        let resubscribe = Command::Subscribe { key, version: None };
                        body_tx.send(resubscribe.line()).await.map_err(|_| ClientError::Ended)?;
                    }
                    if *failures > 0 {
                        tracing::info!("control plane stream resumed");
                        *failures = 0;
                    }
                    backoff.reset();
                }
            }
            // The certificate was renewed: a new connection, which presents it.
            _ = moved.changed() => return Err(ClientError::Ended),
        }
    }
}

/// Applies one event; the key to subscribe to again (for a snapshot) when a delta does not
/// lead where it says.
fn take(inner: &Arc<Inner>, line: &[u8]) -> Result<Option<Key>, ClientError> {
    let event: Incoming<'_> = serde_json::from_slice(line)
        .map_err(|e| ClientError::Decode(format!("{DISCOVER_PATH}: {e}")))?;
    let Some(key) = event.key else {
        if event.kind == "REFUSED" {
            return Err(ClientError::Decode(format!(
                "the control plane refused the stream: {}",
                event.message.unwrap_or_default()
            )));
        }
        return Ok(None);
    };
    let discovery = &inner.discovery;
    let mut entries = discovery.entries();
    let Some(entry) = entries.get_mut(&key) else {
        return Ok(None); // Unsubscribed meanwhile.
    };
    let decode =
        |e: serde_json::Error| ClientError::Decode(format!("{DISCOVER_PATH} ({key:?}): {e}"));
    match event.kind.as_str() {
        "SNAPSHOT" => {
            let item = event.item.map(|r| r.get()).unwrap_or("null");
            match &entry.slot {
                Slot::Endpoints(tx) => put(tx, item).map_err(decode)?,
                Slot::Inbound(tx) => put(tx, item).map_err(decode)?,
                Slot::Routes(tx) => put(tx, item).map_err(decode)?,
                Slot::Address(tx) => put(tx, item).map_err(decode)?,
            }
            entry.version = event.version;
        }
        "UNCHANGED" => entry.version = event.version.or(entry.version.take()),
        "DELTA" => {
            let Slot::Endpoints(tx) = &entry.slot else {
                return Ok(Some(key));
            };
            let delta: EndpointsDelta =
                serde_json::from_str(event.delta.map(|r| r.get()).unwrap_or("null"))
                    .map_err(decode)?;
            let current = tx.borrow().clone();
            let applied = match current {
                Some(old) if event.base.is_some() && event.base == entry.version => {
                    let count = delta.count;
                    let new = crate::stream::apply(&old, delta);
                    (new.endpoints.len() == count).then_some(new)
                }
                _ => None,
            };
            match applied {
                Some(new) => {
                    tx.send_replace(Some(Arc::new(new)));
                    entry.version = event.version;
                }
                None => {
                    tracing::debug!(
                        ?key,
                        "an endpoints delta does not apply to what is held: asking for a snapshot"
                    );
                    entry.version = None;
                    return Ok(Some(key));
                }
            }
        }
        "REFUSED" => {
            tracing::warn!(?key, error = ?event.error, message = ?event.message, "the control plane refused a subscription; asking again later");
            let commands = discovery.commands.clone();
            let delay = inner
                .settings
                .max_backoff
                .mul_f64(0.5 + fastrand::f64() * 0.5);
            let weak = Arc::downgrade(inner);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let wanted = weak
                    .upgrade()
                    .is_some_and(|i| i.discovery.entries().contains_key(&key));
                if wanted {
                    let _ = commands.send(Command::Subscribe { key, version: None });
                }
            });
        }
        _ => {}
    }
    Ok(None)
}

fn put<T: DeserializeOwned>(
    tx: &watch::Sender<Option<Arc<T>>>,
    item: &str,
) -> Result<(), serde_json::Error> {
    let item: T = serde_json::from_str(item)?;
    tx.send_replace(Some(Arc::new(item)));
    Ok(())
}
