//! The audio features microWakeWord models are trained on: TensorFlow Lite
//! Micro's "microfrontend" (30 ms Hann window every 10 ms, a 512-point
//! fixed-point FFT, 40 mel channels from 125 to 7500 Hz, noise reduction,
//! PCAN gain control, a fixed-point log), written again in Rust so that the
//! daemon needs no C++ for it. Integer arithmetic throughout, the same
//! rounding and wrapping as the reference, so the features are the same
//! numbers (checked against the reference implementation in the tests).
//!
//! Pure: samples in, 40 features per 10 ms out.

/// 16 kHz samples per feature step (10 ms).
pub const STEP: usize = 160;
/// Features per step.
pub const CHANNELS: usize = 40;
/// Features as the models take them: the raw values times this.
pub const FEATURE_SCALE: f32 = 0.039_062_5;

const RATE: usize = 16_000;
const WINDOW: usize = 480; // 30 ms
const FFT: usize = 512;
const SPECTRUM: usize = FFT / 2 + 1;
const WINDOW_BITS: u32 = 12;
const FILTERBANK_BITS: u32 = 12;
const NOISE_BITS: u32 = 14;
const SMOOTHING_BITS: u32 = 10;
const PCAN_SNR_BITS: u32 = 12;
const PCAN_OUTPUT_BITS: u32 = 6;
const WDF_BITS: usize = 32;
const LOG_SCALE_LOG2: u32 = 16;
const LOG_SEGMENTS_LOG2: u32 = 7;
const LOG_SCALE: u32 = 65_536;
const LOG_COEFF: u64 = 45_426;
const LOG_SCALE_SHIFT: u32 = 6;

const LOG_LUT: [u16; 130] = [
    0, 224, 442, 654, 861, 1063, 1259, 1450, 1636, 1817, 1992, 2163, 2329, 2490, 2646, 2797, 2944,
    3087, 3224, 3358, 3487, 3611, 3732, 3848, 3960, 4068, 4172, 4272, 4368, 4460, 4549, 4633, 4714,
    4791, 4864, 4934, 5001, 5063, 5123, 5178, 5231, 5280, 5326, 5368, 5408, 5444, 5477, 5507, 5533,
    5557, 5578, 5595, 5610, 5622, 5631, 5637, 5640, 5641, 5638, 5633, 5626, 5615, 5602, 5586, 5568,
    5547, 5524, 5498, 5470, 5439, 5406, 5370, 5332, 5291, 5249, 5203, 5156, 5106, 5054, 5000, 4944,
    4885, 4825, 4762, 4697, 4630, 4561, 4490, 4416, 4341, 4264, 4184, 4103, 4020, 3935, 3848, 3759,
    3668, 3575, 3481, 3384, 3286, 3186, 3084, 2981, 2875, 2768, 2659, 2549, 2437, 2323, 2207, 2090,
    1971, 1851, 1729, 1605, 1480, 1353, 1224, 1094, 963, 830, 695, 559, 421, 282, 142, 0, 0,
];

fn msb32(n: u32) -> u32 {
    32 - n.leading_zeros()
}

fn msb64(n: u64) -> u32 {
    64 - n.leading_zeros()
}

/// A complex number of the fixed-point FFT.
#[derive(Debug, Clone, Copy, Default)]
struct Cpx {
    r: i16,
    i: i16,
}

/// `(x + 2^14) >> 15` as an i16 (the Q15 product's rounding).
fn sround(x: i32) -> i16 {
    (x.wrapping_add(1 << 14) >> 15) as i16
}

fn smul(a: i16, b: i16) -> i32 {
    a as i32 * b as i32
}

fn cmul(a: Cpx, b: Cpx) -> Cpx {
    Cpx {
        r: sround(smul(a.r, b.r).wrapping_sub(smul(a.i, b.i))),
        i: sround(smul(a.r, b.i).wrapping_add(smul(a.i, b.r))),
    }
}

fn fixdiv(c: Cpx, div: i16) -> Cpx {
    let k = 32767 / div;
    Cpx {
        r: sround(smul(c.r, k)),
        i: sround(smul(c.i, k)),
    }
}

fn add(a: Cpx, b: Cpx) -> Cpx {
    Cpx {
        r: a.r.wrapping_add(b.r),
        i: a.i.wrapping_add(b.i),
    }
}

fn sub(a: Cpx, b: Cpx) -> Cpx {
    Cpx {
        r: a.r.wrapping_sub(b.r),
        i: a.i.wrapping_sub(b.i),
    }
}

fn cexp(phase: f64) -> Cpx {
    Cpx {
        r: (0.5 + 32767.0 * phase.cos()).floor() as i16,
        i: (0.5 + 32767.0 * phase.sin()).floor() as i16,
    }
}

/// A Q15 real FFT of 512 points in the manner of kissfft's fixed-point
/// build (a 256-point complex FFT of radix 4, scaled down at each stage,
/// then the split into the real spectrum): output = DFT / 512.
struct RealFft {
    /// Twiddles of the 256-point complex FFT.
    twiddles: Vec<Cpx>,
    super_twiddles: Vec<Cpx>,
    /// (radix, stage length) pairs.
    factors: Vec<(usize, usize)>,
    tmp: Vec<Cpx>,
}

impl RealFft {
    fn new() -> RealFft {
        let n = FFT / 2;
        let twiddles = (0..n)
            .map(|i| cexp(-2.0 * std::f64::consts::PI * i as f64 / n as f64))
            .collect();
        let super_twiddles = (0..n / 2)
            .map(|i| cexp(-std::f64::consts::PI * ((i + 1) as f64 / n as f64 + 0.5)))
            .collect();
        let mut factors = Vec::new();
        let mut m = n;
        while m > 1 {
            let p = if m.is_multiple_of(4) { 4 } else { 2 };
            m /= p;
            factors.push((p, m));
        }
        RealFft {
            twiddles,
            super_twiddles,
            factors,
            tmp: vec![Cpx::default(); n],
        }
    }

    fn bfly2(&self, out: &mut [Cpx], fstride: usize, m: usize) {
        for k in 0..m {
            let a = fixdiv(out[k], 2);
            let b = fixdiv(out[k + m], 2);
            let t = cmul(b, self.twiddles[k * fstride]);
            out[k + m] = sub(a, t);
            out[k] = add(a, t);
        }
    }

    fn bfly4(&self, out: &mut [Cpx], fstride: usize, m: usize) {
        for k in 0..m {
            let f0 = fixdiv(out[k], 4);
            let f1 = fixdiv(out[k + m], 4);
            let f2 = fixdiv(out[k + 2 * m], 4);
            let f3 = fixdiv(out[k + 3 * m], 4);
            let s0 = cmul(f1, self.twiddles[k * fstride]);
            let s1 = cmul(f2, self.twiddles[2 * k * fstride]);
            let s2 = cmul(f3, self.twiddles[3 * k * fstride]);
            let s5 = sub(f0, s1);
            let f0 = add(f0, s1);
            let s3 = add(s0, s2);
            let s4 = sub(s0, s2);
            out[k + 2 * m] = sub(f0, s3);
            out[k] = add(f0, s3);
            out[k + m] = Cpx {
                r: s5.r.wrapping_add(s4.i),
                i: s5.i.wrapping_sub(s4.r),
            };
            out[k + 3 * m] = Cpx {
                r: s5.r.wrapping_sub(s4.i),
                i: s5.i.wrapping_add(s4.r),
            };
        }
    }

    /// kissfft's recursive decimation in time.
    fn work(&self, out: &mut [Cpx], input: &[Cpx], offset: usize, fstride: usize, stage: usize) {
        let (p, m) = self.factors[stage];
        if m == 1 {
            for (j, o) in out.iter_mut().take(p).enumerate() {
                *o = input[offset + j * fstride];
            }
        } else {
            for j in 0..p {
                self.work(
                    &mut out[j * m..(j + 1) * m],
                    input,
                    offset + j * fstride,
                    fstride * p,
                    stage + 1,
                );
            }
        }
        match p {
            4 => self.bfly4(out, fstride, m),
            _ => self.bfly2(out, fstride, m),
        }
    }

    /// The spectrum (257 bins) of 512 real samples.
    fn run(&mut self, time: &[i16; FFT], freq: &mut [Cpx; SPECTRUM]) {
        let n = FFT / 2;
        let mut packed = [Cpx::default(); FFT / 2];
        for (p, c) in packed.iter_mut().zip(time.chunks_exact(2)) {
            *p = Cpx { r: c[0], i: c[1] };
        }
        let mut tmp = std::mem::take(&mut self.tmp);
        self.work(&mut tmp, &packed, 0, 1, 0);
        let tdc = fixdiv(tmp[0], 2);
        freq[0] = Cpx {
            r: tdc.r.wrapping_add(tdc.i),
            i: 0,
        };
        freq[n] = Cpx {
            r: tdc.r.wrapping_sub(tdc.i),
            i: 0,
        };
        for k in 1..=n / 2 {
            let fpk = fixdiv(tmp[k], 2);
            let fpnk = fixdiv(
                Cpx {
                    r: tmp[n - k].r,
                    i: tmp[n - k].i.wrapping_neg(),
                },
                2,
            );
            let f1k = add(fpk, fpnk);
            let f2k = sub(fpk, fpnk);
            let tw = cmul(f2k, self.super_twiddles[k - 1]);
            freq[k] = Cpx {
                r: ((f1k.r as i32 + tw.r as i32) >> 1) as i16,
                i: ((f1k.i as i32 + tw.i as i32) >> 1) as i16,
            };
            freq[n - k] = Cpx {
                r: ((f1k.r as i32 - tw.r as i32) >> 1) as i16,
                i: ((tw.i as i32 - f1k.i as i32) >> 1) as i16,
            };
        }
        self.tmp = tmp;
    }
}

/// The mel filterbank: per channel, where its bins start and their weights.
struct Filterbank {
    start_index: usize,
    end_index: usize,
    /// Per channel (41: one more than the output, as in the reference):
    /// first bin, first weight, width.
    channels: Vec<(usize, usize, usize)>,
    weights: Vec<i16>,
    unweights: Vec<i16>,
}

fn freq_to_mel(f: f32) -> f32 {
    1127.0 * (f / 700.0).ln_1p()
}

impl Filterbank {
    fn new() -> Filterbank {
        const BLOCK: usize = 4;
        const ALIGN: usize = 2; // 4-byte alignment of i16 indices
        let n = CHANNELS + 1;
        let (lo, hi) = (125.0f32, 7500.0f32);
        let mel_low = freq_to_mel(lo);
        let spacing = (freq_to_mel(hi) - mel_low) / n as f32;
        let centers: Vec<f32> = (0..n).map(|i| mel_low + spacing * (i + 1) as f32).collect();
        let hz_per_bin = 0.5 * RATE as f32 / (SPECTRUM as f32 - 1.0);
        let start_index = (1.5 + lo / hz_per_bin) as usize;
        let mut channels = vec![(0, 0, 0); n];
        let mut actual = vec![(0usize, 0usize); n];
        let mut chan_start = start_index;
        let mut weight_start = 0;
        let mut needs_zeros = false;
        for (c, center) in centers.iter().enumerate() {
            let mut f = chan_start;
            while freq_to_mel(f as f32 * hz_per_bin) <= *center {
                f += 1;
            }
            let width = f - chan_start;
            actual[c] = (chan_start, width);
            if width == 0 {
                channels[c] = (0, 0, BLOCK);
                if !needs_zeros {
                    needs_zeros = true;
                    for ch in channels.iter_mut().take(c) {
                        ch.1 += BLOCK;
                    }
                    weight_start += BLOCK;
                }
            } else {
                let aligned = (chan_start / ALIGN) * ALIGN;
                let aligned_width = chan_start - aligned + width;
                let padded = ((aligned_width - 1) / BLOCK + 1) * BLOCK;
                channels[c] = (aligned, weight_start, padded);
                weight_start += padded;
            }
            chan_start = f;
        }
        let mut weights = vec![0i16; weight_start];
        let mut unweights = vec![0i16; weight_start];
        let mut end_index = 0;
        for c in 0..n {
            let (mut freq, count) = actual[c];
            let offset = freq - channels[c].0;
            let denom = if c == 0 { mel_low } else { centers[c - 1] };
            for j in 0..count {
                let w = (centers[c] - freq_to_mel(freq as f32 * hz_per_bin)) / (centers[c] - denom);
                let idx = channels[c].1 + offset + j;
                weights[idx] = (w * (1 << FILTERBANK_BITS) as f32 + 0.5).floor() as i16;
                unweights[idx] = ((1.0 - w) * (1 << FILTERBANK_BITS) as f32 + 0.5).floor() as i16;
                freq += 1;
            }
            end_index = end_index.max(freq);
        }
        Filterbank {
            start_index,
            end_index,
            channels,
            weights,
            unweights,
        }
    }

    /// Channel energies (before the square root), 41 of them.
    fn accumulate(&self, energy: &[i32; SPECTRUM], work: &mut [u64; CHANNELS + 1]) {
        let mut weight_acc: u64 = 0;
        let mut unweight_acc: u64 = 0;
        for (c, &(start, wstart, width)) in self.channels.iter().enumerate() {
            for j in 0..width {
                let m = energy[start + j] as i64 as u64;
                weight_acc = weight_acc
                    .wrapping_add((self.weights[wstart + j] as i64 as u64).wrapping_mul(m));
                unweight_acc = unweight_acc
                    .wrapping_add((self.unweights[wstart + j] as i64 as u64).wrapping_mul(m));
            }
            work[c] = weight_acc;
            weight_acc = unweight_acc;
            unweight_acc = 0;
        }
    }
}

fn sqrt32(mut num: u32) -> u32 {
    if num == 0 {
        return 0;
    }
    let mut res: u32 = 0;
    let max_bit = (32 - msb32(num)) | 1;
    let mut bit: u32 = 1 << (31 - max_bit);
    let mut iterations = (31 - max_bit) / 2 + 1;
    while iterations > 0 {
        iterations -= 1;
        if num >= res + bit {
            num -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    if num > res && res != 0xFFFF {
        res += 1;
    }
    res & 0xFFFF
}

fn sqrt64(mut num: u64) -> u32 {
    if num >> 32 == 0 {
        return sqrt32(num as u32);
    }
    let mut res: u64 = 0;
    let max_bit = (64 - msb64(num)) | 1;
    let mut bit: u64 = 1 << (63 - max_bit);
    let mut iterations = (63 - max_bit) / 2 + 1;
    while iterations > 0 {
        iterations -= 1;
        if num >= res + bit {
            num -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    if num > res && res != 0xFFFF_FFFF {
        res += 1;
    }
    res as u32
}

/// PCAN's gain as a piecewise quadratic over the noise estimate.
fn pcan_lut(input_bits: i32) -> Vec<i16> {
    let f = |x: u32| -> i16 {
        let xf = x as f32 / (1u64 << input_bits) as f32;
        let gain = (1u32 << 21) as f32 * (xf + 80.0).powf(-0.95);
        if gain > 32767.0 {
            32767
        } else {
            (gain + 0.5) as i16
        }
    };
    // The reference stores lut[0], lut[1], then 3 values per interval at
    // 4 * interval - 6 (offset back by 6 from index 8).
    let mut lut = vec![0i16; 4 * WDF_BITS - 3];
    lut[0] = f(0);
    lut[1] = f(1);
    for interval in 2..=WDF_BITS {
        let x0: u32 = 1 << (interval - 1);
        let x1 = x0 + (x0 >> 1);
        let x2 = if interval == WDF_BITS {
            x0 + (x0 - 1)
        } else {
            2 * x0
        };
        let (y0, y1, y2) = (f(x0), f(x1), f(x2));
        let diff1 = y1 as i32 - y0 as i32;
        let diff2 = y2 as i32 - y0 as i32;
        let a1 = 4 * diff1 - diff2;
        let a2 = diff2 - a1;
        let base = 4 * interval - 6;
        lut[base] = y0;
        lut[base + 1] = a1 as i16;
        lut[base + 2] = a2 as i16;
    }
    lut
}

fn wide_dynamic(x: u32, lut: &[i16]) -> i16 {
    if x <= 2 {
        return lut[x as usize];
    }
    let interval = msb32(x) as usize;
    let l = &lut[4 * interval - 6..];
    let frac = (if interval < 11 {
        x << (11 - interval)
    } else {
        x >> (interval - 11)
    }) & 0x3FF;
    let frac = frac as i32;
    let mut result = (l[2] as i32 * frac) >> 5;
    result += ((l[1] as u32) << 5) as i32;
    result = result.wrapping_mul(frac);
    result = (result + (1 << 14)) >> 15;
    result += l[0] as i32;
    result as i16
}

fn pcan_shrink(x: u32) -> u32 {
    if x < (2 << PCAN_SNR_BITS) {
        (x * x) >> (2 + 2 * PCAN_SNR_BITS - PCAN_OUTPUT_BITS)
    } else {
        (x >> (PCAN_SNR_BITS - PCAN_OUTPUT_BITS)) - (1 << PCAN_OUTPUT_BITS)
    }
}

fn log2_fraction(x: u32, log2x: u32) -> u32 {
    let mut frac: i32 = (x as i64 - (1i64 << log2x)) as i32;
    if log2x < LOG_SCALE_LOG2 {
        frac <<= LOG_SCALE_LOG2 - log2x;
    } else {
        frac >>= log2x - LOG_SCALE_LOG2;
    }
    let base_seg = (frac as u32) >> (LOG_SCALE_LOG2 - LOG_SEGMENTS_LOG2);
    let seg_unit = (1u32 << LOG_SCALE_LOG2) >> LOG_SEGMENTS_LOG2;
    let c0 = LOG_LUT[base_seg as usize] as i32;
    let c1 = LOG_LUT[base_seg as usize + 1] as i32;
    let seg_base = (seg_unit * base_seg) as i32;
    let rel = ((c1 - c0) * (frac - seg_base)) >> LOG_SCALE_LOG2;
    (frac + c0 + rel) as u32
}

fn log_scaled(x: u32) -> u32 {
    let integer = msb32(x) - 1;
    let fraction = log2_fraction(x, integer);
    let log2 = (integer << LOG_SCALE_LOG2) + fraction;
    let round = LOG_SCALE / 2;
    let loge = ((LOG_COEFF * log2 as u64 + round as u64) >> LOG_SCALE_LOG2) as u32;
    ((loge << LOG_SCALE_SHIFT) + round) >> LOG_SCALE_LOG2
}

/// The streaming frontend: 10 ms of samples in, 40 features out.
pub struct Frontend {
    coefficients: Vec<i16>,
    input: Vec<i16>,
    fft: RealFft,
    filterbank: Filterbank,
    estimate: [u32; CHANNELS],
    even_smoothing: u32,
    odd_smoothing: u32,
    min_signal_remaining: u32,
    pcan_lut: Vec<i16>,
    snr_shift: u32,
    /// Samples not yet stepped over (below one step).
    pending: Vec<i16>,
}

impl Default for Frontend {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontend {
    pub fn new() -> Frontend {
        let arg = std::f32::consts::PI * 2.0 / WINDOW as f32;
        let coefficients = (0..WINDOW)
            .map(|i| {
                let v = 0.5 - 0.5 * (arg * (i as f32 + 0.5)).cos();
                (v * (1 << WINDOW_BITS) as f32 + 0.5).floor() as i16
            })
            .collect();
        let correction = msb32(FFT as u32) as i32 - 1 - (FILTERBANK_BITS as i32 / 2);
        Frontend {
            coefficients,
            input: Vec::with_capacity(WINDOW),
            fft: RealFft::new(),
            filterbank: Filterbank::new(),
            estimate: [0; CHANNELS],
            even_smoothing: (0.025f32 * (1 << NOISE_BITS) as f32) as u32,
            odd_smoothing: (0.06f32 * (1 << NOISE_BITS) as f32) as u32,
            min_signal_remaining: (0.05f32 * (1 << NOISE_BITS) as f32) as u32,
            pcan_lut: pcan_lut(SMOOTHING_BITS as i32 - correction),
            snr_shift: (21 - correction - PCAN_SNR_BITS as i32) as u32,
            pending: Vec::with_capacity(STEP),
        }
    }

    /// Forgets all state (a new stream).
    pub fn reset(&mut self) {
        self.input.clear();
        self.pending.clear();
        self.estimate = [0; CHANNELS];
    }

    /// Feeds samples of any length; calls `emit` with each new set of 40
    /// raw features (multiply by [`FEATURE_SCALE`] for the models).
    pub fn push(&mut self, mut samples: &[i16], mut emit: impl FnMut(&[u16; CHANNELS])) {
        while !samples.is_empty() {
            let take = (STEP - self.pending.len()).min(samples.len());
            self.pending.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.pending.len() == STEP {
                let step = std::mem::take(&mut self.pending);
                if let Some(f) = self.step(&step) {
                    emit(&f);
                }
                self.pending = step;
                self.pending.clear();
            }
        }
    }

    /// One 10 ms step; features once the first window is full.
    fn step(&mut self, samples: &[i16]) -> Option<[u16; CHANNELS]> {
        let room = WINDOW - self.input.len();
        let n = room.min(samples.len());
        self.input.extend_from_slice(&samples[..n]);
        if self.input.len() < WINDOW {
            return None;
        }
        let mut windowed = [0i16; FFT];
        let mut max_abs: i16 = 0;
        for (i, (x, c)) in self.input.iter().zip(&self.coefficients).enumerate() {
            let v = ((*x as i32 * *c as i32) >> WINDOW_BITS) as i16;
            windowed[i] = v;
            max_abs = max_abs.max(v.wrapping_abs());
        }
        self.input.drain(..STEP);
        Some(self.features(&mut windowed, max_abs))
    }

    fn features(&mut self, windowed: &mut [i16; FFT], max_abs: i16) -> [u16; CHANNELS] {
        let shift = (15 - msb32(max_abs as i32 as u32) as i32).max(0) as u32;
        for v in windowed.iter_mut().take(WINDOW) {
            *v = ((*v as u16) << shift) as i16;
        }
        let mut spectrum = [Cpx::default(); SPECTRUM];
        self.fft.run(windowed, &mut spectrum);
        let mut energy = [0i32; SPECTRUM];
        let fb = &self.filterbank;
        for i in fb.start_index..fb.end_index {
            let (re, im) = (spectrum[i].r as i32, spectrum[i].i as i32);
            energy[i] = re.wrapping_mul(re).wrapping_add(im.wrapping_mul(im));
        }
        let mut work = [0u64; CHANNELS + 1];
        fb.accumulate(&energy, &mut work);
        let mut signal = [0u32; CHANNELS];
        for (s, w) in signal.iter_mut().zip(&work[1..]) {
            *s = sqrt64(*w) >> shift;
        }
        // Noise reduction.
        for (i, s) in signal.iter_mut().enumerate() {
            let smoothing = if i & 1 == 0 {
                self.even_smoothing
            } else {
                self.odd_smoothing
            };
            let one_minus = (1 << NOISE_BITS) - smoothing;
            let scaled = *s << SMOOTHING_BITS;
            let mut estimate = ((scaled as u64 * smoothing as u64
                + self.estimate[i] as u64 * one_minus as u64)
                >> NOISE_BITS) as u32;
            self.estimate[i] = estimate;
            if estimate > scaled {
                estimate = scaled;
            }
            let floor = ((*s as u64 * self.min_signal_remaining as u64) >> NOISE_BITS) as u32;
            let subtracted = (scaled - estimate) >> SMOOTHING_BITS;
            *s = subtracted.max(floor);
        }
        // PCAN gain control.
        for (i, s) in signal.iter_mut().enumerate() {
            let gain = wide_dynamic(self.estimate[i], &self.pcan_lut) as i32 as u32;
            let snr = ((*s as u64 * gain as u64) >> self.snr_shift) as u32;
            *s = pcan_shrink(snr);
        }
        // Log scale.
        let correction = msb32(FFT as u32) as i32 - 1 - (FILTERBANK_BITS as i32 / 2);
        let mut out = [0u16; CHANNELS];
        for (o, s) in out.iter_mut().zip(signal) {
            let v = if correction < 0 {
                s >> (-correction)
            } else {
                s << correction
            };
            let v = if v > 1 { log_scaled(v) } else { 0 };
            *o = v.min(0xFFFF) as u16;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integer-only test audio (the same in any language): a triangle wave
    /// whose level steps every 100 ms, over noise from an LCG.
    fn signal(n: usize) -> Vec<i16> {
        let mut st: u64 = 12345;
        (0..n as i64)
            .map(|i| {
                st = (st * 1_103_515_245 + 12_345) % (1 << 31);
                let noise = ((st >> 16) % 2001) as i64 - 1000;
                let p = i % 37;
                let tri = if p < 19 { p } else { 37 - p };
                let a = ((i / 1600) % 10) * 1000;
                (a * (tri * 2 - 18))
                    .div_euclid(18)
                    .add(noise)
                    .clamp(-32768, 32767) as i16
            })
            .collect()
    }

    use std::ops::Add;

    /// The numbers of the reference implementation (TensorFlow Lite Micro's
    /// frontend as pymicro-features 2.0.2 builds it) for `signal(16000)`
    /// fed in 10 ms pieces.
    #[test]
    fn features_equal_the_reference() {
        let mut f = Frontend::new();
        let mut rows = Vec::new();
        for chunk in signal(16_000).chunks(STEP) {
            f.push(chunk, |r| rows.push(*r));
        }
        assert_eq!(rows.len(), 98);
        let sum: u64 = rows.iter().flatten().map(|&v| v as u64).sum();
        assert_eq!(
            rows[0],
            [
                634, 578, 621, 586, 640, 584, 632, 588, 638, 584, 628, 586, 633, 592, 640, 588,
                641, 589, 638, 584, 629, 588, 639, 588, 644, 587, 647, 594, 646, 593, 647, 593,
                646, 593, 649, 593, 643, 593, 645, 593
            ]
        );
        assert_eq!(
            rows[10],
            [
                532, 413, 464, 287, 578, 528, 519, 399, 485, 437, 490, 322, 488, 355, 477, 418,
                430, 274, 457, 314, 479, 394, 481, 353, 453, 318, 482, 344, 473, 314, 509, 401,
                506, 381, 488, 399, 490, 406, 484, 409
            ]
        );
        assert_eq!(
            rows[50],
            [
                346, 0, 421, 248, 441, 325, 427, 0, 292, 0, 0, 0, 248, 0, 391, 325, 203, 0, 331, 0,
                0, 0, 248, 0, 0, 0, 133, 0, 177, 0, 177, 0, 292, 280, 344, 203, 248, 0, 297, 0
            ]
        );
        assert_eq!(
            rows[97],
            [
                177, 322, 339, 0, 314, 133, 302, 0, 0, 0, 0, 0, 0, 0, 287, 0, 0, 133, 236, 133,
                311, 0, 236, 203, 133, 133, 133, 133, 222, 0, 0, 0, 203, 0, 222, 0, 177, 0, 0, 0
            ]
        );
        assert_eq!(sum, 846_329);
    }

    #[test]
    fn any_chunking_gives_the_same_features() {
        let s = signal(8000);
        let run = |size: usize| {
            let mut f = Frontend::new();
            let mut rows = Vec::new();
            for c in s.chunks(size) {
                f.push(c, |r| rows.push(*r));
            }
            rows
        };
        let a = run(160);
        assert_eq!(a, run(320));
        assert_eq!(a, run(1));
        assert_eq!(a, run(7777));
        // Silence makes no energy, and nothing overflows at full scale.
        let mut f = Frontend::new();
        let mut rows = Vec::new();
        f.push(&[0; 1600], |r| rows.push(*r));
        f.push(&vec![i16::MAX; 1600], |r| rows.push(*r));
        f.push(&vec![i16::MIN; 1600], |r| rows.push(*r));
        assert_eq!(rows.len(), 28);
        assert!(rows[0].iter().all(|&v| v == 0));
    }
}
