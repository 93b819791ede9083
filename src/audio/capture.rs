//! Microphone capture through cpal. The stream lives on its own thread (a
//! cpal stream is not `Send`) only while listening; its callback downmixes to
//! mono, resamples to 16 kHz (rubato) and cuts 20 ms frames onto a bounded
//! channel. A full channel drops frames (counted, and logged) rather than
//! block the audio thread.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, StreamTrait};
use tokio::sync::mpsc;

use super::devices::{self, Direction};
use super::resample::{Converter, Framer, downmix};
use super::{AudioError, AudioSource, FRAME, FRAME_QUEUE, Frame, RATE};
use crate::config::DeviceSpec;

/// Timing figures of the last capture (for `pichat bench audio`).
#[derive(Debug, Clone, Default)]
pub struct CaptureStats {
    pub device: String,
    pub rate: u32,
    pub channels: u16,
    pub format: String,
    pub callbacks: u64,
    pub frames: u64,
    pub dropped: u64,
    /// Samples per callback (device period), largest seen.
    pub max_block: usize,
    /// Time spent in the callback converting, per callback.
    pub process: Vec<Duration>,
    /// Device-reported delay between capture and callback, per callback.
    pub capture_to_callback: Vec<Duration>,
    pub resampler_delay: usize,
}

/// Converts one callback's worth of samples of any cpal format to f32.
pub fn data_to_f32(data: &cpal::Data, out: &mut Vec<f32>) -> bool {
    use cpal::SampleFormat as F;
    fn ext<T: cpal::Sample>(s: Option<&[T]>, out: &mut Vec<f32>) -> bool
    where
        f32: cpal::FromSample<T>,
    {
        match s {
            Some(s) => {
                out.extend(s.iter().map(|x| x.to_sample::<f32>()));
                true
            }
            None => false,
        }
    }
    match data.sample_format() {
        F::I8 => ext(data.as_slice::<i8>(), out),
        F::I16 => ext(data.as_slice::<i16>(), out),
        F::I32 => ext(data.as_slice::<i32>(), out),
        F::I64 => ext(data.as_slice::<i64>(), out),
        F::U8 => ext(data.as_slice::<u8>(), out),
        F::U16 => ext(data.as_slice::<u16>(), out),
        F::U32 => ext(data.as_slice::<u32>(), out),
        F::U64 => ext(data.as_slice::<u64>(), out),
        F::F32 => ext(data.as_slice::<f32>(), out),
        F::F64 => ext(data.as_slice::<f64>(), out),
        _ => false,
    }
}

/// The per-callback work: any format, rate and channel count in, 16 kHz
/// mono s16 frames out.
pub struct CapturePipeline {
    channels: usize,
    interleaved: Vec<f32>,
    mono: Vec<f32>,
    resampled: Vec<f32>,
    converter: Converter,
    framer: Framer,
}

impl CapturePipeline {
    pub fn new(rate: u32, channels: u16) -> Result<Self, String> {
        Ok(CapturePipeline {
            channels: channels.max(1) as usize,
            interleaved: Vec::new(),
            mono: Vec::new(),
            resampled: Vec::new(),
            converter: Converter::new(rate, RATE, (rate / 200) as usize)?,
            framer: Framer::new(FRAME),
        })
    }

    pub fn resampler_delay(&self) -> usize {
        self.converter.delay()
    }

    /// Feeds interleaved f32 samples; emits completed frames.
    pub fn push_f32(&mut self, interleaved: &[f32], emit: impl FnMut(Frame)) {
        self.mono.clear();
        downmix(interleaved, self.channels, &mut self.mono);
        self.resampled.clear();
        self.converter.push(&self.mono, &mut self.resampled);
        self.framer.push(&self.resampled, emit);
    }

    /// Feeds one cpal callback's data.
    pub fn push_data(&mut self, data: &cpal::Data, emit: impl FnMut(Frame)) {
        let mut buf = std::mem::take(&mut self.interleaved);
        buf.clear();
        if data_to_f32(data, &mut buf) {
            self.push_f32(&buf, emit);
        }
        self.interleaved = buf;
    }

    /// Flushes the resampler and the last partial frame.
    pub fn finish(&mut self, mut emit: impl FnMut(Frame)) {
        self.resampled.clear();
        self.converter.finish(&mut self.resampled);
        self.framer.push(&self.resampled, &mut emit);
        if let Some(f) = self.framer.finish() {
            emit(f);
        }
    }
}

struct Running {
    stop: std::sync::mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

/// A cpal microphone.
pub struct CpalSource {
    spec: DeviceSpec,
    name: String,
    running: Option<Running>,
    stats: Arc<Mutex<CaptureStats>>,
}

impl CpalSource {
    /// Checks that the device exists (so a wrong name fails at start-up);
    /// nothing is opened until [`AudioSource::start`].
    pub fn new(spec: DeviceSpec) -> Result<CpalSource, AudioError> {
        let d = devices::find(&spec, Direction::Input)?;
        Ok(CpalSource {
            spec,
            name: devices::describe(&d),
            running: None,
            stats: Arc::default(),
        })
    }

    /// Figures of the current or last capture.
    pub fn stats(&self) -> CaptureStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn open_stream(
    spec: &DeviceSpec,
    tx: mpsc::Sender<Frame>,
    stats: Arc<Mutex<CaptureStats>>,
) -> Result<cpal::Stream, AudioError> {
    let device = devices::find(spec, Direction::Input)?;
    let name = devices::describe(&device);
    let supported = device
        .default_input_config()
        .map_err(|e| AudioError::Unsupported {
            device: name.clone(),
            what: format!("no usable capture configuration ({e})"),
        })?;
    let rate = supported.sample_rate();
    let channels = supported.channels();
    let format = supported.sample_format();
    let pipeline = CapturePipeline::new(rate, channels).map_err(|e| AudioError::Unsupported {
        device: name.clone(),
        what: e,
    })?;
    if let Ok(mut s) = stats.lock() {
        *s = CaptureStats {
            device: name.clone(),
            rate,
            channels,
            format: format.to_string(),
            resampler_delay: pipeline.resampler_delay(),
            ..Default::default()
        };
    }
    let build = |buffer_size: cpal::BufferSize, pipeline: CapturePipeline| {
        let mut pipeline = pipeline;
        let tx = tx.clone();
        let cb_stats = stats.clone();
        let mut loss = super::FrameLoss::default();
        let callback = move |data: &cpal::Data, info: &cpal::InputCallbackInfo| {
            let t = Instant::now();
            let mut frames = 0u64;
            let mut dropped = 0u64;
            pipeline.push_data(data, |f| {
                frames += 1;
                if tx.try_send(f).is_err() {
                    dropped += 1;
                }
            });
            loss.dropped(dropped, t);
            if let Ok(mut s) = cb_stats.try_lock() {
                s.callbacks += 1;
                s.frames += frames;
                s.dropped += dropped;
                s.max_block = s.max_block.max(data.len() / channels.max(1) as usize);
                if s.process.len() < 100_000 {
                    s.process.push(t.elapsed());
                    let ts = info.timestamp();
                    s.capture_to_callback
                        .push(ts.callback.duration_since(ts.capture));
                }
            }
        };
        let mut log = super::ErrorLog::new(format!("capture {name}"));
        let on_error = move |e: cpal::Error| log.report(&e);
        let config = cpal::StreamConfig {
            channels,
            sample_rate: rate,
            buffer_size,
        };
        device.build_input_stream_raw(config, format, callback, on_error, None)
    };
    // A fixed period of one frame (20 ms): a frame is complete only then, so
    // a shorter period adds wakeups, not speed; and some ALSA plugins hand
    // out one sample per callback when left to choose.
    let stream = match build(cpal::BufferSize::Fixed(rate / 50), pipeline) {
        Ok(s) => s,
        Err(_) => {
            let pipeline =
                CapturePipeline::new(rate, channels).map_err(|e| AudioError::Unsupported {
                    device: name.clone(),
                    what: e,
                })?;
            build(cpal::BufferSize::Default, pipeline).map_err(|e| AudioError::Device {
                device: name.clone(),
                message: format!("cannot open for capture: {e}"),
            })?
        }
    };
    stream.play().map_err(|e| AudioError::Device {
        device: name,
        message: format!("cannot start capture: {e}"),
    })?;
    Ok(stream)
}

impl AudioSource for CpalSource {
    fn start(&mut self) -> Result<mpsc::Receiver<Frame>, AudioError> {
        self.stop();
        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let spec = self.spec.clone();
        let stats = self.stats.clone();
        let thread = thread::Builder::new()
            .name("pichat-capture".into())
            .spawn(move || match open_stream(&spec, tx, stats) {
                Ok(stream) => {
                    let _ = ready_tx.send(Ok(()));
                    // Until stop() (or the source is dropped).
                    let _ = stop_rx.recv();
                    drop(stream);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| AudioError::Other(format!("cannot start the capture thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {
                self.running = Some(Running {
                    stop: stop_tx,
                    thread,
                });
                Ok(rx)
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(AudioError::Other("the capture thread died".into())),
        }
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            let _ = r.thread.join();
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

impl Drop for CpalSource {
    fn drop(&mut self) {
        self.stop();
    }
}
