//! Speaker output through cpal. Audio is queued (resampled to the stream's
//! rate on the way in) and played by a cpal stream that lives on its own
//! thread; the stream is opened when there is something to play and closed
//! after a short idle time, so nothing runs while the assistant is silent.
//! A flush empties the queue and drops the stream at once: silence within a
//! device period.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, StreamTrait};
use tokio::sync::watch;

use super::devices::{self, Direction};
use super::resample::{Converter, to_f32};
use super::{AudioError, AudioSink, Progress};
use crate::config::DeviceSpec;

/// How long an idle stream stays open (saves re-opening between sentences).
const LINGER: Duration = Duration::from_millis(400);

/// The queue shared by the API and the audio callback.
struct Queue {
    /// Mono samples at the stream rate, waiting to be played.
    samples: VecDeque<f32>,
    /// Real samples handed to the device so far.
    consumed: u64,
    /// Silence written since the last real sample.
    tail_silence: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    progress: watch::Sender<Progress>,
    volume: AtomicU32,
    /// The stream's rate, chosen when it is first needed.
    rate: Mutex<Option<u32>>,
    converter: Mutex<Option<Converter>>,
    /// What is written to the device, for echo cancellation.
    reference: Arc<super::aec::Reference>,
}

enum Cmd {
    Wake,
    Flush,
    Quit,
}

/// A cpal speaker.
pub struct CpalSink {
    shared: Arc<Shared>,
    cmd: std_mpsc::Sender<Cmd>,
    name: String,
    supported_rates: Vec<(u32, u32)>,
    default_rate: u32,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for CpalSink {
    /// Closes the stream (so the device is released cleanly) and ends the thread.
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl CpalSink {
    pub fn new(spec: DeviceSpec, volume: f32) -> Result<CpalSink, AudioError> {
        let device = devices::find(&spec, Direction::Output)?;
        let name = devices::describe(&device);
        let default = device
            .default_output_config()
            .map_err(|e| AudioError::Unsupported {
                device: name.clone(),
                what: format!("no usable playback configuration ({e})"),
            })?;
        let supported_rates = device
            .supported_output_configs()
            .map(|it| {
                it.map(|c| (c.min_sample_rate(), c.max_sample_rate()))
                    .collect()
            })
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                samples: VecDeque::new(),
                consumed: 0,
                tail_silence: 0,
            }),
            progress: watch::Sender::new(Progress::default()),
            volume: AtomicU32::new(volume.clamp(0.0, 1.0).to_bits()),
            rate: Mutex::new(None),
            converter: Mutex::new(None),
            reference: Arc::default(),
        });
        let (cmd, rx) = std_mpsc::channel();
        let thread_shared = shared.clone();
        let thread_name = name.clone();
        let thread = thread::Builder::new()
            .name("pichat-playback".into())
            .spawn(move || player_thread(spec, thread_shared, rx, thread_name))
            .map_err(|e| AudioError::Other(format!("cannot start the playback thread: {e}")))?;
        Ok(CpalSink {
            shared,
            cmd,
            name,
            supported_rates,
            default_rate: default.sample_rate(),
            thread: Some(thread),
        })
    }

    /// The stream rate for audio at `rate`: the same when the device can
    /// (no resampling, bit-exact), else the device's default.
    fn stream_rate_for(&self, rate: u32) -> u32 {
        if self
            .supported_rates
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&rate))
        {
            rate
        } else {
            self.default_rate
        }
    }
}

impl AudioSink for CpalSink {
    fn enqueue(&self, pcm: &[i16], rate: u32) -> Result<(), AudioError> {
        if pcm.is_empty() {
            return Ok(());
        }
        let input: Vec<f32> = pcm.iter().map(|&s| to_f32(s)).collect();
        let mut out = Vec::with_capacity(input.len());
        {
            let mut stream_rate = self.shared.rate.lock().map_err(|_| poisoned())?;
            let mut conv = self.shared.converter.lock().map_err(|_| poisoned())?;
            let target = *stream_rate.get_or_insert_with(|| self.stream_rate_for(rate));
            let reuse = conv
                .as_ref()
                .is_some_and(|c| c.in_rate() == rate && c.out_rate() == target);
            if !reuse {
                if let Some(old) = conv.as_mut() {
                    old.finish(&mut out);
                }
                *conv = Some(
                    Converter::new(rate, target, (rate / 50) as usize)
                        .map_err(AudioError::Other)?,
                );
            }
            if let Some(c) = conv.as_mut() {
                c.push(&input, &mut out);
            }
        }
        self.push(out);
        Ok(())
    }

    fn finish(&self) {
        let mut out = Vec::new();
        if let Ok(mut conv) = self.shared.converter.lock()
            && let Some(c) = conv.as_mut()
        {
            c.finish(&mut out);
        }
        self.push(out);
    }

    fn flush(&self) {
        if let Ok(mut conv) = self.shared.converter.lock() {
            *conv = None;
        }
        if let Ok(mut q) = self.shared.queue.lock() {
            q.samples.clear();
            let consumed = q.consumed;
            self.shared.progress.send_modify(|p| {
                p.queued = consumed;
                p.played = consumed;
            });
        }
        let _ = self.cmd.send(Cmd::Flush);
    }

    fn progress(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    fn set_volume(&self, volume: f32) {
        self.shared
            .volume
            .store(volume.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    fn rate(&self) -> u32 {
        self.shared
            .rate
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or(self.default_rate)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn reference(&self) -> Option<Arc<super::aec::Reference>> {
        Some(self.shared.reference.clone())
    }
}

impl CpalSink {
    fn push(&self, samples: Vec<f32>) {
        if samples.is_empty() {
            return;
        }
        if let Ok(mut q) = self.shared.queue.lock() {
            let n = samples.len() as u64;
            q.samples.extend(samples);
            self.shared.progress.send_modify(|p| p.queued += n);
        }
        let _ = self.cmd.send(Cmd::Wake);
    }
}

fn poisoned() -> AudioError {
    AudioError::Other("playback state is poisoned".into())
}

fn open_stream(
    spec: &DeviceSpec,
    shared: &Arc<Shared>,
    name: &str,
) -> Result<cpal::Stream, AudioError> {
    let device = devices::find(spec, Direction::Output)?;
    let rate = shared
        .rate
        .lock()
        .ok()
        .and_then(|r| *r)
        .unwrap_or(super::RATE);
    // Mono when the device takes it at this rate, else its default channel count.
    let configs: Vec<cpal::SupportedStreamConfigRange> = device
        .supported_output_configs()
        .map(|i| i.collect())
        .unwrap_or_default();
    let fits = |c: &cpal::SupportedStreamConfigRange| {
        (c.min_sample_rate()..=c.max_sample_rate()).contains(&rate)
    };
    let pick = configs
        .iter()
        .filter(|c| fits(c))
        .min_by_key(|c| {
            (
                c.channels() != 1,
                c.sample_format() != cpal::SampleFormat::F32
                    && c.sample_format() != cpal::SampleFormat::I16,
            )
        })
        .ok_or_else(|| AudioError::Unsupported {
            device: name.to_string(),
            what: format!("cannot play at {rate} Hz"),
        })?;
    let channels = pick.channels().max(1) as usize;
    let format = pick.sample_format();
    let cb_shared = shared.clone();
    let callback = move |data: &mut cpal::Data, info: &cpal::OutputCallbackInfo| {
        let frames = data.len() / channels;
        let vol = f32::from_bits(cb_shared.volume.load(Ordering::Relaxed));
        let mut mono = vec![0.0f32; frames];
        let mut real = 0u64;
        if let Ok(mut q) = cb_shared.queue.lock() {
            for slot in mono.iter_mut() {
                match q.samples.pop_front() {
                    Some(s) => {
                        *slot = s * vol;
                        real += 1;
                    }
                    None => break,
                }
            }
            q.consumed += real;
            // What sits in the device's buffer has not been heard yet: the
            // reported delay, bounded by two periods (some plugins report
            // nonsense), minus the silence written after the last sample.
            let ts = info.timestamp();
            let reported =
                (ts.playback.duration_since(ts.callback).as_secs_f64() * rate as f64) as u64;
            let in_device = reported.min(2 * frames as u64);
            let silence = frames as u64 - real;
            q.tail_silence = if real > 0 {
                silence
            } else {
                q.tail_silence + silence
            };
            let heard = q
                .consumed
                .saturating_sub(in_device.saturating_sub(q.tail_silence));
            cb_shared.progress.send_if_modified(|p| {
                if heard > p.played {
                    p.played = heard;
                    true
                } else {
                    false
                }
            });
        }
        let ts = info.timestamp();
        let delay = ts.playback.duration_since(ts.callback);
        cb_shared
            .reference
            .push(rate, &mono, std::time::Instant::now() + delay);
        write_out(data, &mono, channels);
    };
    let log = std::sync::Arc::new(Mutex::new(super::ErrorLog::new(format!("playback {name}"))));
    let on_error = move |e: cpal::Error| {
        if let Ok(mut l) = log.lock() {
            l.report(&e);
        }
    };
    let period = (rate / 25).max(256);
    let mk = |buffer_size| cpal::StreamConfig {
        channels: channels as u16,
        sample_rate: rate,
        buffer_size,
    };
    let stream = match device.build_output_stream_raw(
        mk(cpal::BufferSize::Fixed(period)),
        format,
        callback.clone(),
        on_error.clone(),
        None,
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(
                "{name}: a {period}-frame period is refused ({e}); using the device default"
            );
            device
                .build_output_stream_raw(
                    mk(cpal::BufferSize::Default),
                    format,
                    callback,
                    on_error,
                    None,
                )
                .map_err(|e| AudioError::Device {
                    device: name.to_string(),
                    message: format!("cannot open for playback: {e}"),
                })?
        }
    };
    tracing::debug!("{name}: playing {channels} ch at {rate} Hz, {format}");
    stream.play().map_err(|e| AudioError::Device {
        device: name.to_string(),
        message: format!("cannot start playback: {e}"),
    })?;
    Ok(stream)
}

/// Writes mono samples to every channel of an output buffer of any format.
fn write_out(data: &mut cpal::Data, mono: &[f32], channels: usize) {
    use cpal::SampleFormat as F;
    fn fill<T: cpal::Sample + cpal::FromSample<f32>>(
        out: Option<&mut [T]>,
        mono: &[f32],
        channels: usize,
    ) {
        if let Some(out) = out {
            for (frame, &s) in out.chunks_exact_mut(channels).zip(mono) {
                let v = T::from_sample(s);
                frame.iter_mut().for_each(|x| *x = v);
            }
        }
    }
    match data.sample_format() {
        F::I8 => fill(data.as_slice_mut::<i8>(), mono, channels),
        F::I16 => fill(data.as_slice_mut::<i16>(), mono, channels),
        F::I32 => fill(data.as_slice_mut::<i32>(), mono, channels),
        F::I64 => fill(data.as_slice_mut::<i64>(), mono, channels),
        F::U8 => fill(data.as_slice_mut::<u8>(), mono, channels),
        F::U16 => fill(data.as_slice_mut::<u16>(), mono, channels),
        F::U32 => fill(data.as_slice_mut::<u32>(), mono, channels),
        F::U64 => fill(data.as_slice_mut::<u64>(), mono, channels),
        F::F32 => fill(data.as_slice_mut::<f32>(), mono, channels),
        F::F64 => fill(data.as_slice_mut::<f64>(), mono, channels),
        _ => {}
    }
}

fn player_thread(spec: DeviceSpec, shared: Arc<Shared>, rx: std_mpsc::Receiver<Cmd>, name: String) {
    let mut stream: Option<cpal::Stream> = None;
    loop {
        let cmd = if stream.is_some() {
            match rx.recv_timeout(LINGER) {
                Ok(c) => Some(c),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        };
        match cmd {
            Some(Cmd::Quit) => return,
            Some(Cmd::Flush) => {
                // Dropping the stream discards what the device still buffers.
                stream = None;
                if let Ok(mut r) = shared.rate.lock() {
                    *r = None;
                }
            }
            Some(Cmd::Wake) => {
                if stream.is_none() {
                    let t = std::time::Instant::now();
                    match open_stream(&spec, &shared, &name) {
                        Ok(s) => {
                            tracing::debug!(
                                "{name}: opened in {:.1} ms",
                                t.elapsed().as_secs_f64() * 1e3
                            );
                            stream = Some(s)
                        }
                        Err(e) => {
                            tracing::warn!("{e}");
                            // Nothing can be heard: count the queue as played so waiters go on.
                            if let Ok(mut q) = shared.queue.lock() {
                                q.samples.clear();
                                let c = q.consumed;
                                shared.progress.send_modify(|p| {
                                    p.queued = c;
                                    p.played = c;
                                });
                            }
                        }
                    }
                }
            }
            None => {
                // Idle long enough with an open stream: close it once all is heard.
                let idle = shared
                    .queue
                    .lock()
                    .map(|q| q.samples.is_empty())
                    .unwrap_or(true);
                let p = *shared.progress.borrow();
                if idle && p.played >= p.queued {
                    stream = None;
                    if let Ok(mut r) = shared.rate.lock() {
                        *r = None;
                    }
                    if let Ok(mut c) = shared.converter.lock() {
                        *c = None;
                    }
                }
            }
        }
    }
}
