//! WAV files instead of devices: `wav:PATH` as the microphone (the file is
//! "spoken" into the pipeline, in real time or as fast as it is taken) and as
//! the speaker (what would be played is written with hound). The whole
//! pipeline runs without a sound card this way.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::capture::CapturePipeline;
use super::resample::{Converter, to_f32, to_i16};
use super::{AudioError, AudioSink, AudioSource, FRAME_QUEUE, Frame, Progress};

/// How a WAV source delivers its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// One 20 ms frame every 20 ms, like a microphone.
    RealTime,
    /// As fast as the consumer takes them.
    Fast,
}

/// A decoded WAV: interleaved f32 samples.
#[derive(Debug, Clone)]
pub struct Clip {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
}

impl Clip {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(
            self.samples.len() as f64 / self.channels.max(1) as f64 / self.rate.max(1) as f64,
        )
    }

    /// The clip as mono s16.
    pub fn mono_i16(&self) -> Vec<i16> {
        let mut mono = Vec::new();
        super::resample::downmix(&self.samples, self.channels as usize, &mut mono);
        mono.into_iter().map(to_i16).collect()
    }
}

fn wav_err(path: &Path, message: impl Into<String>) -> AudioError {
    AudioError::Wav {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a PCM (integer or float) WAV file, also one written to a pipe
/// (with unknown sizes in its header).
pub fn read(path: &Path) -> Result<Clip, AudioError> {
    let bytes = std::fs::read(path).map_err(|e| wav_err(path, format!("cannot read: {e}")))?;
    let reader = hound::WavReader::new(std::io::Cursor::new(fix_streamed_wav(bytes))).map_err(|e| match e {
        hound::Error::IoError(io) => wav_err(path, format!("cannot read: {io}")),
        hound::Error::Unsupported => wav_err(
            path,
            "not a PCM WAV (compressed or unusual encoding); convert it, e.g. `sox IN -e signed -b 16 OUT.wav`",
        ),
        other => wav_err(path, format!("not a usable WAV file ({other})")),
    })?;
    decode(reader, path)
}

/// Decodes WAV bytes held in memory (e.g. from a TTS engine).
pub fn read_bytes(bytes: &[u8], what: &Path) -> Result<Clip, AudioError> {
    let reader = hound::WavReader::new(std::io::Cursor::new(fix_streamed_wav(bytes.to_vec())))
        .map_err(|e| wav_err(what, format!("not a usable WAV ({e})")))?;
    decode(reader, what)
}

/// Fixes the header of a WAV written to a pipe (the writer could not seek
/// back to fill in the sizes, so they are 0 or 0xFFFFFFFF).
pub fn fix_streamed_wav(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() < 44 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return b;
    }
    let total = (b.len() - 8) as u32;
    b[4..8].copy_from_slice(&total.to_le_bytes());
    // Walk the chunks to the "data" chunk and set its size to what is there.
    let mut i = 12;
    while i + 8 <= b.len() {
        let id = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        let size = u32::from_le_bytes([b[i + 4], b[i + 5], b[i + 6], b[i + 7]]) as usize;
        if &id == b"data" {
            let real = (b.len() - i - 8) as u32;
            b[i + 4..i + 8].copy_from_slice(&real.to_le_bytes());
            break;
        }
        i += 8 + size + (size & 1);
    }
    b
}

fn decode<R: std::io::Read>(reader: hound::WavReader<R>, path: &Path) -> Result<Clip, AudioError> {
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(wav_err(path, "has no channels or no sample rate"));
    }
    let samples: Result<Vec<f32>, hound::Error> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect(),
        (hound::SampleFormat::Int, bits) if (1..=32).contains(&bits) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect()
        }
        (f, b) => {
            return Err(wav_err(
                path,
                format!("unsupported sample format {f:?} {b}-bit"),
            ));
        }
    };
    let samples = samples.map_err(|e| wav_err(path, format!("damaged sample data ({e})")))?;
    Ok(Clip {
        rate: spec.sample_rate,
        channels: spec.channels,
        samples,
    })
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
    let mut p = CapturePipeline::new(clip.rate, clip.channels).map_err(AudioError::Other)?;
    let mut frames = Vec::new();
    for block in clip.samples.chunks(4096 * clip.channels as usize) {
        p.push_f32(block, |f| frames.push(f));
    }
    p.finish(|f| frames.push(f));
    Ok(frames)
}

/// A WAV file as the microphone.
pub struct WavSource {
    path: PathBuf,
    clip: Clip,
    pace: Pace,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl WavSource {
    pub fn open(path: &Path, pace: Pace) -> Result<WavSource, AudioError> {
        Ok(WavSource {
            path: path.to_path_buf(),
            clip: read(path)?,
            pace,
            stop: None,
        })
    }
}

impl AudioSource for WavSource {
    fn start(&mut self) -> Result<mpsc::Receiver<Frame>, AudioError> {
        self.stop();
        let frames = frames_of(&self.clip)?;
        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let pace = self.pace;
        std::thread::Builder::new()
            .name("pichat-wav-in".into())
            .spawn(move || {
                let start = Instant::now();
                for (i, f) in frames.into_iter().enumerate() {
                    if pace == Pace::RealTime {
                        let due = start + Duration::from_millis(20 * i as u64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            match stop_rx.recv_timeout(wait) {
                                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                                _ => return,
                            }
                        }
                    } else if stop_rx.try_recv().is_ok() {
                        return;
                    }
                    if tx.blocking_send(f).is_err() {
                        return;
                    }
                }
            })
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
