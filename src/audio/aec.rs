//! Echo cancellation: what the speaker plays is taken out of what the
//! microphone hears, so the assistant's own voice neither triggers the wake
//! word nor reaches a transcript, while the user's voice over it still
//! does. The canceller is speexdsp's (an adaptive MDF filter and a residual
//! echo suppressor), loaded at run time from `libspeexdsp.so.1` (Debian's
//! `libspeexdsp1`, on every Raspberry Pi OS with PulseAudio or PipeWire), so
//! it costs the binary nothing.
//!
//! The reference is tapped in the playback callback ([`Reference`]): the
//! samples handed to the device, in order. The ear takes it at the
//! microphone's pace, one 20 ms frame for one frame, so both streams keep a
//! fixed offset while a reply plays; the filter learns the rest of the
//! delay (up to `tail`). Silence from the speaker costs nothing: the
//! canceller runs only while there is something to cancel.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::resample::{Converter, to_i16};
use super::{FRAME, RATE};
use crate::dl;

/// Reference samples kept at most (2 s at 48 kHz): a reader that stops
/// reading cannot grow it.
const REFERENCE_CAP: usize = 96_000;
/// Frames the microphone is held back while echo is cancelled (60 ms).
pub const MIC_DELAY: usize = 3;
/// Reference gathered before it is used, so that it never runs dry
/// between two playback callbacks (40 ms).
const PREBUFFER: usize = 2 * FRAME;

/// What the speaker played, in order, at its stream rate, with when the
/// first sample kept is heard.
#[derive(Default)]
pub struct Reference {
    inner: Mutex<RefInner>,
}

#[derive(Default)]
struct RefInner {
    rate: u32,
    samples: VecDeque<f32>,
    /// When `samples[0]` is heard.
    head: Option<Instant>,
    /// Readers registered (none: nothing is kept).
    readers: usize,
}

impl Reference {
    /// From the playback callback: the samples just written to the device,
    /// the first of which is heard at `heard`.
    pub fn push(&self, rate: u32, samples: &[f32], heard: Instant) {
        let Ok(mut r) = self.inner.lock() else {
            return;
        };
        if r.readers == 0 || rate == 0 {
            return;
        }
        // A new rate, or a gap or jump in time (a new stream): start afresh.
        let expected = r
            .head
            .map(|h| h + Duration::from_secs_f64(r.samples.len() as f64 / r.rate.max(1) as f64));
        let off = expected.map(|e| if e > heard { e - heard } else { heard - e });
        if r.rate != rate
            || r.samples.is_empty()
            || off.is_none_or(|o| o > Duration::from_millis(150))
        {
            r.samples.clear();
            r.rate = rate;
            r.head = Some(heard);
        }
        r.samples.extend(samples);
        let excess = r.samples.len().saturating_sub(REFERENCE_CAP);
        if excess > 0 {
            r.samples.drain(..excess);
            let rate = r.rate as f64;
            r.head = r
                .head
                .map(|h| h + Duration::from_secs_f64(excess as f64 / rate));
        }
    }

    /// Everything kept: (rate, when its first sample is heard).
    fn take(&self, out: &mut Vec<f32>) -> Option<(u32, Instant)> {
        let mut r = self.inner.lock().ok()?;
        let head = r.head.take()?;
        out.extend(r.samples.drain(..));
        Some((r.rate, head))
    }

    fn register(&self, on: bool) {
        if let Ok(mut r) = self.inner.lock() {
            if on {
                r.readers += 1;
            } else {
                r.readers = r.readers.saturating_sub(1);
                if r.readers == 0 {
                    r.samples.clear();
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "echo cancellation: cannot load {lib}: {cause} (install libspeexdsp1, or set listen.echo_cancel = false)"
)]
pub struct AecError {
    lib: String,
    cause: String,
}

const SPEEX_ECHO_SET_SAMPLING_RATE: c_int = 24;
const SPEEX_PREPROCESS_SET_DENOISE: c_int = 0;
const SPEEX_PREPROCESS_SET_AGC: c_int = 2;
const SPEEX_PREPROCESS_SET_ECHO_SUPPRESS: c_int = 20;
const SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE: c_int = 22;
const SPEEX_PREPROCESS_SET_ECHO_STATE: c_int = 24;

struct Api {
    echo_init: unsafe extern "C" fn(c_int, c_int) -> *mut c_void,
    echo_destroy: unsafe extern "C" fn(*mut c_void),
    echo_cancel: unsafe extern "C" fn(*mut c_void, *const i16, *const i16, *mut i16),
    echo_ctl: unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int,
    echo_reset: unsafe extern "C" fn(*mut c_void),
    pre_init: unsafe extern "C" fn(c_int, c_int) -> *mut c_void,
    pre_destroy: unsafe extern "C" fn(*mut c_void),
    pre_ctl: unsafe extern "C" fn(*mut c_void, c_int, *mut c_void) -> c_int,
    pre_run: unsafe extern "C" fn(*mut c_void, *mut i16) -> c_int,
    _lib: libloading::Library,
}

fn load(lib: &Path) -> Result<Api, AecError> {
    let err = |cause: String| AecError {
        lib: lib.display().to_string(),
        cause,
    };
    // SAFETY: speexdsp has no initialisers with preconditions.
    let l = unsafe { libloading::Library::new(lib) }.map_err(|e| err(e.to_string()))?;
    // SAFETY: each field has the type of speexdsp's declaration of its symbol.
    let api = unsafe {
        Api {
            echo_init: dl::function(&l, b"speex_echo_state_init\0").map_err(err)?,
            echo_destroy: dl::function(&l, b"speex_echo_state_destroy\0").map_err(err)?,
            echo_cancel: dl::function(&l, b"speex_echo_cancellation\0").map_err(err)?,
            echo_ctl: dl::function(&l, b"speex_echo_ctl\0").map_err(err)?,
            echo_reset: dl::function(&l, b"speex_echo_state_reset\0").map_err(err)?,
            pre_init: dl::function(&l, b"speex_preprocess_state_init\0").map_err(err)?,
            pre_destroy: dl::function(&l, b"speex_preprocess_state_destroy\0").map_err(err)?,
            pre_ctl: dl::function(&l, b"speex_preprocess_ctl\0").map_err(err)?,
            pre_run: dl::function(&l, b"speex_preprocess_run\0").map_err(err)?,
            _lib: l,
        }
    };
    Ok(api)
}

/// The default library name.
pub const LIBRARY: &str = "libspeexdsp.so.1";

/// One canceller for the microphone's 20 ms frames.
pub struct EchoCanceller {
    api: Api,
    echo: *mut c_void,
    pre: *mut c_void,
    reference: Arc<Reference>,
    converter: Option<Converter>,
    raw: Vec<f32>,
    resampled: Vec<f32>,
    /// 16 kHz reference waiting for its microphone frame, and when its
    /// first sample is heard.
    fifo: VecDeque<i16>,
    fifo_head: Option<Instant>,
    /// The FIFO is consumed in step with the microphone (after the prebuffer).
    synced: bool,
    /// The microphone's delay line.
    delay: VecDeque<Vec<i16>>,
    /// Frames of reference still to feed after the speaker went quiet
    /// (the filter's tail); zero: idle, the microphone passes through.
    tail_left: usize,
    tail_frames: usize,
    out: Vec<i16>,
    /// Frames processed with a reference (for the bench).
    pub cancelled: u64,
    /// The reference of the last frame, when there was one.
    last_ref: Vec<i16>,
    last_real: bool,
}

// SAFETY: the speex states are used only through `&mut self`.
unsafe impl Send for EchoCanceller {}

impl Drop for EchoCanceller {
    fn drop(&mut self) {
        self.reference.register(false);
        // SAFETY: created by this library, destroyed once.
        unsafe {
            (self.api.pre_destroy)(self.pre);
            (self.api.echo_destroy)(self.echo);
        }
    }
}

impl EchoCanceller {
    /// A canceller that learns echo paths up to `tail_ms` long.
    pub fn new(reference: Arc<Reference>, tail_ms: u32, lib: &Path) -> Result<Self, AecError> {
        let api = load(lib)?;
        let taps = (RATE * tail_ms / 1000).max(FRAME as u32) as c_int;
        // SAFETY: documented speexdsp calls; pointers checked before use.
        let (echo, pre) = unsafe {
            let echo = (api.echo_init)(FRAME as c_int, taps);
            let pre = (api.pre_init)(FRAME as c_int, RATE as c_int);
            if echo.is_null() || pre.is_null() {
                return Err(AecError {
                    lib: lib.display().to_string(),
                    cause: "cannot create the canceller".into(),
                });
            }
            let mut rate = RATE as c_int;
            (api.echo_ctl)(
                echo,
                SPEEX_ECHO_SET_SAMPLING_RATE,
                (&mut rate as *mut c_int).cast(),
            );
            let mut off: c_int = 0;
            (api.pre_ctl)(
                pre,
                SPEEX_PREPROCESS_SET_DENOISE,
                (&mut off as *mut c_int).cast(),
            );
            (api.pre_ctl)(
                pre,
                SPEEX_PREPROCESS_SET_AGC,
                (&mut off as *mut c_int).cast(),
            );
            let mut suppress: c_int = -45;
            (api.pre_ctl)(
                pre,
                SPEEX_PREPROCESS_SET_ECHO_SUPPRESS,
                (&mut suppress as *mut c_int).cast(),
            );
            let mut active: c_int = -20;
            (api.pre_ctl)(
                pre,
                SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE,
                (&mut active as *mut c_int).cast(),
            );
            (api.pre_ctl)(pre, SPEEX_PREPROCESS_SET_ECHO_STATE, echo);
            (echo, pre)
        };
        reference.register(true);
        Ok(EchoCanceller {
            api,
            echo,
            pre,
            reference,
            converter: None,
            raw: Vec::new(),
            resampled: Vec::new(),
            fifo: VecDeque::new(),
            fifo_head: None,
            synced: false,
            delay: VecDeque::new(),
            tail_left: 0,
            tail_frames: (taps as usize).div_ceil(FRAME) + 5,
            out: vec![0; FRAME],
            cancelled: 0,
            last_ref: vec![0; FRAME],
            last_real: false,
        })
    }

    /// Takes what the speaker played since the last call, at 16 kHz.
    fn gather(&mut self) {
        self.raw.clear();
        let Some((rate, head)) = self.reference.take(&mut self.raw) else {
            return;
        };
        let reuse = self.converter.as_ref().is_some_and(|c| c.in_rate() == rate);
        if !reuse {
            self.converter = Converter::new(rate, RATE, (rate / 100).max(1) as usize).ok();
        }
        let Some(c) = self.converter.as_mut() else {
            return;
        };
        self.resampled.clear();
        c.push(&self.raw, &mut self.resampled);
        // Where the new samples belong: continuing the FIFO, or from `head`.
        let continues = self.fifo_head.is_some_and(|h| {
            let end = h + Duration::from_secs_f64(self.fifo.len() as f64 / RATE as f64);
            let d = if end > head { end - head } else { head - end };
            d < Duration::from_millis(150)
        });
        if !continues {
            self.fifo.clear();
            self.fifo_head = Some(head);
            self.synced = false;
        }
        self.fifo.extend(self.resampled.iter().map(|&s| to_i16(s)));
        let excess = self.fifo.len().saturating_sub(RATE as usize);
        if excess > 0 {
            self.fifo.drain(..excess);
            self.advance(excess);
        }
    }

    fn advance(&mut self, samples: usize) {
        self.fifo_head = self
            .fifo_head
            .map(|h| h + Duration::from_secs_f64(samples as f64 / RATE as f64));
    }

    /// Cleans one 20 ms microphone frame in place. The microphone is
    /// delayed by [`MIC_DELAY`] frames while a reply plays, and the
    /// reference is taken sample for sample at the microphone's pace after a
    /// short prebuffer: its FIFO then holds what the device still buffers,
    /// so each sound reaches the filter before its echo does.
    pub fn process(&mut self, mic: &mut [i16]) {
        if mic.len() != FRAME {
            return;
        }
        self.gather();
        self.last_real = false;
        let live = !self.fifo.is_empty() || self.tail_left > 0;
        if !live && self.delay.is_empty() {
            return;
        }
        // The delay line: out goes the frame of MIC_DELAY frames ago.
        self.delay.push_back(mic.to_vec());
        let delayed = if self.delay.len() > MIC_DELAY {
            self.delay.pop_front().unwrap_or_default()
        } else {
            vec![0; FRAME]
        };
        mic.copy_from_slice(&delayed);
        let mut play = [0i16; FRAME];
        if !self.synced && self.fifo.len() >= PREBUFFER {
            self.synced = true;
        }
        let mut real = false;
        if self.synced {
            let n = self.fifo.len().min(FRAME);
            for (p, s) in play.iter_mut().zip(self.fifo.drain(..n)) {
                *p = s;
            }
            self.advance(n);
            real = n > 0;
            if n < FRAME {
                // Ran dry: the reply ended (or the device stalled).
                self.synced = false;
                self.fifo_head = None;
            }
        }
        self.last_real = real;
        if real {
            self.last_ref.copy_from_slice(&play);
        }
        if real {
            self.tail_left = self.tail_frames;
        } else if self.tail_left == 0 {
            // Idle again: drain the delay line (the frames are passed on).
            if self.fifo.is_empty() {
                self.delay.clear();
            }
            return;
        } else {
            self.tail_left -= 1;
        }
        // SAFETY: buffers of FRAME samples, as the states were made for.
        unsafe {
            (self.api.echo_cancel)(
                self.echo,
                mic.as_ptr(),
                play.as_ptr(),
                self.out.as_mut_ptr(),
            );
            (self.api.pre_run)(self.pre, self.out.as_mut_ptr());
        }
        mic.copy_from_slice(&self.out);
        self.cancelled += 1;
    }

    /// What the speaker played for the frame just processed, aligned with
    /// it (`None` while the speaker is quiet).
    pub fn reference_frame(&self) -> Option<&[i16]> {
        self.last_real.then_some(&self.last_ref[..])
    }

    /// Forgets the learned echo path (the speaker or room changed).
    pub fn reset(&mut self) {
        // SAFETY: a valid state.
        unsafe { (self.api.echo_reset)(self.echo) };
        self.fifo.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speech-like test audio: low-passed noise, its level rising and
    /// falling four times a second.
    fn talkish(n: usize, seed: u32) -> Vec<i16> {
        let mut s = seed;
        let mut lp = 0.0f32;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let white = ((s >> 16) & 0xFFFF) as f32 / 32768.0 - 1.0;
                lp = 0.7 * lp + 0.3 * white;
                let env =
                    0.6 + 0.4 * (i as f32 * 2.0 * std::f32::consts::PI * 4.0 / 16_000.0).sin();
                (lp * env * 12_000.0) as i16
            })
            .collect()
    }

    fn energy(x: &[i16]) -> f64 {
        x.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() + 1.0
    }

    /// The real speexdsp (libspeexdsp1, installed with PulseAudio) on a
    /// room whose echo comes 40 ms late at half the level: after a few
    /// seconds the echo is mostly gone, and the user's voice is kept.
    #[test]
    fn cancels_a_delayed_echo_and_keeps_the_near_voice() {
        let reference = Arc::new(Reference::default());
        let mut aec = EchoCanceller::new(reference.clone(), 300, Path::new(LIBRARY))
            .unwrap_or_else(|e| panic!("{e}"));
        let far = talkish(16_000 * 8, 1);
        let near = talkish(16_000 * 8, 99);
        let delay = 640; // 40 ms
        let t0 = Instant::now();
        let (mut echo_in, mut echo_out) = (0.0, 0.0);
        let (mut talk_in, mut talk_out) = (0.0, 0.0);
        for (k, frame) in far.chunks(FRAME).enumerate() {
            let heard = t0 + Duration::from_millis(20 * k as u64);
            let f: Vec<f32> = frame.iter().map(|&s| s as f32 / 32768.0).collect();
            reference.push(RATE, &f, heard);
            // The microphone: the echo, and in the last second the user too.
            let start = k * FRAME;
            let user = k >= 350;
            let mut mic: Vec<i16> = (start..start + FRAME)
                .map(|i| {
                    let echo = if i >= delay { far[i - delay] / 2 } else { 0 };
                    echo.saturating_add(if user { near[i] / 2 } else { 0 })
                })
                .collect();
            let before = mic.clone();
            aec.process(&mut mic);
            // Frames out are MIC_DELAY frames behind the ones in.
            if (250..340).contains(&k) {
                echo_in += energy(&before);
                echo_out += energy(&mic);
            }
            if k >= 360 {
                talk_in +=
                    energy(&near[(k - MIC_DELAY) * FRAME..(k - MIC_DELAY + 1) * FRAME]) / 4.0;
                talk_out += energy(&mic);
            }
        }
        let erle = 10.0 * (echo_in / echo_out).log10();
        assert!(erle >= 15.0, "echo reduced by only {erle:.1} dB");
        assert!(aec.cancelled > 300);
        // While the user talks over the echo, their voice stays (within 6 dB).
        let kept = 10.0 * (talk_out / talk_in).log10();
        assert!(kept > -6.0, "the user's voice lost {kept:.1} dB");
    }

    #[test]
    fn a_missing_library_is_explained() {
        let e = EchoCanceller::new(Arc::default(), 300, Path::new("libnot-speexdsp.so.9"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("libspeexdsp1") && e.contains("listen.echo_cancel"),
            "{e}"
        );
    }
}
