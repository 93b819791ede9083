//! Speech-to-text, LLM and text-to-speech engines: a trait per stage, one
//! file per backend, built from the config by name. Errors are typed so the
//! caller can tell "try the next engine" (connection refused, timeout, 5xx)
//! from "report it" (4xx, bad config).
//!
//! Backends: `wyoming.rs` (STT and TTS over the Wyoming protocol),
//! `openai.rs` (OpenAI-compatible HTTP: transcriptions, chat completions
//! with SSE, speech), `command.rs` (a TTS program writing WAV to stdout),
//! `server.rs` (the chat server, see the sync issue). `fallback.rs` tries
//! the engines of a stage in order.

pub mod command;
pub mod fallback;
pub mod openai;
pub mod server;
pub mod sse;
pub mod wyoming;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{Config, EngineConfig, EngineKind};
use crate::history::ChatMessage;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{engine}: cannot connect to {addr}: {cause}")]
    Connect {
        engine: String,
        addr: String,
        cause: String,
    },
    #[error("{engine}: no answer within {:.1} s", after.as_secs_f64())]
    Timeout { engine: String, after: Duration },
    #[error("{engine}: HTTP {status}: {body}")]
    Http {
        engine: String,
        status: u16,
        body: String,
    },
    #[error("{engine}: {message}")]
    Protocol { engine: String, message: String },
    #[error("{engine}: {message}")]
    Config { engine: String, message: String },
    #[error("{engine}: {message}")]
    Failed { engine: String, message: String },
}

impl EngineError {
    /// True when the next engine should be tried: the engine is down, slow,
    /// or failing on its side (5xx, broken stream). Config and request
    /// errors (4xx) are the same everywhere, so they are reported instead.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Connect { .. }
            | EngineError::Timeout { .. }
            | EngineError::Protocol { .. } => true,
            EngineError::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            EngineError::Config { .. } => false,
            EngineError::Failed { .. } => true,
        }
    }

    pub fn engine(&self) -> &str {
        match self {
            EngineError::Connect { engine, .. }
            | EngineError::Timeout { engine, .. }
            | EngineError::Http { engine, .. }
            | EngineError::Protocol { engine, .. }
            | EngineError::Config { engine, .. }
            | EngineError::Failed { engine, .. } => engine,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Speech-to-text. A session is opened when the user starts talking; audio
/// (16 kHz mono s16) is pushed while they talk; `finish` returns the text.
#[async_trait]
pub trait SpeechToText: Send + Sync {
    fn name(&self) -> &str;
    async fn start(&self) -> Result<Box<dyn SttSession>>;
}

#[async_trait]
pub trait SttSession: Send {
    async fn push(&mut self, pcm: &[i16]) -> Result<()>;
    async fn finish(self: Box<Self>) -> Result<String>;
}

/// Transcribes a whole recording with one engine (for `ask --wav` and the
/// server's `speech_to_text`).
pub async fn transcribe(stt: &dyn SpeechToText, pcm: &[i16]) -> Result<String> {
    let mut s = stt.start().await?;
    for chunk in pcm.chunks(crate::audio::FRAME * 5) {
        s.push(chunk).await?;
    }
    s.finish().await
}

/// What an LLM is asked.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// System prompt first, then the conversation, the question last.
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// The turn's ids, for engines that store the turn themselves (the
    /// chat server): the conversation, its title, the question.
    pub conversation_id: Option<String>,
    pub conversation_title: Option<String>,
    pub question_id: Option<String>,
    pub question_is_audio: bool,
}

/// A piece of a streamed LLM reply.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    Token(String),
    /// Token counts, when the engine reports them.
    Usage {
        prompt: u32,
        completion: u32,
    },
    /// The id the reply is stored under by the engine (the chat server).
    ReplyId(String),
}

/// A stream of events from a background task; dropping it cancels the task
/// (and so the request).
pub struct EventStream<T> {
    /// An event already taken off the channel, given out first.
    pub(crate) front: Option<Result<T>>,
    rx: mpsc::Receiver<Result<T>>,
    _task: Option<AbortOnDropHandle<()>>,
}

impl<T: Send + 'static> EventStream<T> {
    /// A stream fed by `produce`, which runs as its own task.
    pub fn spawn<F, Fut>(produce: F) -> EventStream<T>
    where
        F: FnOnce(mpsc::Sender<Result<T>>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(produce(tx));
        EventStream {
            front: None,
            rx,
            _task: Some(AbortOnDropHandle::new(task)),
        }
    }

    /// A stream over events already known.
    pub fn from_vec(items: Vec<Result<T>>) -> EventStream<T> {
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for i in items {
            let _ = tx.try_send(i);
        }
        EventStream {
            front: None,
            rx,
            _task: None,
        }
    }

    /// The next event; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<T>> {
        if let Some(f) = self.front.take() {
            return Some(f);
        }
        self.rx.recv().await
    }
}

#[async_trait]
pub trait Llm: Send + Sync {
    fn name(&self) -> &str;
    /// The model id recorded with replies.
    fn model(&self) -> Option<String>;
    async fn chat(&self, req: &ChatRequest) -> Result<EventStream<LlmEvent>>;
}

/// A piece of synthesized speech: mono s16 at `rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioChunk {
    pub pcm: Vec<i16>,
    pub rate: u32,
}

#[async_trait]
pub trait TextToSpeech: Send + Sync {
    fn name(&self) -> &str;
    /// Speech for `text`, streamed in chunks as the engine makes them.
    async fn synthesize(&self, text: &str) -> Result<EventStream<AudioChunk>>;
}

/// Synthesizes `text` completely (for `say --out` and the server's
/// `text_to_speech`): all chunks, resampled to the first chunk's rate.
pub async fn synthesize_all(tts: &dyn TextToSpeech, text: &str) -> Result<AudioChunk> {
    let mut s = tts.synthesize(text).await?;
    let mut out = AudioChunk {
        pcm: Vec::new(),
        rate: 0,
    };
    let bad = |e: crate::audio::wav::WavError| EngineError::Protocol {
        engine: tts.name().into(),
        message: format!("speech is not usable: {e}"),
    };
    while let Some(c) = s.next().await {
        let c = c?;
        // Every engine checks its audio; this also covers any other one.
        crate::audio::wav::decode::check_format(
            c.rate as u64,
            1,
            crate::audio::wav::decode::SampleFormat::Int(16),
        )
        .map_err(bad)?;
        if out.rate == 0 {
            out.rate = c.rate;
        }
        if c.rate == out.rate {
            out.pcm.extend_from_slice(&c.pcm);
        } else {
            let mut conv =
                crate::audio::resample::Converter::new(c.rate, out.rate, c.rate as usize / 100)
                    .map_err(|m| EngineError::Failed {
                        engine: tts.name().into(),
                        message: m,
                    })?;
            let input: Vec<f32> = c
                .pcm
                .iter()
                .map(|&s| crate::audio::resample::to_f32(s))
                .collect();
            let mut f = Vec::new();
            conv.push(&input, &mut f);
            conv.finish(&mut f);
            out.pcm
                .extend(f.into_iter().map(crate::audio::resample::to_i16));
        }
    }
    if out.rate == 0 {
        return Err(EngineError::Protocol {
            engine: tts.name().into(),
            message: "returned no audio".into(),
        });
    }
    Ok(out)
}

/// The engines of the three stages, in fallback order.
#[derive(Clone)]
pub struct Engines {
    pub stt: Vec<Arc<dyn SpeechToText>>,
    pub llm: Vec<Arc<dyn Llm>>,
    pub tts: Vec<Arc<dyn TextToSpeech>>,
}

fn not_for(e: &EngineConfig, stage: &str) -> EngineError {
    EngineError::Config {
        engine: e.name.clone(),
        message: format!("kind \"{}\" cannot do {stage}", e.kind.name()),
    }
}

pub fn build_stt(e: &EngineConfig, language: &str) -> Result<Arc<dyn SpeechToText>> {
    match &e.kind {
        EngineKind::Wyoming { .. } => Ok(Arc::new(wyoming::WyomingStt::new(e, language))),
        EngineKind::OpenAi { .. } => Ok(Arc::new(openai::OpenAiStt::new(e, language)?)),
        _ => Err(not_for(e, "speech-to-text")),
    }
}

pub fn build_llm(e: &EngineConfig, sync: &crate::config::SyncConfig) -> Result<Arc<dyn Llm>> {
    match &e.kind {
        EngineKind::OpenAi { .. } => Ok(Arc::new(openai::OpenAiLlm::new(e)?)),
        EngineKind::Server => Ok(Arc::new(server::ServerLlm::new(e, sync))),
        _ => Err(not_for(e, "LLM")),
    }
}

/// A text-to-speech engine whose speech for one text may be at most
/// `max_speech` long (`tts.max_seconds`: what an engine sends is untrusted).
pub fn build_tts(e: &EngineConfig, max_speech: Duration) -> Result<Arc<dyn TextToSpeech>> {
    match &e.kind {
        EngineKind::Wyoming { .. } => Ok(Arc::new(wyoming::WyomingTts::new(e, max_speech))),
        EngineKind::OpenAi { .. } => Ok(Arc::new(openai::OpenAiTts::new(e, max_speech)?)),
        EngineKind::Command { .. } => Ok(Arc::new(command::CommandTts::new(e, max_speech))),
        _ => Err(not_for(e, "text-to-speech")),
    }
}

fn pick<'a>(cfg: &'a Config, name: &str) -> Result<&'a EngineConfig> {
    cfg.engines.get(name).ok_or_else(|| EngineError::Config {
        engine: name.into(),
        message: "not defined in [engines]".into(),
    })
}

impl Engines {
    /// Builds the daemon's engines (stt, llm, tts lists of the config).
    pub fn from_config(cfg: &Config) -> Result<Engines> {
        Self::build(cfg, &cfg.stt.engines, &cfg.llm.engines, &cfg.tts.engines)
    }

    /// Builds the engines named in the given lists.
    pub fn build(cfg: &Config, stt: &[String], llm: &[String], tts: &[String]) -> Result<Engines> {
        Ok(Engines {
            stt: stt
                .iter()
                .map(|n| build_stt(pick(cfg, n)?, &cfg.stt.language))
                .collect::<Result<_>>()?,
            llm: llm
                .iter()
                .map(|n| build_llm(pick(cfg, n)?, &cfg.sync))
                .collect::<Result<_>>()?,
            tts: tts
                .iter()
                .map(|n| build_tts(pick(cfg, n)?, cfg.tts.max_duration))
                .collect::<Result<_>>()?,
        })
    }
}

/// The process-wide TLS setup (lives with the protocol client).
pub use crate::client::init_tls;
