//! What the fuzz targets share: a runtime to drive async parsers, a reader that hands its
//! bytes out in chunks, and the identities and keys the identity targets use.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// One current-thread runtime (with timers) per process: libFuzzer runs inputs one at a time.
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    });
    RT.block_on(f)
}

/// An `AsyncRead` that gives `data` at most `chunk` bytes per read, then EOF; `given` counts
/// what it handed out, so a target can tell how far a parser read.
#[derive(Debug)]
pub struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    pub given: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], chunk: usize) -> Self {
        Self {
            data,
            chunk: chunk.max(1),
            given: 0,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.data[self.given..];
        let n = rest.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.given += n;
        Poll::Ready(Ok(()))
    }
}

/// Splits `data` into pieces of the sizes `sizes` cycles through (each at least 1).
pub fn pieces<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1)).max(1);
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

/// The identity the identity targets prove.
pub const WEB: &str = "spiffe://weft.local/ns/default/sa/web";

/// A new certificate authority in a temporary directory (kept for the process: targets make
/// one at start-up).
pub fn new_authority() -> weft_identity::authority::Authority {
    let dir = tempfile::tempdir().expect("a temporary directory").keep();
    let cfg = weft_identity::authority::AuthorityConfig::new(dir);
    weft_identity::authority::Authority::load_or_create(&cfg).expect("a new authority")
}
