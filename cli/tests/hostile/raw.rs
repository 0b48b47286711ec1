//! Bytes by hand: raw HTTP/1 exchanges and HTTP/2 frames, for messages no well-behaved client
//! library would send (the `h2` crate cannot send a malformed sequence).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes `bytes` and reads what comes back until the peer closes or `limit` runs out (at
/// most 1 MiB): the text (invalid UTF-8 replaced), and whether the peer closed.
pub async fn exchange<S>(mut io: S, bytes: &[u8], limit: Duration) -> (String, bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A server may answer and close before it has read everything: read what it said anyway.
    if io.write_all(bytes).await.is_ok() {
        let _ = io.flush().await;
    }
    read_until_closed(&mut io, limit).await
}

/// Reads until the peer closes (or fails) or `limit` runs out: the text, whether it closed.
pub async fn read_until_closed<S: AsyncRead + Unpin>(
    io: &mut S,
    limit: Duration,
) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) if out.len() < 1 << 20 => out.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status of the first response in `text` (0 when there is none).
pub fn status(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of header `name` in the first response in `text`, lowercased.
pub fn header(text: &str, name: &str) -> Option<String> {
    let head = text.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name)
            .then(|| v.trim().to_ascii_lowercase())
    })
}

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// One HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK string literal (no Huffman).
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A header field, literal without indexing, new name.
pub fn hpack_field(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    hpack_str(&mut out, name.as_bytes());
    hpack_str(&mut out, value);
    out
}

/// The header block of `GET http://<authority><path>`.
pub fn request_block(authority: &str, path: &str) -> Vec<u8> {
    // :method GET (static index 2), :scheme http (6).
    let mut out = vec![0x82, 0x86];
    // :path and :authority: literal without indexing, names from the static table (4, 1).
    hpack_int(&mut out, 0, 4, 4);
    hpack_str(&mut out, path.as_bytes());
    hpack_int(&mut out, 0, 4, 1);
    hpack_str(&mut out, authority.as_bytes());
    out
}

/// What a server did about a flood of frames.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bytes of frames the server took before it stopped reading (or the flood ended).
    pub sent: usize,
    /// The error code of the server's GOAWAY, if it sent one.
    pub goaway: Option<u32>,
    /// The server closed the connection.
    pub closed: bool,
    /// Streams the server reset, and response header blocks it sent.
    pub resets: u64,
    pub responses: u64,
    pub took: Duration,
}

/// Sends the preface, empty SETTINGS and its ACK, then `frames` (in order, as fast as the
/// server takes them) while reading every frame the server sends, until the server sends
/// GOAWAY and closes, or `limit` runs out.
pub async fn flood<S>(
    io: S,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
    limit: Duration,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(io);
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let writer = tokio::spawn(async move {
        let mut batch = PREFACE.to_vec();
        batch.extend(frame(SETTINGS, 0, 0, &[]));
        batch.extend(frame(SETTINGS, ACK, 0, &[]));
        for f in frames {
            batch.extend(f);
            if batch.len() >= 64 * 1024 {
                if wr.write_all(&batch).await.is_err() {
                    return;
                }
                counted.fetch_add(batch.len(), Ordering::Relaxed);
                batch.clear();
            }
        }
        if wr.write_all(&batch).await.is_ok() {
            counted.fetch_add(batch.len(), Ordering::Relaxed);
        }
        let _ = wr.flush().await;
        // Keep the write half open: the server decides when the connection ends.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let mut out = Outcome::default();
    let deadline = tokio::time::Instant::now() + limit;
    let mut head = [0u8; 9];
    loop {
        match tokio::time::timeout_at(deadline, rd.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                out.closed = true;
                break;
            }
            Err(_) => break,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if !matches!(
            tokio::time::timeout_at(deadline, rd.read_exact(&mut payload)).await,
            Ok(Ok(_))
        ) {
            out.closed = true;
            break;
        }
        match head[3] {
            GOAWAY if len >= 8 => {
                out.goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]))
            }
            RST_STREAM => out.resets += 1,
            HEADERS => out.responses += 1,
            _ => {}
        }
    }
    out.took = started.elapsed();
    writer.abort();
    out.sent = sent.load(Ordering::Relaxed);
    out
}
