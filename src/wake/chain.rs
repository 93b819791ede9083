//! The wake engines in order: the first that opens listens; when it fails
//! (at open or later), the next one is tried, and the failed one again
//! after a backoff. With none working the button alone starts turns; each
//! change is one log line, and nothing here ever stops the daemon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{WakeEngine, WakeEvent, WakeStream};

/// Backoff before retrying the engines after every one failed: 1 s
/// doubling to 60 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

/// The chain's state, driven by the listener.
pub struct Chain {
    engines: Vec<Arc<dyn WakeEngine>>,
    current: Option<(usize, Box<dyn WakeStream>)>,
    /// Rounds in a row in which no engine opened.
    failures: u32,
    retry_at: Option<Instant>,
    /// What the last log line said, so a state is logged once.
    said_button_only: bool,
}

impl Chain {
    pub fn new(engines: Vec<Arc<dyn WakeEngine>>) -> Chain {
        Chain {
            engines,
            current: None,
            failures: 0,
            retry_at: None,
            said_button_only: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    /// A second stream of the engine in use, for listening to what the
    /// speaker plays (so its own wake words can be told apart).
    pub async fn twin(&mut self) -> Option<Box<dyn WakeStream>> {
        let (i, _) = self.current.as_ref()?;
        self.engines[*i].open().await.ok()
    }

    /// The engine listening now.
    pub fn active(&self) -> Option<&str> {
        self.current.as_ref().map(|(i, _)| self.engines[*i].name())
    }

    /// Opens the first engine that works, from `from` on; logs what
    /// happened once.
    async fn open(&mut self, from: usize) {
        for i in from..self.engines.len() {
            match self.engines[i].open().await {
                Ok(s) => {
                    tracing::info!(
                        "wake word: listening with {} for {}{}",
                        self.engines[i].name(),
                        s.words().join(", "),
                        s.detail()
                    );
                    self.current = Some((i, s));
                    self.failures = 0;
                    self.retry_at = None;
                    self.said_button_only = false;
                    return;
                }
                Err(e) => tracing::warn!("wake word: {e}; trying the next engine"),
            }
        }
        self.failures += 1;
        self.retry_at = Some(Instant::now() + backoff(self.failures));
        if !self.said_button_only {
            tracing::error!(
                "wake word: no engine works; the button alone starts turns (retrying with backoff)"
            );
            self.said_button_only = true;
        }
    }

    /// Feeds one frame; opens or reopens engines as needed. Events of the
    /// engine in use go to `out`.
    pub async fn push(&mut self, pcm: &[i16], out: &mut Vec<WakeEvent>) {
        if self.engines.is_empty() {
            return;
        }
        if self.current.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return;
            }
            self.open(0).await;
        }
        // A fallback is in use: go back to a better engine from time to time.
        if let Some((i, _)) = &self.current
            && *i > 0
            && self.retry_at.is_some_and(|t| Instant::now() >= t)
        {
            let i = *i;
            self.retry_at = None;
            for j in 0..i {
                if let Ok(s) = self.engines[j].open().await {
                    tracing::info!(
                        "wake word: {} works again; using it",
                        self.engines[j].name()
                    );
                    self.current = Some((j, s));
                    break;
                }
            }
            if self.current.as_ref().is_some_and(|(k, _)| *k == i) {
                self.retry_at = Some(Instant::now() + backoff(6));
            }
        }
        let Some((i, stream)) = self.current.as_mut() else {
            return;
        };
        if let Err(e) = stream.push(pcm, out).await {
            let i = *i;
            tracing::warn!("wake word: {e}; trying the next engine");
            self.current = None;
            self.open(i + 1).await;
            if let Some((k, _)) = &self.current
                && *k > 0
            {
                self.retry_at = Some(Instant::now() + backoff(6));
            }
        }
    }
}
