//! The wake word stage: engines that listen to the microphone all the time
//! and say when a wake word was spoken. A trait per engine, one file each,
//! built from `[wake] engines` by name; the next engine is used when one
//! fails (`chain.rs`), and with none left the button still works.
//!
//! - `micro.rs`: microWakeWord models run inside the daemon (`kind =
//!   "micro"`): the features of `frontend.rs`, the models through
//!   `tflite.rs` (TensorFlow Lite's C library, loaded at run time);
//! - `wyoming.rs`: a Wyoming wake service (`kind = "wyoming"`, e.g.
//!   wyoming-openwakeword on port 10400);
//! - `trigger.rs`: per word threshold, trigger level and refractory time
//!   (pure).

pub mod chain;
pub mod frontend;
pub mod micro;
pub mod oww;
pub mod tflite;
pub mod trigger;
pub mod wyoming;

use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Config, EngineKind, WakeWordConfig};

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("wake engine {engine}: {message}")]
    Load { engine: String, message: String },
    #[error("wake engine {engine}: cannot connect to {addr}: {cause}")]
    Connect {
        engine: String,
        addr: String,
        cause: String,
    },
    #[error("wake engine {engine}: {message}")]
    Protocol { engine: String, message: String },
    #[error("wake engine {engine}: {message}")]
    Config { engine: String, message: String },
}

impl WakeError {
    pub fn engine(&self) -> &str {
        match self {
            WakeError::Load { engine, .. }
            | WakeError::Connect { engine, .. }
            | WakeError::Protocol { engine, .. }
            | WakeError::Config { engine, .. } => engine,
        }
    }
}

pub type Result<T, E = WakeError> = std::result::Result<T, E>;

/// What a wake stream reports about the audio pushed so far.
#[derive(Debug, Clone, PartialEq)]
pub enum WakeEvent {
    /// The current score of a word, 0..1 (for `pichat listen monitor`;
    /// engines that only report detections send none).
    Score { word: String, score: f32 },
    /// While a word's second opinion is asked: its model's probability for
    /// the latest window, 0..1 (for `pichat listen monitor`: how near the
    /// second model came, when the engine's own score half-rose).
    SecondOpinion { word: String, probability: f32 },
    /// A wake word was spoken; `end` is where it ended, in samples since
    /// the stream was opened; `second_opinion`: decided by a second model
    /// after the engine's own stayed under its cutoff (its score is then
    /// that model's).
    Detected {
        word: String,
        score: f32,
        end: u64,
        second_opinion: bool,
    },
}

/// A wake word engine: opened once, fed the microphone's frames.
#[async_trait]
pub trait WakeEngine: Send + Sync {
    fn name(&self) -> &str;
    /// Opens a detection stream for the configured words.
    async fn open(&self) -> Result<Box<dyn WakeStream>>;
}

#[async_trait]
pub trait WakeStream: Send {
    /// Feeds 16 kHz mono s16 audio; appends what happened to `out`.
    async fn push(&mut self, pcm: &[i16], out: &mut Vec<WakeEvent>) -> Result<()>;
    /// The words this stream listens for.
    fn words(&self) -> Vec<String>;
    /// What it says of itself when it starts listening, after the words
    /// (e.g. its second opinion); empty by default.
    fn detail(&self) -> String {
        String::new()
    }
}

/// A word as the engines take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub name: String,
    /// `None`: the model's own cutoff.
    pub threshold: Option<f32>,
    pub trigger_level: u32,
    pub refractory: Duration,
}

impl Word {
    pub fn from_config(name: &str, w: &WakeWordConfig) -> Word {
        Word {
            name: name.to_string(),
            threshold: w.threshold,
            trigger_level: w.trigger_level,
            refractory: w.refractory,
        }
    }
}

/// Builds the engines of `[wake] engines`, in order.
pub fn build(cfg: &Config) -> Result<Vec<std::sync::Arc<dyn WakeEngine>>> {
    let words: Vec<Word> = cfg
        .wake
        .words
        .iter()
        .map(|(n, w)| Word::from_config(n, w))
        .collect();
    cfg.wake
        .engines
        .iter()
        .map(|name| {
            let e = cfg.engines.get(name).ok_or_else(|| WakeError::Config {
                engine: name.clone(),
                message: "not defined in [engines]".into(),
            })?;
            let engine: std::sync::Arc<dyn WakeEngine> = match &e.kind {
                EngineKind::Micro {
                    models,
                    library,
                    second_opinion,
                } => std::sync::Arc::new(
                    micro::MicroEngine::new(name, models, library, words.clone())
                        .with_second_opinion(second_opinion.dir()),
                ),
                EngineKind::Wyoming { host, port, .. } => std::sync::Arc::new(
                    wyoming::WyomingWake::new(name, host, *port, e.timeout, words.clone()),
                ),
                other => {
                    return Err(WakeError::Config {
                        engine: name.clone(),
                        message: format!("kind \"{}\" cannot detect wake words", other.name()),
                    });
                }
            };
            Ok(engine)
        })
        .collect()
}
