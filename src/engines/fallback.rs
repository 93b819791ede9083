//! Trying the engines of a stage in order. An engine is skipped when it
//! fails with a retryable error before producing anything (refused, timed
//! out, 5xx, an error as its first event); once it has produced something,
//! its errors are the caller's to handle.

use std::sync::Arc;

use async_trait::async_trait;

use super::*;

/// The errors of every engine tried, for one log line.
fn join(errors: &[EngineError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn all_failed(stage: &str, errors: Vec<EngineError>) -> EngineError {
    match errors.len() {
        0 => EngineError::Config {
            engine: stage.into(),
            message: "no engine configured".into(),
        },
        1 => errors.into_iter().next().expect("one error"),
        _ => EngineError::Failed {
            engine: stage.into(),
            message: format!("every engine failed: {}", join(&errors)),
        },
    }
}

/// Looks at a fresh stream's first event: a retryable error there means
/// the engine is not working, so the next one should be tried. Otherwise
/// the event is put back in front of the stream.
async fn check_first<T: Send + 'static>(
    mut s: EventStream<T>,
) -> std::result::Result<EventStream<T>, EngineError> {
    match s.next().await {
        Some(Err(err)) if err.is_retryable() => Err(err),
        first => {
            s.front = first;
            Ok(s)
        }
    }
}

/// Records a failed engine; `Err` when the error must not be retried.
fn skip(stage: &str, err: EngineError, errors: &mut Vec<EngineError>) -> Result<()> {
    if !err.is_retryable() {
        return Err(err);
    }
    tracing::warn!("{err}; trying the next {stage} engine");
    errors.push(err);
    Ok(())
}

/// Asks the LLMs in order; returns the one that answered and its stream.
pub async fn chat(
    llms: &[Arc<dyn Llm>],
    req: &ChatRequest,
) -> Result<(Arc<dyn Llm>, EventStream<LlmEvent>)> {
    let mut errors = Vec::new();
    for l in llms {
        match l.chat(req).await {
            Ok(s) => match check_first(s).await {
                Ok(s) => return Ok((l.clone(), s)),
                Err(e) => skip("LLM", e, &mut errors)?,
            },
            Err(e) => skip("LLM", e, &mut errors)?,
        }
    }
    Err(all_failed("LLM", errors))
}

/// Synthesizes with the TTS engines in order.
pub async fn synthesize(
    tts: &[Arc<dyn TextToSpeech>],
    text: &str,
) -> Result<(Arc<dyn TextToSpeech>, EventStream<AudioChunk>)> {
    let mut errors = Vec::new();
    for t in tts {
        match t.synthesize(text).await {
            Ok(s) => match check_first(s).await {
                Ok(s) => return Ok((t.clone(), s)),
                Err(e) => skip("TTS", e, &mut errors)?,
            },
            Err(e) => skip("TTS", e, &mut errors)?,
        }
    }
    Err(all_failed("TTS", errors))
}

/// Speech-to-text over several engines: streams to the first that accepts
/// a session; keeps the audio, so that if that engine fails when asked for
/// the transcript, the next engines get the whole recording.
pub struct SttChain {
    pub engines: Vec<Arc<dyn SpeechToText>>,
}

struct ChainSession {
    engines: Vec<Arc<dyn SpeechToText>>,
    current: Option<(usize, Box<dyn SttSession>)>,
    audio: Vec<i16>,
    errors: Vec<EngineError>,
}

impl ChainSession {
    /// Opens a session on engine `from` or a later one, replaying the audio so far.
    async fn open_from(&mut self, from: usize) -> Result<()> {
        for i in from..self.engines.len() {
            match self.engines[i].start().await {
                Ok(mut s) => {
                    let mut ok = true;
                    for chunk in self.audio.chunks(crate::audio::FRAME * 5) {
                        if let Err(e) = s.push(chunk).await {
                            self.errors.push(e);
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        self.current = Some((i, s));
                        return Ok(());
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!("{e}; trying the next speech-to-text engine");
                    self.errors.push(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(all_failed(
            "speech-to-text",
            std::mem::take(&mut self.errors),
        ))
    }
}

#[async_trait]
impl SpeechToText for SttChain {
    fn name(&self) -> &str {
        "speech-to-text"
    }

    async fn start(&self) -> Result<Box<dyn SttSession>> {
        let mut s = ChainSession {
            engines: self.engines.clone(),
            current: None,
            audio: Vec::new(),
            errors: Vec::new(),
        };
        s.open_from(0).await?;
        Ok(Box::new(s))
    }
}

#[async_trait]
impl SttSession for ChainSession {
    async fn push(&mut self, pcm: &[i16]) -> Result<()> {
        self.audio.extend_from_slice(pcm);
        let Some((i, s)) = self.current.as_mut() else {
            return Ok(());
        };
        if let Err(e) = s.push(pcm).await {
            // The engine went away mid-sentence: move on (the audio is kept).
            let next = *i + 1;
            tracing::warn!("{e}; trying the next speech-to-text engine");
            self.errors.push(e);
            self.current = None;
            self.open_from(next).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<String> {
        loop {
            let Some((i, s)) = self.current.take() else {
                return Err(all_failed(
                    "speech-to-text",
                    std::mem::take(&mut self.errors),
                ));
            };
            match s.finish().await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_retryable() && i + 1 < self.engines.len() => {
                    tracing::warn!("{e}; trying the next speech-to-text engine");
                    self.errors.push(e);
                    self.open_from(i + 1).await?;
                }
                Err(e) => {
                    self.errors.push(e);
                    return Err(all_failed(
                        "speech-to-text",
                        std::mem::take(&mut self.errors),
                    ));
                }
            }
        }
    }
}
