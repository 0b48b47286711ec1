//! Items rendered for the wire, once per state: the JSON of each, its version, the lines of
//! the per-item watches and of the discovery stream, and the endpoint deltas between
//! versions (made once for every client holding the same version).

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::{Key, State};
use crate::registry::ServiceEndpoints;
use crate::stream::Sent;
use crate::wire::fnv1a;

/// An item rendered for the wire.
#[derive(Debug)]
pub struct Rendered {
    /// Hash of the item's JSON, hex.
    pub version: String,
    /// The `SNAPSHOT` event line of a per-item watch, newline included.
    pub line: Bytes,
    /// The item's JSON (a slice of `line`).
    pub json: Bytes,
    /// The state's revision.
    pub revision: u64,
    /// The item itself, for endpoints (what deltas are computed from).
    pub endpoints: Option<Arc<ServiceEndpoints>>,
    /// The `SNAPSHOT` line of the discovery stream, made on first use.
    keyed: std::sync::OnceLock<Bytes>,
}

impl Rendered {
    /// The `SNAPSHOT` line of the discovery stream for `key` (this item's key).
    pub fn keyed_line(&self, key: &Key) -> Bytes {
        self.keyed
            .get_or_init(|| {
                let key = serde_json::to_string(key).unwrap_or_default();
                let mut line = Vec::with_capacity(self.json.len() + key.len() + 80);
                line.extend_from_slice(
                    format!(
                        "{{\"type\":\"SNAPSHOT\",\"key\":{key},\"version\":\"{}\",\"revision\":{},\"item\":",
                        self.version, self.revision
                    )
                    .as_bytes(),
                );
                line.extend_from_slice(&self.json);
                line.extend_from_slice(b"}\n");
                Bytes::from(line)
            })
            .clone()
    }
}

/// The most deltas one state keeps made (each is made once, for every client that holds the
/// same version of the same item).
const MAX_DELTAS: usize = 4096;

impl State {
    pub(super) fn rendered<T: Serialize>(&self, item: &T) -> Rendered {
        let json = serde_json::to_vec(item).unwrap_or_else(|_| b"null".to_vec());
        let version = format!("{:016x}", fnv1a(&json));
        // The `Event::Snapshot` encoding, written directly so the item is serialized once.
        let mut line = Vec::with_capacity(json.len() + 80);
        line.extend_from_slice(
            format!(
                "{{\"type\":\"SNAPSHOT\",\"version\":\"{version}\",\"revision\":{},\"item\":",
                self.revision
            )
            .as_bytes(),
        );
        let start = line.len();
        line.extend_from_slice(&json);
        let end = line.len();
        line.extend_from_slice(b"}\n");
        let line = Bytes::from(line);
        Rendered {
            version,
            json: line.slice(start..end),
            line,
            revision: self.revision,
            endpoints: None,
            keyed: std::sync::OnceLock::new(),
        }
    }

    /// The discovery stream's line that takes a client holding `from` to `to` (both of
    /// `key`): a `DELTA` for endpoints, made once per state for every client holding the
    /// same version; a `SNAPSHOT` otherwise.
    pub fn change_line(&self, key: &Key, from: &Rendered, to: &Rendered) -> (Bytes, Sent) {
        let (Some(old), Some(new)) = (&from.endpoints, &to.endpoints) else {
            return (to.keyed_line(key), Sent::Snapshot);
        };
        let memo_key = (key.clone(), from.version.clone());
        let cell = {
            let mut deltas = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
            match deltas.get(&memo_key) {
                Some(cell) => Some(cell.clone()),
                None if deltas.len() < MAX_DELTAS => {
                    Some(deltas.entry(memo_key).or_default().clone())
                }
                None => None,
            }
        };
        let make = || {
            let delta = crate::stream::diff(old, new);
            let line = serde_json::json!({
                "type": "DELTA",
                "key": key,
                "base": from.version,
                "version": to.version,
                "revision": to.revision,
                "delta": delta,
            });
            let bytes = crate::stream::json_line(&line);
            // A delta larger than the snapshot is not worth it.
            if bytes.len() >= to.json.len() {
                return (to.keyed_line(key), Sent::Snapshot);
            }
            (bytes, Sent::Delta)
        };
        match cell {
            Some(cell) => cell.get_or_init(make).clone(),
            None => make(),
        }
    }
}
