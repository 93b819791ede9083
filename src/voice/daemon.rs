//! The I/O around the turn machine: carries out its [`Action`]s (microphone,
//! speech-to-text, LLM, text-to-speech, earcons, history) and turns what
//! happens into [`Event`]s. Every slow part runs as its own task and reports
//! through one channel ([`Msg`]), so the loop never waits on an engine or
//! the network; cancelling a part is dropping its task.
//!
//! [`Voice`] holds the long-lived parts; what belongs to one turn (its ids,
//! the LLM's context, the model that answered, timings, what was handed to
//! the speaker) is a [`TurnState`], replaced when a turn starts. The tasks
//! report what they learn as messages, never through shared state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::ear::{self, EarCmd, Heard};
use super::turn::{Action, Event, Outcome, Start, State, Turn, TurnConfig};
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
    /// The end of the user's speech, by voice activity (hands-free turns).
    pub speech_end: Option<Instant>,
    /// The question is a draft transcribed in the silence after it.
    pub drafted: bool,
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
        ) + &match self.speech_end {
            Some(_) => format!(
                " speech_end_to_audio={}ms",
                Self::ms(self.speech_end, self.first_audio)
            ),
            None => String::new(),
        } + if self.drafted { " draft=used" } else { "" }
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

/// What the running parts report to the loop.
#[derive(Debug)]
pub enum Msg {
    /// For the turn machine.
    Turn(Event),
    /// The LLM engine that answers, and the model id to store.
    LlmModel(String),
    /// The id the engine stored the reply under (the chat server).
    ReplyId(String),
    /// Sentence `index` handed to the speaker starts at this sample count
    /// of the sink.
    Mark { index: usize, start: u64 },
    /// The first audio of the reply was queued.
    FirstAudio(Instant),
    /// From the ear.
    Heard(Heard),
    /// Speech was stopped with this many samples heard (queued after the
    /// speaker's last marks).
    Stopped { played: u64 },
}

/// Everything that belongs to one turn.
#[derive(Debug, Default)]
pub struct TurnState {
    question_id: Option<String>,
    question_is_audio: bool,
    /// The LLM's messages for the question.
    context: Option<Vec<crate::history::ChatMessage>>,
    model: Option<String>,
    reply_id: Option<String>,
    times: TurnTimes,
    /// Sentences handed to the speaker, with where their audio starts.
    marks: Vec<(String, Option<u64>)>,
}

/// The microphone while hands-free: always open, read by the ear.
struct Ear {
    cmds: mpsc::UnboundedSender<EarCmd>,
    _task: AbortOnDropHandle<()>,
}

/// Hands-free listening settings of a reload.
#[derive(Clone)]
pub struct Listening {
    pub wake: Vec<Arc<dyn crate::wake::WakeEngine>>,
    pub hands_free: bool,
    pub vad_threshold: f32,
    /// Echo cancellation on, with this tail (`None`: off).
    pub echo_tail: Option<std::time::Duration>,
}

/// The voice loop's long-lived parts.
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
    listening: Listening,
    msgs_tx: mpsc::Sender<Msg>,
    msgs_rx: mpsc::Receiver<Msg>,
    /// The ear of a hands-free daemon (`None`: the microphone opens per turn).
    ear: Option<Ear>,
    /// The ear of one button turn.
    turn_ear: Option<Ear>,
    last_wake_end: Option<u64>,
    listen_task: Option<AbortOnDropHandle<()>>,
    /// Asks the listening session for what it heard so far (hands-free).
    draft_req: Option<mpsc::UnboundedSender<DraftAudio>>,
    draft_task: Option<AbortOnDropHandle<()>>,
    llm_task: Option<AbortOnDropHandle<()>>,
    speak_tx: Option<mpsc::UnboundedSender<String>>,
    speak_task: Option<AbortOnDropHandle<()>>,
    /// The conversation turns go on in (across turns).
    conversation: Option<String>,
    cur: TurnState,
    /// How the turn being reported started.
    reporting: Start,
    /// Live figures for `pichat listen monitor`.
    pub monitor: broadcast::Sender<String>,
    /// The conversation with the latest activity, when the turn started
    /// listening (or took a typed question).
    latest: Option<String>,
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

/// The turn machine's settings from the config.
pub fn turn_config(cfg: &Config) -> TurnConfig {
    TurnConfig {
        new_conversation_after: cfg.ptt.new_conversation_after,
        long_press: cfg.ptt.long_press,
        max_chunk_chars: cfg.tts.max_chunk_chars,
        max_button: cfg.stt.max_duration,
        silence: cfg.listen.silence,
        min_speech: cfg.listen.min_speech,
        no_speech: cfg.listen.no_speech_timeout,
        max_listen: cfg.listen.max_listen,
        follow_up: cfg.listen.follow_up,
        draft: cfg.listen.draft,
    }
}

impl Voice {
    pub fn new(cfg: &Config, parts: VoiceParts) -> Voice {
        let (msgs_tx, msgs_rx) = mpsc::channel(256);
        let stt: Arc<dyn SpeechToText> = Arc::new(fallback::SttChain {
            engines: parts.engines.stt.clone(),
        });
        Voice {
            turn: Turn::new(turn_config(cfg)),
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
            listening: Listening {
                wake: Vec::new(),
                hands_free: false,
                vad_threshold: cfg.listen.vad_threshold,
                echo_tail: None,
            },
            msgs_tx,
            msgs_rx,
            ear: None,
            turn_ear: None,
            last_wake_end: None,
            listen_task: None,
            draft_req: None,
            draft_task: None,
            llm_task: None,
            speak_tx: None,
            speak_task: None,
            conversation: None,
            cur: TurnState::default(),
            reporting: Start::None,
            monitor: broadcast::channel(64).0,
            latest: None,
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
        self.turn.set_config(turn_config(cfg));
        self.system_prompt = cfg.llm.system_prompt.clone();
        self.context_tokens = cfg.llm.context_tokens;
        self.sink.set_volume(cfg.audio.volume);
    }

    /// Turns hands-free listening on (wake words) or off; re-arms the ear
    /// with the given engines. Without a microphone it stays off.
    pub fn set_listening(&mut self, l: Listening) {
        self.listening = l;
        self.ear = None;
        if let Some(s) = self.source.as_mut() {
            s.stop();
        }
        if !self.listening.hands_free {
            return;
        }
        match self.start_ear(true) {
            Ok(e) => self.ear = Some(e),
            Err(e) => tracing::error!(
                "microphone: {e}; no wake word until it works (the button still does)"
            ),
        }
    }

    fn start_ear(&mut self, wake: bool) -> Result<Ear, audio::AudioError> {
        let source = self
            .source
            .as_mut()
            .ok_or_else(|| audio::AudioError::Other("no microphone is configured".into()))?;
        let frames = source.start()?;
        let (cmds, cmds_rx) = mpsc::unbounded_channel();
        let chain = (wake && !self.listening.wake.is_empty())
            .then(|| crate::wake::chain::Chain::new(self.listening.wake.clone()));
        let aec = match (self.listening.echo_tail, self.sink.reference()) {
            (Some(tail), Some(reference)) => {
                let lib = std::path::Path::new(audio::aec::LIBRARY);
                match audio::aec::EchoCanceller::new(reference, tail.as_millis() as u32, lib) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::warn!("{e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let (tx, mut rx) = mpsc::channel(256);
        let msgs = self.msgs_tx.clone();
        // The ear reports through the loop's one channel.
        let forward = async move {
            while let Some(h) = rx.recv().await {
                if msgs.send(Msg::Heard(h)).await.is_err() {
                    return;
                }
            }
        };
        let task = tokio::spawn({
            let monitor = self.monitor.clone();
            let vad = self.listening.vad_threshold;
            async move {
                tokio::join!(
                    ear::run(frames, chain, aec, vad, cmds_rx, tx, monitor),
                    forward
                );
            }
        });
        Ok(Ear {
            cmds,
            _task: AbortOnDropHandle::new(task),
        })
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
        let idle = matches!(self.turn.state(), State::Idle);
        match &ev {
            Event::Pressed | Event::Wake(_) if idle => {
                self.cur = TurnState::default();
                self.cur.times.pressed = Some(now);
            }
            Event::Typed(_) => self.cur = TurnState::default(),
            Event::Released | Event::ListenEnded | Event::Deadline | Event::Pressed
                if self.turn.state() == State::Listening =>
            {
                self.cur.times.released = Some(now);
                // Voice activity's last frame ends 20 ms after it began.
                self.cur.times.speech_end = self
                    .turn
                    .last_voice()
                    .map(|v| v + std::time::Duration::from_millis(20));
            }
            Event::Transcript(_) => self.cur.times.transcribed = Some(now),
            Event::Token(_) => {
                self.cur.times.first_token.get_or_insert(now);
            }
            _ => {}
        }
        if let Event::Typed(q) | Event::Transcript(q) = &ev {
            self.last.question = Some(q.trim().to_string());
        }
        // Which conversation a question goes to is decided by the turn; tell
        // it the latest activity: before a typed question, and after the
        // actions of a press or wake word (a spoken question needs it only
        // when listening ends), so that no history query stands between the
        // wake word and its earcon.
        let typed = matches!(ev, Event::Typed(_)) && self.turn.state() == State::Idle;
        let listening =
            matches!(ev, Event::Pressed | Event::Wake(_)) && self.turn.state() != State::Listening;
        if typed {
            self.note_latest_activity(now).await;
        }
        // The turn a Report in these actions is about started like this
        // (a follow-up may begin in the same step).
        self.reporting = self.turn.start().clone();
        let actions = self.turn.handle(ev, now);
        for a in actions {
            self.execute(a).await;
        }
        // The turn reads it only when listening ends (`is_new_conversation`).
        if listening {
            self.note_latest_activity(now).await;
        }
    }

    /// Which conversation the Pi continues (PROTOCOL-NOTES.md): the one
    /// with the latest activity in the history, from any device (the sync
    /// brings the web's), when that is recent enough. Told to the turn,
    /// which decides when the question is asked.
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

    /// Handles a message of the running parts.
    pub async fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Turn(ev) => self.feed(ev).await,
            Msg::LlmModel(m) => self.cur.model = Some(m),
            Msg::ReplyId(id) => self.cur.reply_id = Some(id),
            Msg::Mark { index, start } => {
                if let Some(m) = self.cur.marks.get_mut(index) {
                    m.1.get_or_insert(start);
                }
            }
            Msg::FirstAudio(t) => {
                self.cur.times.first_audio.get_or_insert(t);
            }
            Msg::Stopped { played } => {
                let spoken = self
                    .cur
                    .marks
                    .iter()
                    .filter(|(_, start)| start.is_some_and(|s| s < played))
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.feed(Event::SpeechStopped { spoken }).await
            }
            Msg::Heard(Heard::WakeEnd(end)) => self.last_wake_end = Some(end),
            Msg::Heard(Heard::Turn(ev)) => {
                // Voice activity only matters while listening.
                if matches!(ev, Event::Voice { .. }) && self.turn.state() != State::Listening {
                    return;
                }
                self.feed(ev).await
            }
            Msg::Heard(Heard::Closed) => {
                if self.ear.is_some() && self.turn_ear.is_none() {
                    tracing::warn!("microphone: the input ended; the wake word is off");
                    self.ear = None;
                }
                self.turn_ear = None;
                // The session sees its frames end and reports ListenEnded.
            }
        }
    }

    /// Waits for the next message from the running parts, or the turn's
    /// deadline. `None` only if every sender is gone, which cannot happen
    /// while `self` lives.
    pub async fn next_msg(&mut self) -> Option<Msg> {
        let deadline = self.turn.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            m = self.msgs_rx.recv() => m,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Some(Msg::Turn(Event::Deadline)),
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

    fn stop_mic(&mut self) {
        match &self.ear {
            Some(e) => {
                let _ = e.cmds.send(EarCmd::Detach);
            }
            None => {
                self.turn_ear = None;
                if let Some(s) = self.source.as_mut() {
                    s.stop();
                }
            }
        }
    }

    async fn execute(&mut self, a: Action) {
        match a {
            Action::Earcon(e) => self.earcon(e).await,
            Action::StartListening => self.start_listening(),
            Action::StopListening => self.stop_mic(),
            Action::CancelListening => {
                self.listen_task = None;
                self.draft_req = None;
                self.stop_mic();
            }
            Action::Draft { id } => self.draft(id),
            Action::DropDraft => self.draft_task = None,
            Action::StoreQuestion {
                text,
                new_conversation,
                from_voice,
            } => {
                // No transcript came: the question is a draft, made by now.
                if from_voice && self.cur.times.transcribed.is_none() {
                    self.cur.times.drafted = true;
                    self.cur.times.transcribed = Some(Instant::now());
                }
                self.last.question = Some(text.clone());
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
                // Marks the speaker sent may still be in the channel: what
                // was heard is decided after them.
                let _ = self.msgs_tx.try_send(Msg::Stopped { played });
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
        let (stt_tx, stt_rx) = mpsc::channel(audio::FRAME_QUEUE);
        let attach = |ear: &Ear, from| {
            ear.cmds
                .send(EarCmd::Attach {
                    stt: stt_tx.clone(),
                    from,
                })
                .is_ok()
        };
        let from = match self.turn.start() {
            Start::Wake(_) => self.last_wake_end.take(),
            _ => None,
        };
        let attached = match &self.ear {
            Some(e) => attach(e, from),
            None => match self.start_ear(false) {
                Ok(e) => {
                    let ok = attach(&e, None);
                    self.turn_ear = Some(e);
                    ok
                }
                Err(e) => {
                    tracing::error!("microphone: {e}");
                    let _ = self
                        .msgs_tx
                        .try_send(Msg::Turn(Event::SttFailed(e.to_string())));
                    return;
                }
            },
        };
        drop(stt_tx);
        self.draft_req = None;
        if !attached {
            let _ = self
                .msgs_tx
                .try_send(Msg::Turn(Event::SttFailed("the microphone stopped".into())));
            return;
        }
        let stt = self.stt.clone();
        let tx = self.msgs_tx.clone();
        // Hands-free questions may be drafted: the session keeps their audio.
        let drafts = if matches!(self.turn.start(), Start::Wake(_) | Start::FollowUp) {
            let (req_tx, req_rx) = mpsc::unbounded_channel();
            self.draft_req = Some(req_tx);
            Some(req_rx)
        } else {
            None
        };
        self.listen_task = Some(AbortOnDropHandle::new(tokio::spawn(listen(
            stt, stt_rx, tx, drafts,
        ))));
    }

    /// Transcribes what the session heard so far, beside it (→ Draft).
    fn draft(&mut self, id: u32) {
        tracing::debug!("silence after the question: drafting its transcript ({id})");
        let (audio_tx, audio_rx) = oneshot::channel();
        let asked = self
            .draft_req
            .as_ref()
            .is_some_and(|r| r.send(audio_tx).is_ok());
        let stt = self.stt.clone();
        let tx = self.msgs_tx.clone();
        self.draft_task = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let audio = match asked {
                true => audio_rx.await.ok().flatten(),
                false => None,
            };
            let ev = match audio {
                Some(pcm) => match crate::engines::transcribe(&*stt, &pcm).await {
                    Ok(text) => Event::Draft { id, text },
                    Err(e) => Event::DraftFailed {
                        id,
                        error: e.to_string(),
                    },
                },
                None => Event::DraftFailed {
                    id,
                    error: "no audio for a draft (listening ended, or the question is too long)"
                        .into(),
                },
            };
            let _ = tx.send(Msg::Turn(ev)).await;
        })));
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
        self.cur.context = Some(context);
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
        self.cur.question_id = Some(question_id);
        self.cur.question_is_audio = from_voice;
    }

    async fn ask_llm(&mut self) {
        let messages = self.cur.context.take().unwrap_or_else(|| {
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
            question_id: self.cur.question_id.clone(),
            question_is_audio: self.cur.question_is_audio,
            ..Default::default()
        };
        self.cur.reply_id = None;
        self.cur.model = None;
        self.cur.marks.clear();
        self.cur.times.asked = Some(Instant::now());
        let llms = self.engines.llm.clone();
        let tx = self.msgs_tx.clone();
        self.llm_task = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let send = |ev| tx.send(Msg::Turn(ev));
            let (llm, mut stream) = match fallback::chat(&llms, &req).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = send(Event::LlmFailed(e.to_string())).await;
                    return;
                }
            };
            let model = llm.model().unwrap_or_else(|| llm.name().to_string());
            if tx.send(Msg::LlmModel(model)).await.is_err() {
                return;
            }
            let mut tokens = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(LlmEvent::Token(t)) => {
                        if send(Event::Token(t)).await.is_err() {
                            return;
                        }
                    }
                    Ok(LlmEvent::Usage { completion, .. }) => tokens = Some(completion),
                    Ok(LlmEvent::ReplyId(id)) => {
                        let _ = tx.send(Msg::ReplyId(id)).await;
                    }
                    Err(e) => {
                        let _ = send(Event::LlmFailed(e.to_string())).await;
                        return;
                    }
                }
            }
            let _ = send(Event::LlmDone { tokens }).await;
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
                self.msgs_tx.clone(),
                self.cur.marks.len(),
            );
            self.speak_task = Some(AbortOnDropHandle::new(tokio::spawn(task)));
        }
        self.cur.marks.push((sentence.clone(), None));
        if let Some(tx) = &self.speak_tx {
            let _ = tx.send(sentence);
        }
    }

    async fn store_answer(&mut self, text: String, tokens: Option<u32>, complete: bool) {
        self.last.answer = Some(text.clone());
        let (Some(conv), Some(q)) = (self.conversation.clone(), self.cur.question_id.clone())
        else {
            return;
        };
        let model = self.cur.model.clone();
        let reply_id = self.cur.reply_id.clone();
        let rt = self.cur.times.asked.map(|a| a.elapsed().as_millis() as i64);
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
        self.cur.times.done = Some(Instant::now());
        let times = self.cur.times.clone();
        let q = self.last.question.clone().unwrap_or_default();
        let by = self.reporting.to_string();
        match &o {
            Outcome::Answered => {
                tracing::info!("turn answered ({by}): {} | {q:?}", times.summary())
            }
            Outcome::Interrupted => {
                tracing::info!(
                    "turn interrupted (barge-in) ({by}): {} | {q:?}",
                    times.summary()
                )
            }
            Outcome::NothingHeard => tracing::info!(
                "turn ({by}): nothing heard (empty transcript): {}",
                times.summary()
            ),
            Outcome::NoSpeech => {
                tracing::info!("turn ({by}): no speech after the wake word; back to idle")
            }
            Outcome::FollowUpEnded => {
                tracing::debug!("follow-up window ended in silence; back to idle")
            }
            Outcome::Failed(e) => tracing::warn!("turn failed ({by}): {e} | {}", times.summary()),
        }
        self.last.outcome = Some(o);
        self.last.times = times;
        // Idle again: the turn's code need not stay resident.
        crate::memory::release_unchanged_file_pages();
    }

    /// Stops whatever is running (for shutdown): silence, cancel requests.
    pub fn abort(&mut self) {
        self.listen_task = None;
        self.draft_req = None;
        self.draft_task = None;
        self.llm_task = None;
        self.speak_task = None;
        self.speak_tx = None;
        self.ear = None;
        self.turn_ear = None;
        if let Some(s) = self.source.as_mut() {
            s.stop();
        }
        self.sink.flush();
    }
}

/// A request for the audio heard so far (`None`: not kept).
type DraftAudio = oneshot::Sender<Option<Vec<i16>>>;

/// The most audio kept for drafts (60 s, 1.9 MB); a longer question is
/// transcribed at its end only.
const DRAFT_MAX_SAMPLES: usize = 60 * audio::RATE as usize;

/// Streams captured frames to speech-to-text; ends with the transcript.
/// With `drafts`, it keeps the audio and hands a copy to each request.
async fn listen(
    stt: Arc<dyn SpeechToText>,
    mut frames: mpsc::Receiver<audio::Frame>,
    tx: mpsc::Sender<Msg>,
    mut drafts: Option<mpsc::UnboundedReceiver<DraftAudio>>,
) {
    let send = |ev| tx.send(Msg::Turn(ev));
    let mut session = match stt.start().await {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = send(Event::SttFailed(e.to_string())).await;
            None
        }
    };
    let mut heard: Option<Vec<i16>> = drafts.as_ref().map(|_| Vec::new());
    loop {
        let f = tokio::select! {
            f = frames.recv() => f,
            Some(req) = async {
                match drafts.as_mut() {
                    Some(d) => d.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = req.send(heard.clone());
                continue;
            }
        };
        let Some(f) = f else { break };
        if let Some(h) = heard.as_mut() {
            if h.len() + f.len() <= DRAFT_MAX_SAMPLES {
                h.extend_from_slice(&f);
            } else {
                heard = None;
            }
        }
        if let Some(s) = session.as_mut()
            && let Err(e) = s.push(&f).await
        {
            let _ = send(Event::SttFailed(e.to_string())).await;
            session = None;
        }
    }
    // The microphone closed: after a release, or because the input ended.
    let _ = send(Event::ListenEnded).await;
    if let Some(s) = session {
        let ev = match s.finish().await {
            Ok(t) => Event::Transcript(t),
            Err(e) => Event::SttFailed(e.to_string()),
        };
        let _ = send(ev).await;
    }
}

/// Synthesizes sentences in order and queues their audio; the next sentence
/// is synthesized while the current one plays. When the channel closes and
/// everything queued has been heard, reports SpeechDone. Sentence `first`
/// is the turn's first mark index of this speaker.
async fn speaker(
    tts: Vec<Arc<dyn crate::engines::TextToSpeech>>,
    sink: Arc<dyn AudioSink>,
    mut rx: mpsc::UnboundedReceiver<String>,
    tx: mpsc::Sender<Msg>,
    first: usize,
) {
    let fail = |e: String| tx.send(Msg::Turn(Event::TtsFailed(e)));
    let mut index = first;
    while let Some(sentence) = rx.recv().await {
        let (_, mut stream) = match fallback::synthesize(&tts, &sentence).await {
            Ok(x) => x,
            Err(e) => {
                let _ = fail(e.to_string()).await;
                return;
            }
        };
        let mut marked = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    if !marked {
                        let start = sink.progress().borrow().queued;
                        let _ = tx.send(Msg::Mark { index, start }).await;
                        marked = true;
                    }
                    if let Err(e) = sink.enqueue(&c.pcm, c.rate) {
                        let _ = fail(e.to_string()).await;
                        return;
                    }
                    let _ = tx.send(Msg::FirstAudio(Instant::now())).await;
                }
                Err(e) => {
                    let _ = fail(e.to_string()).await;
                    return;
                }
            }
        }
        index += 1;
    }
    audio::drained(sink.as_ref()).await;
    let _ = tx.send(Msg::Turn(Event::SpeechDone)).await;
}

/// A change to apply to the running assistant (e.g. a reloaded config).
pub type Control = Box<dyn FnOnce(&mut Voice) + Send>;

/// Runs the assistant until `shutdown`: push-to-talk events and wake words
/// in, turns out. The loop also applies `control` changes between events.
pub async fn run(
    mut voice: Voice,
    mut ptt: mpsc::Receiver<PttEvent>,
    mut control: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            c = control.recv() => if let Some(apply) = c {
                apply(&mut voice);
            },
            p = ptt.recv() => match p {
                Some(PttEvent::Pressed) => voice.feed(Event::Pressed).await,
                Some(PttEvent::Released) => voice.feed(Event::Released).await,
                None => break,
            },
            m = voice.next_msg() => if let Some(m) = m {
                voice.on_msg(m).await;
            },
        }
    }
    voice.abort();
}

/// Runs one turn to its end (for `pichat ask`): feeds `start`, then the
/// messages of the running parts, until the machine is idle again.
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
            m = voice.next_msg() => match m {
                Some(m) => voice.on_msg(m).await,
                None => break,
            },
        }
    }
    voice.last.clone()
}
