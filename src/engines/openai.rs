//! OpenAI-compatible HTTP engines: `/audio/transcriptions` (faster-whisper-
//! server, whisper.cpp server, OpenAI, Groq), `/chat/completions` with SSE
//! streaming (llama.cpp server, Ollama, vLLM, OpenAI; Azure OpenAI's URL
//! form and `api-key` header when `api_version` is set), `/audio/speech`.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::json;

use super::sse::SseDecoder;
use super::*;
use crate::audio::wav::{Limits, decode};
use crate::config::SecretSource;

/// What every OpenAI-style engine shares: base URL, key, timeout, client.
#[derive(Clone)]
struct Endpoint {
    name: String,
    base: url::Url,
    model: Option<String>,
    api_key: SecretSource,
    azure: Option<String>,
    timeout: Duration,
    /// Built on first use: an idle daemon loads no TLS roots.
    client: Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl Endpoint {
    fn new(e: &EngineConfig) -> Result<(Endpoint, &EngineKind)> {
        let EngineKind::OpenAi {
            base_url,
            model,
            api_key,
            api_version,
            ..
        } = &e.kind
        else {
            return Err(EngineError::Config {
                engine: e.name.clone(),
                message: "not an openai engine".into(),
            });
        };
        Ok((
            Endpoint {
                name: e.name.clone(),
                base: base_url.clone(),
                model: model.clone(),
                api_key: api_key.clone(),
                azure: api_version.clone(),
                timeout: e.timeout,
                client: Arc::default(),
            },
            &e.kind,
        ))
    }

    /// `{base}/{path}`, or Azure's deployment form.
    fn url(&self, path: &str) -> String {
        let base = self.base.as_str().trim_end_matches('/');
        match (&self.azure, &self.model) {
            (Some(v), Some(deployment)) => {
                format!("{base}/openai/deployments/{deployment}/{path}?api-version={v}")
            }
            _ => format!("{base}/{path}"),
        }
    }

    fn client(&self) -> Result<&reqwest::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        init_tls();
        let c = reqwest::Client::builder()
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .build()
            .map_err(|err| EngineError::Config {
                engine: self.name.clone(),
                message: format!("cannot build an HTTP client: {err}"),
            })?;
        Ok(self.client.get_or_init(|| c))
    }

    fn request(&self, path: &str) -> Result<reqwest::RequestBuilder> {
        let mut rb = self.client()?.post(self.url(path));
        match self.api_key.read() {
            Ok(Some(key)) => {
                rb = if self.azure.is_some() {
                    rb.header("api-key", key)
                } else {
                    rb.bearer_auth(key)
                };
            }
            Ok(None) => {}
            Err(m) => {
                return Err(EngineError::Config {
                    engine: self.name.clone(),
                    message: format!("API key: {m}"),
                });
            }
        }
        Ok(rb)
    }

    fn map_err(&self, e: reqwest::Error) -> EngineError {
        if e.is_timeout() {
            EngineError::Timeout {
                engine: self.name.clone(),
                after: self.timeout,
            }
        } else if e.is_connect() {
            EngineError::Connect {
                engine: self.name.clone(),
                addr: self.base.to_string(),
                cause: root_cause(&e),
            }
        } else {
            EngineError::Protocol {
                engine: self.name.clone(),
                message: root_cause(&e),
            }
        }
    }

    /// Sends the request; the response headers must come within the timeout.
    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = tokio::time::timeout(self.timeout, rb.send())
            .await
            .map_err(|_| EngineError::Timeout {
                engine: self.name.clone(),
                after: self.timeout,
            })?
            .map_err(|e| self.map_err(e))?;
        let status = resp.status();
        if !status.is_success() {
            // Only the start of an error body is kept, and it is not waited for long.
            let body = tokio::time::timeout(Duration::from_secs(2), capped(resp, 4096))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let body: String = body.trim().chars().take(300).collect();
            return Err(EngineError::Http {
                engine: self.name.clone(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(resp)
    }

    /// The whole body, within the timeout and [`MAX_RESPONSE_BYTES`].
    async fn body(&self, resp: reqwest::Response) -> Result<Vec<u8>> {
        let (body, whole) = tokio::time::timeout(self.timeout, capped(resp, MAX_RESPONSE_BYTES))
            .await
            .map_err(|_| EngineError::Timeout {
                engine: self.name.clone(),
                after: self.timeout,
            })?
            .map_err(|e| self.map_err(e))?;
        if !whole {
            return Err(EngineError::Protocol {
                engine: self.name.clone(),
                message: format!(
                    "the response is over {} MiB; refused",
                    MAX_RESPONSE_BYTES >> 20
                ),
            });
        }
        Ok(body)
    }
}

/// Largest response body taken from an engine (a remote engine is
/// untrusted input): 64 MiB, over 10 minutes of 48 kHz speech.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Reads a body up to `max` bytes; says whether it was all there.
async fn capped(
    mut resp: reqwest::Response,
    max: usize,
) -> std::result::Result<(Vec<u8>, bool), reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok((Vec::new(), false));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            let room = max - out.len();
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// `/audio/transcriptions`: the audio is collected while the user talks and
/// sent as one WAV when they stop.
pub struct OpenAiStt {
    ep: Endpoint,
    language: String,
}

impl OpenAiStt {
    pub fn new(e: &EngineConfig, language: &str) -> Result<Self> {
        let (ep, kind) = Endpoint::new(e)?;
        let lang = match kind {
            EngineKind::OpenAi {
                language: Some(l), ..
            } => l.clone(),
            _ => language.to_string(),
        };
        Ok(OpenAiStt { ep, language: lang })
    }
}

struct OpenAiSttSession {
    ep: Endpoint,
    language: String,
    pcm: Vec<i16>,
}

#[async_trait]
impl SpeechToText for OpenAiStt {
    fn name(&self) -> &str {
        &self.ep.name
    }

    async fn start(&self) -> Result<Box<dyn SttSession>> {
        Ok(Box::new(OpenAiSttSession {
            ep: self.ep.clone(),
            language: self.language.clone(),
            pcm: Vec::new(),
        }))
    }
}

/// A 16 kHz mono s16 WAV in memory.
pub fn wav_bytes(pcm: &[i16], rate: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(44 + pcm.len() * 2);
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    {
        let mut w =
            hound::WavWriter::new(std::io::Cursor::new(&mut out), spec).expect("in-memory WAV");
        for &s in pcm {
            let _ = w.write_sample(s);
        }
        let _ = w.finalize();
    }
    out
}

#[async_trait]
impl SttSession for OpenAiSttSession {
    async fn push(&mut self, pcm: &[i16]) -> Result<()> {
        self.pcm.extend_from_slice(pcm);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<String> {
        let wav = wav_bytes(&self.pcm, crate::audio::RATE);
        let part = reqwest::multipart::Part::bytes(wav)
            .file_name("speech.wav")
            .mime_str("audio/wav")
            .map_err(|e| self.ep.map_err(e))?;
        let model = self.ep.model.clone().unwrap_or_else(|| "whisper-1".into());
        let mut form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("model", model.clone())
            .text("model_name", model)
            .text("response_format", "json");
        if !self.language.is_empty() {
            form = form.text("language", self.language.clone());
        }
        let resp = self
            .ep
            .send(self.ep.request("audio/transcriptions")?.multipart(form))
            .await?;
        let body = self.ep.body(resp).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| EngineError::Protocol {
                engine: self.ep.name.clone(),
                message: format!("transcription is not JSON ({e})"),
            })?;
        v.get("text")
            .and_then(|t| t.as_str())
            .map(|t| t.trim().to_string())
            .ok_or_else(|| EngineError::Protocol {
                engine: self.ep.name.clone(),
                message: "transcription has no \"text\"".into(),
            })
    }
}

/// `/chat/completions` with `stream: true`.
pub struct OpenAiLlm {
    ep: Endpoint,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
}

impl OpenAiLlm {
    pub fn new(e: &EngineConfig) -> Result<Self> {
        let (ep, kind) = Endpoint::new(e)?;
        let (temperature, max_tokens) = match kind {
            EngineKind::OpenAi {
                temperature,
                max_tokens,
                ..
            } => (*temperature, *max_tokens),
            _ => (None, None),
        };
        Ok(OpenAiLlm {
            ep,
            temperature,
            max_tokens,
        })
    }
}

/// Parses one SSE data payload of a chat completion stream.
pub fn parse_chunk(engine: &str, data: &str) -> Result<Vec<LlmEvent>> {
    let v: serde_json::Value = serde_json::from_str(data).map_err(|e| EngineError::Protocol {
        engine: engine.into(),
        message: format!(
            "stream chunk is not JSON ({e}): {}",
            data.chars().take(80).collect::<String>()
        ),
    })?;
    if let Some(err) = v.get("error") {
        return Err(EngineError::Failed {
            engine: engine.into(),
            message: err
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("error in stream")
                .to_string(),
        });
    }
    let mut out = Vec::new();
    if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
        for c in choices {
            if let Some(t) = c.pointer("/delta/content").and_then(|t| t.as_str())
                && !t.is_empty()
            {
                out.push(LlmEvent::Token(t.to_string()));
            }
        }
    } else if v.get("usage").is_none() {
        return Err(EngineError::Protocol {
            engine: engine.into(),
            message: "stream chunk has no choices".into(),
        });
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        let n = |k: &str| u.get(k).and_then(|x| x.as_u64()).unwrap_or(0) as u32;
        out.push(LlmEvent::Usage {
            prompt: n("prompt_tokens"),
            completion: n("completion_tokens"),
        });
    }
    Ok(out)
}

#[async_trait]
impl Llm for OpenAiLlm {
    fn name(&self) -> &str {
        &self.ep.name
    }

    fn model(&self) -> Option<String> {
        self.ep.model.clone()
    }

    async fn chat(&self, req: &ChatRequest) -> Result<EventStream<LlmEvent>> {
        let messages: Vec<serde_json::Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(m) = &self.ep.model {
            body["model"] = json!(m);
        }
        if let Some(t) = req.temperature.or(self.temperature) {
            body["temperature"] = json!(t);
        }
        if let Some(t) = req.max_tokens.or(self.max_tokens) {
            body["max_tokens"] = json!(t);
        }
        let resp = self
            .ep
            .send(self.ep.request("chat/completions")?.json(&body))
            .await?;
        let ep = self.ep.clone();
        Ok(EventStream::spawn(move |tx| async move {
            let mut bytes = resp.bytes_stream();
            let mut sse = SseDecoder::new();
            loop {
                // The engine's timeout applies to each gap in the stream.
                let next = match tokio::time::timeout(ep.timeout, bytes.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        let _ = tx
                            .send(Err(EngineError::Timeout {
                                engine: ep.name.clone(),
                                after: ep.timeout,
                            }))
                            .await;
                        return;
                    }
                };
                let datas = match next {
                    Some(Ok(b)) => sse.push(&b),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(ep.map_err(e))).await;
                        return;
                    }
                    None => {
                        let tail = sse.finish();
                        if tail.as_deref() != Some("[DONE]") {
                            let _ = tx
                                .send(Err(EngineError::Protocol {
                                    engine: ep.name.clone(),
                                    message: "the stream ended before [DONE]".into(),
                                }))
                                .await;
                        }
                        return;
                    }
                };
                for d in datas {
                    if d.trim() == "[DONE]" {
                        return;
                    }
                    match parse_chunk(&ep.name, &d) {
                        Ok(events) => {
                            for e in events {
                                if tx.send(Ok(e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        }))
    }
}

/// `/audio/speech`, as WAV (or raw PCM with `format = "pcm"`).
pub struct OpenAiTts {
    ep: Endpoint,
    voice: Option<String>,
    format: String,
    limits: Limits,
}

impl OpenAiTts {
    /// An endpoint whose speech may be at most `max_speech` long.
    pub fn new(e: &EngineConfig, max_speech: Duration) -> Result<Self> {
        let (ep, kind) = Endpoint::new(e)?;
        let (voice, format) = match kind {
            EngineKind::OpenAi { voice, format, .. } => (
                voice.clone(),
                format.clone().unwrap_or_else(|| "wav".into()),
            ),
            _ => (None, "wav".into()),
        };
        Ok(OpenAiTts {
            ep,
            voice,
            format,
            limits: Limits::tts(max_speech),
        })
    }
}

#[async_trait]
impl TextToSpeech for OpenAiTts {
    fn name(&self) -> &str {
        &self.ep.name
    }

    async fn synthesize(&self, text: &str) -> Result<EventStream<AudioChunk>> {
        let body = json!({
            "model": self.ep.model.clone().unwrap_or_else(|| "tts-1".into()),
            "voice": self.voice.clone().unwrap_or_else(|| "alloy".into()),
            "input": text,
            "response_format": self.format,
        });
        let resp = self
            .ep
            .send(self.ep.request("audio/speech")?.json(&body))
            .await?;
        let rate_header = resp
            .headers()
            .get("x-sample-rate")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().parse::<u64>().unwrap_or(0));
        let bytes = self.ep.body(resp).await?;
        let unusable = |e: decode::WavError| EngineError::Protocol {
            engine: self.ep.name.clone(),
            message: format!("speech is not usable: {e}"),
        };
        let chunk = if self.format == "pcm" {
            // OpenAI's raw PCM is 24 kHz; others say so in a header.
            let rate = rate_header.unwrap_or(24_000);
            decode::check_format(rate, 1, decode::SampleFormat::Int(16)).map_err(unusable)?;
            let rate = rate as u32;
            decode::Budget::new(self.limits)
                .take(bytes.len() as u64 / 2, rate)
                .map_err(unusable)?;
            AudioChunk {
                pcm: bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect(),
                rate,
            }
        } else {
            let clip = decode::clip_from_bytes(&bytes, &self.limits).map_err(unusable)?;
            AudioChunk {
                pcm: clip.pcm,
                rate: clip.rate,
            }
        };
        Ok(EventStream::from_vec(vec![Ok(chunk)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_parsing() {
        let ev = parse_chunk("x", r#"{"choices":[{"delta":{"content":"Hel"}}]}"#).unwrap();
        assert_eq!(ev, vec![LlmEvent::Token("Hel".into())]);
        let ev = parse_chunk(
            "x",
            r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#,
        )
        .unwrap();
        assert!(ev.is_empty());
        let ev = parse_chunk(
            "x",
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(
            ev,
            vec![LlmEvent::Usage {
                prompt: 12,
                completion: 7
            }]
        );
        assert!(parse_chunk("x", "garbage").is_err());
        assert!(
            parse_chunk("x", r#"{"error":{"message":"overloaded"}}"#)
                .unwrap_err()
                .to_string()
                .contains("overloaded")
        );
    }

    #[test]
    fn azure_url_form() {
        let cfg = crate::config::parse_str(
            "[engines.az]\nkind = \"openai\"\nurl = \"https://me.openai.azure.com\"\nmodel = \"gpt4o\"\napi_version = \"2024-06-01\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
        .1;
        let (ep, _) = Endpoint::new(&cfg.engines["az"]).unwrap();
        assert_eq!(
            ep.url("chat/completions"),
            "https://me.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-06-01"
        );
        let (home, _) = Endpoint::new(&cfg.engines["home"]).unwrap();
        assert_eq!(
            home.url("chat/completions"),
            "http://127.0.0.1:8081/v1/chat/completions"
        );
    }
}
