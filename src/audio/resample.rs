//! Streaming sample-rate conversion (rubato's synchronous FFT resampler) and
//! the pieces around it: downmix to mono, float ↔ s16, 20 ms framing.
//!
//! The converter takes mono `f32` samples in blocks of any size and returns
//! the converted samples, with the resampler's start-up delay trimmed so the
//! output lines up with the input sample for sample.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler, WindowFunction};

/// Converts a mono stream from one fixed rate to another.
pub struct Converter {
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    out_buf: Vec<f32>,
    /// Output samples still to drop (the resampler's delay).
    skip: usize,
    in_rate: u32,
    out_rate: u32,
    /// Input samples taken, output samples given: to emit exactly the right
    /// number of samples at the end.
    taken: u64,
    given: u64,
}

impl Converter {
    /// A converter from `in_rate` to `out_rate`, processing `chunk` input
    /// samples at a time (a passthrough when the rates are equal).
    pub fn new(in_rate: u32, out_rate: u32, chunk: usize) -> Result<Converter, String> {
        if in_rate == 0 || out_rate == 0 {
            return Err(format!("bad sample rates {in_rate} -> {out_rate}"));
        }
        let inner = if in_rate == out_rate {
            None
        } else {
            // The FFT block is a whole, even number of the smallest exact
            // ratio blocks, so its delay (half a block) is a whole number
            // of samples on both sides: the output can be aligned exactly.
            let g = gcd(in_rate as usize, out_rate as usize);
            let unit = in_rate as usize / g;
            let mut blocks = (chunk / unit).max(1);
            if blocks % 2 == 1 {
                blocks += 1;
            }
            Some(
                Fft::<f32>::new_custom(
                    in_rate as usize,
                    out_rate as usize,
                    unit * blocks,
                    1,
                    1,
                    WindowFunction::BlackmanHarris2,
                    FixedSync::Input,
                )
                .map_err(|e| format!("cannot resample {in_rate} Hz -> {out_rate} Hz: {e}"))?,
            )
        };
        let (skip, out_max) = match &inner {
            Some(r) => (r.output_delay(), r.output_frames_max()),
            None => (0, 0),
        };
        Ok(Converter {
            inner,
            pending: Vec::with_capacity(chunk * 2),
            out_buf: vec![0.0; out_max],
            skip,
            in_rate,
            out_rate,
            taken: 0,
            given: 0,
        })
    }

    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// The algorithmic delay, in output samples (trimmed from the output).
    pub fn delay(&self) -> usize {
        self.inner.as_ref().map(|r| r.output_delay()).unwrap_or(0)
    }

    /// Feeds input samples; appends the converted ones to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.taken += input.len() as u64;
        let Some(r) = self.inner.as_mut() else {
            self.given += input.len() as u64;
            out.extend_from_slice(input);
            return;
        };
        self.pending.extend_from_slice(input);
        let mut start = 0;
        loop {
            let need = r.input_frames_next();
            if self.pending.len() - start < need {
                break;
            }
            let chunk = &self.pending[start..start + need];
            start += need;
            Self::run(
                r,
                chunk,
                None,
                &mut self.out_buf,
                &mut self.skip,
                out,
                &mut self.given,
            );
        }
        self.pending.drain(..start);
    }

    /// Flushes what is buffered (padding with silence) and resets, so that in
    /// total exactly `input × out_rate / in_rate` samples came out.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        let Some(r) = self.inner.as_mut() else {
            return;
        };
        let want = (self.taken as u128 * self.out_rate as u128 / self.in_rate as u128) as u64;
        let mut rounds = 0;
        while self.given < want && rounds < 64 {
            rounds += 1;
            let need = r.input_frames_next();
            let have = self.pending.len().min(need);
            let mut chunk = vec![0.0; need];
            chunk[..have].copy_from_slice(&self.pending[..have]);
            self.pending.drain(..have);
            let mut tmp = Vec::new();
            Self::run(
                r,
                &chunk,
                Some(have),
                &mut self.out_buf,
                &mut self.skip,
                &mut tmp,
                &mut self.given,
            );
            let excess = self.given.saturating_sub(want) as usize;
            tmp.truncate(tmp.len().saturating_sub(excess));
            self.given = self.given.min(want);
            out.extend_from_slice(&tmp);
        }
        r.reset();
        self.skip = r.output_delay();
        self.pending.clear();
        self.taken = 0;
        self.given = 0;
    }

    fn run(
        r: &mut Fft<f32>,
        chunk: &[f32],
        partial: Option<usize>,
        out_buf: &mut [f32],
        skip: &mut usize,
        out: &mut Vec<f32>,
        given: &mut u64,
    ) {
        let n = chunk.len();
        let cap = out_buf.len();
        let (Ok(inp), Ok(mut outp)) = (
            InterleavedSlice::new(chunk, 1, n),
            InterleavedSlice::new_mut(out_buf, 1, cap),
        ) else {
            return;
        };
        let idx = partial.map(|p| Indexing {
            input_offset: 0,
            output_offset: 0,
            partial_len: Some(p),
            active_channels_mask: None,
        });
        let Ok((_, written)) = r.process_into_buffer(&inp, &mut outp, idx.as_ref()) else {
            return;
        };
        let produced = &out_buf[..written];
        let drop = (*skip).min(produced.len());
        *skip -= drop;
        out.extend_from_slice(&produced[drop..]);
        *given += (produced.len() - drop) as u64;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Mixes interleaved samples of `channels` channels down to mono.
pub fn downmix(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    if channels <= 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() * scale),
    );
}

pub fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

pub fn to_f32(x: i16) -> f32 {
    x as f32 / 32768.0
}

/// Cuts a stream of samples into fixed frames of s16.
pub struct Framer {
    frame: usize,
    buf: Vec<i16>,
}

impl Framer {
    pub fn new(frame: usize) -> Self {
        Framer {
            frame,
            buf: Vec::with_capacity(frame),
        }
    }

    /// Adds samples; calls `emit` with every completed frame.
    pub fn push(&mut self, samples: &[f32], mut emit: impl FnMut(Vec<i16>)) {
        for &s in samples {
            self.buf.push(to_i16(s));
            if self.buf.len() == self.frame {
                emit(std::mem::replace(
                    &mut self.buf,
                    Vec::with_capacity(self.frame),
                ));
            }
        }
    }

    /// The last, partial frame padded with silence (if any samples are left).
    pub fn finish(&mut self) -> Option<Vec<i16>> {
        if self.buf.is_empty() {
            return None;
        }
        let mut f = std::mem::take(&mut self.buf);
        f.resize(self.frame, 0);
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as f32
            })
            .collect()
    }

    fn convert(c: &mut Converter, input: &[f32], block: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for b in input.chunks(block) {
            c.push(b, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn output_is_aligned_and_exact_length() {
        for (from, block) in [(48_000, 480), (44_100, 441), (22_050, 1000), (8_000, 77)] {
            let input = tone(from, 440.0, from as usize);
            let mut c = Converter::new(from, 16_000, from as usize / 200).unwrap();
            let out = convert(&mut c, &input, block);
            assert_eq!(out.len(), 16_000, "from {from}");
            let want = tone(16_000, 440.0, 16_000);
            // Ignore the edges (filter ramp-in and -out), compare the body.
            let err: f64 = out[200..15_800]
                .iter()
                .zip(&want[200..15_800])
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / 15_600.0;
            let db = 10.0 * (err / 0.125).log10();
            println!("from {from}: {db:.1} dB");
            assert!(db < -60.0, "from {from}: error {db:.1} dB");
        }
    }

    #[test]
    fn equal_rates_pass_through() {
        let mut c = Converter::new(16_000, 16_000, 320).unwrap();
        let input = tone(16_000, 300.0, 1000);
        assert_eq!(convert(&mut c, &input, 123), input);
    }

    #[test]
    fn downmix_and_framing() {
        let mut mono = Vec::new();
        downmix(&[1.0, 0.0, 0.5, 0.5, -1.0, -1.0], 2, &mut mono);
        assert_eq!(mono, vec![0.5, 0.5, -1.0]);
        let mut f = Framer::new(4);
        let mut frames = Vec::new();
        f.push(&[0.5; 10], |fr| frames.push(fr));
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], vec![16384; 4]);
        assert_eq!(f.finish().unwrap(), vec![16384, 16384, 0, 0]);
        assert_eq!(to_i16(2.0), 32767);
        assert_eq!(to_i16(-2.0), -32768);
    }
}
