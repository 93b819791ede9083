//! WAV files instead of devices: `wav:PATH` as the microphone (the file is
//! "spoken" into the pipeline, in real time or as fast as it is taken) and as
//! the speaker (what would be played is written with hound). The whole
//! pipeline runs without a sound card this way.
//!
//! Every WAV read, here and anywhere else, goes through [`decode`], which
//! checks the header before reading a sample.

pub mod decode;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::capture::CapturePipeline;
use super::resample::{Converter, to_f32, to_i16};
use super::{AudioError, AudioSink, AudioSource, FRAME_QUEUE, Frame, Progress};
pub use decode::{Decoder, Limits, WavError};

/// How a WAV source delivers its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// One 20 ms frame every 20 ms, like a microphone.
    RealTime,
    /// As fast as the consumer takes them.
    Fast,
}

/// A decoded WAV, mixed down to mono s16 (see [`decode`]).
#[derive(Debug, Clone)]
pub struct Clip {
    pub rate: u32,
    pub pcm: Vec<i16>,
}

impl Clip {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.pcm.len() as f64 / self.rate.max(1) as f64)
    }

    /// The clip as mono s16.
    pub fn mono_i16(&self) -> Vec<i16> {
        self.pcm.clone()
    }
}

fn wav_err(path: &Path, message: impl Into<String>) -> AudioError {
    AudioError::Wav {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Opens a WAV file and checks its header (see [`decode`]).
fn open_file(path: &Path, limits: &Limits) -> Result<Decoder<BufReader<File>>, AudioError> {
    let f = File::open(path).map_err(|e| wav_err(path, format!("cannot read: {e}")))?;
    let len = f
        .metadata()
        .map_err(|e| wav_err(path, format!("cannot read: {e}")))?
        .len();
    Decoder::new(BufReader::new(f), len, limits).map_err(|e| wav_err(path, e.to_string()))
}

/// Reads a PCM (integer or float) WAV file, also one written to a pipe
/// (with unknown sizes in its header), of at most [`decode::MAX_FILE_SECONDS`].
pub fn read(path: &Path) -> Result<Clip, AudioError> {
    read_limited(path, &Limits::file())
}

/// Reads a WAV file of at most `limits`.
pub fn read_limited(path: &Path, limits: &Limits) -> Result<Clip, AudioError> {
    let mut d = open_file(path, limits)?;
    let rate = d.info().rate;
    let pcm = d.read_all_i16().map_err(|e| wav_err(path, e.to_string()))?;
    Ok(Clip { rate, pcm })
}

/// A WAV file of at most `limits` as 16 kHz mono s16 (what the
/// speech-to-text engines take), resampled while it is read.
pub fn read_16k(path: &Path, limits: &Limits) -> Result<Vec<i16>, AudioError> {
    let mut d = open_file(path, limits)?;
    decode::to_16k(&mut d).map_err(|e| wav_err(path, e.to_string()))
}

/// Writes mono s16 samples as a WAV file.
pub fn write(path: &Path, pcm: &[i16], rate: u32) -> Result<(), AudioError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .map_err(|e| wav_err(path, format!("cannot write: {e}")))?;
    for &s in pcm {
        w.write_sample(s)
            .map_err(|e| wav_err(path, format!("cannot write: {e}")))?;
    }
    w.finalize()
        .map_err(|e| wav_err(path, format!("cannot write: {e}")))
}

/// Frames of a whole clip, converted to 16 kHz mono s16 (what the
/// microphone pipeline would make of it).
pub fn frames_of(clip: &Clip) -> Result<Vec<Frame>, AudioError> {
    let mut p = CapturePipeline::new(clip.rate, 1).map_err(AudioError::Other)?;
    let mut frames = Vec::new();
    let mut block = Vec::with_capacity(4096);
    for chunk in clip.pcm.chunks(4096) {
        block.clear();
        block.extend(chunk.iter().map(|&s| to_f32(s)));
        p.push_f32(&block, |f| frames.push(f));
    }
    p.finish(|f| frames.push(f));
    Ok(frames)
}

/// A WAV file as the microphone. Its header is checked when it is opened;
/// each start reads it again from the beginning, decoding and resampling
/// while the frames are taken (nothing of the file is held in memory).
pub struct WavSource {
    path: PathBuf,
    limits: Limits,
    pace: Pace,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl WavSource {
    /// A source of at most [`decode::MAX_FILE_SECONDS`].
    pub fn open(path: &Path, pace: Pace) -> Result<WavSource, AudioError> {
        Self::open_limited(path, pace, Limits::file())
    }

    /// A source whose file must be at most `limits` long.
    pub fn open_limited(path: &Path, pace: Pace, limits: Limits) -> Result<WavSource, AudioError> {
        open_file(path, &limits)?;
        Ok(WavSource {
            path: path.to_path_buf(),
            limits,
            pace,
            stop: None,
        })
    }
}

/// Streams a WAV as 20 ms frames until its end or a stop.
fn stream(
    mut d: Decoder<BufReader<File>>,
    path: &Path,
    pace: Pace,
    tx: mpsc::Sender<Frame>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    let mut p = match CapturePipeline::new(d.info().rate, 1) {
        Ok(p) => p,
        Err(e) => return tracing::warn!("{}: {e}", path.display()),
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut block = Vec::with_capacity(800);
    let mut ready = std::collections::VecDeque::new();
    let mut at_end = false;
    loop {
        while ready.is_empty() && !at_end {
            block.clear();
            match d.read_mono(&mut block, 800) {
                Ok(0) => {
                    at_end = true;
                    p.finish(|f| ready.push_back(f));
                }
                Ok(_) => p.push_f32(&block, |f| ready.push_back(f)),
                Err(e) => {
                    tracing::warn!("{}: {e}", path.display());
                    at_end = true;
                }
            }
        }
        let Some(f) = ready.pop_front() else {
            return;
        };
        if pace == Pace::RealTime {
            let due = start + Duration::from_millis(20 * sent);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                match stop.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        } else if stop.try_recv().is_ok() {
            return;
        }
        if tx.blocking_send(f).is_err() {
            return;
        }
        sent += 1;
    }
}

impl AudioSource for WavSource {
    fn start(&mut self) -> Result<mpsc::Receiver<Frame>, AudioError> {
        self.stop();
        let d = open_file(&self.path, &self.limits)?;
        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (pace, path) = (self.pace, self.path.clone());
        std::thread::Builder::new()
            .name("pichat-wav-in".into())
            .spawn(move || stream(d, &path, pace, tx, stop_rx))
            .map_err(|e| AudioError::Other(format!("cannot start the wav reader: {e}")))?;
        self.stop = Some(stop_tx);
        Ok(rx)
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    fn describe(&self) -> String {
        format!("wav:{}", self.path.display())
    }
}

struct SinkState {
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    rate: u32,
    converter: Option<Converter>,
}

/// A WAV file as the speaker: everything played is appended to it, at the
/// rate of the first audio played.
pub struct WavSink {
    path: PathBuf,
    state: Mutex<SinkState>,
    progress: watch::Sender<Progress>,
    volume: Mutex<f32>,
}

impl WavSink {
    /// Checks the file can be created now; it is written on first play.
    pub fn create(path: &Path, volume: f32) -> Result<WavSink, AudioError> {
        std::fs::File::create(path).map_err(|e| wav_err(path, format!("cannot create: {e}")))?;
        Ok(WavSink {
            path: path.to_path_buf(),
            state: Mutex::new(SinkState {
                writer: None,
                rate: 0,
                converter: None,
            }),
            progress: watch::Sender::new(Progress::default()),
            volume: Mutex::new(volume.clamp(0.0, 1.0)),
        })
    }

    fn write(&self, st: &mut SinkState, samples: &[f32]) -> Result<(), AudioError> {
        let vol = self.volume.lock().map(|v| *v).unwrap_or(1.0);
        let Some(w) = st.writer.as_mut() else {
            return Ok(());
        };
        for &s in samples {
            w.write_sample(to_i16(s * vol))
                .map_err(|e| wav_err(&self.path, format!("cannot write: {e}")))?;
        }
        // Keeps the header's lengths right even if the process dies.
        w.flush()
            .map_err(|e| wav_err(&self.path, format!("cannot write: {e}")))?;
        let n = samples.len() as u64;
        self.progress.send_modify(|p| {
            p.queued += n;
            p.played += n;
        });
        Ok(())
    }
}

impl AudioSink for WavSink {
    fn enqueue(&self, pcm: &[i16], rate: u32) -> Result<(), AudioError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| AudioError::Other("wav sink poisoned".into()))?;
        decode::check_format(rate as u64, 1, decode::SampleFormat::Int(16))
            .map_err(|e| wav_err(&self.path, e.to_string()))?;
        if st.writer.is_none() {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            st.writer = Some(
                hound::WavWriter::create(&self.path, spec)
                    .map_err(|e| wav_err(&self.path, format!("cannot create: {e}")))?,
            );
            st.rate = rate;
        }
        let input: Vec<f32> = pcm.iter().map(|&s| to_f32(s)).collect();
        if rate == st.rate {
            return self.write(&mut st, &input);
        }
        let target = st.rate;
        if st.converter.as_ref().is_none_or(|c| c.in_rate() != rate) {
            st.converter = Some(
                Converter::new(rate, target, (rate / 50) as usize).map_err(AudioError::Other)?,
            );
        }
        let mut out = Vec::new();
        if let Some(c) = st.converter.as_mut() {
            c.push(&input, &mut out);
        }
        self.write(&mut st, &out)
    }

    fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            let mut out = Vec::new();
            if let Some(c) = st.converter.as_mut() {
                c.finish(&mut out);
            }
            if let Err(e) = self.write(&mut st, &out) {
                tracing::warn!("{e}");
            }
        }
    }

    fn flush(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.converter = None;
        }
    }

    fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn set_volume(&self, volume: f32) {
        if let Ok(mut v) = self.volume.lock() {
            *v = volume.clamp(0.0, 1.0);
        }
    }

    fn rate(&self) -> u32 {
        self.state.lock().map(|s| s.rate).unwrap_or(0)
    }

    fn describe(&self) -> String {
        format!("wav:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_round_trip_and_framing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.wav");
        let pcm: Vec<i16> = (0..16_000).map(|i| ((i % 100) as i16 - 50) * 300).collect();
        write(&p, &pcm, 16_000).unwrap();
        let clip = read(&p).unwrap();
        assert_eq!(clip.rate, 16_000);
        assert_eq!(clip.mono_i16(), pcm);
        let frames = frames_of(&clip).unwrap();
        assert_eq!(frames.len(), 50);
        assert_eq!(frames.concat(), pcm);
    }

    #[test]
    fn sink_writes_what_is_played() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.wav");
        let sink = WavSink::create(&p, 1.0).unwrap();
        let a: Vec<i16> = (0..1000).map(|i| (i * 7) as i16).collect();
        sink.enqueue(&a, 16_000).unwrap();
        sink.enqueue(&a, 16_000).unwrap();
        let clip = read(&p).unwrap();
        assert_eq!(clip.mono_i16(), [a.clone(), a].concat());
        assert_eq!(sink.progress().borrow().played, 2000);
    }

    #[test]
    fn not_a_wav_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.wav");
        std::fs::write(&p, b"RIFF....WAVEjunkjunk").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("x.wav"), "{e}");
        assert!(
            read(&dir.path().join("missing.wav"))
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }
}
