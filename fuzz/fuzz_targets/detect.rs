//! Protocol detection on a fresh connection (`weft_proxy::detect`) and the header of an opaque
//! tunnel between proxies (`weft_proxy::tls::read_opaque_header`): the first bytes a peer or
//! a local application sends.
//!
//! Input: one control byte (bit 0: whether TLS is recognised; the rest: the read size), then
//! the bytes the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;
use weft_fuzz::{Chunked, block_on};
use weft_proxy::detect::{H2_PREFACE, Protocol, classify, detect};
use weft_proxy::tls::{opaque_header, read_opaque_header};

/// Detection reads at most this much before deciding (detect.rs `MAX_PEEK`).
const MAX_PEEK: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let want_tls = ctl & 1 == 1;
    let chunk = usize::from(ctl >> 1) % 70 + 1;
    classification(bytes, want_tls);
    detection(bytes, want_tls, chunk);
    opaque(bytes, chunk);
});

/// `classify` decides on what it was given: once a prefix decides, every longer prefix
/// decides the same (so how the bytes arrive cannot change the answer), and each answer is
/// backed by the bytes.
fn classification(bytes: &[u8], want_tls: bool) {
    let mut decided: Option<Protocol> = None;
    for k in 0..=bytes.len().min(MAX_PEEK + 8) {
        let p = classify(&bytes[..k], want_tls);
        if let Some(d) = decided {
            assert_eq!(p, Some(d), "{:?} then {:?} on more bytes", d, p);
        }
        match p {
            Some(Protocol::Tls) => assert!(want_tls && bytes[..k].starts_with(&[0x16, 3])),
            Some(Protocol::Http2) => assert!(bytes[..k].starts_with(H2_PREFACE)),
            Some(Protocol::Http1) => {
                let space = bytes[..k].iter().position(|&b| b == b' ');
                assert!(
                    space.is_some_and(|i| (1..=20).contains(&i)),
                    "{:?}",
                    &bytes[..k]
                );
            }
            Some(Protocol::Opaque) | None => {}
        }
        decided = decided.or(p);
    }
}

/// `detect` over a stream that hands its bytes out `chunk` at a time: its answer is what
/// `classify` says of the bytes it read (opaque when they do not decide within `MAX_PEEK` or
/// the stream ends), and the stream it returns replays every byte, once, in order.
fn detection(bytes: &[u8], want_tls: bool, chunk: usize) {
    let io = Chunked::new(bytes, chunk);
    let far = std::time::Duration::from_secs(3600);
    let result = block_on(detect(io, want_tls, far));
    let (protocol, mut io) = match result {
        Err(e) => {
            assert!(
                bytes.is_empty(),
                "detect failed on {} bytes: {e}",
                bytes.len()
            );
            return;
        }
        Ok(d) => d,
    };
    assert!(!bytes.is_empty());
    assert!(!io.timed_out());
    let read = io.inner().given;
    match classify(&bytes[..read], want_tls) {
        Some(p) => assert_eq!(protocol, p),
        None => {
            assert_eq!(protocol, Protocol::Opaque);
            assert!(
                read >= MAX_PEEK || read == bytes.len(),
                "stopped after {read} bytes"
            );
        }
    }
    let mut replayed = Vec::with_capacity(bytes.len());
    block_on(io.read_to_end(&mut replayed)).expect("reading a Chunked never fails");
    assert_eq!(
        replayed, bytes,
        "the detected stream does not replay the input"
    );
}

/// The opaque tunnel header: two bytes, the port; what follows is the tunnel's, untouched.
/// A stream shorter than the header is an error, never a port.
fn opaque(bytes: &[u8], chunk: usize) {
    let mut io = Chunked::new(bytes, chunk);
    let port = block_on(read_opaque_header(&mut io));
    match bytes {
        [a, b, rest @ ..] => {
            let port = port.expect("two bytes are a header");
            assert_eq!(port, u16::from_be_bytes([*a, *b]));
            assert_eq!(opaque_header(port), [*a, *b]);
            let mut tail = Vec::new();
            block_on(io.read_to_end(&mut tail)).expect("reading a Chunked never fails");
            assert_eq!(tail, rest);
        }
        _ => assert!(port.is_err(), "a port from {} bytes", bytes.len()),
    }
}
