//! The actions that call engines: `send_message` (an LLM reply streamed as
//! `message_stream`), `text_to_speech` and `speech_to_text`. Each runs as a
//! job of its own, so the connection's reader goes on serving other
//! requests (a `sync` never waits behind a stream).
//!
//! An AI reply is stored once, when its stream ends (never token by token),
//! whether or not the client is still connected: a client that went away
//! finds it with `sync` or by sending the same message again (same id),
//! which re-sends the stored reply instead of asking the LLM twice.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use tokio::sync::{OwnedSemaphorePermit, watch};
use uuid::Uuid;

use super::State;
use super::conn::{Conn, Session};
use super::handlers::{db_error, wire};
use super::limiter::Costly;
use crate::engines::{self, ChatRequest, EngineError, Llm, LlmEvent, fallback};
use crate::protocol::{
    self as p, ErrorCode, ErrorPayload, Frame, Reply, ServerFrame, limits::MAX_CONTENT_CHARS,
};
use crate::serverdb::{Author, Stored, UserId};
use crate::store::{Message, NewMessage, Role};

/// Where a job's replies go: the connection (maybe gone) and the request id.
#[derive(Clone)]
struct Responder {
    conn: Arc<Conn>,
    rid: Option<String>,
    action: &'static str,
}

impl Responder {
    async fn send(&self, body: Reply) -> bool {
        self.conn.send(&Frame::new(self.rid.clone(), body)).await
    }

    async fn error(&self, e: ErrorPayload) {
        self.conn
            .send(&ServerFrame::error(
                self.rid.clone(),
                e.for_action(self.action),
            ))
            .await;
    }
}

/// The protocol id of an id the store gave out (`internal` if it is not a UUID).
fn id(what: &'static str, s: &str) -> Result<Uuid, ErrorPayload> {
    crate::store::store_id(what, s).map_err(db_error)
}

fn engine_failed(e: &EngineError) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::AiFailed, e.to_string())
}

impl Session {
    /// A free job slot of this connection, or `rate_limited`.
    fn job_slot(&self) -> Result<OwnedSemaphorePermit, ErrorPayload> {
        self.job_slots.clone().try_acquire_owned().map_err(|_| ErrorPayload {
            retry_after_ms: Some(1000),
            ..ErrorPayload::new(
                ErrorCode::RateLimited,
                format!(
                    "{} requests are already running on this connection; wait for one to finish",
                    self.state.opts.max_jobs_per_connection
                ),
            )
        })
    }

    /// Runs a job of this connection in its slot.
    fn spawn_in<F>(&self, slot: OwnedSemaphorePermit, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.state.tracker.spawn(self.jobs.track_future(async move {
            fut.await;
            drop(slot);
        }));
    }

    /// Starts a job of this connection, if it has a free slot.
    fn spawn_job<F>(&self, fut: F) -> Result<(), ErrorPayload>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let slot = self.job_slot()?;
        self.spawn_in(slot, fut);
        Ok(())
    }
}

/// Removes a reply from the in-flight map and wakes its waiters, even if
/// the job panics.
struct InFlightGuard {
    state: Arc<State>,
    id: String,
    done: watch::Sender<bool>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        let _ = self.done.send(true);
    }
}

/// `send_message`: stores the user message, answers `message_sent`, then
/// streams the reply from a job. A retry (same `id`) re-sends the stored
/// reply, waits for the one being made, or makes the missing one.
pub(super) async fn send_message(
    s: &mut Session,
    rid: Option<String>,
    req: p::SendMessage,
) -> Result<(), ErrorPayload> {
    let started = Instant::now();
    let user = s.user();
    let state = s.state.clone();
    let out = Responder {
        conn: s.conn.clone(),
        rid,
        action: "send_message",
    };
    let mut existing: Option<Message> = None;
    if let Some(id) = req.id {
        let id = id.to_string();
        let running = state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(done) = running {
            let st = state.clone();
            return s.spawn_job(async move { wait_and_resend(st, out, user, id, req, done).await });
        }
        let found = s.store().find_message(user, &id).await.map_err(db_error)?;
        if let Some(f) = found {
            same_message(&f.message, &req)?;
            if let Some(reply) = f.reply {
                return resend(&out, f.message, reply).await;
            }
            existing = Some(f.message);
        }
    }
    if state.engines.llm.is_empty() {
        return Err(ErrorPayload::new(
            ErrorCode::Unavailable,
            "this server has no LLM engine (server.llm_engines is empty)",
        ));
    }
    state
        .user_limits
        .take(&*state.db, user, Costly::SendMessage)
        .await
        .map_err(|w| s.user_rate_limited("send_message", w))?;
    // The job's slot is taken before anything is stored.
    let slot = s.job_slot()?;
    let (duplicate, question) = match existing {
        Some(m) => (true, m),
        None => {
            let new = NewMessage {
                id: Some(req.id.unwrap_or_else(Uuid::now_v7).to_string()),
                conversation_id: req.conversation_id.to_string(),
                role: Role::User,
                content: req.content.clone(),
                created_at: None,
                model_id: None,
                tokens_used: None,
                response_time_ms: None,
                is_audio: req.is_audio,
                origin: s.origin(),
                reply_to: None,
                metadata: None,
            };
            let stored = s
                .store()
                .add_message(s.author(), user, new)
                .await
                .map_err(db_error)?;
            match stored {
                Stored::New(m) => (false, m),
                Stored::Duplicate(m) => (true, m),
            }
        }
    };
    // Registered before `message_sent`, so a retry arriving now waits.
    let (done_tx, done_rx) = watch::channel(false);
    let already = {
        let mut map = state.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&question.id) {
            Some(rx) => Some(rx.clone()),
            None => {
                map.insert(question.id.clone(), done_rx);
                None
            }
        }
    };
    if let Some(done) = already {
        let st = state.clone();
        let id = question.id.clone();
        s.spawn_in(slot, async move {
            wait_and_resend(st, out, user, id, req, done).await
        });
        return Ok(());
    }
    let guard = InFlightGuard {
        state: state.clone(),
        id: question.id.clone(),
        done: done_tx,
    };
    // `message_sent` is queued before the job starts, so it comes first.
    out.send(Reply::MessageSent(p::MessagePayload {
        message: wire(&question)?,
        duplicate,
    }))
    .await;
    s.spawn_in(slot, async move {
        let _guard = guard;
        generate(state, out, user, question, started).await;
    });
    Ok(())
}

/// The user message of a retry must be the same message.
fn same_message(stored: &Message, req: &p::SendMessage) -> Result<(), ErrorPayload> {
    if stored.role != Role::User
        || stored.content != req.content
        || stored.conversation_id != req.conversation_id.to_string()
    {
        return Err(ErrorPayload::new(
            ErrorCode::Conflict,
            format!(
                "message {} already exists with different content",
                stored.id
            ),
        ));
    }
    Ok(())
}

/// Answers a retry with the stored reply: `message_sent` (duplicate), then
/// the whole reply as one finished `message_stream` frame.
async fn resend(out: &Responder, question: Message, reply: Message) -> Result<(), ErrorPayload> {
    let sent = Reply::MessageSent(p::MessagePayload {
        message: wire(&question)?,
        duplicate: true,
    });
    let stream = Reply::MessageStream(p::MessageStream {
        conversation_id: id("conversation", &question.conversation_id)?,
        message_id: id("message", &reply.id)?,
        reply_to: id("message", &question.id)?,
        seq: 0,
        token: reply.content.clone(),
        finished: true,
        message: Some(wire(&reply)?),
        interrupted: false,
    });
    out.send(sent).await;
    out.send(stream).await;
    Ok(())
}

/// A retry of a message whose reply is being made: waits for it, then
/// re-sends it (or says it failed).
async fn wait_and_resend(
    state: Arc<State>,
    out: Responder,
    user: UserId,
    id: String,
    req: p::SendMessage,
    mut done: watch::Receiver<bool>,
) {
    let _ = done.wait_for(|d| *d).await;
    let found = state.db.find_message(user, &id).await;
    match found {
        Ok(Some(f)) => {
            if let Err(e) = same_message(&f.message, &req) {
                return out.error(e).await;
            }
            match f.reply {
                Some(reply) => {
                    if let Err(e) = resend(&out, f.message, reply).await {
                        out.error(e).await;
                    }
                }
                None => {
                    out.error(ErrorPayload::new(
                        ErrorCode::AiFailed,
                        "the reply to this message failed; send it again",
                    ))
                    .await
                }
            }
        }
        Ok(None) => {
            out.error(ErrorPayload::new(
                ErrorCode::NotFound,
                "the message is gone",
            ))
            .await
        }
        Err(e) => out.error(db_error(e)).await,
    }
}

/// The LLMs in the order to try: the one the conversation (or the user)
/// chose first, when it names a configured engine or its model.
fn ordered(llms: &[Arc<dyn Llm>], preferred: Option<&str>) -> Vec<Arc<dyn Llm>> {
    let mut v = llms.to_vec();
    if let Some(p) = preferred
        && let Some(i) = v
            .iter()
            .position(|l| l.name() == p || l.model().as_deref() == Some(p))
    {
        let l = v.remove(i);
        v.insert(0, l);
    }
    v
}

/// The LLMs in order, as `engines::fallback::chat` does: the first whose
/// opening (or first event) is not a retryable failure. Mirrored here
/// because the future of `fallback::chat` is not `Send` (its async closure
/// trips rustc's higher-ranked `Send` check), and AI replies run as
/// spawned tasks.
async fn open_chat(
    llms: &[Arc<dyn Llm>],
    req: &ChatRequest,
) -> engines::Result<(Arc<dyn Llm>, engines::EventStream<LlmEvent>)> {
    engines::fallback::chat(llms, req).await
}

/// Runs the reply: typing on, stream, store, last frame, typing off.
async fn generate(
    state: Arc<State>,
    out: Responder,
    user: UserId,
    question: Message,
    started: Instant,
) {
    let conversation_id = match id("conversation", &question.conversation_id) {
        Ok(c) => c,
        Err(e) => return out.error(e).await,
    };
    out.send(Reply::TypingIndicator(p::TypingIndicator {
        conversation_id,
        is_typing: true,
    }))
    .await;
    if let Err(e) = stream_reply(&state, &out, user, &question, started).await {
        state.metrics.ai_stream(started.elapsed(), "failed");
        out.error(e).await;
    }
    out.send(Reply::TypingIndicator(p::TypingIndicator {
        conversation_id,
        is_typing: false,
    }))
    .await;
}

async fn stream_reply(
    state: &Arc<State>,
    out: &Responder,
    user: UserId,
    question: &Message,
    started: Instant,
) -> Result<(), ErrorPayload> {
    let stall = state.opts.stall_timeout;
    let default_prompt = state.opts.system_prompt.clone();
    let budget = state.opts.context_tokens;
    let (conv_id, q_id) = (question.conversation_id.clone(), question.id.clone());
    let crate::serverdb::ReplyContext {
        messages,
        model: preferred,
    } = state
        .db
        .reply_context(user, &conv_id, &q_id, &default_prompt, budget)
        .await
        .map_err(db_error)?;
    let llms = ordered(&state.engines.llm, preferred.as_deref());
    let req = ChatRequest {
        messages,
        ..Default::default()
    };
    let opened = tokio::select! {
        _ = state.cut_streams.cancelled() => {
            return Err(ErrorPayload::new(
                ErrorCode::Unavailable,
                "the server is shutting down; send the message again later",
            ));
        }
        r = tokio::time::timeout(stall, open_chat(&llms, &req)) => r,
    };
    let (llm, mut stream) = match opened {
        Err(_) => {
            return Err(ErrorPayload::new(
                ErrorCode::AiFailed,
                format!("the LLM did not answer within {} s", stall.as_secs_f64()),
            ));
        }
        Ok(Err(e)) => {
            tracing::warn!("AI reply failed: {e}");
            return Err(engine_failed(&e));
        }
        Ok(Ok(x)) => x,
    };
    let reply_id = Uuid::now_v7();
    let conversation_id = id("conversation", &question.conversation_id)?;
    let reply_to = id("message", &question.id)?;
    let frame = |seq: u64, token: String| {
        Reply::MessageStream(p::MessageStream {
            conversation_id,
            message_id: reply_id,
            reply_to,
            seq,
            token,
            finished: false,
            message: None,
            interrupted: false,
        })
    };
    let mut text = String::new();
    let mut chars = 0usize;
    let mut seq = 0u64;
    let mut usage: Option<i64> = None;
    let mut interrupted = false;
    let mut client_here = true;
    loop {
        let event = tokio::select! {
            biased;
            _ = state.cut_streams.cancelled() => {
                interrupted = true;
                break;
            }
            ev = tokio::time::timeout(stall, stream.next()) => ev,
        };
        match event {
            Err(_) => {
                tracing::warn!(
                    "{}: the LLM went silent for {} s mid-reply; storing what it said",
                    llm.name(),
                    stall.as_secs_f64()
                );
                interrupted = true;
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::warn!("{e}; storing the reply so far");
                interrupted = true;
                break;
            }
            Ok(Some(Ok(LlmEvent::Usage { completion, .. }))) => {
                usage = Some(i64::from(completion));
            }
            // Another server's id for its copy: this server stores its own.
            Ok(Some(Ok(LlmEvent::ReplyId(_)))) => {}
            Ok(Some(Ok(LlmEvent::Token(mut t)))) => {
                if t.is_empty() {
                    continue;
                }
                let n = t.chars().count();
                if chars + n > MAX_CONTENT_CHARS {
                    t = t.chars().take(MAX_CONTENT_CHARS - chars).collect();
                    interrupted = true;
                }
                if text.is_empty() {
                    state.metrics.ai_first_token(started.elapsed());
                }
                chars += t.chars().count();
                text.push_str(&t);
                if client_here && !t.is_empty() {
                    // The client may have gone: the reply is made and stored anyway.
                    client_here = out.send(frame(seq, t)).await;
                    seq += 1;
                }
                if interrupted {
                    break;
                }
            }
        }
    }
    drop(stream);
    if text.trim().is_empty() {
        return Err(ErrorPayload::new(
            ErrorCode::AiFailed,
            if interrupted {
                "the LLM stopped before saying anything"
            } else {
                "the LLM returned an empty reply"
            },
        ));
    }
    let new = NewMessage {
        id: Some(reply_id.to_string()),
        conversation_id: question.conversation_id.clone(),
        role: Role::Assistant,
        content: text,
        created_at: None,
        model_id: Some(llm.model().unwrap_or_else(|| llm.name().to_string())),
        tokens_used: usage,
        response_time_ms: Some(started.elapsed().as_millis() as i64),
        is_audio: false,
        origin: question.origin,
        reply_to: Some(question.id.clone()),
        metadata: None,
    };
    let stored = state
        .db
        .add_message(Author(out.conn.id), user, new)
        .await
        .map_err(db_error)?
        .message()
        .clone();
    state.metrics.ai_stream(
        started.elapsed(),
        if interrupted { "interrupted" } else { "ok" },
    );
    out.send(Reply::MessageStream(p::MessageStream {
        conversation_id,
        message_id: reply_id,
        reply_to,
        seq,
        token: String::new(),
        finished: true,
        message: Some(wire(&stored)?),
        interrupted,
    }))
    .await;
    Ok(())
}

/// `text_to_speech`: the first engine that works, as a base64 WAV.
pub(super) async fn text_to_speech(
    s: &mut Session,
    rid: Option<String>,
    req: p::TextToSpeech,
) -> Result<(), ErrorPayload> {
    let state = s.state.clone();
    if state.engines.tts.is_empty() {
        return Err(ErrorPayload::new(
            ErrorCode::Unavailable,
            "this server has no text-to-speech engine (server.tts_engines is empty)",
        ));
    }
    state
        .user_limits
        .take(&*state.db, s.user(), Costly::TextToSpeech)
        .await
        .map_err(|w| s.user_rate_limited("text_to_speech", w))?;
    let out = Responder {
        conn: s.conn.clone(),
        rid,
        action: "text_to_speech",
    };
    s.spawn_job(async move {
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

fn shutting_down() -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::Unavailable,
        "the server is shutting down; try again later",
    )
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
    s: &mut Session,
    rid: Option<String>,
    req: p::SpeechToText,
) -> Result<(), ErrorPayload> {
    let state = s.state.clone();
    if state.engines.stt.is_empty() {
        return Err(ErrorPayload::new(
            ErrorCode::Unavailable,
            "this server has no speech-to-text engine (server.stt_engines is empty)",
        ));
    }
    state
        .user_limits
        .take(&*state.db, s.user(), Costly::SpeechToText)
        .await
        .map_err(|w| s.user_rate_limited("speech_to_text", w))?;
    let out = Responder {
        conn: s.conn.clone(),
        rid,
        action: "speech_to_text",
    };
    s.spawn_job(async move {
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
