//! The discovery stream (`POST /v1/discover`): one HTTP/2 stream per proxy carries every item
//! it follows. The request body is the proxy's [`Command`]s, one JSON line each (subscribe to
//! an item, with the version it holds when it resumes; unsubscribe); the response body is the
//! control plane's events, one JSON line each, every one naming its item's [`Key`]:
//!
//! - `SNAPSHOT`: the whole item (`item`), at `version`;
//! - `UNCHANGED`: the version the proxy resumed with is current;
//! - `DELTA` (endpoints only): what changed since `base`, the version the proxy holds: the
//!   endpoints added or changed (`upsert`), the addresses removed (`remove`), and the
//!   service's small fields (`ports`, `opaque_ports`, `unknown`) as they are now. A change to
//!   one of a service's thousands of endpoints sends one endpoint. The proxy applies it to
//!   the version it holds (`base` must be that version), and checks the count of endpoints it
//!   ends with (`count`); otherwise it subscribes again without a version and gets a
//!   snapshot. (Hashing the whole result to check `version` would cost each proxy the
//!   serialization of every endpoint per change);
//! - `REFUSED`: the subscription is not taken (`error`, `message`: e.g. too many);
//! - `HEARTBEAT` while nothing changes.
//!
//! A proxy that reconnects (to the same replica or another) subscribes again to everything
//! it holds, each with its version: what did not change is answered `UNCHANGED`, so a
//! replica's restart costs its proxies a line per item, not a resync.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::{Endpoint, ServiceEndpoints};
use crate::store::Key;
use crate::wire::fnv1a;

/// The API path of the stream.
pub const DISCOVER_PATH: &str = "/v1/discover";
/// The longest command line taken.
pub const MAX_COMMAND: usize = 4096;

/// What a proxy asks on its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Subscribe {
        key: Key,
        /// The version held (resuming): answered `UNCHANGED` when still current.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    Unsubscribe {
        key: Key,
    },
}

impl Command {
    /// The command as one line of the request body.
    pub fn line(&self) -> bytes::Bytes {
        json_line(self)
    }
}

/// `value` as one line of a newline-delimited JSON stream (commands, events), `\n` included.
pub(crate) fn json_line<T: Serialize + ?Sized>(value: &T) -> bytes::Bytes {
    let mut v = serde_json::to_vec(value).unwrap_or_default();
    v.push(b'\n');
    bytes::Bytes::from(v)
}

/// What a line sent on a stream carries (how its bytes are counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Snapshot,
    Delta,
    Other,
}

/// The change of a service's endpoints from one version to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsDelta {
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
    /// Endpoints new or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<Endpoint>,
    /// Addresses no longer endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<SocketAddr>,
    /// How many endpoints there are after the change (a check of the result).
    pub count: usize,
}

/// What changed from `old` to `new`.
pub fn diff(old: &ServiceEndpoints, new: &ServiceEndpoints) -> EndpointsDelta {
    let before: BTreeMap<SocketAddr, &Endpoint> =
        old.endpoints.iter().map(|e| (e.address, &**e)).collect();
    let after: BTreeMap<SocketAddr, &Endpoint> =
        new.endpoints.iter().map(|e| (e.address, &**e)).collect();
    EndpointsDelta {
        ports: new.ports.clone(),
        opaque_ports: new.opaque_ports.clone(),
        unknown: new.unknown,
        upsert: new
            .endpoints
            .iter()
            .filter(|e| before.get(&e.address) != Some(&&***e))
            .map(|e| (**e).clone())
            .collect(),
        remove: old
            .endpoints
            .iter()
            .map(|e| e.address)
            .filter(|a| !after.contains_key(a))
            .collect(),
        count: new.endpoints.len(),
    }
}

/// `old` with `delta` applied: endpoints stay sorted by address, as the control plane sorts
/// them, so the result is the control plane's own. One pass over `old` (both lists are sorted
/// by address), each unchanged endpoint shared, not copied.
pub fn apply(old: &ServiceEndpoints, delta: EndpointsDelta) -> ServiceEndpoints {
    let removed: std::collections::BTreeSet<SocketAddr> = delta.remove.into_iter().collect();
    let mut upsert = delta.upsert;
    upsert.sort_by_key(|e| e.address);
    let replaced: std::collections::BTreeSet<SocketAddr> =
        upsert.iter().map(|e| e.address).collect();
    let mut endpoints = Vec::with_capacity(old.endpoints.len() + upsert.len());
    let mut new = upsert.into_iter().peekable();
    for e in old
        .endpoints
        .iter()
        .filter(|e| !removed.contains(&e.address) && !replaced.contains(&e.address))
    {
        while let Some(n) = new.next_if(|n| n.address < e.address) {
            endpoints.push(Arc::new(n));
        }
        endpoints.push(e.clone());
    }
    endpoints.extend(new.map(Arc::new));
    ServiceEndpoints {
        namespace: old.namespace.clone(),
        service: old.service.clone(),
        ports: delta.ports,
        opaque_ports: delta.opaque_ports,
        endpoints,
        unknown: delta.unknown,
    }
}

/// The version of an item: the hash of its JSON, as the control plane computes it.
pub fn version_of<T: Serialize>(item: &T) -> String {
    let json = serde_json::to_vec(item).unwrap_or_default();
    format!("{:016x}", fnv1a(&json))
}

/// An event as read by the proxy: the item, or the delta, left as raw JSON until its key
/// says what it is. (Not an internally tagged enum: serde buffers those, which loses
/// serde_json's integer map keys.)
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub key: Option<Key>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub base: Option<String>,
    #[serde(default, borrow)]
    pub item: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    pub delta: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A body fed by a channel: the events of a stream (server), or its commands (client).
pub(crate) struct ChannelBody {
    pub(crate) rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::EndpointSource;

    fn ep(port: u16, version: &str) -> Endpoint {
        Endpoint {
            address: SocketAddr::from(([10, 0, 0, 1], port)),
            identity: None,
            labels: BTreeMap::from([("version".to_string(), version.to_string())]),
            source: EndpointSource::Registered,
        }
    }

    fn service(endpoints: Vec<Endpoint>) -> ServiceEndpoints {
        ServiceEndpoints {
            namespace: "default".into(),
            service: "api".into(),
            ports: vec![8080],
            opaque_ports: vec![],
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            unknown: false,
        }
    }

    #[test]
    fn one_changed_endpoint_of_thousands_is_one_endpoint_in_the_delta() {
        let old = service((1..=5000).map(|p| ep(p, "v1")).collect());
        let mut new = old.clone();
        new.endpoints[2000] = Arc::new(ep(2001, "v2"));
        new.endpoints.remove(10);
        let delta = diff(&old, &new);
        assert_eq!(delta.upsert, vec![ep(2001, "v2")]);
        assert_eq!(delta.remove, vec![SocketAddr::from(([10, 0, 0, 1], 11))]);
        let line = serde_json::to_vec(&delta).unwrap();
        assert!(line.len() < 300, "{} bytes", line.len());
        let applied = apply(&old, delta);
        assert_eq!(applied, new);
        assert_eq!(version_of(&applied), version_of(&new));
    }

    #[test]
    fn an_added_endpoint_lands_in_address_order() {
        let old = service(vec![ep(1, "a"), ep(3, "a")]);
        let new = service(vec![ep(1, "a"), ep(2, "a"), ep(3, "a")]);
        let applied = apply(&old, diff(&old, &new));
        assert_eq!(applied, new);
    }

    #[test]
    fn commands_read_as_written() {
        let c = Command::Subscribe {
            key: Key::Address {
                ip: "10.0.0.1".parse().unwrap(),
            },
            version: Some("abc".into()),
        };
        let line = c.line();
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"subscribe\":{\"key\":{\"kind\":\"address\",\"ip\":\"10.0.0.1\"},\"version\":\"abc\"}}\n"
        );
        let back: Command = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, c);
    }
}
