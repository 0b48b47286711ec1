//! Whether the application speaks HTTP/2 cleartext, asked after an HTTP/2 request to it
//! failed: a client that speaks HTTP/2 (prior knowledge, gRPC) to an application that speaks
//! only HTTP/1 is told so (`protocol_mismatch`), not given a frame error.
//!
//! The answer is kept for [`VERDICT_TTL`] per address and one probe runs at a time, so an
//! application failing many requests at once is asked once, not once per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the answer about an address is kept.
pub const VERDICT_TTL: Duration = Duration::from_secs(10);

/// What a probe found: `Err` says what the application did instead of speaking HTTP/2.
type Verdict = Result<(), String>;

/// The answers about the application's addresses, and when each was had.
#[derive(Debug, Default)]
pub struct Probes {
    verdicts: tokio::sync::Mutex<HashMap<SocketAddr, (Instant, Verdict)>>,
}

impl Probes {
    /// Whether the application at `addr` speaks HTTP/2 ([`probe`]), asked at most once per
    /// [`VERDICT_TTL`].
    pub async fn speaks_http2(&self, addr: SocketAddr) -> Verdict {
        let mut verdicts = self.verdicts.lock().await;
        if let Some((at, verdict)) = verdicts.get(&addr)
            && at.elapsed() < VERDICT_TTL
        {
            return verdict.clone();
        }
        let verdict = probe(addr).await;
        verdicts.retain(|_, (at, _)| at.elapsed() < VERDICT_TTL);
        verdicts.insert(addr, (Instant::now(), verdict.clone()));
        verdict
    }
}

/// Whether the application at `addr` speaks HTTP/2 cleartext, asked after an HTTP/2 request
/// to it failed: a new connection gets HTTP/2's preface and an empty SETTINGS frame, and an
/// HTTP/2 server answers with its SETTINGS (RFC 9113 §3.4). `Err` says what it did instead
/// (answered something else, such as an HTTP/1 `400`, or closed the connection); `Ok` also
/// when it could not be told (not reachable, no answer within [`PROBE_TIMEOUT`]).
async fn probe(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        tcp.write_all(&hello).await.ok()?;
        let mut first = [0u8; 16];
        let mut n = 0;
        while n < 9 {
            match tcp.read(&mut first[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(m) => n += m,
            }
        }
        Some(first[..n].to_vec())
    };
    let Ok(Some(first)) = tokio::time::timeout(PROBE_TIMEOUT, probe).await else {
        return Ok(());
    };
    if first.len() >= 9 && first[3] == 0x4 {
        return Ok(());
    }
    if first.is_empty() {
        return Err("it closed the connection".into());
    }
    let shown: String = first
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect();
    Err(format!("it answered `{shown}...`"))
}

/// How long [`probe`] waits for the application's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
