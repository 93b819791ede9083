//! Server-sent events: splits a byte stream into the `data:` payloads of
//! its events, across chunk boundaries, as OpenAI-style streaming APIs send
//! them (`data: {...}\n\n` ... `data: [DONE]`). A peer is untrusted input:
//! a line or an event longer than [`MAX_EVENT_BYTES`] is an error, not
//! memory held without end.

/// The longest line, and the longest event's data, accepted: one streamed
/// chunk of an OpenAI-style reply is well under 1 KiB.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// A stream the decoder refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event of the stream is over {MAX_EVENT_BYTES} bytes")]
pub struct TooLong;

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: String,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the data of every event completed by them, or
    /// [`TooLong`] once a line or an event passes [`MAX_EVENT_BYTES`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, TooLong> {
        let mut out = Vec::new();
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            if self.buf.len() + piece.len() > MAX_EVENT_BYTES + 2 {
                return Err(TooLong);
            }
            self.buf.extend_from_slice(piece);
            if piece.last() == Some(&b'\n') {
                self.line(&mut out)?;
            }
        }
        Ok(out)
    }

    /// Takes the complete line in `buf` (it ends with `\n`).
    fn line(&mut self, out: &mut Vec<String>) -> Result<(), TooLong> {
        let mut line = std::mem::take(&mut self.buf);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            // A blank line ends the event.
            if !self.data.is_empty() {
                out.push(std::mem::take(&mut self.data));
            }
        } else if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            if self.data.len() + 1 + rest.len() > MAX_EVENT_BYTES {
                return Err(TooLong);
            }
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(rest);
        }
        // Comments (":") and other fields (event:, id:, retry:) are ignored.
        Ok(())
    }

    /// The last event, if the stream ended without its blank line.
    pub fn finish(&mut self) -> Result<Option<String>, TooLong> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            self.buf.push(b'\n');
            self.line(&mut out)?;
        }
        if !self.data.is_empty() {
            out.push(std::mem::take(&mut self.data));
        }
        Ok(out.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_chunk_boundaries() {
        let mut d = SseDecoder::new();
        let stream = b": keepalive\n\ndata: {\"a\":1}\n\ndata: {\"b\"\r\ndata: :2}\r\n\r\nevent: x\ndata: [DONE]\n\n";
        let mut got = Vec::new();
        for chunk in stream.chunks(3) {
            got.extend(d.push(chunk).unwrap());
        }
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\"\n:2}", "[DONE]"]);
    }

    #[test]
    fn unterminated_last_event() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: tail").unwrap().is_empty());
        assert_eq!(d.finish().unwrap().as_deref(), Some("tail"));
    }

    #[test]
    fn lines_and_events_are_bounded() {
        // A line at the limit is fine; one byte more is refused before it
        // is held, however it is cut into chunks.
        let mut d = SseDecoder::new();
        let mut at = b"data: ".to_vec();
        at.resize(MAX_EVENT_BYTES, b'x');
        at.extend_from_slice(b"\n\n");
        let got = d.push(&at).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), MAX_EVENT_BYTES - 6);

        let mut d = SseDecoder::new();
        let endless = vec![b'y'; 64 << 10];
        let mut fed = 0;
        let err = loop {
            match d.push(&endless) {
                Ok(v) => assert!(v.is_empty()),
                Err(e) => break e,
            }
            fed += endless.len();
            assert!(fed <= MAX_EVENT_BYTES + endless.len(), "never refused");
        };
        assert_eq!(err, TooLong);
        assert!(d.buf.len() <= MAX_EVENT_BYTES + 2);

        // Many short data lines making one huge event.
        let mut d = SseDecoder::new();
        let line = [b"data: ".as_slice(), &[b'z'; 1000], b"\n"].concat();
        let mut refused = false;
        for _ in 0..(MAX_EVENT_BYTES / 1000 + 2) {
            if d.push(&line).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(d.data.len() <= MAX_EVENT_BYTES);
    }
}
