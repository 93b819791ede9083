//! Fake engines that speak the real wire protocols (HTTP + SSE for an
//! OpenAI-style LLM, Wyoming over TCP for STT and TTS), for what real
//! engines cannot be made to do: fail, stall, send garbage, answer after an
//! exact delay. Used by the benchmarks and the fault-injection tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A running fake: its port and how many requests it got.
#[derive(Clone)]
pub struct Fake {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    /// How long each delayed request was held before the fake answered
    /// (the engine's own time, for overhead figures).
    pub held: Arc<std::sync::Mutex<Vec<Duration>>>,
}

impl Fake {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
    pub fn tcp(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    /// The time held for the latest request.
    pub fn last_held(&self) -> Duration {
        self.held
            .lock()
            .map(|h| h.last().copied().unwrap_or_default())
            .unwrap_or_default()
    }
}

async fn serve<F, Fut>(handler: F) -> Fake
where
    F: Fn(TcpStream, Held) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let held: Held = Arc::default();
    let r = requests.clone();
    let hd = held.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            // Small writes (tokens, events) go out at once, as real servers do.
            let _ = s.set_nodelay(true);
            r.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            let hd = hd.clone();
            tokio::spawn(async move { h(s, hd).await });
        }
    });
    Fake {
        port,
        requests,
        held,
    }
}

type Held = Arc<std::sync::Mutex<Vec<Duration>>>;

fn note(held: &Held, since: std::time::Instant) {
    if let Ok(mut h) = held.lock() {
        h.push(since.elapsed());
    }
}

/// A port where nothing listens (connection refused).
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// What the fake LLM does with a request.
#[derive(Clone, Debug)]
pub enum LlmMode {
    /// Streams these tokens, `gap` apart, then usage and [DONE].
    Tokens { tokens: Vec<String>, gap: Duration },
    /// Waits `first`, then streams the tokens `gap` apart.
    Delayed {
        first: Duration,
        tokens: Vec<String>,
        gap: Duration,
    },
    /// Answers with this HTTP status and an error body.
    Status(u16),
    /// Streams these tokens, then goes silent with the connection open.
    StallAfter(Vec<String>),
    /// Sends a chunk that is not JSON.
    Garbage,
}

async fn read_http_request(s: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    Some(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A fake OpenAI-compatible chat completions server.
pub async fn llm(mode: LlmMode) -> Fake {
    serve(move |s, held| {
        let mode = mode.clone();
        async move {
            let mut s = BufReader::new(s);
            let Some(_req) = read_http_request(&mut s).await else { return };
            let t0 = std::time::Instant::now();
            let mut s = s.into_inner();
            let sse_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            let chunk = |t: &str| {
                format!(
                    "data: {}\n\n",
                    json!({"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":t},"finish_reason":null}]})
                )
            };
            match mode {
                LlmMode::Delayed { first, tokens, gap } => {
                    let _ = s.write_all(sse_head.as_bytes()).await;
                    let _ = s.flush().await;
                    tokio::time::sleep(first).await;
                    note(&held, t0);
                    for t in &tokens {
                        if s.write_all(chunk(t).as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        // A zero sleep still waits for the next timer tick.
                        if !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                    }
                    let usage = json!({"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":tokens.len()}});
                    let _ = s.write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes()).await;
                }
                LlmMode::Tokens { tokens, gap } => {
                    let _ = s.write_all(sse_head.as_bytes()).await;
                    for t in &tokens {
                        if s.write_all(chunk(t).as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        tokio::time::sleep(gap).await;
                    }
                    let usage = json!({"choices":[],"usage":{"prompt_tokens":20,"completion_tokens":tokens.len()}});
                    let _ = s.write_all(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes()).await;
                }
                LlmMode::Status(code) => {
                    let body = json!({"error":{"message":format!("fake error {code}")}}).to_string();
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 {code} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                }
                LlmMode::StallAfter(tokens) => {
                    let _ = s.write_all(sse_head.as_bytes()).await;
                    for t in &tokens {
                        let _ = s.write_all(chunk(t).as_bytes()).await;
                    }
                    let _ = s.flush().await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                LlmMode::Garbage => {
                    let _ = s.write_all(sse_head.as_bytes()).await;
                    let _ = s.write_all(b"data: {this is not json\n\n").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let _ = s.shutdown().await;
        }
    })
    .await
}

async fn read_event(r: &mut BufReader<TcpStream>) -> Option<(String, Value, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let h: Value = serde_json::from_str(&line).ok()?;
    let kind = h["type"].as_str()?.to_string();
    let mut data = h.get("data").cloned().unwrap_or(json!({}));
    let dl = h["data_length"].as_u64().unwrap_or(0) as usize;
    if dl > 0 {
        let mut b = vec![0; dl];
        r.read_exact(&mut b).await.ok()?;
        data = serde_json::from_slice(&b).ok()?;
    }
    let pl = h["payload_length"].as_u64().unwrap_or(0) as usize;
    let mut payload = vec![0; pl];
    r.read_exact(&mut payload).await.ok()?;
    Some((kind, data, payload))
}

async fn write_event(s: &mut TcpStream, kind: &str, data: Value, payload: &[u8]) -> bool {
    let mut h = json!({"type": kind, "data": data});
    if !payload.is_empty() {
        h["payload_length"] = json!(payload.len());
    }
    let mut b = serde_json::to_vec(&h).unwrap();
    b.push(b'\n');
    b.extend_from_slice(payload);
    s.write_all(&b).await.is_ok()
}

#[derive(Clone, Debug)]
pub enum SttMode {
    /// Answers this transcript after audio-stop.
    Text(String),
    /// Answers this transcript `after` audio-stop.
    Delayed(String, Duration),
    /// Takes the audio, never answers.
    Stall,
    /// Answers with bytes that are not an event.
    Garbage,
}

/// A fake Wyoming speech-to-text server. It also counts the audio bytes it got.
pub async fn wyoming_stt(mode: SttMode) -> Fake {
    serve(move |s, held| {
        let mode = mode.clone();
        async move {
            let mut r = BufReader::new(s);
            let mut audio = 0usize;
            while let Some((kind, _, payload)) = read_event(&mut r).await {
                audio += payload.len();
                if kind == "audio-stop" {
                    break;
                }
            }
            let mut s = r.into_inner();
            let t0 = std::time::Instant::now();
            match mode {
                SttMode::Delayed(t, after) => {
                    tokio::time::sleep(after).await;
                    let _ = write_event(&mut s, "transcript", json!({"text": t}), &[]).await;
                    note(&held, t0);
                }
                SttMode::Text(t) => {
                    let _ = write_event(
                        &mut s,
                        "transcript",
                        json!({"text": t, "audio_bytes": audio}),
                        &[],
                    )
                    .await;
                }
                SttMode::Stall => tokio::time::sleep(Duration::from_secs(3600)).await,
                SttMode::Garbage => {
                    let _ = s.write_all(b"\x00\x01garbage\n").await;
                }
            }
        }
    })
    .await
}

#[derive(Clone, Debug)]
pub enum TtsMode {
    /// `ms` of a 440 Hz tone per request, 22050 Hz, in chunks.
    Tone { ms: u32 },
    /// Waits `first`, then `ms_per_char` of tone per character of text.
    Delayed { first: Duration, ms_per_char: u32 },
    /// Closes the connection without answering.
    Close,
    /// `ms` of tone, but its events claim this rate and channel count (a
    /// hostile or broken engine).
    Claims { rate: u64, channels: u64, ms: u32 },
}

/// A fake Wyoming text-to-speech server.
pub async fn wyoming_tts(mode: TtsMode) -> Fake {
    serve(move |s, held| {
        let mode = mode.clone();
        async move {
            let mut r = BufReader::new(s);
            let Some((kind, data, _)) = read_event(&mut r).await else {
                return;
            };
            let mut s = r.into_inner();
            let t0 = std::time::Instant::now();
            if kind != "synthesize" {
                return;
            }
            let text_len = data["text"]
                .as_str()
                .map(|t| t.chars().count())
                .unwrap_or(0) as u32;
            let (ms, wait, rate, channels) = match mode {
                TtsMode::Close => return,
                TtsMode::Tone { ms } => (ms, Duration::ZERO, 22050, 1),
                TtsMode::Delayed { first, ms_per_char } => {
                    (ms_per_char * text_len.max(1), first, 22050, 1)
                }
                TtsMode::Claims { rate, channels, ms } => (ms, Duration::ZERO, rate, channels),
            };
            tokio::time::sleep(wait).await;
            let fmt = json!({"rate": rate, "width": 2, "channels": channels});
            write_event(&mut s, "audio-start", fmt.clone(), &[]).await;
            let n = 22050 * ms as usize / 1000;
            let pcm: Vec<u8> = (0..n)
                .flat_map(|i| {
                    (((i as f64 * 440.0 * 2.0 * std::f64::consts::PI / 22050.0).sin() * 8000.0)
                        as i16)
                        .to_le_bytes()
                })
                .collect();
            for (i, c) in pcm.chunks(2048).enumerate() {
                if !write_event(&mut s, "audio-chunk", fmt.clone(), c).await {
                    return;
                }
                if i == 0 {
                    note(&held, t0);
                }
            }
            write_event(&mut s, "audio-stop", json!({}), &[]).await;
        }
    })
    .await
}
