//! Sound in and out. The microphone gives 20 ms frames of 16 kHz mono s16
//! while it is started; the speaker takes PCM at any rate into a queue that
//! can be flushed at once (barge-in).
//!
//! Backends, one file each, chosen from `audio.input` / `audio.output`:
//! `capture.rs` / `playback.rs` (cpal, each stream on its own thread, since a
//! cpal stream is not `Send`), `pulse.rs` (the microphone through
//! PulseAudio's own API, `pulse:`) and `wav.rs` (a WAV file instead of a
//! device).

pub mod aec;
pub mod capture;
pub mod devices;
pub mod earcon;
pub mod playback;
pub mod pulse;
pub mod resample;
pub mod wav;

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};

use crate::config::DeviceSpec;

/// The pipeline's sample rate.
pub const RATE: u32 = 16_000;
/// Samples in one frame (20 ms at 16 kHz).
pub const FRAME: usize = 320;
/// Frames buffered between the capture and its consumer (2 s).
pub const FRAME_QUEUE: usize = 100;

/// 20 ms of 16 kHz mono s16.
pub type Frame = Vec<i16>;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("no {dir} device named \"{name}\"; available: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    UnknownDevice {
        dir: &'static str,
        name: String,
        available: Vec<String>,
    },
    #[error(
        "no default {dir} device (is a sound card connected? `pichat devices` lists them; set audio.{dir}put)"
    )]
    NoDefault { dir: &'static str },
    #[error("{device}: {what}")]
    Unsupported { device: String, what: String },
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    #[error("{}: {message}", path.display())]
    Wav { path: PathBuf, message: String },
    #[error("audio: {0}")]
    Other(String),
}

/// A microphone. `start` opens the device and returns the frames as they are
/// captured; `stop` closes it (no stream is open, no CPU is used, between).
pub trait AudioSource: Send + Sync {
    fn start(&mut self) -> Result<mpsc::Receiver<Frame>, AudioError>;
    fn stop(&mut self);
    /// What this source is, for logs.
    fn describe(&self) -> String;
}

/// Counts of samples (at the sink's own rate) queued and heard so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub queued: u64,
    pub played: u64,
}

/// A speaker with a queue.
pub trait AudioSink: Send + Sync {
    /// Queues mono PCM at `rate`; returns at once, audio plays in order.
    fn enqueue(&self, pcm: &[i16], rate: u32) -> Result<(), AudioError>;
    /// Pushes out what the resampler still holds: call at the end of an
    /// utterance (done by [`drained`]).
    fn finish(&self);
    /// Drops everything queued and silences the output now (barge-in).
    fn flush(&self);
    /// Watches the queued/played counters.
    fn progress(&self) -> watch::Receiver<Progress>;
    fn set_volume(&self, volume: f32);
    /// The rate the progress counters count in (0 before anything played).
    fn rate(&self) -> u32;
    /// What this sink is, for logs.
    fn describe(&self) -> String;
    /// What it plays, as it is handed to the device, for echo
    /// cancellation (`None`: nothing reaches a room, e.g. a WAV file).
    fn reference(&self) -> Option<std::sync::Arc<aec::Reference>> {
        None
    }
}

/// Waits until everything queued so far has been heard (or flushed).
///
/// A device that stops consuming (unplugged, stalled sound server) cannot
/// hang the caller: the wait ends at the latest 3 s after the queued audio
/// should have finished, with a warning.
pub async fn drained(sink: &dyn AudioSink) {
    sink.finish();
    let mut rx = sink.progress();
    let (target, left) = {
        let p = *rx.borrow();
        (p.queued, p.queued.saturating_sub(p.played))
    };
    let rate = sink.rate().max(1) as f64;
    let limit = std::time::Duration::from_secs_f64(left as f64 / rate + 3.0);
    let done = rx.wait_for(|p| p.played >= target || p.queued < target);
    if tokio::time::timeout(limit, done).await.is_err() {
        tracing::warn!(
            "{}: playback did not finish in {:.1} s; going on",
            sink.describe(),
            limit.as_secs_f64()
        );
    }
}

/// Opens the input named in the config.
pub fn open_input(spec: &DeviceSpec) -> Result<Box<dyn AudioSource>, AudioError> {
    match spec {
        DeviceSpec::Wav(p) => Ok(Box::new(wav::WavSource::open(p, wav::Pace::RealTime)?)),
        DeviceSpec::Pulse(name) => Ok(Box::new(pulse::PulseSource::new(name.clone())?)),
        other => Ok(Box::new(capture::CpalSource::new(other.clone())?)),
    }
}

/// Opens the output named in the config.
pub fn open_output(spec: &DeviceSpec, volume: f32) -> Result<Box<dyn AudioSink>, AudioError> {
    match spec {
        DeviceSpec::Wav(p) => Ok(Box::new(wav::WavSink::create(p, volume)?)),
        other => Ok(Box::new(playback::CpalSink::new(other.clone(), volume)?)),
    }
}

/// Logs device errors at most once a second (a failing device can report
/// thousands per second), counting what it held back.
pub(crate) struct ErrorLog {
    what: String,
    last: Option<std::time::Instant>,
    held: u64,
}

impl ErrorLog {
    pub(crate) fn new(what: String) -> Self {
        ErrorLog {
            what,
            last: None,
            held: 0,
        }
    }

    pub(crate) fn report(&mut self, e: &dyn std::fmt::Display) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            self.held += 1;
            return;
        }
        if self.held > 0 {
            tracing::warn!("{}: {e} (and {} more errors)", self.what, self.held);
        } else {
            tracing::warn!("{}: {e}", self.what);
        }
        self.last = Some(now);
        self.held = 0;
    }
}

/// Counts the captured frames that found the listener's queue full, and
/// logs the count: the first loss at once, then at most a line every 5 s.
#[derive(Default)]
pub(crate) struct FrameLoss {
    lost: u64,
    warned: Option<std::time::Instant>,
}

impl FrameLoss {
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    pub(crate) fn dropped(&mut self, frames: u64, now: std::time::Instant) {
        if frames == 0 {
            return;
        }
        self.lost += frames;
        if self
            .warned
            .is_none_or(|w| now.duration_since(w) >= Self::LOG_EVERY)
        {
            tracing::warn!(
                "microphone: {} frames of 20 ms dropped so far (the listener fell behind)",
                self.lost
            );
            self.warned = Some(now);
        }
    }
}
