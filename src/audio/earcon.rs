//! Earcons: the short sounds that say "listening", "got it" and "something
//! went wrong". Generated in code (soft sine tones with fades); a WAV file
//! named in the config replaces any of them.

use std::path::Path;

use super::resample::to_i16;
use super::{AudioError, RATE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earcon {
    /// Rising two-note: the microphone is open.
    Listening,
    /// One short note: the question was heard / the answer is complete.
    Done,
    /// Falling two-note: something went wrong.
    Error,
}

/// PCM of an earcon: mono s16 at `RATE`.
#[derive(Debug, Clone)]
pub struct Sound {
    pub pcm: Vec<i16>,
    pub rate: u32,
}

fn tone(out: &mut Vec<f32>, hz: f32, ms: u32, level: f32) {
    let n = (RATE * ms / 1000) as usize;
    let fade = (RATE as usize / 200).min(n / 2); // 5 ms
    for i in 0..n {
        let env = if i < fade {
            i as f32 / fade as f32
        } else if i >= n - fade {
            (n - i) as f32 / fade as f32
        } else {
            1.0
        };
        out.push(level * env * (2.0 * std::f32::consts::PI * hz * i as f32 / RATE as f32).sin());
    }
}

fn gap(out: &mut Vec<f32>, ms: u32) {
    out.extend(std::iter::repeat_n(0.0, (RATE * ms / 1000) as usize));
}

/// The built-in sound of an earcon.
pub fn builtin(e: Earcon) -> Sound {
    let mut s = Vec::new();
    match e {
        Earcon::Listening => {
            tone(&mut s, 660.0, 70, 0.35);
            gap(&mut s, 20);
            tone(&mut s, 880.0, 90, 0.35);
        }
        Earcon::Done => tone(&mut s, 990.0, 80, 0.3),
        Earcon::Error => {
            tone(&mut s, 440.0, 120, 0.4);
            gap(&mut s, 30);
            tone(&mut s, 330.0, 180, 0.4);
        }
    }
    Sound {
        pcm: s.into_iter().map(to_i16).collect(),
        rate: RATE,
    }
}

/// The sound for an earcon: the WAV file if one is configured, else built in.
pub fn load(e: Earcon, file: Option<&Path>) -> Result<Sound, AudioError> {
    match file {
        None => Ok(builtin(e)),
        Some(p) => {
            let clip = super::wav::read(p)?;
            Ok(Sound {
                pcm: clip.mono_i16(),
                rate: clip.rate,
            })
        }
    }
}

/// The three earcons, loaded once.
#[derive(Debug, Clone)]
pub struct Earcons {
    pub listening: Sound,
    pub done: Sound,
    pub error: Sound,
}

impl Earcons {
    pub fn load(cfg: &crate::config::AudioConfig) -> Result<Earcons, AudioError> {
        Ok(Earcons {
            listening: load(Earcon::Listening, cfg.earcon_listening.as_deref())?,
            done: load(Earcon::Done, cfg.earcon_done.as_deref())?,
            error: load(Earcon::Error, cfg.earcon_error.as_deref())?,
        })
    }

    pub fn get(&self, e: Earcon) -> &Sound {
        match e {
            Earcon::Listening => &self.listening,
            Earcon::Done => &self.done,
            Earcon::Error => &self.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_short_and_faded() {
        for e in [Earcon::Listening, Earcon::Done, Earcon::Error] {
            let s = builtin(e);
            let ms = s.pcm.len() as u32 * 1000 / s.rate;
            assert!((50..=400).contains(&ms), "{e:?}: {ms} ms");
            assert!(
                s.pcm[0].abs() < 100 && s.pcm.last().unwrap().abs() < 400,
                "{e:?} clicks"
            );
            assert!(s.pcm.iter().any(|&x| x > 8000), "{e:?} is audible");
        }
    }
}
