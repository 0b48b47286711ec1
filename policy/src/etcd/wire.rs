//! The JSON of etcd's v3 gateway: the gRPC messages of `etcdserverpb` as protobuf's JSON
//! mapping writes them. Bytes are base64; 64-bit integers are strings (read as strings or
//! numbers); fields at their default value (0, false, empty) are left out of responses.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes as base64, both ways.
pub mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// An `int64` as protobuf's JSON writes it: a string (a number is taken too).
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer, V: Int64>(v: &V, s: S) -> Result<S::Ok, S::Error> {
        match v.value() {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    /// An `int64`, or an optional one (left out when `None`).
    pub trait Int64 {
        fn value(&self) -> Option<i64>;
    }

    impl Int64 for i64 {
        fn value(&self) -> Option<i64> {
            Some(*self)
        }
    }

    impl Int64 for Option<i64> {
        fn value(&self) -> Option<i64> {
            *self
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            Text(String),
            Number(i64),
        }
        match Int::deserialize(d)? {
            Int::Number(n) => Ok(n),
            Int::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Every response's header: the store's revision when it was answered.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, with = "int64")]
    pub revision: i64,
}

/// A key and its value as the store holds them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct KeyValue {
    #[serde(default, with = "b64")]
    pub key: Vec<u8>,
    #[serde(default, with = "b64")]
    pub value: Vec<u8>,
    #[serde(default, with = "int64")]
    pub create_revision: i64,
    #[serde(default, with = "int64")]
    pub mod_revision: i64,
    #[serde(default, with = "int64")]
    pub lease: i64,
}

#[derive(Debug, Serialize)]
pub struct RangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    /// Served by the member asked, from what it has, without a quorum.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub serializable: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
pub struct PutRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

#[derive(Debug, Serialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
}

/// One operation of a transaction.
#[derive(Debug, Serialize)]
pub enum RequestOp {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    Delete(DeleteRangeRequest),
}

/// A condition of a transaction: a key's `mod_revision` (0: the key does not exist), or the
/// lease it is attached to; or the `mod_revision` of every key of a range.
#[derive(Debug, Serialize)]
pub struct Compare {
    /// `EQUAL` or `LESS`.
    pub result: &'static str,
    /// `MOD` or `LEASE`.
    pub target: &'static str,
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    #[serde(with = "int64", skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

impl Compare {
    /// `key` was last modified at `revision` (0: it does not exist).
    pub fn modified_at(key: Vec<u8>, revision: i64) -> Self {
        Self {
            result: "EQUAL",
            target: "MOD",
            key,
            range_end: Vec::new(),
            mod_revision: Some(revision),
            lease: None,
        }
    }

    /// No key under `prefix` was modified after `revision` (etcd compares every key of the
    /// range; an empty range holds).
    pub fn prefix_unchanged_since(prefix: &[u8], revision: i64) -> Self {
        Self {
            result: "LESS",
            target: "MOD",
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            mod_revision: Some(revision.saturating_add(1)),
            lease: None,
        }
    }

    /// `key` is attached to `lease`.
    pub fn leased_by(key: Vec<u8>, lease: i64) -> Self {
        Self {
            result: "EQUAL",
            target: "LEASE",
            key,
            range_end: Vec::new(),
            mod_revision: None,
            lease: Some(lease),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct WriteResponse {
    #[serde(default)]
    pub header: Header,
}

#[derive(Debug, Serialize)]
pub struct LeaseGrantRequest {
    #[serde(rename = "TTL", with = "int64")]
    pub ttl: i64,
}

#[derive(Debug, Default, Deserialize)]
pub struct LeaseGrantResponse {
    #[serde(rename = "ID", default, with = "int64")]
    pub id: i64,
    #[serde(rename = "TTL", default, with = "int64")]
    pub ttl: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct LeaseIdRequest {
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
}

/// The keep-alive stream's one answer: a `TTL` of 0 (left out) means the lease is gone.
#[derive(Debug, Default, Deserialize)]
pub struct LeaseKeepAliveResponse {
    #[serde(rename = "TTL", default, with = "int64")]
    pub ttl: i64,
}

#[derive(Debug, Serialize)]
pub struct WatchCreate {
    #[serde(with = "b64")]
    pub key: Vec<u8>,
    #[serde(with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub start_revision: i64,
    /// A progress notification (an empty batch with the current revision) now and then, so
    /// a quiet watch is told the revision it is at.
    pub progress_notify: bool,
}

#[derive(Debug, Serialize)]
pub struct WatchRequest {
    pub create_request: WatchCreate,
}

/// One line of the watch stream.
#[derive(Debug, Deserialize)]
pub struct WatchLine {
    #[serde(default)]
    pub result: Option<WatchResponse>,
    #[serde(default)]
    pub error: Option<GatewayError>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `PUT` (left out: the default) or `DELETE`.
    #[serde(rename = "type", default)]
    pub kind: EventKind,
    #[serde(default)]
    pub kv: KeyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum EventKind {
    #[default]
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "DELETE")]
    Delete,
}

/// An error the gateway answers with (a gRPC status).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GatewayError {
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
}

impl GatewayError {
    pub fn text(&self) -> &str {
        if self.message.is_empty() {
            &self.error
        } else {
            &self.message
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StatusResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default, with = "int64")]
    pub leader: i64,
    #[serde(default)]
    pub errors: Vec<String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The end of the range of every key that starts with `prefix` (etcd's `range_end`: the
/// prefix with its last byte incremented, carrying over 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: the range end `\0`.
    vec![0]
}
