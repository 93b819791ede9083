//! The ear: the one consumer of the microphone's frames. It takes the
//! speaker's echo out of them (`audio/aec.rs`, when on), and listens to
//! what the speaker plays with the same wake word models: a wake word the
//! microphone hears just when the speaker said it is the assistant's own
//! voice (what echo cancellation left, or before it has learned the room),
//! not the user's. Then it feeds the wake word engines (when hands-free
//! listening is on) and, while a question is being listened to, the voice
//! activity detector and the speech-to-text session (idle, the detector
//! rests). It keeps the last second of audio, so a question that follows
//! the wake word at once is heard from the end of the wake word on.
//!
//! It reports through the daemon's channel: wake words, one voice activity
//! verdict per frame while listening, and the microphone's end. Live
//! figures for `pichat listen monitor` go to a broadcast channel, a line
//! every 100 ms, only while someone watches.

use std::collections::VecDeque;

use tokio::sync::{broadcast, mpsc};

use super::turn::{Event, WakeWord};
use crate::audio::Frame;
use crate::audio::aec::EchoCanceller;
use crate::wake::WakeEvent;
use crate::wake::chain::Chain;

/// Frames kept for the start of a question (1 s).
const RING: usize = 50;
/// Frames per monitor line (100 ms).
const MONITOR_EVERY: usize = 5;
/// A wake word heard in the microphone from this long before to this long
/// after the speaker's own audio scored at least `OWN_SCORE` for it is the
/// speaker's (samples: 0.5 s, 2 s): the models score its audio before its
/// echo arrives.
const OWN_BEFORE: u64 = 8_000;
const OWN_AFTER: u64 = 32_000;
const OWN_SCORE: f32 = 0.3;

/// What the ear tells the daemon.
#[derive(Debug)]
pub enum Heard {
    Turn(Event),
    /// Where the last wake word ended, in samples of the microphone stream.
    WakeEnd(u64),
    /// The microphone's frames ended (stopped, or the input ran out).
    Closed,
}

/// Orders from the daemon.
pub enum EarCmd {
    /// Send frames to a speech-to-text session, from the given stream
    /// position on (buffered frames after it first), and voice activity.
    Attach {
        stt: mpsc::Sender<Frame>,
        from: Option<u64>,
    },
    /// Stop sending (the session then finishes with what it has).
    Detach,
}

/// Voice activity of 20 ms frames with earshot (16 ms frames inside): a
/// frame is speech when the mean score of the last three 16 ms pieces
/// reaches the threshold, so that single noisy pieces do not hold a
/// question open.
pub struct Vad {
    detector: earshot::Detector,
    carry: Vec<i16>,
    threshold: f32,
    recent: [f32; 3],
    /// The last smoothed score.
    pub score: f32,
}

impl Vad {
    pub fn new(threshold: f32) -> Vad {
        Vad {
            detector: earshot::Detector::default(),
            carry: Vec::with_capacity(512),
            threshold,
            recent: [0.0; 3],
            score: 0.0,
        }
    }

    /// Forgets what it heard (a new question starts from silence).
    pub fn reset(&mut self) {
        self.detector.reset();
        self.carry.clear();
        self.recent = [0.0; 3];
        self.score = 0.0;
    }

    /// Whether the frame holds speech: any of its 16 ms pieces above the
    /// threshold.
    pub fn frame(&mut self, pcm: &[i16]) -> bool {
        self.carry.extend_from_slice(pcm);
        let mut speech = false;
        let mut used = 0;
        while self.carry.len() - used >= 256 {
            let s = self.detector.predict_i16(&self.carry[used..used + 256]);
            self.recent = [self.recent[1], self.recent[2], s];
            self.score = self.recent.iter().sum::<f32>() / 3.0;
            speech |= self.score >= self.threshold;
            used += 256;
        }
        self.carry.drain(..used);
        speech
    }
}

/// dBFS of a frame's RMS level.
pub fn level_db(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return -96.0;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
    (20.0 * rms.max(1e-5).log10()) as f32
}

/// The monitor's figures over the current 100 ms: the highest score of
/// each word, of its second opinion while asked, of voice activity, and
/// the loudest frame.
struct Figures {
    frames: usize,
    best: Vec<(String, f32)>,
    second: Vec<(String, f32)>,
    vad: f32,
    level: f32,
}

impl Figures {
    fn new() -> Figures {
        Figures {
            frames: 0,
            best: Vec::new(),
            second: Vec::new(),
            vad: 0.0,
            level: -96.0,
        }
    }

    fn score(&mut self, word: String, score: f32) {
        Self::raise(&mut self.best, word, score);
    }

    fn second_opinion(&mut self, word: String, probability: f32) {
        Self::raise(&mut self.second, word, probability);
    }

    fn raise(of: &mut Vec<(String, f32)>, word: String, v: f32) {
        match of.iter_mut().find(|(w, _)| *w == word) {
            Some(b) => b.1 = b.1.max(v),
            None => of.push((word, v)),
        }
    }

    /// Takes a frame's figures; every [`MONITOR_EVERY`] frames, the line
    /// (`okay_nabu=0.412 okay_nabu.second=0.930 vad=0.97 speech=yes
    /// level=-23dBFS listening=no`; `.second` only while asked), and
    /// starts the next 100 ms.
    fn frame(&mut self, vad: f32, pcm: &[i16], speech: bool, listening: bool) -> Option<String> {
        self.frames += 1;
        self.vad = self.vad.max(vad);
        self.level = self.level.max(level_db(pcm));
        if self.frames < MONITOR_EVERY {
            return None;
        }
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut line = String::new();
        for (w, s) in &self.best {
            line.push_str(&format!("{w}={s:.3} "));
            if let Some((_, p)) = self.second.iter().find(|(s, _)| s == w) {
                line.push_str(&format!("{w}.second={p:.3} "));
            }
        }
        line.push_str(&format!(
            "vad={:.2} speech={} level={:.0}dBFS listening={}",
            self.vad,
            yes(speech),
            self.level,
            yes(listening)
        ));
        // The words stay (each line names them all), their scores restart.
        self.best.iter_mut().for_each(|b| b.1 = 0.0);
        self.second.clear();
        (self.frames, self.vad, self.level) = (0, 0.0, -96.0);
        Some(line)
    }
}

/// Runs until the microphone's frames end or `heard` closes.
pub async fn run(
    mut frames: mpsc::Receiver<Frame>,
    mut wake: Option<Chain>,
    mut aec: Option<EchoCanceller>,
    vad_threshold: f32,
    mut cmds: mpsc::UnboundedReceiver<EarCmd>,
    heard: mpsc::Sender<Heard>,
    monitor: broadcast::Sender<String>,
) {
    let mut vad = Vad::new(vad_threshold);
    let mut ring: VecDeque<(u64, Frame)> = VecDeque::with_capacity(RING);
    let mut position: u64 = 0;
    let mut stt: Option<mpsc::Sender<Frame>> = None;
    let mut events = Vec::new();
    let mut dropped = 0u64;
    let mut warned = 0u64;
    // The wake words the speaker itself said, and where (stream samples).
    let mut own: Option<Box<dyn crate::wake::WakeStream>> = None;
    let mut own_failed = false;
    let mut own_events = Vec::new();
    let mut said: Vec<(String, u64)> = Vec::new();
    let mut figures = Figures::new();
    let mut armed = false;
    loop {
        let frame = tokio::select! {
            biased;
            c = cmds.recv() => {
                match c {
                    Some(EarCmd::Attach { stt: tx, from }) => {
                        // The detector is idle between questions: it starts
                        // afresh, on the frames the session is given first.
                        vad.reset();
                        if let Some(from) = from {
                            for (end, f) in &ring {
                                if *end > from {
                                    vad.frame(f);
                                    if tx.try_send(f.clone()).is_err() {
                                        dropped += 1;
                                    }
                                }
                            }
                        }
                        stt = Some(tx);
                    }
                    Some(EarCmd::Detach) => stt = None,
                    None => return,
                }
                continue;
            }
            f = frames.recv() => f,
        };
        let Some(mut frame) = frame else {
            let _ = heard.send(Heard::Closed).await;
            return;
        };
        if let Some(a) = aec.as_mut() {
            a.process(&mut frame);
            // What the speaker says, through the same wake word models.
            if let (Some(reference), Some(chain)) = (a.reference_frame(), wake.as_mut()) {
                if own.is_none() && !own_failed {
                    own = chain.twin().await;
                    own_failed = own.is_none();
                }
                if let Some(o) = own.as_mut() {
                    own_events.clear();
                    if o.push(reference, &mut own_events).await.is_err() {
                        own = None;
                    }
                    for e in own_events.drain(..) {
                        let (word, score) = match e {
                            WakeEvent::Score { word, score }
                            | WakeEvent::Detected { word, score, .. } => (word, score),
                            // Under its threshold it decides nothing; at it,
                            // the twin reports a detection.
                            WakeEvent::SecondOpinion { .. } => continue,
                        };
                        if score >= OWN_SCORE {
                            said.push((word, position));
                        }
                    }
                    said.retain(|(_, at)| at + OWN_AFTER >= position);
                }
            }
        }
        position += frame.len() as u64;
        // Voice activity only matters while a question is listened to (or
        // someone watches the monitor): idle, it costs nothing.
        let watching = monitor.receiver_count() > 0;
        let speech = (stt.is_some() || watching) && vad.frame(&frame);
        if let Some(chain) = wake.as_mut() {
            events.clear();
            chain.push(&frame, &mut events).await;
            // Armed (again): the set-up's code need not stay resident.
            let now_armed = chain.active().is_some();
            if now_armed && !armed {
                let bytes = crate::memory::release_unchanged_file_pages();
                tracing::debug!("armed: released {} KiB of mapped code", bytes / 1024);
            }
            armed = now_armed;
            for e in events.drain(..) {
                match e {
                    WakeEvent::Score { word, score } => figures.score(word, score),
                    WakeEvent::SecondOpinion { word, probability } => {
                        figures.second_opinion(word, probability)
                    }
                    WakeEvent::Detected {
                        word,
                        score,
                        end,
                        second_opinion,
                    } => {
                        // The speaker said it a moment ago: its own voice.
                        if said.iter().any(|(w, at)| {
                            *w == word && position + OWN_BEFORE >= *at && position <= at + OWN_AFTER
                        }) {
                            tracing::debug!(
                                "wake word {word} ({score:.2}) in the speaker's own voice: ignored"
                            );
                            continue;
                        }
                        let _ = heard.send(Heard::WakeEnd(end)).await;
                        let _ = heard
                            .send(Heard::Turn(Event::Wake(WakeWord {
                                word,
                                score,
                                second_opinion,
                            })))
                            .await;
                    }
                }
            }
        }
        if let Some(tx) = &stt {
            if tx.try_send(frame.clone()).is_err() {
                dropped += 1;
            }
            let _ = heard.send(Heard::Turn(Event::Voice { speech })).await;
        }
        if watching && let Some(line) = figures.frame(vad.score, &frame, speech, stt.is_some()) {
            let _ = monitor.send(line);
        }
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back((position, frame));
        if dropped > warned {
            tracing::warn!(
                "microphone: {dropped} frames dropped so far (speech-to-text is slower than real time)"
            );
            warned = dropped * 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_line_every_100_ms_with_the_second_opinion_only_while_asked() {
        let mut f = Figures::new();
        let loud = [8000i16; 320];
        let quiet = [0i16; 320];
        for k in 0..MONITOR_EVERY - 1 {
            f.score("okay_nabu".into(), 0.1 * k as f32);
            f.score("alexa".into(), 0.05);
            assert_eq!(f.frame(0.2, &quiet, false, false), None);
        }
        f.second_opinion("okay_nabu".into(), 0.4);
        f.second_opinion("okay_nabu".into(), 0.93);
        let line = f.frame(0.97, &loud, true, true).unwrap();
        assert_eq!(
            line,
            "okay_nabu=0.300 okay_nabu.second=0.930 alexa=0.050 vad=0.97 speech=yes level=-12dBFS listening=yes"
        );
        // The next 100 ms start afresh: scores at zero until reported, the
        // second opinion gone until asked again.
        for _ in 0..MONITOR_EVERY - 1 {
            assert_eq!(f.frame(0.0, &quiet, false, false), None);
        }
        let line = f.frame(0.0, &quiet, false, false).unwrap();
        assert_eq!(
            line,
            "okay_nabu=0.000 alexa=0.000 vad=0.00 speech=no level=-96dBFS listening=no"
        );
    }
}
