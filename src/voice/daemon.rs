//! The I/O around the turn machine: carries out its [`Action`]s (microphone,
//! speech-to-text, LLM, text-to-speech, earcons, history) and turns what
//! happens into [`Event`]s. Every slow part runs as its own task and reports
//! through one channel, so the loop never waits on an engine or the
//! network; cancelling a part is dropping its task.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::turn::{Action, Event, Outcome, State, Turn, TurnConfig};
use crate::audio::earcon::{Earcon, Earcons};
use crate::audio::{self, AudioSink, AudioSource};
use crate::config::Config;
use crate::engines::{ChatRequest, Engines, LlmEvent, SpeechToText, fallback};
use crate::history::HistoryHandle;
use crate::history::{NewConversation, NewMessage, Role};
use crate::ptt::PttEvent;

/// Stage times of one turn, for the log line and `ask`'s report.
#[derive(Debug, Clone, Default)]
pub struct TurnTimes {
    pub pressed: Option<Instant>,
    pub released: Option<Instant>,
    pub transcribed: Option<Instant>,
    pub asked: Option<Instant>,
    pub first_token: Option<Instant>,
    pub first_audio: Option<Instant>,
    pub done: Option<Instant>,
}

impl TurnTimes {
    fn ms(a: Option<Instant>, b: Option<Instant>) -> String {
        match (a, b) {
            (Some(a), Some(b)) => format!("{}", b.saturating_duration_since(a).as_millis()),
            _ => "-".into(),
        }
    }

    /// `stt=412ms llm_first=180ms tts_first=95ms total=2450ms`
    pub fn summary(&self) -> String {
        format!(
            "stt={}ms llm_first_token={}ms first_audio={}ms release_to_audio={}ms total={}ms",
            Self::ms(self.released, self.transcribed),
            Self::ms(self.asked, self.first_token),
            Self::ms(self.first_token, self.first_audio),
            Self::ms(self.released.or(self.asked), self.first_audio),
            Self::ms(self.pressed.or(self.asked), self.done),
        )
    }
}

/// What one turn produced (for `pichat ask`).
#[derive(Debug, Clone, Default)]
pub struct TurnReport {
    pub question: Option<String>,
    pub answer: Option<String>,
    pub outcome: Option<Outcome>,
    pub times: TurnTimes,
    pub conversation_id: Option<String>,
}

/// Sentences handed to the speaker, with where their audio starts in the
/// sink's sample count, to know what was heard when speech is stopped.
#[derive(Default)]
struct Spoken {
    marks: Vec<(String, Option<u64>)>,
}

/// The voice loop's parts and state.
pub struct Voice {
    pub turn: Turn,
    history: HistoryHandle,
    engines: Engines,
    stt: Arc<dyn SpeechToText>,
    source: Option<Box<dyn AudioSource>>,
    sink: Arc<dyn AudioSink>,
    earcons: Earcons,
    /// Off for one-shot questions (`pichat ask`), where there is no button.
    pub earcons_on: bool,
    /// Told when a turn is stored, so the sync pushes it.
    pub sync_kick: Option<Arc<tokio::sync::Notify>>,
    system_prompt: String,
    context_tokens: usize,
    max_listen: Duration,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    listen_task: Option<AbortOnDropHandle<()>>,
    listen_deadline: Option<tokio::time::Instant>,
    llm_task: Option<AbortOnDropHandle<()>>,
    speak_tx: Option<mpsc::UnboundedSender<String>>,
    speak_task: Option<AbortOnDropHandle<()>>,
    spoken: Arc<Mutex<Spoken>>,
    conversation: Option<String>,
    /// The conversation with the latest activity, when the turn decided.
    latest: Option<String>,
    question_id: Option<String>,
    /// The LLM's messages for the current question.
    context: Option<Vec<crate::history::ChatMessage>>,
    llm_model: Arc<Mutex<Option<String>>>,
    /// The id an engine stored the reply under (the chat server), if any.
    reply_id: Arc<Mutex<Option<String>>>,
    question_is_audio: bool,
    times: Arc<Mutex<TurnTimes>>,
    pub last: TurnReport,
}

/// What the voice loop needs.
pub struct VoiceParts {
    pub history: HistoryHandle,
    pub engines: Engines,
    pub source: Option<Box<dyn AudioSource>>,
    pub sink: Arc<dyn AudioSink>,
    pub earcons: Earcons,
}

impl Voice {
    pub fn new(cfg: &Config, parts: VoiceParts) -> Voice {
        let (events_tx, events_rx) = mpsc::channel(256);
        let stt: Arc<dyn SpeechToText> = Arc::new(fallback::SttChain {
            engines: parts.engines.stt.clone(),
        });
        Voice {
            turn: Turn::new(TurnConfig {
                new_conversation_after: cfg.ptt.new_conversation_after,
                long_press: cfg.ptt.long_press,
                max_chunk_chars: cfg.tts.max_chunk_chars,
            }),
            history: parts.history,
            engines: parts.engines,
            stt,
            source: parts.source,
            sink: parts.sink,
            earcons: parts.earcons,
            earcons_on: true,
            sync_kick: None,
            system_prompt: cfg.llm.system_prompt.clone(),
            context_tokens: cfg.llm.context_tokens,
            max_listen: cfg.stt.max_duration,
            events_tx,
            events_rx,
            listen_task: None,
            listen_deadline: None,
            llm_task: None,
            speak_tx: None,
            speak_task: None,
            spoken: Arc::default(),
            conversation: None,
            latest: None,
            question_id: None,
            context: None,
            llm_model: Arc::default(),
            reply_id: Arc::default(),
            question_is_audio: false,
            times: Arc::default(),
            last: TurnReport::default(),
        }
    }

    /// Applies a reloaded config. A turn in progress finishes with the
    /// engines it started with; the new ones answer the next question.
    pub fn reconfigure(&mut self, cfg: &Config, engines: Engines) {
        self.stt = Arc::new(fallback::SttChain {
            engines: engines.stt.clone(),
        });
        self.engines = engines;
        self.turn.set_config(TurnConfig {
            new_conversation_after: cfg.ptt.new_conversation_after,
            long_press: cfg.ptt.long_press,
            max_chunk_chars: cfg.tts.max_chunk_chars,
        });
        self.system_prompt = cfg.llm.system_prompt.clone();
        self.context_tokens = cfg.llm.context_tokens;
        self.max_listen = cfg.stt.max_duration;
        self.sink.set_volume(cfg.audio.volume);
    }

    pub fn set_earcons(&mut self, earcons: Earcons) {
        self.earcons = earcons;
    }

    pub fn sink(&self) -> &Arc<dyn AudioSink> {
        &self.sink
    }

    /// Feeds an event from outside (push-to-talk, a typed question).
    pub async fn feed(&mut self, ev: Event) {
        let now = Instant::now();
        {
            let mut t = self.times.lock().unwrap_or_else(|e| e.into_inner());
            match &ev {
                Event::Pressed if self.turn.state() == State::Idle => {
                    *t = TurnTimes {
                        pressed: Some(now),
                        ..Default::default()
                    }
                }
                Event::Released | Event::ListenEnded if self.turn.state() == State::Listening => {
                    t.released = Some(now)
                }
                Event::Transcript(_) => t.transcribed = Some(now),
                Event::Typed(_) => {
                    *t = TurnTimes::default();
                }
                _ => {}
            }
        }
        if let Event::Typed(q) | Event::Transcript(q) = &ev {
            self.last.question = Some(q.trim().to_string());
        }
        let deciding = match &ev {
            Event::Typed(_) => self.turn.state() == State::Idle,
            Event::Released | Event::ListenEnded => self.turn.state() == State::Listening,
            _ => false,
        };
        if deciding {
            self.note_latest_activity(now).await;
        }
        let actions = self.turn.handle(ev, now);
        for a in actions {
            self.execute(a).await;
        }
    }

    /// Which conversation the Pi continues (PROTOCOL-NOTES.md): the one
    /// with the latest activity in the history, from any device (the sync
    /// brings the web's), when that is recent enough. Told to the turn,
    /// which decides, just before it decides.
    async fn note_latest_activity(&mut self, now: Instant) {
        let q = crate::history::ListQuery {
            filter: crate::history::ArchivedFilter::Active,
            limit: 1,
            offset: 0,
            before: None,
        };
        let latest = match self.history.call(move |s| s.list_conversations(&q)).await {
            Ok(page) => page.conversations.into_iter().next(),
            Err(e) => {
                tracing::warn!("history: cannot find the latest conversation: {e}");
                None
            }
        };
        self.latest = None;
        if let Some(c) = latest {
            let at_ms = c.last_message_at.unwrap_or(c.created_at);
            let ago =
                Duration::from_millis(crate::time::now_ms().saturating_sub(at_ms).max(0) as u64);
            self.turn.note_activity(now.checked_sub(ago).unwrap_or(now));
            self.latest = Some(c.id);
        }
    }

    /// Waits for the next event from the running parts (or the listening
    /// deadline). `None` only if every sender is gone, which cannot happen
    /// while `self` lives.
    pub async fn next_event(&mut self) -> Option<Event> {
        let deadline = self.listen_deadline;
        tokio::select! {
            e = self.events_rx.recv() => e,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                self.listen_deadline = None;
                Some(Event::ListenEnded)
            }
        }
    }

    async fn earcon(&self, e: Earcon) {
        if !self.earcons_on {
            return;
        }
        let s = self.earcons.get(e);
        if let Err(err) = self.sink.enqueue(&s.pcm, s.rate) {
            tracing::warn!("earcon: {err}");
        }
    }

    async fn execute(&mut self, a: Action) {
        match a {
            Action::Earcon(e) => self.earcon(e).await,
            Action::StartListening => self.start_listening(),
            Action::StopListening => {
                self.listen_deadline = None;
                if let Some(s) = self.source.as_mut() {
                    s.stop();
                }
            }
            Action::CancelListening => {
                self.listen_deadline = None;
                self.listen_task = None;
                if let Some(s) = self.source.as_mut() {
                    s.stop();
                }
            }
            Action::StoreQuestion {
                text,
                new_conversation,
                from_voice,
            } => {
                self.store_question(text, new_conversation, from_voice)
                    .await
            }
            Action::AskLlm => self.ask_llm().await,
            Action::CancelLlm => self.llm_task = None,
            Action::Speak(s) => self.speak(s),
            Action::FinishSpeech => {
                // Closing the channel tells the speaker the reply is complete.
                self.speak_tx = None;
            }
            Action::StopSpeech => {
                let played = self.sink.progress().borrow().played;
                self.speak_task = None;
                self.speak_tx = None;
                self.sink.flush();
                let spoken = {
                    let sp = self.spoken.lock().unwrap_or_else(|e| e.into_inner());
                    sp.marks
                        .iter()
                        .filter(|(_, start)| start.is_some_and(|s| s < played))
                        .map(|(t, _)| t.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = self.events_tx.try_send(Event::SpeechStopped { spoken });
            }
            Action::StoreAnswer {
                text,
                tokens,
                complete,
            } => self.store_answer(text, tokens, complete).await,
            Action::Report(o) => self.report(o),
        }
    }

    fn start_listening(&mut self) {
        let Some(source) = self.source.as_mut() else {
            let _ = self
                .events_tx
                .try_send(Event::SttFailed("no microphone is configured".into()));
            return;
        };
        let frames = match source.start() {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!("microphone: {e}");
                let _ = self.events_tx.try_send(Event::SttFailed(e.to_string()));
                return;
            }
        };
        self.listen_deadline = Some(tokio::time::Instant::now() + self.max_listen);
        let stt = self.stt.clone();
        let tx = self.events_tx.clone();
        self.listen_task = Some(AbortOnDropHandle::new(tokio::spawn(listen(
            stt, frames, tx,
        ))));
    }

    /// Stores the question and prepares the LLM's context, without making
    /// the turn wait for the disk: the context (a read) is taken first, then
    /// the write is queued on the store thread and the LLM is asked at once.
    /// Writes run in order, so the answer is stored after its question.
    async fn store_question(&mut self, text: String, new_conversation: bool, from_voice: bool) {
        let existing = if new_conversation {
            None
        } else {
            self.latest.take().or_else(|| self.conversation.clone())
        };
        let (conv_id, create) = match existing {
            Some(c) => (c, false),
            None => (crate::history::new_id(), true),
        };
        let question_id = crate::history::new_id();
        let cost = crate::history::estimate_tokens(&text);
        let mut context = if create {
            Vec::new()
        } else {
            let (c, p, budget) = (
                conv_id.clone(),
                self.system_prompt.clone(),
                self.context_tokens.saturating_sub(cost),
            );
            match self.history.call(move |s| s.context(&c, &p, budget)).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("history: no context for the LLM: {e}");
                    Vec::new()
                }
            }
        };
        if context.is_empty() && !self.system_prompt.trim().is_empty() {
            context.push(crate::history::ChatMessage {
                role: Role::System,
                content: self.system_prompt.clone(),
            });
        }
        context.push(crate::history::ChatMessage {
            role: Role::User,
            content: text.clone(),
        });
        self.context = Some(context);
        let title = crate::history::title_from(&text);
        let model = self.engines.llm.first().and_then(|l| l.model());
        let (c, q) = (conv_id.clone(), question_id.clone());
        let done = self.history.submit(move |s| {
            if create {
                s.create_conversation(NewConversation {
                    id: Some(c.clone()),
                    title: Some(title),
                    model_id: model,
                    ..Default::default()
                })?;
            }
            let mut m = NewMessage::new(&c, Role::User, text);
            m.id = Some(q);
            m.is_audio = from_voice;
            s.append_message(m)
        });
        tokio::spawn(async move {
            match done.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("history: cannot store the question: {e}"),
                Err(_) => {
                    tracing::error!("history: the store is closed; the question is not stored")
                }
            }
        });
        self.conversation = Some(conv_id.clone());
        self.last.conversation_id = Some(conv_id);
        self.question_id = Some(question_id);
        self.question_is_audio = from_voice;
    }

    async fn ask_llm(&mut self) {
        let messages = self.context.take().unwrap_or_else(|| {
            let mut m = vec![crate::history::ChatMessage {
                role: Role::System,
                content: self.system_prompt.clone(),
            }];
            if let Some(q) = &self.last.question {
                m.push(crate::history::ChatMessage {
                    role: Role::User,
                    content: q.clone(),
                });
            }
            m
        });
        let req = ChatRequest {
            messages,
            conversation_id: self.conversation.clone(),
            conversation_title: self
                .last
                .question
                .as_deref()
                .map(crate::history::title_from),
            question_id: self.question_id.clone(),
            question_is_audio: self.question_is_audio,
            ..Default::default()
        };
        let reply_id = self.reply_id.clone();
        if let Ok(mut r) = reply_id.lock() {
            *r = None;
        }
        let llms = self.engines.llm.clone();
        let tx = self.events_tx.clone();
        let model = self.llm_model.clone();
        let times = self.times.clone();
        if let Ok(mut t) = times.lock() {
            t.asked = Some(Instant::now());
        }
        self.spoken = Arc::default();
        self.llm_task = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let (llm, mut stream) = match fallback::chat(&llms, &req).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Event::LlmFailed(e.to_string())).await;
                    return;
                }
            };
            if let Ok(mut m) = model.lock() {
                *m = Some(llm.model().unwrap_or_else(|| llm.name().to_string()));
            }
            let mut tokens = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(LlmEvent::Token(t)) => {
                        if let Ok(mut tt) = times.lock() {
                            tt.first_token.get_or_insert_with(Instant::now);
                        }
                        if tx.send(Event::Token(t)).await.is_err() {
                            return;
                        }
                    }
                    Ok(LlmEvent::Usage { completion, .. }) => tokens = Some(completion),
                    Ok(LlmEvent::ReplyId(id)) => {
                        if let Ok(mut r) = reply_id.lock() {
                            *r = Some(id);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Event::LlmFailed(e.to_string())).await;
                        return;
                    }
                }
            }
            let _ = tx.send(Event::LlmDone { tokens }).await;
        })));
    }

    fn speak(&mut self, sentence: String) {
        if self.speak_tx.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.speak_tx = Some(tx);
            let task = speaker(
                self.engines.tts.clone(),
                self.sink.clone(),
                rx,
                self.events_tx.clone(),
                self.spoken.clone(),
                self.times.clone(),
            );
            self.speak_task = Some(AbortOnDropHandle::new(tokio::spawn(task)));
        }
        if let Some(tx) = &self.speak_tx {
            let _ = tx.send(sentence);
        }
    }

    async fn store_answer(&mut self, text: String, tokens: Option<u32>, complete: bool) {
        self.last.answer = Some(text.clone());
        let (Some(conv), Some(q)) = (self.conversation.clone(), self.question_id.clone()) else {
            return;
        };
        let model = self.llm_model.lock().ok().and_then(|m| m.clone());
        let reply_id = self.reply_id.lock().ok().and_then(|m| m.clone());
        let rt = self
            .times
            .lock()
            .ok()
            .and_then(|t| t.asked.map(|a| a.elapsed().as_millis() as i64));
        let r = self
            .history
            .call(move |s| {
                let mut m = NewMessage::new(&conv, Role::Assistant, text);
                m.id = reply_id;
                m.model_id = model;
                m.tokens_used = tokens.map(i64::from);
                m.response_time_ms = rt;
                m.reply_to = Some(q);
                if !complete {
                    m.metadata = Some(serde_json::json!({"interrupted": true}));
                }
                s.append_message(m)
            })
            .await;
        match r {
            Ok(_) => {
                if let Some(k) = &self.sync_kick {
                    k.notify_one();
                }
            }
            Err(e) => tracing::error!("history: cannot store the answer: {e}"),
        }
    }

    fn report(&mut self, o: Outcome) {
        let times = {
            let mut t = self.times.lock().unwrap_or_else(|e| e.into_inner());
            t.done = Some(Instant::now());
            t.clone()
        };
        let q = self.last.question.clone().unwrap_or_default();
        match &o {
            Outcome::Answered => tracing::info!("turn answered: {} | {q:?}", times.summary()),
            Outcome::Interrupted => {
                tracing::info!("turn interrupted (barge-in): {} | {q:?}", times.summary())
            }
            Outcome::NothingHeard => tracing::info!(
                "turn: nothing heard (empty transcript): {}",
                times.summary()
            ),
            Outcome::Failed(e) => tracing::warn!("turn failed: {e} | {}", times.summary()),
        }
        self.last.outcome = Some(o);
        self.last.times = times;
    }

    /// Stops whatever is running (for shutdown): silence, cancel requests.
    pub fn abort(&mut self) {
        self.listen_task = None;
        self.llm_task = None;
        self.speak_task = None;
        self.speak_tx = None;
        if let Some(s) = self.source.as_mut() {
            s.stop();
        }
        self.sink.flush();
    }
}

/// Streams captured frames to speech-to-text; ends with the transcript.
async fn listen(
    stt: Arc<dyn SpeechToText>,
    mut frames: mpsc::Receiver<audio::Frame>,
    tx: mpsc::Sender<Event>,
) {
    let mut session = match stt.start().await {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = tx.send(Event::SttFailed(e.to_string())).await;
            None
        }
    };
    while let Some(f) = frames.recv().await {
        if let Some(s) = session.as_mut()
            && let Err(e) = s.push(&f).await
        {
            let _ = tx.send(Event::SttFailed(e.to_string())).await;
            session = None;
        }
    }
    // The microphone closed: after a release, or because the input ended.
    let _ = tx.send(Event::ListenEnded).await;
    if let Some(s) = session {
        let ev = match s.finish().await {
            Ok(t) => Event::Transcript(t),
            Err(e) => Event::SttFailed(e.to_string()),
        };
        let _ = tx.send(ev).await;
    }
}

/// Synthesizes sentences in order and queues their audio; the next sentence
/// is synthesized while the current one plays. When the channel closes and
/// everything queued has been heard, reports SpeechDone.
async fn speaker(
    tts: Vec<Arc<dyn crate::engines::TextToSpeech>>,
    sink: Arc<dyn AudioSink>,
    mut rx: mpsc::UnboundedReceiver<String>,
    tx: mpsc::Sender<Event>,
    spoken: Arc<Mutex<Spoken>>,
    times: Arc<Mutex<TurnTimes>>,
) {
    while let Some(sentence) = rx.recv().await {
        let idx = {
            let mut sp = spoken.lock().unwrap_or_else(|e| e.into_inner());
            sp.marks.push((sentence.clone(), None));
            sp.marks.len() - 1
        };
        let (_, mut stream) = match fallback::synthesize(&tts, &sentence).await {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Event::TtsFailed(e.to_string())).await;
                return;
            }
        };
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    {
                        let mut sp = spoken.lock().unwrap_or_else(|e| e.into_inner());
                        if sp.marks[idx].1.is_none() {
                            sp.marks[idx].1 = Some(sink.progress().borrow().queued);
                        }
                    }
                    if let Err(e) = sink.enqueue(&c.pcm, c.rate) {
                        let _ = tx.send(Event::TtsFailed(e.to_string())).await;
                        return;
                    }
                    if let Ok(mut t) = times.lock() {
                        t.first_audio.get_or_insert_with(Instant::now);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Event::TtsFailed(e.to_string())).await;
                    return;
                }
            }
        }
    }
    audio::drained(sink.as_ref()).await;
    let _ = tx.send(Event::SpeechDone).await;
}

/// A change to apply to the running assistant (e.g. a reloaded config).
pub type Control = Box<dyn FnOnce(&mut Voice) + Send>;

/// Runs the assistant until `shutdown`: push-to-talk events in, turns out.
/// The loop also applies `control` changes between events and tells the
/// systemd watchdog it is alive.
pub async fn run(
    mut voice: Voice,
    mut ptt: mpsc::Receiver<PttEvent>,
    mut control: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
) {
    let mut watchdog = crate::service::watchdog_interval().map(tokio::time::interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async {
                match watchdog.as_mut() {
                    Some(w) => { w.tick().await; }
                    None => std::future::pending().await,
                }
            } => crate::service::watchdog(),
            c = control.recv() => if let Some(apply) = c {
                apply(&mut voice);
            },
            p = ptt.recv() => match p {
                Some(PttEvent::Pressed) => voice.feed(Event::Pressed).await,
                Some(PttEvent::Released) => voice.feed(Event::Released).await,
                None => break,
            },
            ev = voice.next_event() => if let Some(ev) = ev {
                voice.feed(ev).await;
            },
        }
    }
    voice.abort();
}

/// Runs one turn to its end (for `pichat ask`): feeds `start`, then the
/// events of the running parts, until the machine is idle again.
pub async fn one_turn(
    voice: &mut Voice,
    start: Vec<Event>,
    shutdown: &CancellationToken,
) -> TurnReport {
    voice.last = TurnReport::default();
    for e in start {
        voice.feed(e).await;
    }
    while voice.turn.state() != State::Idle {
        tokio::select! {
            _ = shutdown.cancelled() => {
                voice.abort();
                break;
            }
            ev = voice.next_event() => match ev {
                Some(ev) => voice.feed(ev).await,
                None => break,
            },
        }
    }
    voice.last.clone()
}
