//! The one WAV decoder for hostile input: files given on the command line,
//! `wav:` microphones, `speech_to_text` payloads from any token holder, and
//! whatever a text-to-speech engine sends back.
//!
//! Everything is checked from the header before a sample is read, and so
//! before anything is allocated or resampled: the sample rate
//! ([`MIN_RATE`]..=[`MAX_RATE`]), the channels (1..=[`MAX_CHANNELS`]), the
//! sample format (integer 8 to 32-bit, float 32-bit) and the duration (at
//! most the caller's [`Limits`]). The header itself is read within
//! [`MAX_HEADER`] bytes, with checked arithmetic.
//!
//! The chunks are walked here only to find `fmt ` and `data` (and to mend
//! the sizes a writer to a pipe leaves as 0 or 0xFFFFFFFF); hound then
//! parses the format from a clean header holding just those two chunks,
//! and reads the samples. Audio comes out as mono: channels are mixed down
//! while reading, so a clip never holds more than one channel.
//!
//! PCM that comes without a WAV header (Wyoming audio chunks, OpenAI's raw
//! PCM) is checked with the same rules by [`check_format`] and [`Budget`].

use std::io::{Cursor, Read};
use std::time::Duration;

/// Lowest sample rate accepted, Hz.
pub const MIN_RATE: u32 = 8_000;
/// Highest sample rate accepted, Hz.
pub const MAX_RATE: u32 = 192_000;
/// Most channels accepted.
pub const MAX_CHANNELS: u16 = 8;
/// The chunks before the audio data must fit in this many bytes.
pub const MAX_HEADER: usize = 64 * 1024;
/// Longest `fmt ` chunk accepted (WAVEFORMATEXTENSIBLE is 40 bytes).
const MAX_FMT: usize = 1024;
/// Longest clip read without a limit of its own (a played file, an earcon),
/// and the most a `wav:` microphone gives per press: the largest
/// `stt.max_seconds` allows.
pub const MAX_FILE_SECONDS: u64 = 600;

/// What a WAV (or raw PCM) may hold; the setting named in the error when
/// it is too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max: Duration,
    /// The config key that sets `max`, for the error message.
    pub setting: &'static str,
}

impl Limits {
    /// Speech to transcribe: `stt.max_seconds`.
    pub fn stt(max: Duration) -> Limits {
        Limits {
            max,
            setting: "stt.max_seconds",
        }
    }

    /// Speech synthesized by an engine: `tts.max_seconds`.
    pub fn tts(max: Duration) -> Limits {
        Limits {
            max,
            setting: "tts.max_seconds",
        }
    }

    /// A file without a limit of its own.
    pub fn file() -> Limits {
        Limits {
            max: Duration::from_secs(MAX_FILE_SECONDS),
            setting: "the longest clip pichat reads",
        }
    }
}

/// Why a WAV (or raw PCM) was refused. Each message names the field.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("not a WAV file: {0}")]
    NotWav(String),
    #[error(
        "not a PCM WAV (compressed or unusual encoding, format tag {0:#06x}); convert it, e.g. `sox IN -e signed -b 16 OUT.wav`"
    )]
    Compressed(u16),
    #[error("sample rate {0} Hz is out of range ({MIN_RATE} to {MAX_RATE} Hz)")]
    SampleRate(u64),
    #[error("channels {0} is out of range (1 to {MAX_CHANNELS})")]
    Channels(u64),
    #[error("sample format {0} is not supported (integer 8, 16, 24 or 32-bit, or float 32-bit)")]
    SampleFormat(String),
    #[error("duration {seconds:.1} s is over the limit of {max} s ({setting})")]
    TooLong {
        seconds: f64,
        max: u64,
        setting: &'static str,
    },
    #[error("damaged sample data ({0})")]
    Damaged(String),
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a sample rate, channel count and sample format (PCM with or
/// without a header).
pub fn check_format(rate: u64, channels: u64, format: SampleFormat) -> Result<(), WavError> {
    if !(MIN_RATE as u64..=MAX_RATE as u64).contains(&rate) {
        return Err(WavError::SampleRate(rate));
    }
    if !(1..=MAX_CHANNELS as u64).contains(&channels) {
        return Err(WavError::Channels(channels));
    }
    match format {
        SampleFormat::Int(8 | 16 | 24 | 32) | SampleFormat::Float(32) => Ok(()),
        other => Err(WavError::SampleFormat(other.to_string())),
    }
}

/// How samples are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Signed (unsigned for 8-bit) integers of this many bits.
    Int(u16),
    /// IEEE floats of this many bits.
    Float(u16),
}

impl std::fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SampleFormat::Int(b) => write!(f, "integer {b}-bit"),
            SampleFormat::Float(b) => write!(f, "float {b}-bit"),
        }
    }
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    pub rate: u32,
    pub channels: u16,
    pub format: SampleFormat,
    /// Sample frames (one sample per channel) in the data chunk.
    pub frames: u64,
}

impl WavInfo {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.frames as f64 / self.rate as f64)
    }

    /// Checks the duration against `limits`.
    pub fn check(&self, limits: &Limits) -> Result<(), WavError> {
        too_long(self.frames, self.rate, limits)
    }
}

fn too_long(frames: u64, rate: u32, limits: &Limits) -> Result<(), WavError> {
    // frames / rate > max, in integers: no rounding lets one sample through.
    if frames as u128 * 1000 > limits.max.as_millis() * rate as u128 {
        return Err(WavError::TooLong {
            seconds: frames as f64 / rate as f64,
            max: limits.max.as_secs(),
            setting: limits.setting,
        });
    }
    Ok(())
}

/// Counts the duration of raw PCM arriving in pieces (a streamed
/// synthesis), refusing it once over the limit.
#[derive(Debug, Clone)]
pub struct Budget {
    limits: Limits,
    /// The duration so far, in ns (each piece may have its own rate).
    used_ns: u128,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget { limits, used_ns: 0 }
    }

    /// Adds `frames` sample frames at `rate` (already checked).
    pub fn take(&mut self, frames: u64, rate: u32) -> Result<(), WavError> {
        self.used_ns += (frames as u128 * 1_000_000_000).div_ceil(rate.max(1) as u128);
        if self.used_ns > self.limits.max.as_nanos() {
            return Err(WavError::TooLong {
                seconds: self.used_ns as f64 / 1e9,
                max: self.limits.max.as_secs(),
                setting: self.limits.setting,
            });
        }
        Ok(())
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Where the chunks that matter are in the first bytes of a file.
struct Layout {
    fmt: Vec<u8>,
    /// Offset of the first data byte.
    data_at: usize,
    /// The data chunk's declared size.
    declared: u32,
}

/// Walks the chunks of `head` (the file's first bytes) to `data`.
fn layout(head: &[u8]) -> Result<Layout, WavError> {
    let bad = |m: &str| WavError::NotWav(m.to_string());
    if head.len() < 12 || &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err(bad("no RIFF/WAVE header"));
    }
    let mut fmt: Option<Vec<u8>> = None;
    let mut i = 12usize;
    loop {
        let Some(end) = i.checked_add(8).filter(|&e| e <= head.len()) else {
            return Err(if head.len() >= MAX_HEADER {
                WavError::NotWav(format!(
                    "the chunks before the audio data exceed {} KiB",
                    MAX_HEADER / 1024
                ))
            } else {
                bad("no data chunk")
            });
        };
        let id = &head[i..i + 4];
        let size = u32_at(head, i + 4);
        if id == b"data" {
            let fmt = fmt.ok_or_else(|| bad("no fmt chunk before the data chunk"))?;
            return Ok(Layout {
                fmt,
                data_at: end,
                declared: size,
            });
        }
        let size = size as usize;
        if id == b"fmt " {
            if !(16..=MAX_FMT).contains(&size) {
                return Err(WavError::NotWav(format!("fmt chunk of {size} bytes")));
            }
            let body = head
                .get(end..end + size)
                .ok_or_else(|| bad("the fmt chunk is cut short"))?;
            fmt = Some(body.to_vec());
        }
        // Chunks are padded to an even size.
        i = end
            .checked_add(size)
            .and_then(|n| n.checked_add(size & 1))
            .ok_or_else(|| bad("a chunk size is out of range"))?;
    }
}

/// Reads the format fields of a `fmt ` chunk and checks them.
fn check_fmt(fmt: &[u8]) -> Result<(u16, u16), WavError> {
    const PCM: u16 = 1;
    const FLOAT: u16 = 3;
    const EXTENSIBLE: u16 = 0xFFFE;
    let mut tag = u16_at(fmt, 0);
    let channels = u16_at(fmt, 2);
    let rate = u32_at(fmt, 4);
    let block_align = u16_at(fmt, 12);
    let bits = u16_at(fmt, 14);
    if tag == EXTENSIBLE && fmt.len() >= 26 {
        // The sub-format GUID starts with the format tag.
        tag = u16_at(fmt, 24);
    }
    let format = match tag {
        PCM => SampleFormat::Int(bits),
        FLOAT => SampleFormat::Float(bits),
        other => return Err(WavError::Compressed(other)),
    };
    check_format(rate as u64, channels as u64, format)?;
    if block_align as u32 != channels as u32 * bits.div_ceil(8) as u32 {
        return Err(WavError::NotWav(format!(
            "block align {block_align} does not match {channels} channels of {bits} bits"
        )));
    }
    Ok((channels, block_align))
}

/// A WAV being read: the header checked, the samples read on demand and
/// mixed down to mono.
pub struct Decoder<R> {
    reader: hound::WavReader<std::io::Chain<Cursor<Vec<u8>>, std::io::Take<R>>>,
    info: WavInfo,
    /// Int samples are scaled by this into -1.0..1.0.
    scale: f32,
    frame: Vec<f32>,
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the header of a WAV of `total_len` bytes (what a
    /// file's size or a buffer's length says; the data chunk's size is
    /// mended from it when the writer could not fill it in), its duration
    /// against `limits`.
    pub fn new(mut src: R, total_len: u64, limits: &Limits) -> Result<Decoder<R>, WavError> {
        let mut head = Vec::with_capacity(MAX_HEADER.min(total_len as usize));
        (&mut src).take(MAX_HEADER as u64).read_to_end(&mut head)?;
        let l = layout(&head)?;
        let (channels, block_align) = check_fmt(&l.fmt)?;
        let available = total_len.saturating_sub(l.data_at as u64);
        // 0 and 0xFFFFFFFF: a writer to a pipe, which could not seek back;
        // more than there is: a cut file. Either way, what is there counts.
        let mut len = match l.declared {
            0 | u32::MAX => available,
            n => (n as u64).min(available),
        };
        // hound counts in u32; the duration check refuses far less anyway.
        len = len.min(u32::MAX as u64 - 1);
        len -= len % block_align as u64;
        let mut clean = Vec::with_capacity(28 + l.fmt.len() + head.len() - l.data_at);
        clean.extend_from_slice(b"RIFF");
        let riff = 4 + 8 + l.fmt.len() + (l.fmt.len() & 1) + 8 + len as usize;
        clean.extend_from_slice(&(riff.min(u32::MAX as usize) as u32).to_le_bytes());
        clean.extend_from_slice(b"WAVEfmt ");
        clean.extend_from_slice(&(l.fmt.len() as u32).to_le_bytes());
        clean.extend_from_slice(&l.fmt);
        if l.fmt.len() & 1 == 1 {
            clean.push(0);
        }
        clean.extend_from_slice(b"data");
        clean.extend_from_slice(&(len as u32).to_le_bytes());
        let in_head = (head.len() - l.data_at).min(len as usize);
        clean.extend_from_slice(&head[l.data_at..l.data_at + in_head]);
        let rest = len - in_head as u64;
        let reader = hound::WavReader::new(Cursor::new(clean).chain(src.take(rest))).map_err(
            |e| match e {
                hound::Error::Unsupported => WavError::Compressed(u16_at(&l.fmt, 0)),
                hound::Error::IoError(io) => WavError::Io(io),
                other => WavError::NotWav(other.to_string()),
            },
        )?;
        let spec = reader.spec();
        let format = match spec.sample_format {
            hound::SampleFormat::Int => SampleFormat::Int(spec.bits_per_sample),
            hound::SampleFormat::Float => SampleFormat::Float(spec.bits_per_sample),
        };
        // hound's view (valid bits of an extensible header) checked again.
        if !matches!(format, SampleFormat::Float(32))
            && !matches!(format, SampleFormat::Int(b) if (1..=32).contains(&b))
        {
            return Err(WavError::SampleFormat(format.to_string()));
        }
        let bits = spec.bits_per_sample.clamp(1, 32);
        let info = WavInfo {
            rate: spec.sample_rate,
            channels,
            format,
            frames: reader.duration() as u64,
        };
        info.check(limits)?;
        Ok(Decoder {
            info,
            reader,
            scale: 1.0 / (1u64 << (bits - 1)) as f32,
            frame: Vec::with_capacity(channels as usize),
        })
    }

    pub fn info(&self) -> &WavInfo {
        &self.info
    }

    /// Appends up to `max_frames` mono samples to `out`; returns how many
    /// (0 at the end).
    pub fn read_mono(&mut self, out: &mut Vec<f32>, max_frames: usize) -> Result<usize, WavError> {
        let ch = self.info.channels as usize;
        let damaged = |e: hound::Error| WavError::Damaged(e.to_string());
        let mut n = 0;
        while n < max_frames {
            self.frame.clear();
            match self.info.format {
                SampleFormat::Float(_) => {
                    for s in self.reader.samples::<f32>().take(ch) {
                        let s = s.map_err(damaged)?;
                        // Full scale at most: a huge (or infinite, or NaN)
                        // float would overflow the resampler's FFT.
                        self.frame
                            .push(if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) });
                    }
                }
                SampleFormat::Int(_) => {
                    for s in self.reader.samples::<i32>().take(ch) {
                        self.frame.push(s.map_err(damaged)? as f32 * self.scale);
                    }
                }
            }
            if self.frame.len() < ch {
                if self.frame.is_empty() {
                    break;
                }
                return Err(WavError::Damaged("the last sample frame is cut".into()));
            }
            out.push(self.frame.iter().sum::<f32>() / ch as f32);
            n += 1;
        }
        Ok(n)
    }

    /// Reads the rest as mono s16.
    pub fn read_all_i16(&mut self) -> Result<Vec<i16>, WavError> {
        // The duration was checked; the header may still claim more than is there.
        let mut pcm = Vec::with_capacity((self.info.frames as usize).min(1 << 20));
        let mut block = Vec::with_capacity(4096);
        loop {
            block.clear();
            if self.read_mono(&mut block, 4096)? == 0 {
                return Ok(pcm);
            }
            pcm.extend(block.iter().map(|&s| super::to_i16(s)));
        }
    }
}

/// A WAV held in memory, checked against `limits`, as a mono clip.
pub fn clip_from_bytes(bytes: &[u8], limits: &Limits) -> Result<super::Clip, WavError> {
    let mut d = Decoder::new(bytes, bytes.len() as u64, limits)?;
    Ok(super::Clip {
        rate: d.info().rate,
        pcm: d.read_all_i16()?,
    })
}

/// A WAV held in memory, checked against `limits`, as the speech-to-text
/// engines take it: 16 kHz mono s16, resampled while it is read.
pub fn pcm16k_from_bytes(bytes: &[u8], limits: &Limits) -> Result<Vec<i16>, WavError> {
    let mut d = Decoder::new(bytes, bytes.len() as u64, limits)?;
    to_16k(&mut d)
}

/// The rest of a checked WAV, converted to 16 kHz mono s16.
pub fn to_16k<R: Read>(d: &mut Decoder<R>) -> Result<Vec<i16>, WavError> {
    let rate = d.info().rate;
    let mut p = crate::audio::capture::CapturePipeline::new(rate, 1).map_err(WavError::Damaged)?;
    let expect = (d.info().frames as u128 * crate::audio::RATE as u128 / rate as u128) as usize;
    let mut out = Vec::with_capacity(expect.min(1 << 20) + crate::audio::FRAME);
    let mut block = Vec::with_capacity(4096);
    loop {
        block.clear();
        if d.read_mono(&mut block, 4096)? == 0 {
            break;
        }
        p.push_f32(&block, |f| out.extend_from_slice(&f));
    }
    p.finish(|f| out.extend_from_slice(&f));
    Ok(out)
}

/// The checks of the fuzz target `wav` (fuzz/fuzz_targets/wav.rs) on one
/// input, also run over its corpus by `tests/wav_fuzz_regressions.rs`:
/// decoding never panics; what decodes is within the limits, and converts
/// to 16 kHz with exactly the samples its duration says.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    let limits = Limits::stt(Duration::from_secs(60));
    let clip = match clip_from_bytes(data, &limits) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(
                pcm16k_from_bytes(data, &limits).is_err(),
                "both decoders agree"
            );
            return;
        }
    };
    assert!((MIN_RATE..=MAX_RATE).contains(&clip.rate), "{}", clip.rate);
    assert!(clip.pcm.len() as u64 <= 60 * clip.rate as u64);
    let pcm = pcm16k_from_bytes(data, &limits).expect("both decoders agree");
    let exact = (clip.pcm.len() as u128 * crate::audio::RATE as u128 / clip.rate as u128) as usize;
    let frame = crate::audio::FRAME;
    assert_eq!(pcm.len(), exact.div_ceil(frame) * frame, "{} Hz", clip.rate);
    let frames = super::frames_of(&clip).expect("a checked clip frames");
    assert_eq!(frames.len() * frame, pcm.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV header and `data` bytes, with every field given.
    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let align = channels * bits.div_ceil(8);
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate.wrapping_mul(align as u32)).to_le_bytes());
        b.extend_from_slice(&align.to_le_bytes());
        b.extend_from_slice(&bits.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    fn stt() -> Limits {
        Limits::stt(Duration::from_secs(60))
    }

    #[test]
    fn header_fields_out_of_range_are_refused_naming_the_field() {
        let data = vec![0u8; 8192];
        let e = clip_from_bytes(&wav(1, 1, 4_294_967_291, 16, &data), &stt()).unwrap_err();
        assert!(matches!(e, WavError::SampleRate(4_294_967_291)), "{e}");
        assert!(e.to_string().contains("sample rate"), "{e}");
        let e = clip_from_bytes(&wav(1, 1, 1, 16, &data), &stt()).unwrap_err();
        assert!(matches!(e, WavError::SampleRate(1)), "{e}");
        // At the limits and one past them.
        assert!(clip_from_bytes(&wav(1, 1, MIN_RATE, 16, &data), &stt()).is_ok());
        assert!(clip_from_bytes(&wav(1, 1, MIN_RATE - 1, 16, &data), &stt()).is_err());
        assert!(clip_from_bytes(&wav(1, 1, MAX_RATE, 16, &data), &stt()).is_ok());
        assert!(clip_from_bytes(&wav(1, 1, MAX_RATE + 1, 16, &data), &stt()).is_err());
        assert!(clip_from_bytes(&wav(1, 8, 16_000, 16, &data), &stt()).is_ok());
        let e = clip_from_bytes(&wav(1, 9, 16_000, 16, &data), &stt()).unwrap_err();
        assert!(e.to_string().contains("channels 9"), "{e}");
        let e = clip_from_bytes(&wav(1, 0, 16_000, 16, &data), &stt()).unwrap_err();
        assert!(matches!(e, WavError::Channels(0)), "{e}");
        let e = clip_from_bytes(&wav(3, 1, 16_000, 64, &data), &stt()).unwrap_err();
        assert!(e.to_string().contains("sample format float 64-bit"), "{e}");
        let e = clip_from_bytes(&wav(1, 1, 16_000, 12, &data), &stt()).unwrap_err();
        assert!(e.to_string().contains("integer 12-bit"), "{e}");
        let e = clip_from_bytes(&wav(0x55, 1, 16_000, 16, &data), &stt()).unwrap_err();
        assert!(matches!(e, WavError::Compressed(0x55)), "{e}");
    }

    #[test]
    fn duration_is_checked_before_reading_at_the_limit_and_past_it() {
        let limits = Limits::stt(Duration::from_secs(1));
        let one_s = vec![0u8; 16_000 * 2];
        assert_eq!(
            clip_from_bytes(&wav(1, 1, 16_000, 16, &one_s), &limits)
                .unwrap()
                .pcm
                .len(),
            16_000
        );
        let over = vec![0u8; 16_000 * 2 + 2];
        let e = clip_from_bytes(&wav(1, 1, 16_000, 16, &over), &limits).unwrap_err();
        assert!(e.to_string().contains("stt.max_seconds"), "{e}");
        assert!(e.to_string().contains("duration 1.0 s"), "{e}");
    }

    #[test]
    fn formats_decode_to_mono() {
        // Stereo 16-bit: left 0.5, right -0.25 → mono 0.125.
        let mut data = Vec::new();
        for _ in 0..100 {
            data.extend_from_slice(&16384i16.to_le_bytes());
            data.extend_from_slice(&(-8192i16).to_le_bytes());
        }
        let c = clip_from_bytes(&wav(1, 2, 16_000, 16, &data), &stt()).unwrap();
        assert_eq!(c.pcm, vec![4096; 100]);
        // 8-bit is unsigned (128 is silence); 24-bit and float too.
        let c = clip_from_bytes(&wav(1, 1, 8_000, 8, &[128, 192, 64]), &stt()).unwrap();
        assert_eq!(c.pcm, vec![0, 16384, -16384]);
        let c = clip_from_bytes(&wav(1, 1, 8_000, 24, &[0, 0, 0x40]), &stt()).unwrap();
        assert_eq!(c.pcm, vec![16384]);
        let mut f = Vec::new();
        for s in [0.5f32, f32::NAN, f32::INFINITY, -2.0, 1e30] {
            f.extend_from_slice(&s.to_le_bytes());
        }
        let c = clip_from_bytes(&wav(3, 1, 8_000, 32, &f), &stt()).unwrap();
        assert_eq!(c.pcm, vec![16384, 0, 32767, -32768, 32767]);
    }

    #[test]
    fn streamed_and_cut_sizes_are_mended_and_odd_chunks_skipped() {
        let pcm: Vec<u8> = [1i16, 2, 3].iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut w = wav(1, 1, 16_000, 16, &pcm);
        // As a pipe writer leaves them.
        w[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        w[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(clip_from_bytes(&w, &stt()).unwrap().pcm, vec![1, 2, 3]);
        w[40..44].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(clip_from_bytes(&w, &stt()).unwrap().pcm, vec![1, 2, 3]);
        // Declared longer than there is (a cut file), and half a sample at the end.
        w[40..44].copy_from_slice(&1000u32.to_le_bytes());
        w.push(9);
        assert_eq!(clip_from_bytes(&w, &stt()).unwrap().pcm, vec![1, 2, 3]);
        // Declared shorter: a chunk after the data is not audio.
        w[40..44].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(clip_from_bytes(&w, &stt()).unwrap().pcm, vec![1, 2]);
        // An odd-sized chunk before the data, padded as RIFF says.
        let mut odd = w[..12].to_vec();
        odd.extend_from_slice(b"LIST");
        odd.extend_from_slice(&3u32.to_le_bytes());
        odd.extend_from_slice(&[1, 2, 3, 0]);
        odd.extend_from_slice(&w[12..]);
        assert_eq!(clip_from_bytes(&odd, &stt()).unwrap().pcm, vec![1, 2]);
    }

    #[test]
    fn broken_headers_are_errors_not_panics() {
        let good = wav(1, 1, 16_000, 16, &[0; 64]);
        for cut in 0..good.len() {
            let _ = clip_from_bytes(&good[..cut], &stt());
        }
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // fmt size
        assert!(clip_from_bytes(&huge, &stt()).is_err());
        let mut skip = good[..12].to_vec();
        skip.extend_from_slice(b"junk");
        skip.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
        assert!(clip_from_bytes(&skip, &stt()).is_err());
        assert!(matches!(
            clip_from_bytes(b"RIFF....WAVEjunkjunk", &stt()),
            Err(WavError::NotWav(_))
        ));
        // The chunks before the data must fit in MAX_HEADER.
        let mut long = good[..12].to_vec();
        long.extend_from_slice(b"pad ");
        long.extend_from_slice(&(MAX_HEADER as u32).to_le_bytes());
        long.extend(std::iter::repeat_n(0u8, MAX_HEADER));
        long.extend_from_slice(&good[12..]);
        let e = clip_from_bytes(&long, &stt()).unwrap_err();
        assert!(e.to_string().contains("64 KiB"), "{e}");
    }

    #[test]
    fn resampled_to_16k_with_the_exact_length() {
        let data = vec![0u8; 44_100 * 2];
        let pcm = pcm16k_from_bytes(&wav(1, 1, 44_100, 16, &data), &stt()).unwrap();
        assert_eq!(pcm.len(), 16_000);
    }

    #[test]
    fn a_budget_refuses_past_the_limit() {
        let mut b = Budget::new(Limits::tts(Duration::from_secs(2)));
        b.take(16_000, 16_000).unwrap();
        b.take(22_050, 22_050).unwrap();
        assert!(b.take(1, 8_000).is_err());
    }
}
