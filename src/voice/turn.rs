//! The voice turn as a pure state machine: a closed set of [`Event`]s in,
//! a list of [`Action`]s out, time passed in. No I/O here: `daemon.rs`
//! carries the actions out and turns what happens into events.
//!
//! ```text
//! Idle --press--> Listening --release--> Transcribing --text--> Thinking
//!   ^                                        |                     | first sentence
//!   |             (empty text: "didn't       v                     v
//!   +------------- catch that" earcon) --- Idle <--speech done-- Speaking
//! press while Thinking/Speaking = barge-in: stop speech and the LLM,
//! store what was spoken, listen again.
//! ```

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
        }
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

    fn listen(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.state = State::Listening;
        self.pressed_at = Some(now);
        out.push(Action::Earcon(Earcon::Listening));
        out.push(Action::StartListening);
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
            (Idle, Event::Pressed) => self.listen(now, &mut out),
            (Idle, Event::Typed(text)) => {
                self.new_conversation = self.is_new_conversation(now, Duration::ZERO);
                self.force_new = false;
                self.question(text, false, &mut out);
            }
            (Listening, Event::Released) | (Listening, Event::ListenEnded) => {
                let held = self
                    .pressed_at
                    .map(|p| now.duration_since(p))
                    .unwrap_or_default();
                self.new_conversation = self.is_new_conversation(now, held);
                self.force_new = false;
                self.state = Transcribing;
                out.push(Action::StopListening);
            }
            (Transcribing, Event::Transcript(text)) => {
                if super::sentences::speakable(&text).is_empty() {
                    out.push(Action::Earcon(Earcon::Error));
                    self.end(now, &mut out, Outcome::NothingHeard);
                } else {
                    out.push(Action::Earcon(Earcon::Done));
                    self.question(text.trim().to_string(), true, &mut out);
                }
            }
            (Transcribing, Event::SttFailed(e)) => {
                out.push(Action::Earcon(Earcon::Error));
                self.end(now, &mut out, Outcome::Failed(e));
            }
            // A press while the question is being transcribed: start over.
            (Transcribing, Event::Pressed) => {
                out.push(Action::CancelListening);
                self.listen(now, &mut out);
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
                    None => self.end(now, &mut out, Outcome::Answered),
                    Some(e) => {
                        out.push(Action::Earcon(Earcon::Error));
                        self.end(now, &mut out, Outcome::Failed(e));
                    }
                }
            }
            // Barge-in.
            (Thinking | Speaking, Event::Pressed) => {
                out.push(Action::CancelLlm);
                out.push(Action::StopSpeech);
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
                self.listen(now, &mut out);
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
            new_conversation_after: Duration::from_secs(600),
            long_press: Duration::from_secs(2),
            max_chunk_chars: 200,
        })
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
        ] {
            assert!(t.handle(e, now).is_empty());
            assert_eq!(t.state(), State::Idle);
        }
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
}
