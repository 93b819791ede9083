//! The Wyoming protocol (Home Assistant's voice protocol) over TCP: speech-
//! to-text with audio streamed while the user talks, and text-to-speech
//! with audio chunks played as they arrive.
//!
//! An event is a JSON header line `{"type":..,"data":{..},"data_length":N,
//! "payload_length":M}\n`, then N bytes of JSON data (merged into `data`)
//! and M bytes of payload (PCM for audio chunks).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::*;
use crate::audio::wav::{Limits, decode};

/// Largest header line and data/payload accepted from a server.
const MAX_HEADER: usize = 64 * 1024;
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// One Wyoming event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: String,
    pub data: Value,
    pub payload: Vec<u8>,
}

impl Event {
    pub fn new(kind: &str, data: Value) -> Self {
        Event {
            kind: kind.into(),
            data,
            payload: Vec::new(),
        }
    }

    /// The wire form: header line (data inline), then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = json!({"type": self.kind, "data": self.data});
        if !self.payload.is_empty() {
            header["payload_length"] = json!(self.payload.len());
        }
        let mut out = serde_json::to_vec(&header).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Reads events from a stream.
pub struct EventReader<R> {
    r: BufReader<R>,
}

impl<R: tokio::io::AsyncRead + Unpin> EventReader<R> {
    pub fn new(r: R) -> Self {
        EventReader {
            r: BufReader::new(r),
        }
    }

    /// The next event, `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> std::result::Result<Option<Event>, String> {
        let mut line = Vec::new();
        let n = (&mut self.r)
            .take(MAX_HEADER as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            return Err(if line.len() > MAX_HEADER {
                "event header too long".into()
            } else {
                "connection closed in the middle of an event".into()
            });
        }
        let header: Value =
            serde_json::from_slice(&line).map_err(|e| format!("bad event header ({e})"))?;
        let kind = header
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or("event header without a type")?
            .to_string();
        let mut data = header.get("data").cloned().unwrap_or(json!({}));
        let len = |k: &str| header.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let (data_len, payload_len) = (len("data_length"), len("payload_length"));
        if data_len > MAX_PAYLOAD || payload_len > MAX_PAYLOAD {
            return Err("event too large".into());
        }
        if data_len > 0 {
            let mut buf = vec![0; data_len];
            self.r
                .read_exact(&mut buf)
                .await
                .map_err(|e| e.to_string())?;
            let extra: Value =
                serde_json::from_slice(&buf).map_err(|e| format!("bad event data ({e})"))?;
            if let (Some(d), Some(x)) = (data.as_object_mut(), extra.as_object()) {
                for (k, v) in x {
                    d.insert(k.clone(), v.clone());
                }
            } else {
                data = extra;
            }
        }
        let mut payload = vec![0; payload_len];
        self.r
            .read_exact(&mut payload)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(Event {
            kind,
            data,
            payload,
        }))
    }
}

#[derive(Clone)]
struct Conn {
    name: String,
    host: String,
    port: u16,
    timeout: Duration,
    voice: Option<String>,
    language: Option<String>,
}

impl Conn {
    fn new(e: &EngineConfig) -> Conn {
        let (host, port, voice, language) = match &e.kind {
            EngineKind::Wyoming {
                host,
                port,
                voice,
                language,
            } => (host.clone(), *port, voice.clone(), language.clone()),
            _ => (String::new(), 0, None, None),
        };
        Conn {
            name: e.name.clone(),
            host,
            port,
            timeout: e.timeout,
            voice,
            language,
        }
    }

    fn addr(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port)
    }

    async fn connect(&self) -> Result<(EventReader<OwnedReadHalf>, OwnedWriteHalf)> {
        let s = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.timeout_err())?
        .map_err(|e| EngineError::Connect {
            engine: self.name.clone(),
            addr: self.addr(),
            cause: e.to_string(),
        })?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        Ok((EventReader::new(r), w))
    }

    fn timeout_err(&self) -> EngineError {
        EngineError::Timeout {
            engine: self.name.clone(),
            after: self.timeout,
        }
    }

    fn proto(&self, message: impl Into<String>) -> EngineError {
        EngineError::Protocol {
            engine: self.name.clone(),
            message: message.into(),
        }
    }

    async fn send(&self, w: &mut OwnedWriteHalf, e: &Event) -> Result<()> {
        tokio::time::timeout(self.timeout, w.write_all(&e.encode()))
            .await
            .map_err(|_| self.timeout_err())?
            .map_err(|e| self.proto(format!("connection lost: {e}")))
    }

    async fn recv(&self, r: &mut EventReader<OwnedReadHalf>) -> Result<Event> {
        match tokio::time::timeout(self.timeout, r.next()).await {
            Err(_) => Err(self.timeout_err()),
            Ok(Err(m)) => Err(self.proto(m)),
            Ok(Ok(None)) => Err(self.proto("the server closed the connection")),
            Ok(Ok(Some(e))) => {
                if e.kind == "error" {
                    let text = e
                        .data
                        .get("text")
                        .and_then(|t| t.as_str())
                        .unwrap_or("error");
                    return Err(EngineError::Failed {
                        engine: self.name.clone(),
                        message: text.to_string(),
                    });
                }
                Ok(e)
            }
        }
    }
}

fn audio_format(rate: u32) -> Value {
    json!({"rate": rate, "width": 2, "channels": 1})
}

fn pcm_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Wyoming speech-to-text (e.g. wyoming-faster-whisper).
pub struct WyomingStt {
    conn: Conn,
    language: String,
}

impl WyomingStt {
    pub fn new(e: &EngineConfig, language: &str) -> Self {
        let conn = Conn::new(e);
        let language = conn
            .language
            .clone()
            .unwrap_or_else(|| language.to_string());
        WyomingStt { conn, language }
    }
}

struct WyomingSttSession {
    conn: Conn,
    r: EventReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

#[async_trait]
impl SpeechToText for WyomingStt {
    fn name(&self) -> &str {
        &self.conn.name
    }

    async fn start(&self) -> Result<Box<dyn SttSession>> {
        let (r, mut w) = self.conn.connect().await?;
        let mut t = json!({});
        if !self.language.is_empty() {
            t["language"] = json!(self.language);
        }
        self.conn.send(&mut w, &Event::new("transcribe", t)).await?;
        self.conn
            .send(
                &mut w,
                &Event::new("audio-start", audio_format(crate::audio::RATE)),
            )
            .await?;
        Ok(Box::new(WyomingSttSession {
            conn: self.conn.clone(),
            r,
            w,
        }))
    }
}

#[async_trait]
impl SttSession for WyomingSttSession {
    async fn push(&mut self, pcm: &[i16]) -> Result<()> {
        let mut e = Event::new("audio-chunk", audio_format(crate::audio::RATE));
        e.payload = pcm_bytes(pcm);
        self.conn.send(&mut self.w, &e).await
    }

    async fn finish(mut self: Box<Self>) -> Result<String> {
        self.conn
            .send(&mut self.w, &Event::new("audio-stop", json!({})))
            .await?;
        loop {
            let e = self.conn.recv(&mut self.r).await?;
            if e.kind == "transcript" {
                return Ok(e
                    .data
                    .get("text")
                    .and_then(|t| t.as_str())
                    .unwrap_or("")
                    .trim()
                    .to_string());
            }
            // Other events (e.g. transcript-start/-chunk of newer servers) are skipped.
        }
    }
}

/// Wyoming text-to-speech (e.g. wyoming-piper).
pub struct WyomingTts {
    conn: Conn,
    limits: Limits,
}

impl WyomingTts {
    /// A server whose speech may be at most `max_speech` long.
    pub fn new(e: &EngineConfig, max_speech: Duration) -> Self {
        WyomingTts {
            conn: Conn::new(e),
            limits: Limits::tts(max_speech),
        }
    }
}

/// The audio format of an `audio-start` or `audio-chunk` event (the
/// previous one for what it leaves out), checked as any WAV header is.
fn chunk_format(
    data: &Value,
    prev: (u32, u16, u16),
) -> std::result::Result<(u32, u16, u16), decode::WavError> {
    let num = |k: &str, d: u64| data.get(k).and_then(|v| v.as_u64()).unwrap_or(d);
    let rate = num("rate", prev.0 as u64);
    let width = num("width", prev.1 as u64);
    let channels = num("channels", prev.2 as u64);
    let bits = u16::try_from(width.saturating_mul(8)).unwrap_or(u16::MAX);
    decode::check_format(rate, channels, decode::SampleFormat::Int(bits))?;
    if bits != 16 {
        return Err(decode::WavError::SampleFormat(format!(
            "{} (Wyoming audio must be 16-bit)",
            decode::SampleFormat::Int(bits)
        )));
    }
    Ok((rate as u32, width as u16, channels as u16))
}

#[async_trait]
impl TextToSpeech for WyomingTts {
    fn name(&self) -> &str {
        &self.conn.name
    }

    async fn synthesize(&self, text: &str) -> Result<EventStream<AudioChunk>> {
        let (mut r, mut w) = self.conn.connect().await?;
        let mut data = json!({"text": text});
        if let Some(v) = &self.conn.voice {
            data["voice"] = json!({"name": v});
        }
        self.conn
            .send(&mut w, &Event::new("synthesize", data))
            .await?;
        // The first event must come within the timeout, so a dead server
        // fails here (and the next engine can be tried).
        let first = self.conn.recv(&mut r).await?;
        let conn = self.conn.clone();
        let mut budget = decode::Budget::new(self.limits);
        Ok(EventStream::spawn(move |tx| async move {
            let _keep = w;
            let mut format = (22_050u32, 2u16, 1u16);
            let mut next = Some(first);
            loop {
                let e = match next.take() {
                    Some(e) => e,
                    None => match conn.recv(&mut r).await {
                        Ok(e) => e,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    },
                };
                let checked = match e.kind.as_str() {
                    "audio-start" | "audio-chunk" => chunk_format(&e.data, format),
                    _ => Ok(format),
                };
                let (rate, _, channels) = match checked {
                    Ok(f) => f,
                    Err(err) => {
                        let _ = tx.send(Err(conn.proto(format!("audio: {err}")))).await;
                        return;
                    }
                };
                format = (rate, 2, channels);
                match e.kind.as_str() {
                    "audio-start" => {}
                    "audio-chunk" => {
                        let ch = channels as usize;
                        let pcm: Vec<i16> = e
                            .payload
                            .chunks_exact(2 * ch)
                            .map(|f| {
                                let sum: i32 = f
                                    .chunks_exact(2)
                                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as i32)
                                    .sum();
                                (sum / ch as i32) as i16
                            })
                            .collect();
                        if let Err(err) = budget.take(pcm.len() as u64, rate) {
                            let _ = tx.send(Err(conn.proto(format!("audio: {err}")))).await;
                            return;
                        }
                        if tx.send(Ok(AudioChunk { pcm, rate })).await.is_err() {
                            return;
                        }
                    }
                    "audio-stop" => return,
                    _ => {}
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_round_trip_with_separate_data_and_payload() {
        let mut wire = Event {
            kind: "audio-chunk".into(),
            data: json!({"rate": 16000}),
            payload: vec![1, 2, 3, 4],
        }
        .encode();
        // A newer server's form: data after the header line.
        let extra = br#"{"width":2,"channels":1}"#;
        wire.extend_from_slice(
            format!(
                "{{\"type\":\"transcript\",\"data_length\":{}}}\n",
                extra.len()
            )
            .as_bytes(),
        );
        wire.extend_from_slice(extra);
        let mut r = EventReader::new(&wire[..]);
        let a = r.next().await.unwrap().unwrap();
        assert_eq!(a.kind, "audio-chunk");
        assert_eq!(a.payload, vec![1, 2, 3, 4]);
        let b = r.next().await.unwrap().unwrap();
        assert_eq!(b.kind, "transcript");
        assert_eq!(b.data["width"], 2);
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_and_garbage_events_are_errors() {
        let mut r = EventReader::new(&b"{\"type\":\"audio-chunk\",\"payload_length\":10}\nabc"[..]);
        assert!(r.next().await.is_err());
        let mut r = EventReader::new(&b"not json\n"[..]);
        assert!(r.next().await.unwrap_err().contains("bad event header"));
        let mut r = EventReader::new(&b"{\"type\":\"x\""[..]);
        assert!(r.next().await.is_err());
    }
}
