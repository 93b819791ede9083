//! Server-sent events: splits a byte stream into the `data:` payloads of
//! its events, across chunk boundaries, as OpenAI-style streaming APIs send
//! them (`data: {...}\n\n` ... `data: [DONE]`).

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

    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
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
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            // Comments (":") and other fields (event:, id:, retry:) are ignored.
        }
        out
    }

    /// The last event, if the stream ended without its blank line.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let mut out = self.push(&rest);
        if !self.buf.is_empty() {
            let tail = std::mem::take(&mut self.buf);
            out.extend(self.push(&[tail, b"\n".to_vec()].concat()));
        }
        if !self.data.is_empty() {
            out.push(std::mem::take(&mut self.data));
        }
        out.pop()
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
            got.extend(d.push(chunk));
        }
        assert_eq!(got, vec!["{\"a\":1}", "{\"b\"\n:2}", "[DONE]"]);
    }

    #[test]
    fn unterminated_last_event() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: tail").is_empty());
        assert_eq!(d.finish().as_deref(), Some("tail"));
    }
}
