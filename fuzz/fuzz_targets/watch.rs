//! The proxy's decoder of watch streams (`weft_policy::client::{LineBuffer, decode_event}`):
//! what a control plane sends, in whatever frames it arrives.
//!
//! Input: one control byte (bits 0-1: the item type; the rest: frame sizes), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_policy::authz::WorkloadPolicy;
use weft_policy::client::{LineBuffer, decode_event};
use weft_policy::registry::{AddressInfo, ServiceEndpoints};
use weft_policy::routes::ServiceRoutes;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    match ctl & 3 {
        0 => follow::<ServiceEndpoints>(ctl, stream),
        1 => follow::<WorkloadPolicy>(ctl, stream),
        2 => follow::<ServiceRoutes>(ctl, stream),
        _ => follow::<AddressInfo>(ctl, stream),
    }
});

/// Decodes `stream` as the client does, in frames of sizes taken from `ctl`, and checks it
/// against the same stream in one frame.
fn follow<T>(ctl: u8, stream: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let sizes = [ctl >> 2, ctl >> 4, 1, ctl];
    let framed = lines(weft_fuzz::pieces(stream, &sizes));
    let whole = lines(vec![stream]);
    // Framing never changes the lines: every `\n`-ended piece, in order, without its `\n`.
    assert_eq!(framed, whole);
    let expected: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    assert_eq!(framed.len(), expected.len() - 1);
    for (line, exp) in framed.iter().zip(&expected) {
        assert_eq!(line.as_slice(), *exp);
    }
    for line in &framed {
        match decode_event::<T>(line) {
            // The client drops the stream at the first bad line.
            Err(_) => return,
            Ok(None) => {}
            Ok(Some((version, item))) => round_trip(&version, &item),
        }
    }
}

fn lines(frames: Vec<&[u8]>) -> Vec<Vec<u8>> {
    let mut buf = LineBuffer::default();
    let mut out = Vec::new();
    for f in frames {
        buf.push(f);
        assert!(!buf.over_limit(), "a fuzz input is far below the limit");
        while let Some(line) = buf.next_line() {
            out.push(line);
        }
    }
    out
}

/// An item the client accepted, sent again as the control plane would send it (its
/// `Serialize` in a snapshot event), decodes to the same item.
fn round_trip<T>(version: &str, item: &T)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let line = serde_json::to_vec(&serde_json::json!({
        "type": "SNAPSHOT",
        "version": version,
        "revision": 1,
        "item": item,
    }))
    .expect("an accepted item serializes");
    let again = decode_event::<T>(&line).expect("a re-sent item decodes");
    let (v, back) = again.expect("a snapshot");
    assert_eq!(v, version);
    assert_eq!(&back, item, "{}", String::from_utf8_lossy(&line));
}
