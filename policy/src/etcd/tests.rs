//! Tests of [`super`] that need no etcd (those against a real cluster are in
//! `policy/tests/etcd.rs`).
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn store_urls_name_members() {
    assert_eq!(
        EtcdConfig::members("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap(),
        ["10.0.0.1:2379", "10.0.0.2:2379"]
    );
    assert_eq!(
        EtcdConfig::members("etcd://[::1]:2379/").unwrap(),
        ["[::1]:2379"]
    );
    for bad in [
        "dir:///var/lib/weft",
        "etcd://",
        "etcd://host",
        "etcd://:2379",
        "etcd://h:x",
    ] {
        assert!(EtcdConfig::members(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_prefix_ends_where_its_keys_end() {
    assert_eq!(prefix_end(b"/weft/"), b"/weft0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), b"\0");
}

#[test]
fn the_gateways_json_is_read_as_etcd_writes_it() {
    // Defaults left out, 64-bit integers as strings, bytes as base64.
    let range: RangeResponse = serde_json::from_str(
        r#"{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"},
            "kvs":[{"key":"L3dlZnQvYQ==","create_revision":"2","mod_revision":"5","version":"2","value":"aGVsbG8="}],"count":"1"}"#,
    )
    .unwrap();
    assert_eq!(range.header.revision, 7);
    assert_eq!(range.kvs[0].key, b"/weft/a");
    assert_eq!(range.kvs[0].value, b"hello");
    assert_eq!(range.kvs[0].mod_revision, 5);
    assert_eq!(range.kvs[0].lease, 0);
    let failed: TxnResponse = serde_json::from_str(r#"{"header":{"revision":"4"}}"#).unwrap();
    assert!(!failed.succeeded);
    let line: WatchLine = serde_json::from_str(
        r#"{"result":{"header":{"revision":"9"},"events":[{"kv":{"key":"YQ==","mod_revision":"9"}},{"type":"DELETE","kv":{"key":"Yg==","mod_revision":"9"}}]}}"#,
    )
    .unwrap();
    let events = line.result.unwrap().events;
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(events[1].kind, EventKind::Delete);
    assert_eq!(events[1].kv.key, b"b");
    let json = serde_json::to_value(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 42,
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"key": "aw==", "value": "dg==", "lease": "42"})
    );
}

#[test]
fn no_store_answering_is_unavailable_a_refusal_is_not() {
    let down = EtcdError::AllUnreachable("a: refused".into());
    assert!(down.is_unavailable());
    let no_leader = EtcdError::Server {
        member: "a".into(),
        code: 14,
        message: "etcdserver: no leader".into(),
    };
    assert!(no_leader.is_unavailable());
    let refused = EtcdError::Server {
        member: "a".into(),
        code: 3,
        message: "etcdserver: key is not provided".into(),
    };
    assert!(!refused.is_unavailable());
}
