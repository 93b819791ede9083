//! `text_to_speech` (text → a base64 WAV) and `speech_to_text` (a base64
//! WAV → text), each a job of its own (`jobs.rs`), within
//! `engine_timeout`, and cut at shutdown. The engines are tried in order:
//! the next one when a failure is retryable.

use std::sync::Arc;

use base64::Engine as _;

use super::client::Client;
use super::jobs::{engine_failed, shutting_down};
use crate::engines::{self, EngineError, fallback};
use crate::protocol::{self as p, ErrorCode, ErrorPayload, Reply};
use crate::server::limiter::Costly;

/// `text_to_speech`: the first engine that works, as a base64 WAV.
pub(super) async fn text_to_speech(
    c: &Client,
    rid: Option<String>,
    req: p::TextToSpeech,
) -> Result<(), ErrorPayload> {
    let state = c.state.clone();
    if state.engines.tts.is_empty() {
        return Err(ErrorPayload::new(
            ErrorCode::Unavailable,
            "this server has no text-to-speech engine (server.tts_engines is empty)",
        ));
    }
    state
        .user_limits
        .take(&*state.db, c.user(), Costly::TextToSpeech)
        .await
        .map_err(|w| c.user_rate_limited("text_to_speech", w))?;
    let out = c.responder(rid, "text_to_speech");
    c.jobs.spawn(async move {
        let work = async {
            let audio = synthesize(&state.engines.tts, &req.text)
                .await
                .map_err(|e| engine_failed(&e))?;
            let wav = tokio::task::spawn_blocking(move || wav_bytes(&audio.pcm, audio.rate))
                .await
                .map_err(|e| ErrorPayload::new(ErrorCode::Internal, e.to_string()))??;
            Ok::<_, ErrorPayload>((wav.0, wav.1))
        };
        let result = tokio::select! {
            _ = state.cut_streams.cancelled() => Err(shutting_down()),
            r = tokio::time::timeout(state.opts.engine_timeout, work) => {
                r.unwrap_or_else(|_| Err(ErrorPayload::new(ErrorCode::AiFailed, "text-to-speech took too long")))
            }
        };
        match result {
            Ok((wav, sample_rate)) => {
                out.send(Reply::TextToSpeechResult(p::TextToSpeechResult {
                    audio_data: base64::engine::general_purpose::STANDARD.encode(wav),
                    sample_rate,
                }))
                .await;
            }
            Err(e) => out.error(e).await,
        }
    })
}

/// Tries the engines in order (the next one on a retryable failure).
async fn synthesize(
    tts: &[Arc<dyn engines::TextToSpeech>],
    text: &str,
) -> engines::Result<engines::AudioChunk> {
    let mut last = None;
    for t in tts {
        match engines::synthesize_all(t.as_ref(), text).await {
            Ok(a) => return Ok(a),
            Err(e) if e.is_retryable() => {
                tracing::warn!("{e}; trying the next text-to-speech engine");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(EngineError::Config {
        engine: "text-to-speech".into(),
        message: "no engine configured".into(),
    }))
}

/// Mono 16-bit WAV bytes; too long a result is refused.
fn wav_bytes(pcm: &[i16], rate: u32) -> Result<(Vec<u8>, u32), ErrorPayload> {
    let bytes = pcm.len() * 2 + 44;
    if bytes > p::limits::MAX_STT_FRAME {
        return Err(ErrorPayload::new(
            ErrorCode::TooLarge,
            "the speech would be over 8 MiB of WAV; send a shorter text",
        ));
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cur = std::io::Cursor::new(Vec::with_capacity(bytes));
    let internal = |e: hound::Error| ErrorPayload::new(ErrorCode::Internal, e.to_string());
    let mut w = hound::WavWriter::new(&mut cur, spec).map_err(internal)?;
    for &s in pcm {
        w.write_sample(s).map_err(internal)?;
    }
    w.finalize().map_err(internal)?;
    Ok((cur.into_inner(), rate))
}

/// `speech_to_text`: a base64 WAV (any rate, mono or stereo) → text.
pub(super) async fn speech_to_text(
    c: &Client,
    rid: Option<String>,
    req: p::SpeechToText,
) -> Result<(), ErrorPayload> {
    let state = c.state.clone();
    if state.engines.stt.is_empty() {
        return Err(ErrorPayload::new(
            ErrorCode::Unavailable,
            "this server has no speech-to-text engine (server.stt_engines is empty)",
        ));
    }
    state
        .user_limits
        .take(&*state.db, c.user(), Costly::SpeechToText)
        .await
        .map_err(|w| c.user_rate_limited("speech_to_text", w))?;
    let out = c.responder(rid, "speech_to_text");
    c.jobs.spawn(async move {
        let limits = crate::audio::wav::Limits::stt(state.opts.stt_max);
        let work = async {
            let pcm = tokio::task::spawn_blocking(move || decode_audio(&req.audio_data, &limits))
                .await
                .map_err(|e| ErrorPayload::new(ErrorCode::Internal, e.to_string()))??;
            let chain = fallback::SttChain {
                engines: state.engines.stt.clone(),
            };
            engines::transcribe(&chain, &pcm)
                .await
                .map_err(|e| engine_failed(&e))
        };
        let result = tokio::select! {
            _ = state.cut_streams.cancelled() => Err(shutting_down()),
            r = tokio::time::timeout(state.opts.engine_timeout, work) => {
                r.unwrap_or_else(|_| Err(ErrorPayload::new(ErrorCode::AiFailed, "speech-to-text took too long")))
            }
        };
        match result {
            Ok(text) => {
                out.send(Reply::SpeechToTextResult(p::SpeechToTextResult {
                    text: text.trim().to_string(),
                }))
                .await;
            }
            Err(e) => out.error(e).await,
        }
    })
}

/// base64 WAV → 16 kHz mono s16, as the engines take it. The WAV is
/// checked from its header before anything is decoded (see
/// `audio::wav::decode`); a refusal names the field.
fn decode_audio(b64: &str, limits: &crate::audio::wav::Limits) -> Result<Vec<i16>, ErrorPayload> {
    let bad = |m: String| ErrorPayload::new(ErrorCode::BadRequest, m);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| bad(format!("payload.audio_data is not base64 ({e})")))?;
    let pcm = crate::audio::wav::decode::pcm16k_from_bytes(&bytes, limits)
        .map_err(|e| bad(format!("payload.audio_data: {e}")))?;
    if pcm.is_empty() {
        return Err(bad("payload.audio_data holds no audio".into()));
    }
    Ok(pcm)
}
