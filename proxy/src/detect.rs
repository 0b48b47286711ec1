//! Protocol detection on a fresh connection: TLS (a ClientHello), HTTP/2 (the connection
//! preface), HTTP/1 (a request line), or anything else (opaque TCP).
//!
//! Detection reads the first bytes into a buffer and hands back a [`Prefixed`] stream that
//! replays them, so it works the same on plain TCP and on a terminated TLS stream. It never
//! waits longer than its timeout: a client that says nothing (a server-speaks-first protocol)
//! is treated as opaque.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long detection waits for the client's first bytes by default.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The most bytes detection reads before deciding.
const MAX_PEEK: usize = 64;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tls,
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// A stream whose first bytes were already read: they are replayed before the rest.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: BytesMut,
    inner: T,
    timed_out: bool,
    /// A read error met right after the prefix's last bytes were given: given next.
    error: Option<io::Error>,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Self {
            prefix,
            inner,
            timed_out: false,
            error: None,
        }
    }

    /// Whether detection gave up waiting (the connection fell back to opaque on its timeout,
    /// which callers count: a server-speaks-first port missing from `--opaque-ports`).
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Whether bytes wait to be replayed.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub fn unread(&mut self, bytes: &[u8]) {
        let mut prefix = BytesMut::with_capacity(bytes.len() + self.prefix.len());
        prefix.extend_from_slice(bytes);
        prefix.extend_from_slice(&self.prefix);
        self.prefix = prefix;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // Replayed: its buffer is not kept for the connection's life.
        self.prefix = BytesMut::new();
        // What followed the prefix is read with it, when it is there: a reader gets the
        // request head whole in one read, as from the socket (hyper's read buffer, sized for
        // its first read, otherwise grows, and copies, on the second).
        if buf.remaining() > 0
            && let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_read(cx, buf)
        {
            self.error = Some(e);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Classifies what has been read so far: `Some` once the bytes decide, `None` if more are
/// needed.
pub fn classify(buf: &[u8], want_tls: bool) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    if want_tls && buf[0] == 0x16 {
        // A TLS handshake record: content type 22, then version major 3.
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Some(Protocol::Http2)
        } else {
            None
        };
    }
    // An HTTP/1 request line starts with a method token (at most 20 uppercase letters, `-` or
    // `_`) and a space.
    for (i, b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < 20 => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Opaque),
        }
    }
    // Only method characters so far, at most 20 of them: the next byte decides (a 20-letter
    // method is followed by its space at index 20). Deciding here would make the answer
    // depend on where the client's bytes happened to be split.
    None
}

/// Reads the first bytes of `io` until the protocol is known, the client stops sending, or
/// `timeout` passes (then: opaque). `want_tls` also recognises a TLS ClientHello.
pub async fn detect<T: AsyncRead + Unpin>(
    mut io: T,
    want_tls: bool,
    timeout: Duration,
) -> io::Result<(Protocol, Prefixed<T>)> {
    let mut buf = BytesMut::with_capacity(MAX_PEEK);
    let mut timed_out = false;
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Some(p) = classify(&buf, want_tls) {
            break p;
        }
        if buf.len() >= MAX_PEEK {
            break Protocol::Opaque;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                if buf.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before sending anything",
                    ));
                }
                break Protocol::Opaque;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                timed_out = true;
                break Protocol::Opaque;
            }
        }
    };
    let mut io = Prefixed::new(buf, io);
    io.timed_out = timed_out;
    Ok((protocol, io))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", true), Some(Protocol::Http1));
        assert_eq!(
            classify(b"CONNECT db:5432 HTTP/1.1", true),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(H2_PREFACE, true), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10], true), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01], true), Some(Protocol::Tls));
        assert_eq!(classify(&[0x16, 0x03, 0x01], false), Some(Protocol::Opaque));
        assert_eq!(classify(b"hello world\n", true), Some(Protocol::Opaque));
        assert_eq!(classify(b"\x00\x01", true), Some(Protocol::Opaque));
        assert_eq!(classify(b"GE", true), None);
        assert_eq!(classify(b"", true), None);
    }

    /// Found by the `detect` fuzz target: 20 method characters were opaque when a read ended
    /// right after them, and HTTP/1 when the space came in the same read.
    #[tokio::test]
    async fn a_twenty_letter_method_is_http1_however_the_bytes_arrive() {
        let input: &[u8] = b"EEMEE-EEEEEEEEEE-PRI * HTTP/2.0\r\n\rEEE0EE9\x00_S";
        assert_eq!(classify(&input[..20], true), None);
        assert_eq!(classify(input, true), Some(Protocol::Http1));
        for split in [1, 19, 20, 21] {
            // The first read returns `head`, the next `tail`.
            let (head, tail) = input.split_at(split);
            let io = AsyncReadExt::chain(head, tail);
            let (p, mut s) = detect(io, true, Duration::from_secs(5)).await.unwrap();
            assert_eq!(p, Protocol::Http1, "split after {split} bytes");
            let mut out = vec![0u8; input.len()];
            s.read_exact(&mut out).await.unwrap();
            assert_eq!(out, input);
        }
    }

    #[tokio::test]
    async fn replays_the_prefix() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (p, mut s) = detect(b, false, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        assert!(!s.timed_out());
        let mut out = vec![0u8; 27];
        s.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }

    /// A head longer than what detection read comes whole in one read (hyper's read buffer
    /// then needs no second allocation), and a read error met right after the prefix is
    /// given on the next read, after the bytes.
    #[tokio::test]
    async fn what_follows_the_prefix_is_read_with_it_and_an_error_after_it_is_kept() {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: {}\r\n\r\n",
            "a".repeat(200)
        );
        let (mut a, b) = tokio::io::duplex(4096);
        a.write_all(head.as_bytes()).await.unwrap();
        let (p, mut s) = detect(b, false, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        let mut out = vec![0u8; 8192];
        let n = s.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], head.as_bytes());

        /// Fails once (a reset is reported once), then ends.
        struct FailsOnce(bool);
        impl AsyncRead for FailsOnce {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if std::mem::replace(&mut self.0, true) {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
        let mut s = Prefixed::new(BytesMut::from(&b"GET / HT"[..]), FailsOnce(false));
        let n = s.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"GET / HT");
        let e = s.read(&mut out).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_opaque_after_the_timeout() {
        let (_a, b) = tokio::io::duplex(1024);
        let (p, io) = detect(b, true, Duration::from_millis(300)).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert!(io.timed_out());
    }
}
