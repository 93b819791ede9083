//! The voice turn as a pure state machine: a closed set of [`Event`]s in,
//! a list of [`Action`]s out, time passed in. No I/O here: `daemon.rs`
//! carries the actions out and turns what happens into events.
//!
//! ```text
//!                 press | wake word
//! Idle ----------------------------> Listening --release / end of speech--> Transcribing
//!  ^  ^                                 |  ^                                      | text
//!  |  |  no speech after the wake word  |  | follow-up window                     v
//!  |  +---- ("didn't catch that") ------+  |  (after a reply)                  Thinking
//!  |                                       |                                      | first sentence
//!  +--- silence in the follow-up window ---+---------- speech done ---------- Speaking
//! press or wake word while Thinking/Speaking = barge-in: stop speech and the
//! LLM, store what was spoken, listen again.
//! ```
//!
//! Every listening state has a deadline ([`Turn::deadline`]); the I/O sends
//! [`Event::Deadline`] when it passes. A turn started by the button ends on
//! release (or at `max_button`); one started by the wake word or a
//! follow-up ends by itself when voice activity ([`Event::Voice`], one per
//! 20 ms frame) has been silent for `silence` after at least `min_speech`
//! of speech, or at `max_listen`; no speech within `no_speech` (or the
//! follow-up window) goes back to idle without storing anything.
//!
//! Drafts: after `draft` of that silence (less than `silence`), what was
//! heard so far is transcribed ahead ([`Action::Draft`]), while listening
//! goes on. Speech again drops the draft ([`Action::DropDraft`]); silence
//! until the end makes the draft the question, so its transcription has a
//! head start of `silence - draft`. Drafts carry an id: a result of a
//! dropped one is never taken for a later one.

use std::time::{Duration, Instant};

use super::sentences::SentenceSplitter;
use crate::audio::earcon::Earcon;

/// Everything that can happen to a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Push-to-talk pressed / released.
    Pressed,
    Released,
    /// A typed question (`pichat ask "text"`): no listening, no STT.
    Typed(String),
    /// The speech-to-text result, or its failure.
    Transcript(String),
    SttFailed(String),
    /// A piece of the LLM's reply; the end of it (with the token count
    /// when reported); its failure.
    Token(String),
    LlmDone {
        tokens: Option<u32>,
    },
    LlmFailed(String),
    /// Everything handed to speech has been heard.
    SpeechDone,
    /// Speech was stopped (barge-in or failure); what had been heard.
    SpeechStopped {
        spoken: String,
    },
    TtsFailed(String),
    /// Listening ended without a release: the longest recording was
    /// reached, or the input (a WAV file) ran out.
    ListenEnded,
    /// The wake word was heard.
    Wake(WakeWord),
    /// Voice activity of one 20 ms microphone frame, while listening.
    Voice {
        speech: bool,
    },
    /// The deadline of [`Turn::deadline`] has passed.
    Deadline,
    /// The transcript of draft `id`, or its failure.
    Draft {
        id: u32,
        text: String,
    },
    DraftFailed {
        id: u32,
        error: String,
    },
}

/// How the current (or last) turn started, for the log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// No turn yet, or a typed question.
    None,
    Button,
    Wake(WakeWord),
    FollowUp,
}

/// A wake word as heard, with its engine's score (that of its second
/// opinion, if that decided).
#[derive(Debug, Clone, PartialEq)]
pub struct WakeWord {
    pub word: String,
    pub score: f32,
    pub second_opinion: bool,
}

impl std::fmt::Display for WakeWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:.2}", self.word, self.score)?;
        if self.second_opinion {
            write!(f, ", by the second opinion")?;
        }
        write!(f, ")")
    }
}

impl Start {
    /// Whether this turn ends by itself (voice activity), not on release.
    fn hands_free(&self) -> bool {
        matches!(self, Start::Wake(_) | Start::FollowUp)
    }
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::None => write!(f, "typed"),
            Start::Button => write!(f, "button"),
            Start::Wake(w) => write!(f, "wake word {w}"),
            Start::FollowUp => write!(f, "follow-up"),
        }
    }
}

/// What the I/O around the machine must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Earcon(Earcon),
    /// Open the microphone and a speech-to-text session.
    StartListening,
    /// Close the microphone and ask for the transcript (→ Transcript/SttFailed).
    StopListening,
    /// Close the microphone and drop the session.
    CancelListening,
    /// Transcribe what was heard so far, listening on (→ Draft/DraftFailed
    /// with this id).
    Draft {
        id: u32,
    },
    /// Forget the draft being made.
    DropDraft,
    /// Store the question (in a new conversation when asked to).
    StoreQuestion {
        text: String,
        new_conversation: bool,
        from_voice: bool,
    },
    /// Ask the LLM with the conversation's context (→ Token…, LlmDone/LlmFailed).
    AskLlm,
    CancelLlm,
    /// Synthesize and play a sentence, after those before it.
    Speak(String),
    /// No more sentences: report SpeechDone once all is heard.
    FinishSpeech,
    /// Silence at once, cancel synthesis (→ SpeechStopped).
    StopSpeech,
    /// Store the reply as it was heard.
    StoreAnswer {
        text: String,
        tokens: Option<u32>,
        complete: bool,
    },
    /// One log line about the turn.
    Report(Outcome),
}

/// How a turn ended, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    NothingHeard,
    /// No speech after the wake word within `no_speech`.
    NoSpeech,
    /// The follow-up window passed in silence.
    FollowUpEnded,
    Interrupted,
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Listening,
    Transcribing,
    Thinking,
    Speaking,
    /// Barge-in: waiting for speech to stop before listening again.
    Stopping,
    /// A failure: waiting for speech to stop before going idle.
    Failing,
}

#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub new_conversation_after: Duration,
    /// A press held this long starts a new conversation (zero: never).
    pub long_press: Duration,
    pub max_chunk_chars: usize,
    /// The longest a button turn listens.
    pub max_button: Duration,
    /// Hands-free listening: the silence that ends the question, the least
    /// speech that is one, how long to wait for speech after the wake word,
    /// the longest question, the follow-up window (zero: off).
    pub silence: Duration,
    pub min_speech: Duration,
    pub no_speech: Duration,
    pub max_listen: Duration,
    pub follow_up: Duration,
    /// Silence after which a draft of the question is transcribed (below
    /// `silence`; zero: no drafts).
    pub draft: Duration,
}

impl TurnConfig {
    /// Settings for tests and one-shot questions: button only.
    pub fn button(max_chunk_chars: usize) -> TurnConfig {
        TurnConfig {
            new_conversation_after: Duration::from_secs(600),
            long_press: Duration::ZERO,
            max_chunk_chars,
            max_button: Duration::from_secs(30),
            silence: Duration::from_millis(700),
            min_speech: Duration::from_millis(250),
            no_speech: Duration::from_secs(5),
            max_listen: Duration::from_secs(15),
            follow_up: Duration::ZERO,
            draft: Duration::ZERO,
        }
    }
}

/// What was heard so far while listening hands-free.
#[derive(Debug, Clone, Default)]
struct Ear {
    /// When the current stretch of speech began and when voice was last heard.
    speech_from: Option<Instant>,
    last_voice: Option<Instant>,
    /// Speech heard in this question (stretches shorter than min_speech
    /// dropped).
    speech: Duration,
    /// Speech frames in a row.
    run: u32,
    draft: Draft,
}

/// The draft of the question being listened to.
#[derive(Debug, Clone, Default, PartialEq)]
enum Draft {
    #[default]
    None,
    /// Asked for, with this id.
    Pending(u32),
    Ready(String),
    /// It failed: no other draft until more is said.
    Failed,
}

/// The machine.
#[derive(Debug)]
pub struct Turn {
    cfg: TurnConfig,
    state: State,
    pressed_at: Option<Instant>,
    last_turn_end: Option<Instant>,
    /// `start_new_conversation` was asked: the next question starts one,
    /// whatever activity is noted.
    force_new: bool,
    new_conversation: bool,
    splitter: SentenceSplitter,
    reply: String,
    sentences: usize,
    tokens: Option<u32>,
    llm_done: bool,
    failure: Option<String>,
    start: Start,
    /// When listening began (for the deadlines).
    listening_since: Option<Instant>,
    ear: Ear,
    /// The question ended by voice activity (its earcon already played).
    ended_by_voice: bool,
    /// The next listening after a barge-in is hands-free.
    barge_start: Start,
    /// The last draft's id.
    drafts: u32,
}

impl Turn {
    pub fn new(cfg: TurnConfig) -> Turn {
        let splitter = SentenceSplitter::new(cfg.max_chunk_chars);
        Turn {
            cfg,
            state: State::Idle,
            pressed_at: None,
            last_turn_end: None,
            force_new: false,
            new_conversation: false,
            splitter,
            reply: String::new(),
            sentences: 0,
            tokens: None,
            llm_done: false,
            failure: None,
            start: Start::None,
            listening_since: None,
            ear: Ear::default(),
            ended_by_voice: false,
            barge_start: Start::None,
            drafts: 0,
        }
    }

    /// When voice was last heard in the question being listened to.
    pub fn last_voice(&self) -> Option<Instant> {
        self.ear.last_voice
    }

    /// How the current or last turn started.
    pub fn start(&self) -> &Start {
        &self.start
    }

    /// When [`Event::Deadline`] is due: set in every listening state.
    pub fn deadline(&self) -> Option<Instant> {
        let since = self.listening_since?;
        if self.state != State::Listening {
            return None;
        }
        let cfg = &self.cfg;
        Some(match &self.start {
            Start::Wake(_) | Start::FollowUp => {
                let hard = since + cfg.max_listen;
                let wait = if self.start == Start::FollowUp {
                    cfg.follow_up
                } else {
                    cfg.no_speech
                };
                match self.ear.last_voice {
                    // Speech heard: the silence after it, or the hard cap.
                    Some(v) if self.ear.speech_from.is_some() || !self.ear.speech.is_zero() => {
                        (v + cfg.silence).min(hard)
                    }
                    _ => (since + wait).min(hard),
                }
            }
            _ => since + cfg.max_button,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// New settings (config reload); they apply from the next decision on.
    pub fn set_config(&mut self, cfg: TurnConfig) {
        self.cfg = cfg;
    }

    /// Forces the next question into a new conversation (e.g. `ask --new`).
    pub fn start_new_conversation(&mut self) {
        self.last_turn_end = None;
        self.force_new = true;
    }

    /// The latest activity in the history (a message from any device, as
    /// the sync brought it): the next question continues that
    /// conversation when this is recent enough, as after a turn here.
    pub fn note_activity(&mut self, at: Instant) {
        if !self.force_new && self.last_turn_end.is_none_or(|t| t < at) {
            self.last_turn_end = Some(at);
        }
    }

    fn reset_reply(&mut self) {
        self.splitter = SentenceSplitter::new(self.cfg.max_chunk_chars);
        self.reply.clear();
        self.sentences = 0;
        self.tokens = None;
        self.llm_done = false;
        self.failure = None;
    }

    fn end(&mut self, now: Instant, out: &mut Vec<Action>, outcome: Outcome) {
        self.state = State::Idle;
        self.last_turn_end = Some(now);
        out.push(Action::Report(outcome));
    }

    fn listen(&mut self, now: Instant, start: Start, out: &mut Vec<Action>) {
        self.state = State::Listening;
        self.pressed_at = Some(now);
        self.listening_since = Some(now);
        self.ear = Ear::default();
        self.ended_by_voice = false;
        if start != Start::FollowUp {
            out.push(Action::Earcon(Earcon::Listening));
        }
        self.start = start;
        out.push(Action::StartListening);
    }

    /// Listening ends: transcribe what was said.
    fn stop_listening(&mut self, now: Instant, out: &mut Vec<Action>) {
        let held = self
            .pressed_at
            .map(|p| now.duration_since(p))
            .unwrap_or_default();
        self.new_conversation = match self.start {
            // Hands-free turns have no press to hold; a follow-up continues.
            Start::FollowUp => false,
            Start::Wake(_) => self.is_new_conversation(now, Duration::ZERO),
            _ => self.is_new_conversation(now, held),
        };
        self.force_new = false;
        self.state = State::Transcribing;
        match std::mem::take(&mut self.ear.draft) {
            // Nothing was said after the draft: it is the question.
            Draft::Ready(text) => {
                out.push(Action::CancelListening);
                self.transcript(text, now, out);
            }
            // Its transcription has a head start: wait for it.
            Draft::Pending(id) => {
                out.push(Action::CancelListening);
                self.ear.draft = Draft::Pending(id);
            }
            Draft::None | Draft::Failed => out.push(Action::StopListening),
        }
    }

    /// The question's transcript (or a draft taken as it).
    fn transcript(&mut self, text: String, now: Instant, out: &mut Vec<Action>) {
        if super::sentences::speakable(&text).is_empty() {
            out.push(Action::Earcon(Earcon::Error));
            self.end(now, out, Outcome::NothingHeard);
        } else {
            if !self.ended_by_voice {
                out.push(Action::Earcon(Earcon::Done));
            }
            self.question(text.trim().to_string(), true, out);
        }
    }

    fn awaiting_draft(&self) -> bool {
        matches!(self.ear.draft, Draft::Pending(_))
    }

    /// Drops a draft being made or made (speech went on, or listening was
    /// abandoned).
    fn drop_draft(&mut self, out: &mut Vec<Action>) {
        if let Draft::Pending(_) | Draft::Ready(_) = std::mem::take(&mut self.ear.draft) {
            out.push(Action::DropDraft);
        }
    }

    /// A frame's voice activity while listening hands-free. Speech starts
    /// with three frames in a row (60 ms) and goes on with two: single
    /// noisy frames neither start speech nor hold the silence after it open.
    fn voice(&mut self, speech: bool, now: Instant, out: &mut Vec<Action>) {
        let ear = &mut self.ear;
        if speech {
            ear.run += 1;
            let starts = ear.speech_from.is_none() && ear.run >= 3;
            let goes_on = ear.speech_from.is_some() && ear.run >= 2;
            if starts {
                ear.speech_from = Some(now - Duration::from_millis(20) * (ear.run - 1));
            }
            if starts || goes_on {
                ear.last_voice = Some(now);
                // More was said: the draft is not the question.
                self.drop_draft(out);
            }
            return;
        }
        ear.run = 0;
        if let (Some(from), Some(last)) = (ear.speech_from, ear.last_voice)
            && now.duration_since(last) >= Duration::from_millis(60)
        {
            // A stretch of speech ended; too short to count (a click) is dropped.
            let len = last.duration_since(from) + Duration::from_millis(20);
            if len >= self.cfg.min_speech || !ear.speech.is_zero() {
                ear.speech += len;
            } else {
                ear.last_voice = None;
            }
            ear.speech_from = None;
        }
        // A question was heard and the silence after it lasts: draft it.
        if let Some(last) = ear.last_voice
            && !self.cfg.draft.is_zero()
            && self.cfg.draft < self.cfg.silence
            && ear.draft == Draft::None
            && ear.speech_from.is_none()
            && ear.speech >= self.cfg.min_speech
            && !ear.speech.is_zero()
            && now.duration_since(last) >= self.cfg.draft
        {
            self.drafts = self.drafts.wrapping_add(1);
            ear.draft = Draft::Pending(self.drafts);
            out.push(Action::Draft { id: self.drafts });
        }
    }

    /// The deadline passed while listening.
    fn listening_deadline(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.start.hands_free() {
            self.stop_listening(now, out);
            return;
        }
        let since = self.listening_since.unwrap_or(now);
        let mut heard = self.ear.speech;
        if let (Some(from), Some(last)) = (self.ear.speech_from, self.ear.last_voice) {
            heard += last.duration_since(from) + Duration::from_millis(20);
        }
        let capped = now.duration_since(since) >= self.cfg.max_listen;
        if heard >= self.cfg.min_speech && !heard.is_zero() {
            out.push(Action::Earcon(Earcon::Done));
            self.ended_by_voice = true;
            self.stop_listening(now, out);
        } else if capped || self.ear.last_voice.is_none() {
            self.drop_draft(out);
            out.push(Action::CancelListening);
            if self.start == Start::FollowUp {
                self.end(now, out, Outcome::FollowUpEnded);
            } else {
                out.push(Action::Earcon(Earcon::Error));
                self.end(now, out, Outcome::NoSpeech);
            }
        } else {
            // Only a click: keep waiting for speech.
            self.drop_draft(out);
            self.ear = Ear::default();
        }
    }

    /// Whether a question asked now belongs in a new conversation.
    fn is_new_conversation(&self, now: Instant, held: Duration) -> bool {
        let long = !self.cfg.long_press.is_zero() && held >= self.cfg.long_press;
        let stale = match self.last_turn_end {
            None => true,
            Some(t) => now.duration_since(t) > self.cfg.new_conversation_after,
        };
        long || stale || self.force_new
    }

    fn question(&mut self, text: String, from_voice: bool, out: &mut Vec<Action>) {
        self.reset_reply();
        self.state = State::Thinking;
        out.push(Action::StoreQuestion {
            text,
            new_conversation: self.new_conversation,
            from_voice,
        });
        out.push(Action::AskLlm);
    }

    fn speak(&mut self, sentences: Vec<String>, out: &mut Vec<Action>) {
        for s in sentences {
            self.sentences += 1;
            out.push(Action::Speak(s));
        }
        if self.sentences > 0 && self.state == State::Thinking {
            self.state = State::Speaking;
        }
    }

    /// Handles one event; returns what to do.
    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        use State::*;
        match (self.state, ev) {
            (Idle, Event::Pressed) => self.listen(now, Start::Button, &mut out),
            (Idle, Event::Wake(w)) => self.listen(now, Start::Wake(w), &mut out),
            (Listening, Event::Voice { speech }) if self.start.hands_free() => {
                self.voice(speech, now, &mut out)
            }
            (Listening, Event::Draft { id, text }) if self.ear.draft == Draft::Pending(id) => {
                self.ear.draft = Draft::Ready(text)
            }
            // Listening goes on; the question is transcribed at its end.
            (Listening, Event::DraftFailed { id, .. }) if self.ear.draft == Draft::Pending(id) => {
                self.ear.draft = Draft::Failed
            }
            (Transcribing, Event::Draft { id, text }) if self.ear.draft == Draft::Pending(id) => {
                self.ear.draft = Draft::None;
                self.transcript(text, now, &mut out);
            }
            (Transcribing, Event::DraftFailed { id, error })
                if self.ear.draft == Draft::Pending(id) =>
            {
                self.ear.draft = Draft::None;
                out.push(Action::Earcon(Earcon::Error));
                self.end(now, &mut out, Outcome::Failed(error));
            }
            (Listening, Event::Deadline) if self.deadline().is_some_and(|d| now >= d) => {
                self.listening_deadline(now, &mut out)
            }
            // A press in a silent follow-up window is a new button turn.
            (Listening, Event::Pressed)
                if self.start == Start::FollowUp && self.ear.last_voice.is_none() =>
            {
                out.push(Action::CancelListening);
                self.listen(now, Start::Button, &mut out);
            }
            // A press ends a hands-free question at once.
            (Listening, Event::Pressed) if self.start.hands_free() => {
                self.stop_listening(now, &mut out)
            }
            (Listening, Event::Released) if self.start.hands_free() => {}
            (Idle, Event::Typed(text)) => {
                self.new_conversation = self.is_new_conversation(now, Duration::ZERO);
                self.force_new = false;
                self.question(text, false, &mut out);
            }
            (Listening, Event::Released) | (Listening, Event::ListenEnded) => {
                self.stop_listening(now, &mut out)
            }
            // The microphone or the speech-to-text session failed while
            // listening: no transcript can come, so the turn ends here
            // (waiting for one would never end).
            (Listening, Event::SttFailed(e)) => {
                self.drop_draft(&mut out);
                out.push(Action::CancelListening);
                out.push(Action::Earcon(Earcon::Error));
                self.end(now, &mut out, Outcome::Failed(e));
            }
            // (Awaiting a draft, the session was dropped: nothing else comes.)
            (Transcribing, Event::Transcript(text)) if !self.awaiting_draft() => {
                self.transcript(text, now, &mut out)
            }
            (Transcribing, Event::SttFailed(e)) if !self.awaiting_draft() => {
                out.push(Action::Earcon(Earcon::Error));
                self.end(now, &mut out, Outcome::Failed(e));
            }
            // A press while the question is being transcribed: start over.
            (Transcribing, Event::Pressed) => {
                self.drop_draft(&mut out);
                out.push(Action::CancelListening);
                self.listen(now, Start::Button, &mut out);
            }
            (Thinking | Speaking, Event::Token(t)) if !self.llm_done => {
                self.reply.push_str(&t);
                let s = self.splitter.push(&t);
                self.speak(s, &mut out);
            }
            (Thinking | Speaking, Event::LlmDone { tokens }) => {
                self.llm_done = true;
                self.tokens = tokens;
                let rest: Vec<String> = self.splitter.finish().into_iter().collect();
                self.speak(rest, &mut out);
                if self.sentences == 0 {
                    out.push(Action::Earcon(Earcon::Error));
                    self.end(
                        now,
                        &mut out,
                        Outcome::Failed("the LLM's reply was empty".into()),
                    );
                } else {
                    self.state = Speaking;
                    out.push(Action::FinishSpeech);
                }
            }
            (Thinking, Event::LlmFailed(e)) => {
                out.push(Action::Earcon(Earcon::Error));
                self.end(now, &mut out, Outcome::Failed(e));
            }
            // The LLM broke off mid-reply: say what is there, then fail.
            (Speaking, Event::LlmFailed(e)) if !self.llm_done => {
                self.llm_done = true;
                self.failure = Some(e);
                let rest: Vec<String> = self.splitter.finish().into_iter().collect();
                self.speak(rest, &mut out);
                out.push(Action::FinishSpeech);
            }
            (Speaking, Event::SpeechDone) if self.llm_done => {
                let failure = self.failure.take();
                out.push(Action::StoreAnswer {
                    text: std::mem::take(&mut self.reply).trim().to_string(),
                    tokens: self.tokens,
                    complete: failure.is_none(),
                });
                match failure {
                    None => {
                        self.end(now, &mut out, Outcome::Answered);
                        if !self.cfg.follow_up.is_zero() {
                            self.listen(now, Start::FollowUp, &mut out);
                        }
                    }
                    Some(e) => {
                        out.push(Action::Earcon(Earcon::Error));
                        self.end(now, &mut out, Outcome::Failed(e));
                    }
                }
            }
            // Barge-in, by the button or the wake word.
            (Thinking | Speaking, Event::Pressed) => {
                out.push(Action::CancelLlm);
                out.push(Action::StopSpeech);
                self.barge_start = Start::Button;
                self.state = Stopping;
            }
            (Thinking | Speaking, Event::Wake(w)) => {
                out.push(Action::CancelLlm);
                out.push(Action::StopSpeech);
                self.barge_start = Start::Wake(w);
                self.state = Stopping;
            }
            (Speaking | Thinking, Event::TtsFailed(e)) => {
                out.push(Action::CancelLlm);
                out.push(Action::StopSpeech);
                self.failure = Some(e);
                self.state = Failing;
            }
            (Stopping, Event::SpeechStopped { spoken }) => {
                if !spoken.trim().is_empty() {
                    out.push(Action::StoreAnswer {
                        text: spoken.trim().to_string(),
                        tokens: None,
                        complete: false,
                    });
                }
                out.push(Action::Report(Outcome::Interrupted));
                self.last_turn_end = Some(now);
                let start = std::mem::replace(&mut self.barge_start, Start::None);
                self.listen(now, start, &mut out);
            }
            (Failing, Event::SpeechStopped { spoken }) => {
                if !spoken.trim().is_empty() {
                    out.push(Action::StoreAnswer {
                        text: spoken.trim().to_string(),
                        tokens: None,
                        complete: false,
                    });
                }
                out.push(Action::Earcon(Earcon::Error));
                let e = self.failure.take().unwrap_or_default();
                self.end(now, &mut out, Outcome::Failed(e));
            }
            // Anything else (a release while idle, a late token after a
            // cancel...) changes nothing.
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn() -> Turn {
        Turn::new(TurnConfig {
            long_press: Duration::from_secs(2),
            ..TurnConfig::button(200)
        })
    }

    /// A hands-free machine: 700 ms silence, 250 ms least speech, 5 s to
    /// start talking, 15 s at most, a follow-up window of `follow_up` s.
    fn free(follow_up: u64) -> Turn {
        Turn::new(TurnConfig {
            follow_up: Duration::from_secs(follow_up),
            ..TurnConfig::button(200)
        })
    }

    /// Feeds voice activity every 20 ms from `from` to `to` (ms), speech
    /// where `speech(ms)` says so; returns every action.
    fn talk(
        t: &mut Turn,
        t0: Instant,
        from: u64,
        to: u64,
        speech: impl Fn(u64) -> bool,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let mut ms = from;
        while ms < to {
            let now = t0 + Duration::from_millis(ms);
            out.extend(t.handle(Event::Voice { speech: speech(ms) }, now));
            // The I/O sends Deadline when it passes.
            if let Some(d) = t.deadline()
                && d <= now
            {
                out.extend(t.handle(Event::Deadline, now));
            }
            ms += 20;
        }
        out
    }

    fn wake() -> Event {
        Event::Wake(WakeWord {
            word: "okay_nabu".into(),
            score: 0.97,
            second_opinion: false,
        })
    }

    fn answer(t: &mut Turn, now: Instant) -> Vec<Action> {
        let mut a = t.handle(Event::Transcript("What time is it?".into()), now);
        a.extend(t.handle(Event::Token("It is noon.".into()), now));
        a.extend(t.handle(Event::LlmDone { tokens: None }, now));
        a.extend(t.handle(Event::SpeechDone, now));
        a
    }

    #[test]
    fn the_start_line_says_which_model_heard_the_wake_word() {
        let t0 = Instant::now();
        let by_second = Event::Wake(WakeWord {
            word: "okay_nabu".into(),
            score: 0.61,
            second_opinion: true,
        });
        let mut t = free(0);
        t.handle(by_second.clone(), t0);
        assert_eq!(
            t.start().to_string(),
            "wake word okay_nabu (0.61, by the second opinion)"
        );
        let mut t = free(0);
        t.handle(wake(), t0);
        assert_eq!(t.start().to_string(), "wake word okay_nabu (0.97)");
        // A barge-in by the wake word starts the next turn the same way.
        let mut t = free(0);
        t.handle(Event::Typed("Tell me a story".into()), t0);
        t.handle(Event::Token("Once upon a time. There was".into()), t0);
        t.handle(by_second, t0);
        let a = t.handle(
            Event::SpeechStopped {
                spoken: "Once upon a time.".into(),
            },
            t0,
        );
        assert_eq!(a[a.len() - 1], Action::StartListening);
        assert_eq!(
            t.start().to_string(),
            "wake word okay_nabu (0.61, by the second opinion)"
        );
    }

    #[test]
    fn wake_word_then_silence_ends_the_question() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = free(0);
        assert_eq!(
            t.handle(wake(), ms(0)),
            vec![Action::Earcon(Earcon::Listening), Action::StartListening]
        );
        assert_eq!(t.deadline(), Some(ms(5000)), "waits 5 s for speech");
        // Speech from 300 to 1500 ms, then silence.
        let a = talk(&mut t, t0, 0, 2100, |m| (300..1500).contains(&m));
        assert!(a.is_empty(), "still listening: {a:?}");
        assert_eq!(t.deadline(), Some(ms(1480 + 700)));
        let a = talk(&mut t, t0, 2100, 2300, |_| false);
        assert_eq!(
            a,
            vec![Action::Earcon(Earcon::Done), Action::StopListening],
            "700 ms of silence end it"
        );
        assert_eq!(t.state(), State::Transcribing);
        assert_eq!(t.deadline(), None);
        // No second earcon for the transcript; the question is asked.
        let a = t.handle(Event::Transcript("What time is it?".into()), ms(2500));
        assert_eq!(
            a[0],
            Action::StoreQuestion {
                text: "What time is it?".into(),
                new_conversation: true,
                from_voice: true
            }
        );
        assert_eq!(
            t.start(),
            &Start::Wake(WakeWord {
                word: "okay_nabu".into(),
                score: 0.97,
                second_opinion: false,
            })
        );
    }

    #[test]
    fn no_speech_after_the_wake_word_goes_back_to_idle() {
        let t0 = Instant::now();
        let mut t = free(0);
        t.handle(wake(), t0);
        // A click (40 ms) is not speech, nor is noise that scores as speech
        // in one frame of three; 5 s pass.
        let a = talk(&mut t, t0, 0, 4980, |m| {
            (1000..1040).contains(&m) || (m / 20) % 3 == 0
        });
        assert!(a.is_empty(), "{a:?}");
        let a = talk(&mut t, t0, 4980, 5020, |_| false);
        assert_eq!(
            a,
            vec![
                Action::CancelListening,
                Action::Earcon(Earcon::Error),
                Action::Report(Outcome::NoSpeech)
            ]
        );
        assert!(!a.iter().any(|x| matches!(x, Action::StoreQuestion { .. })));
        assert_eq!(t.state(), State::Idle);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn noise_after_the_question_does_not_hold_it_open() {
        let t0 = Instant::now();
        let mut t = free(0);
        t.handle(wake(), t0);
        // The question, then a noisy room: one frame in three scores as speech.
        let a = talk(&mut t, t0, 0, 2300, |m| {
            (300..1500).contains(&m) || (m >= 1500 && (m / 20) % 3 == 0)
        });
        assert_eq!(a, vec![Action::Earcon(Earcon::Done), Action::StopListening]);
    }

    #[test]
    fn endless_speech_is_cut_at_max_listen() {
        let t0 = Instant::now();
        let mut t = free(0);
        t.handle(wake(), t0);
        let a = talk(&mut t, t0, 0, 14_980, |_| true);
        assert!(a.is_empty());
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(15)));
        let a = talk(&mut t, t0, 14_980, 15_020, |_| true);
        assert_eq!(a, vec![Action::Earcon(Earcon::Done), Action::StopListening]);
        // The limit and one past it: 15 s of a 14.98 s question is kept.
        let mut t = free(0);
        t.handle(wake(), t0);
        let a = talk(&mut t, t0, 0, 15_000, |m| m < 14_000);
        assert!(a.contains(&Action::StopListening));
        assert_eq!(t.state(), State::Transcribing);
    }

    #[test]
    fn a_press_ends_a_hands_free_question_at_once() {
        let t0 = Instant::now();
        let mut t = free(0);
        t.handle(wake(), t0);
        talk(&mut t, t0, 0, 600, |m| m > 100);
        let a = t.handle(Event::Pressed, t0 + Duration::from_millis(600));
        assert_eq!(a, vec![Action::StopListening]);
        assert!(
            t.handle(Event::Released, t0 + Duration::from_millis(700))
                .is_empty()
        );
        assert_eq!(t.state(), State::Transcribing);
    }

    #[test]
    fn a_follow_up_continues_the_conversation_and_silence_ends_it_quietly() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = free(6);
        t.handle(wake(), ms(0));
        talk(&mut t, t0, 0, 2000, |m| (200..1000).contains(&m));
        let a = answer(&mut t, ms(3000));
        assert!(a.contains(&Action::Report(Outcome::Answered)));
        // Listening again, without an earcon, for 6 s.
        assert_eq!(a[a.len() - 1], Action::StartListening);
        assert!(!a[a.len() - 2..].contains(&Action::Earcon(Earcon::Listening)));
        assert_eq!(t.start(), &Start::FollowUp);
        assert_eq!(t.deadline(), Some(ms(9000)));
        let a = talk(&mut t, t0, 3000, 5500, |m| (3500..4500).contains(&m));
        assert_eq!(a, vec![Action::Earcon(Earcon::Done), Action::StopListening]);
        let a = t.handle(Event::Transcript("And tomorrow?".into()), ms(6000));
        assert!(
            a.contains(&Action::StoreQuestion {
                text: "And tomorrow?".into(),
                new_conversation: false,
                from_voice: true
            }),
            "same conversation: {a:?}"
        );
        t.handle(Event::Token("Rain.".into()), ms(6100));
        t.handle(Event::LlmDone { tokens: None }, ms(6100));
        t.handle(Event::SpeechDone, ms(7000));
        // Silence through the window: idle, no earcon, nothing stored.
        let a = talk(&mut t, t0, 7000, 13_100, |_| false);
        assert_eq!(
            a,
            vec![
                Action::CancelListening,
                Action::Report(Outcome::FollowUpEnded)
            ]
        );
        assert_eq!(t.state(), State::Idle);
    }

    #[test]
    fn a_press_in_a_silent_follow_up_window_is_a_button_turn() {
        let t0 = Instant::now();
        let mut t = free(6);
        t.handle(Event::Pressed, t0);
        t.handle(Event::Released, t0);
        answer(&mut t, t0);
        assert_eq!(t.start(), &Start::FollowUp);
        let a = t.handle(Event::Pressed, t0 + Duration::from_secs(1));
        assert_eq!(
            a,
            vec![
                Action::CancelListening,
                Action::Earcon(Earcon::Listening),
                Action::StartListening
            ]
        );
        assert_eq!(t.start(), &Start::Button);
        // Voice activity does not end a button turn; its deadline is max_button.
        assert!(talk(&mut t, t0, 1000, 5000, |_| false).is_empty());
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(31)));
    }

    #[test]
    fn the_wake_word_over_the_reply_is_a_barge_in() {
        let t0 = Instant::now();
        let mut t = free(0);
        t.handle(Event::Typed("Tell me a story".into()), t0);
        t.handle(Event::Token("Once upon a time. There was".into()), t0);
        assert_eq!(
            t.handle(wake(), t0),
            vec![Action::CancelLlm, Action::StopSpeech]
        );
        let a = t.handle(
            Event::SpeechStopped {
                spoken: "Once upon a time.".into(),
            },
            t0,
        );
        assert!(a.contains(&Action::StoreAnswer {
            text: "Once upon a time.".into(),
            tokens: None,
            complete: false
        }));
        assert!(a.contains(&Action::Report(Outcome::Interrupted)));
        assert_eq!(a[a.len() - 1], Action::StartListening);
        // It listens hands-free: silence ends the new question.
        assert!(t.start().hands_free());
        assert!(t.deadline().is_some());
    }

    #[test]
    fn every_listening_state_has_a_deadline() {
        let t0 = Instant::now();
        type StartFn = fn(&mut Turn, Instant);
        let starts: [(&str, StartFn); 4] = [
            ("button", |t, now| {
                t.handle(Event::Pressed, now);
            }),
            ("wake", |t, now| {
                t.handle(wake(), now);
            }),
            ("follow-up", |t, now| {
                t.handle(wake(), now);
                talk(t, now, 0, 2000, |m| (100..900).contains(&m));
                answer(t, now);
            }),
            ("barge-in", |t, now| {
                t.handle(Event::Typed("q".into()), now);
                t.handle(Event::Pressed, now);
                t.handle(
                    Event::SpeechStopped {
                        spoken: String::new(),
                    },
                    now,
                );
            }),
        ];
        for (name, start) in starts {
            let mut t = free(4);
            start(&mut t, t0);
            assert_eq!(t.state(), State::Listening, "{name}");
            let d = t
                .deadline()
                .unwrap_or_else(|| panic!("{name}: no deadline"));
            assert!(d > t0, "{name}");
            // At the deadline the machine leaves listening.
            t.handle(Event::Deadline, d);
            assert_ne!(t.state(), State::Listening, "{name} still listening");
        }
        // A deadline event before it is due changes nothing.
        let mut t = free(0);
        t.handle(wake(), t0);
        assert!(
            t.handle(Event::Deadline, t0 + Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(t.state(), State::Listening);
    }

    fn has(actions: &[Action], a: &Action) -> bool {
        actions.contains(a)
    }

    #[test]
    fn a_whole_turn() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = turn();
        assert_eq!(
            t.handle(Event::Pressed, ms(0)),
            vec![Action::Earcon(Earcon::Listening), Action::StartListening]
        );
        assert_eq!(
            t.handle(Event::Released, ms(1500)),
            vec![Action::StopListening]
        );
        let a = t.handle(
            Event::Transcript(" What is the capital of France?".into()),
            ms(2000),
        );
        assert_eq!(
            a,
            vec![
                Action::Earcon(Earcon::Done),
                Action::StoreQuestion {
                    text: "What is the capital of France?".into(),
                    new_conversation: true,
                    from_voice: true
                },
                Action::AskLlm
            ]
        );
        assert_eq!(t.state(), State::Thinking);
        assert!(
            t.handle(Event::Token("The capital".into()), ms(2100))
                .is_empty()
        );
        let a = t.handle(Event::Token(" is Paris. It".into()), ms(2150));
        assert_eq!(a, vec![Action::Speak("The capital is Paris.".into())]);
        assert_eq!(t.state(), State::Speaking);
        let a = t.handle(Event::LlmDone { tokens: Some(9) }, ms(2200));
        assert_eq!(a, vec![Action::Speak("It".into()), Action::FinishSpeech]);
        let a = t.handle(Event::SpeechDone, ms(4000));
        assert_eq!(
            a,
            vec![
                Action::StoreAnswer {
                    text: "The capital is Paris. It".into(),
                    tokens: Some(9),
                    complete: true
                },
                Action::Report(Outcome::Answered)
            ]
        );
        assert_eq!(t.state(), State::Idle);
    }

    #[test]
    fn empty_transcript_means_no_llm_call() {
        let now = Instant::now();
        let mut t = turn();
        t.handle(Event::Pressed, now);
        t.handle(Event::Released, now);
        let a = t.handle(Event::Transcript("  . ".into()), now);
        assert_eq!(
            a,
            vec![
                Action::Earcon(Earcon::Error),
                Action::Report(Outcome::NothingHeard)
            ]
        );
        assert!(!a.contains(&Action::AskLlm));
        assert_eq!(t.state(), State::Idle);
    }

    #[test]
    fn barge_in_stores_what_was_spoken_and_listens_again() {
        let now = Instant::now();
        let mut t = turn();
        t.handle(Event::Typed("Tell me a story".into()), now);
        t.handle(
            Event::Token("Once upon a time. There was a dog. ".into()),
            now,
        );
        let a = t.handle(Event::Pressed, now);
        assert_eq!(a, vec![Action::CancelLlm, Action::StopSpeech]);
        // Tokens that were already on their way are ignored.
        assert!(
            t.handle(Event::Token("More.".into()), now).is_empty() || t.state() == State::Stopping
        );
        let a = t.handle(
            Event::SpeechStopped {
                spoken: "Once upon a time.".into(),
            },
            now,
        );
        assert_eq!(
            a,
            vec![
                Action::StoreAnswer {
                    text: "Once upon a time.".into(),
                    tokens: None,
                    complete: false
                },
                Action::Report(Outcome::Interrupted),
                Action::Earcon(Earcon::Listening),
                Action::StartListening
            ]
        );
        assert_eq!(t.state(), State::Listening);
    }

    #[test]
    fn barge_in_while_thinking() {
        let now = Instant::now();
        let mut t = turn();
        t.handle(Event::Typed("Hi".into()), now);
        assert_eq!(
            t.handle(Event::Pressed, now),
            vec![Action::CancelLlm, Action::StopSpeech]
        );
        let a = t.handle(
            Event::SpeechStopped {
                spoken: String::new(),
            },
            now,
        );
        assert!(!a.iter().any(|x| matches!(x, Action::StoreAnswer { .. })));
        assert!(has(&a, &Action::StartListening));
    }

    #[test]
    fn conversations_continue_or_start_anew() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut t = turn();
        let run = |t: &mut Turn, at: Instant, hold: u64| -> bool {
            t.handle(Event::Pressed, at);
            t.handle(Event::Released, at + Duration::from_secs(hold));
            let a = t.handle(
                Event::Transcript("question".into()),
                at + Duration::from_secs(hold),
            );
            t.handle(Event::Token("Answer.".into()), at);
            t.handle(Event::LlmDone { tokens: None }, at);
            t.handle(Event::SpeechDone, at + Duration::from_secs(hold));
            a.iter()
                .find_map(|x| match x {
                    Action::StoreQuestion {
                        new_conversation, ..
                    } => Some(*new_conversation),
                    _ => None,
                })
                .unwrap()
        };
        assert!(
            run(&mut t, s(0), 1),
            "the first question starts a conversation"
        );
        assert!(!run(&mut t, s(60), 1), "a minute later it continues");
        assert!(run(&mut t, s(120), 3), "a long press starts a new one");
        assert!(run(&mut t, s(2000), 1), "after 10+ minutes it starts anew");
        // Activity elsewhere (the web app) counts as recent activity...
        t.note_activity(s(4000));
        assert!(!run(&mut t, s(4100), 1), "continues what the web wrote");
        // ...but not when it is old, nor after a long press.
        t.note_activity(s(3000));
        assert!(run(&mut t, s(5000), 1), "old activity elsewhere: a new one");
        t.note_activity(s(5050));
        assert!(run(&mut t, s(5060), 3), "a long press still starts anew");
        // `ask --new` wins over any activity noted after it.
        t.start_new_conversation();
        t.note_activity(s(5070));
        assert!(run(&mut t, s(5080), 1), "asked for a new one");
        t.note_activity(s(5090));
        assert!(!run(&mut t, s(5100), 1), "only once");
    }

    #[test]
    fn a_failure_while_listening_ends_the_turn_at_once() {
        // The microphone stopped, or the session's engine failed, before the
        // release: no transcript will come (this turn used to wait forever).
        for start in [Event::Pressed, wake()] {
            let now = Instant::now();
            let mut t = turn();
            t.handle(start, now);
            assert_eq!(t.state(), State::Listening);
            let a = t.handle(Event::SttFailed("the microphone stopped".into()), now);
            assert!(has(&a, &Action::CancelListening), "{a:?}");
            assert!(has(&a, &Action::Earcon(Earcon::Error)), "{a:?}");
            assert!(
                has(
                    &a,
                    &Action::Report(Outcome::Failed("the microphone stopped".into()))
                ),
                "{a:?}"
            );
            assert_eq!(t.state(), State::Idle);
            assert_eq!(t.deadline(), None);
            // What the session still sends is stray now.
            assert!(t.handle(Event::ListenEnded, now).is_empty());
            assert!(t.handle(Event::Transcript("late".into()), now).is_empty());
        }
    }

    #[test]
    fn failures_end_in_the_error_earcon() {
        let now = Instant::now();
        let mut t = turn();
        t.handle(Event::Pressed, now);
        t.handle(Event::Released, now);
        let a = t.handle(Event::SttFailed("whisper: refused".into()), now);
        assert_eq!(
            a,
            vec![
                Action::Earcon(Earcon::Error),
                Action::Report(Outcome::Failed("whisper: refused".into()))
            ]
        );

        t.handle(Event::Typed("q".into()), now);
        let a = t.handle(Event::LlmFailed("home: timeout".into()), now);
        assert!(has(&a, &Action::Earcon(Earcon::Error)));
        assert_eq!(t.state(), State::Idle);

        // Mid-reply: speak what there is, store it as incomplete.
        t.handle(Event::Typed("q".into()), now);
        t.handle(Event::Token("First part. Sec".into()), now);
        let a = t.handle(Event::LlmFailed("cut".into()), now);
        assert_eq!(a, vec![Action::Speak("Sec".into()), Action::FinishSpeech]);
        let a = t.handle(Event::SpeechDone, now);
        assert!(has(
            &a,
            &Action::StoreAnswer {
                text: "First part. Sec".into(),
                tokens: None,
                complete: false
            }
        ));
        assert!(has(&a, &Action::Earcon(Earcon::Error)));

        // TTS failure: stop, store what was heard, error.
        t.handle(Event::Typed("q".into()), now);
        t.handle(Event::Token("One. Two. ".into()), now);
        let a = t.handle(Event::TtsFailed("piper down".into()), now);
        assert_eq!(a, vec![Action::CancelLlm, Action::StopSpeech]);
        let a = t.handle(
            Event::SpeechStopped {
                spoken: "One.".into(),
            },
            now,
        );
        assert!(has(&a, &Action::Earcon(Earcon::Error)));
        assert_eq!(t.state(), State::Idle);
    }

    #[test]
    fn stray_events_change_nothing() {
        let now = Instant::now();
        let mut t = turn();
        for e in [
            Event::Released,
            Event::Token("x".into()),
            Event::SpeechDone,
            Event::Transcript("x".into()),
            Event::Draft {
                id: 0,
                text: "x".into(),
            },
            Event::DraftFailed {
                id: 0,
                error: "x".into(),
            },
        ] {
            assert!(t.handle(e, now).is_empty());
            assert_eq!(t.state(), State::Idle);
        }
        // Nor does a draft's result in a button turn, which drafts nothing.
        t.handle(Event::Pressed, now);
        let d = Event::Draft {
            id: 0,
            text: "x".into(),
        };
        assert!(t.handle(d, now).is_empty());
        assert_eq!(t.state(), State::Listening);
    }

    #[test]
    fn listen_timeout_acts_as_release() {
        let now = Instant::now();
        let mut t = turn();
        t.handle(Event::Pressed, now);
        assert_eq!(
            t.handle(Event::ListenEnded, now),
            vec![Action::StopListening]
        );
        assert_eq!(t.state(), State::Transcribing);
    }

    /// A hands-free machine that drafts after 350 ms of silence.
    fn drafting() -> Turn {
        Turn::new(TurnConfig {
            draft: Duration::from_millis(350),
            ..TurnConfig::button(200)
        })
    }

    fn asked(a: &[Action]) -> Option<&str> {
        a.iter().find_map(|x| match x {
            Action::StoreQuestion { text, .. } => Some(text.as_str()),
            _ => None,
        })
    }

    #[test]
    fn a_draft_made_in_the_silence_is_the_question() {
        let t0 = Instant::now();
        let mut t = drafting();
        t.handle(wake(), t0);
        // Speech from 300 to 1500 ms (last voice at 1480), then silence.
        let a = talk(&mut t, t0, 0, 1820, |m| (300..1500).contains(&m));
        assert!(a.is_empty(), "{a:?}");
        let a = talk(&mut t, t0, 1820, 1860, |_| false);
        assert_eq!(
            a,
            vec![Action::Draft { id: 1 }],
            "350 ms after the last voice"
        );
        // Its transcript comes while listening goes on: nothing happens yet.
        let ready = Event::Draft {
            id: 1,
            text: "What time is it?".into(),
        };
        assert!(t.handle(ready, t0 + Duration::from_millis(2000)).is_empty());
        assert_eq!(t.state(), State::Listening);
        // The silence lasts: the draft is the question, no transcription.
        let a = talk(&mut t, t0, 1860, 2300, |_| false);
        assert_eq!(
            a,
            vec![
                Action::Earcon(Earcon::Done),
                Action::CancelListening,
                Action::StoreQuestion {
                    text: "What time is it?".into(),
                    new_conversation: true,
                    from_voice: true
                },
                Action::AskLlm
            ]
        );
        assert_eq!(t.state(), State::Thinking);
    }

    #[test]
    fn speech_after_a_draft_drops_it_and_a_stale_result_is_never_taken() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = drafting();
        t.handle(wake(), t0);
        let a = talk(&mut t, t0, 0, 1400, |m| (300..1000).contains(&m));
        assert_eq!(a, vec![Action::Draft { id: 1 }]);
        // The user goes on: the draft is dropped.
        let a = talk(&mut t, t0, 1400, 2600, |m| m < 2500);
        assert_eq!(a, vec![Action::DropDraft]);
        // Its result arrives late (sent before it was dropped): ignored.
        let stale = |text: &str| Event::Draft {
            id: 1,
            text: text.into(),
        };
        assert!(t.handle(stale("What"), ms(2600)).is_empty());
        let a = talk(&mut t, t0, 2600, 2860, |_| false);
        assert_eq!(a, vec![Action::Draft { id: 2 }]);
        assert!(t.handle(stale("What"), ms(2860)).is_empty());
        // The silence ends the question before draft 2 is back: wait for it.
        let a = talk(&mut t, t0, 2860, 3400, |_| false);
        assert_eq!(
            a,
            vec![Action::Earcon(Earcon::Done), Action::CancelListening]
        );
        assert_eq!(t.state(), State::Transcribing);
        assert_eq!(t.deadline(), None);
        // A transcript of the dropped session, or draft 1, changes nothing.
        assert!(
            t.handle(Event::Transcript("What".into()), ms(3400))
                .is_empty()
        );
        assert!(t.handle(stale("What"), ms(3400)).is_empty());
        let a = t.handle(
            Event::Draft {
                id: 2,
                text: "What is the capital of France?".into(),
            },
            ms(3500),
        );
        assert_eq!(asked(&a), Some("What is the capital of France?"), "{a:?}");
        assert_eq!(t.state(), State::Thinking);
    }

    #[test]
    fn a_failed_draft_leaves_the_question_to_the_session() {
        let t0 = Instant::now();
        let mut t = drafting();
        t.handle(wake(), t0);
        let a = talk(&mut t, t0, 0, 1400, |m| (300..1000).contains(&m));
        assert_eq!(a, vec![Action::Draft { id: 1 }]);
        let failed = Event::DraftFailed {
            id: 1,
            error: "whisper: refused".into(),
        };
        assert!(
            t.handle(failed, t0 + Duration::from_millis(1400))
                .is_empty()
        );
        // No second draft in the same silence; its end asks the session.
        let a = talk(&mut t, t0, 1400, 1800, |_| false);
        assert_eq!(a, vec![Action::Earcon(Earcon::Done), Action::StopListening]);
        let a = t.handle(Event::Transcript("What time is it?".into()), t0);
        assert_eq!(asked(&a), Some("What time is it?"));
    }

    #[test]
    fn a_draft_failing_after_listening_ended_fails_the_turn() {
        let t0 = Instant::now();
        let mut t = drafting();
        t.handle(wake(), t0);
        talk(&mut t, t0, 0, 1000, |m| (300..600).contains(&m));
        // A press ends the question at once, with the draft still out.
        let a = t.handle(Event::Pressed, t0 + Duration::from_millis(1000));
        assert_eq!(a, vec![Action::CancelListening]);
        let a = t.handle(
            Event::DraftFailed {
                id: 1,
                error: "whisper: refused".into(),
            },
            t0 + Duration::from_millis(1100),
        );
        assert_eq!(
            a,
            vec![
                Action::Earcon(Earcon::Error),
                Action::Report(Outcome::Failed("whisper: refused".into()))
            ]
        );
        assert_eq!(t.state(), State::Idle);
    }

    #[test]
    fn button_turns_and_short_sounds_are_never_drafted() {
        let t0 = Instant::now();
        let mut t = drafting();
        t.handle(Event::Pressed, t0);
        let a = talk(&mut t, t0, 0, 3000, |m| (300..1000).contains(&m));
        assert!(a.is_empty(), "{a:?}");
        // Hands-free, a click (less than min_speech) is not drafted.
        let mut t = drafting();
        t.handle(wake(), t0);
        let a = talk(&mut t, t0, 0, 1500, |m| (300..400).contains(&m));
        assert!(
            !a.iter().any(|x| matches!(x, Action::Draft { .. })),
            "{a:?}"
        );
    }
}
