//! The framing of a watch stream: JSON lines, and the event each line carries.

use bytes::Buf;
use serde::de::DeserializeOwned;

use super::MAX_LINE;

/// The framing of a watch stream: events are JSON lines, each ended by `\n`. Bytes are kept
/// until their line is complete. Public for the fuzz targets (`fuzz/`), not an API.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no `\n`: each byte is looked at once, however many
    /// frames a long line arrives in.
    scanned: usize,
}

impl LineBuffer {
    /// Appends the bytes of a frame.
    pub fn push(&mut self, mut data: impl Buf) {
        while data.has_remaining() {
            let chunk = data.chunk();
            self.buf.extend_from_slice(chunk);
            let n = chunk.len();
            data.advance(n);
        }
    }

    /// Whether more than [`MAX_LINE`] bytes are kept (the stream is then refused).
    pub fn over_limit(&self) -> bool {
        self.buf.len() > MAX_LINE
    }

    /// How many bytes are kept: after every complete line was taken, the length of the line
    /// still arriving.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line, without its `\n`.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buf.len();
            return None;
        };
        let pos = self.scanned + at;
        self.scanned = 0;
        let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
        line.pop();
        Some(line)
    }
}

/// Decodes one event line: its version and item when it carries both (a snapshot), `None`
/// for the other events. Public for the fuzz targets (`fuzz/`), not an API.
#[doc(hidden)]
pub fn decode_event<T: DeserializeOwned>(
    line: &[u8],
) -> Result<Option<(String, T)>, serde_json::Error> {
    let event: Line<T> = serde_json::from_slice(line)?;
    Ok(match (event.version, event.item) {
        (Some(v), Some(item)) => Some((v, item)),
        _ => None,
    })
}

/// A watch event as read: the fields of every [`crate::wire::Event`] kind. (Decoded as a plain
/// struct: serde's internally tagged enums buffer their content, which loses serde_json's
/// integer map keys, as in `WorkloadPolicy::ports`.)
#[derive(serde::Deserialize)]
struct Line<T> {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default = "none")]
    item: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

#[cfg(test)]
mod tests {
    use super::LineBuffer;

    #[test]
    fn lines_come_out_whole_however_their_bytes_arrive() {
        let mut b = LineBuffer::default();
        let text = format!("{}\nsecond\n\nthird-", "x".repeat(10_000));
        let mut lines = Vec::new();
        for byte in text.as_bytes().chunks(7) {
            b.push(byte);
            while let Some(l) = b.next_line() {
                lines.push(String::from_utf8(l).unwrap());
            }
        }
        assert_eq!(lines, ["x".repeat(10_000), "second".into(), String::new()]);
        b.push(&b"end\n"[..]);
        assert_eq!(b.next_line().unwrap(), b"third-end");
        assert!(b.next_line().is_none());
    }
}
