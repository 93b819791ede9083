//! microWakeWord inside the daemon (`kind = "micro"`): per word a
//! streaming TensorFlow Lite model (`NAME.tflite` with its `NAME.json`, as
//! the `pymicro-wakeword` wheel ships them) fed the features of
//! [`super::frontend`]; its probabilities averaged over the model's sliding
//! window are the word's score, which [`super::trigger`] turns into
//! detections. No Python at run time; TensorFlow Lite's C library is
//! loaded from the models' directory.
//!
//! A second opinion (`second_opinion`, openWakeWord's models through
//! [`super::oww`]) hears what the model half-hears: while a word's score
//! is at [`GATE`] or more but under its threshold, the last 2 s of audio
//! and the next second go through openWakeWord's model of the word, and
//! its probability at 0.5 or more is a detection too. It runs only then,
//! so waiting costs what it cost without it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::frontend::{CHANNELS, FEATURE_SCALE, Frontend, STEP};
use super::oww;
use super::tflite::{Library, Model};
use super::trigger::Trigger;
use super::{Result, WakeEngine, WakeError, WakeEvent, WakeStream, Word};

/// Largest model description accepted.
const MAX_JSON_BYTES: u64 = 64 * 1024;

/// A score from which the second opinion is asked (the model's cutoffs
/// are 0.85–0.97; in `pichat bench wake`'s speech without the wake word
/// this is reached about 10 times an hour).
pub const GATE: f32 = 0.1;
/// openWakeWord's own threshold for its models.
pub const SECOND_THRESHOLD: f32 = 0.5;
/// How long the second opinion listens after the score was last at the
/// gate: 1 s, in samples.
const HOLD: u64 = 16_000;

/// A model's `NAME.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelInfo {
    pub wake_word: String,
    pub model: String,
    pub micro: MicroInfo,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MicroInfo {
    pub probability_cutoff: f32,
    pub sliding_window_size: usize,
    #[serde(default = "ten")]
    pub feature_step_size: u32,
}

fn ten() -> u32 {
    10
}

pub struct MicroEngine {
    name: String,
    models: PathBuf,
    library: PathBuf,
    words: Vec<Word>,
    /// openWakeWord's models, if asked for a second opinion.
    second: Option<PathBuf>,
}

impl MicroEngine {
    pub fn new(name: &str, models: &Path, library: &Path, words: Vec<Word>) -> MicroEngine {
        MicroEngine {
            name: name.to_string(),
            models: models.to_path_buf(),
            library: library.to_path_buf(),
            words,
            second: None,
        }
    }

    /// Asks openWakeWord's models in `dir` for a second opinion, for the
    /// words that have one there (`None`: off).
    pub fn with_second_opinion(mut self, dir: Option<&Path>) -> MicroEngine {
        self.second = dir.map(Path::to_path_buf);
        self
    }

    fn err(&self, message: impl Into<String>) -> WakeError {
        WakeError::Load {
            engine: self.name.clone(),
            message: message.into(),
        }
    }

    /// The words that have a model in the directory (for `doctor`).
    pub fn available(models: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(models)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(str::to_string))?
            })
            .collect();
        out.sort();
        out
    }

    fn info(&self, word: &str) -> Result<(ModelInfo, PathBuf)> {
        let json = self.models.join(format!("{word}.json"));
        let available = || {
            let a = Self::available(&self.models);
            if a.is_empty() {
                format!(
                    "no models in {} (install them with scripts/setup-wake.sh)",
                    self.models.display()
                )
            } else {
                format!("models in {}: {}", self.models.display(), a.join(", "))
            }
        };
        let len = std::fs::metadata(&json)
            .map_err(|e| {
                self.err(format!(
                    "no model for \"{word}\" ({}: {e}; {})",
                    json.display(),
                    available()
                ))
            })?
            .len();
        if len > MAX_JSON_BYTES {
            return Err(self.err(format!("{}: too large ({len} bytes)", json.display())));
        }
        let text = std::fs::read_to_string(&json)
            .map_err(|e| self.err(format!("{}: {e}", json.display())))?;
        let info: ModelInfo = serde_json::from_str(&text).map_err(|e| {
            self.err(format!(
                "{}: not a microWakeWord model description ({e})",
                json.display()
            ))
        })?;
        if info.micro.feature_step_size != 10 {
            return Err(self.err(format!(
                "{}: feature_step_size {} (only 10 ms models are supported)",
                json.display(),
                info.micro.feature_step_size
            )));
        }
        if info.micro.sliding_window_size == 0 || info.micro.sliding_window_size > 100 {
            return Err(self.err(format!(
                "{}: sliding_window_size {} out of range (1..=100)",
                json.display(),
                info.micro.sliding_window_size
            )));
        }
        // The model file sits beside its description, by name only.
        let file = Path::new(&info.model)
            .file_name()
            .map(|f| self.models.join(f))
            .ok_or_else(|| self.err(format!("{}: no model file named", json.display())))?;
        Ok((info, file))
    }

    /// Opens the stream synchronously (loading is file I/O and a dlopen).
    pub fn open_now(&self) -> Result<MicroStream> {
        if self.words.is_empty() {
            return Err(self.err("no wake words configured ([wake.words.NAME])"));
        }
        let lib = Library::load(&self.library).map_err(|e| self.err(e.to_string()))?;
        let second_err = |e: super::tflite::TfliteError| {
            self.err(format!(
                "second opinion: {e} (scripts/setup-wake.sh installs openWakeWord's models; second_opinion = \"\" turns it off)"
            ))
        };
        let features = match &self.second {
            Some(dir) => Some(oww::Features::load(&lib, dir).map_err(second_err)?),
            None => None,
        };
        let mut words = Vec::new();
        for w in &self.words {
            let (info, file) = self.info(&w.name)?;
            let model = Model::load(&lib, &file).map_err(|e| self.err(e.to_string()))?;
            if model.features != CHANNELS {
                return Err(self.err(format!(
                    "{}: takes {} features per step, the frontend makes {CHANNELS}",
                    file.display(),
                    model.features
                )));
            }
            let threshold = w.threshold.unwrap_or(info.micro.probability_cutoff);
            let second = match &self.second {
                Some(dir) if oww::classifier_path(dir, &w.name).exists() => Some(Second {
                    classifier: oww::Classifier::load(&lib, &oww::classifier_path(dir, &w.name))
                        .map_err(second_err)?,
                    until: 0,
                }),
                _ => None,
            };
            words.push(WordModel {
                second,
                name: w.name.clone(),
                phrase: info.wake_word.clone(),
                rows: Vec::with_capacity(model.stride * CHANNELS),
                window: VecDeque::with_capacity(info.micro.sliding_window_size),
                window_size: info.micro.sliding_window_size,
                trigger: Trigger::new(
                    threshold,
                    w.trigger_level,
                    w.refractory.as_millis() as u64 * 16,
                ),
                model,
            });
        }
        let recent = VecDeque::with_capacity(if features.is_some() { oww::WARM_UP } else { 0 });
        Ok(MicroStream {
            frontend: Frontend::new(),
            words,
            position: 0,
            lib,
            features,
            recent,
            verifying: false,
            asked: 0,
        })
    }
}

struct WordModel {
    name: String,
    phrase: String,
    model: Model,
    /// Feature rows waiting for the model's stride.
    rows: Vec<f32>,
    window: VecDeque<f32>,
    window_size: usize,
    trigger: Trigger,
    second: Option<Second>,
}

/// A word's second opinion.
struct Second {
    classifier: oww::Classifier,
    /// The second opinion listens until here (0: not asked).
    until: u64,
}

/// A running detector.
pub struct MicroStream {
    frontend: Frontend,
    words: Vec<WordModel>,
    /// Samples pushed so far.
    position: u64,
    lib: Arc<Library>,
    /// openWakeWord's front half, when a second opinion was asked for.
    features: Option<oww::Features>,
    /// The last [`oww::WARM_UP`] samples, for a second opinion's start.
    recent: VecDeque<i16>,
    /// Whether `features` is running (fed every frame).
    verifying: bool,
    /// How often the second opinion was started.
    asked: u64,
}

impl MicroStream {
    /// The TensorFlow Lite library in use and its version.
    pub fn runtime(&self) -> String {
        format!("{} {}", self.lib.path().display(), self.lib.version())
    }

    /// The words and their phrases ("okay_nabu" → "Okay Nabu").
    pub fn phrases(&self) -> Vec<(String, String)> {
        self.words
            .iter()
            .map(|w| (w.name.clone(), w.phrase.clone()))
            .collect()
    }

    /// The words that have a second opinion.
    pub fn second_opinions(&self) -> Vec<String> {
        self.words
            .iter()
            .filter(|w| w.second.is_some())
            .map(|w| w.name.clone())
            .collect()
    }

    /// How often a second opinion was asked for so far.
    pub fn second_opinions_asked(&self) -> u64 {
        self.asked
    }

    /// Each word's threshold in use.
    pub fn thresholds(&self) -> Vec<(String, f32)> {
        self.words
            .iter()
            .map(|w| (w.name.clone(), w.trigger.threshold()))
            .collect()
    }

    /// Feeds audio; pure computation, a fraction of a millisecond per frame.
    pub fn push_now(
        &mut self,
        pcm: &[i16],
        out: &mut Vec<WakeEvent>,
    ) -> std::result::Result<(), String> {
        let mut failure = None;
        let start = self.position;
        let mut step = 0u64;
        let words = &mut self.words;
        self.frontend.push(pcm, |features| {
            step += 1;
            // The features end at this sample of the stream.
            let end = (start / STEP as u64 + step) * STEP as u64;
            for w in words.iter_mut() {
                w.rows
                    .extend(features.iter().map(|&v| v as f32 * FEATURE_SCALE));
                if w.rows.len() < w.model.stride * CHANNELS {
                    continue;
                }
                let p = match w.model.run(&w.rows) {
                    Ok(p) => p,
                    Err(e) => {
                        failure = Some(e.to_string());
                        return;
                    }
                };
                w.rows.clear();
                if w.window.len() == w.window_size {
                    w.window.pop_front();
                }
                w.window.push_back(p);
                let score = if w.window.len() < w.window_size {
                    0.0
                } else {
                    w.window.iter().sum::<f32>() / w.window_size as f32
                };
                out.push(WakeEvent::Score {
                    word: w.name.clone(),
                    score,
                });
                if w.trigger.score(score, end) {
                    out.push(WakeEvent::Detected {
                        word: w.name.clone(),
                        score,
                        end,
                        second_opinion: false,
                    });
                    // A new utterance starts from an empty window.
                    w.window.clear();
                    if let Some(s) = &mut w.second {
                        s.until = 0;
                    }
                } else if score >= GATE
                    && let Some(s) = &mut w.second
                    && !w.trigger.deaf(end)
                {
                    s.until = end + HOLD;
                }
            }
        });
        self.position += pcm.len() as u64;
        if let Some(e) = failure {
            return Err(e);
        }
        self.second_opinion(pcm, out)
    }

    /// Keeps the recent audio, and runs openWakeWord while a word asks.
    fn second_opinion(
        &mut self,
        pcm: &[i16],
        out: &mut Vec<WakeEvent>,
    ) -> std::result::Result<(), String> {
        let Some(features) = &mut self.features else {
            return Ok(());
        };
        for &s in pcm {
            if self.recent.len() == oww::WARM_UP {
                self.recent.pop_front();
            }
            self.recent.push_back(s);
        }
        let now = self.position;
        let asked = self
            .words
            .iter()
            .any(|w| w.second.as_ref().is_some_and(|s| s.until > now));
        if !asked {
            self.verifying = false;
            return Ok(());
        }
        let fresh: &[i16] = if self.verifying {
            pcm
        } else {
            // From the start of the recent audio: the phrase that made the
            // score rise is in it.
            features.reset(now - self.recent.len() as u64);
            self.verifying = true;
            self.asked += 1;
            self.recent.make_contiguous()
        };
        let words = &mut self.words;
        let mut failure = None;
        features
            .push(fresh, |window, end| {
                for w in words.iter_mut() {
                    let Some(s) = &mut w.second else { continue };
                    if s.until == 0 || w.trigger.deaf(end) {
                        continue;
                    }
                    let p = match s.classifier.probability(window) {
                        Ok(p) => p,
                        Err(e) => {
                            failure = Some(e.to_string());
                            continue;
                        }
                    };
                    out.push(WakeEvent::SecondOpinion {
                        word: w.name.clone(),
                        probability: p,
                    });
                    if p >= SECOND_THRESHOLD {
                        tracing::debug!(word = %w.name, probability = p, "wake word: the second opinion heard it");
                        out.push(WakeEvent::Detected {
                            word: w.name.clone(),
                            score: p,
                            end,
                            second_opinion: true,
                        });
                        w.trigger.fired(end);
                        w.window.clear();
                        s.until = 0;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        failure.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl WakeEngine for MicroEngine {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self) -> Result<Box<dyn WakeStream>> {
        let s = self.open_now()?;
        Ok(Box::new(Named {
            engine: self.name.clone(),
            stream: s,
        }))
    }
}

struct Named {
    engine: String,
    stream: MicroStream,
}

#[async_trait]
impl WakeStream for Named {
    async fn push(&mut self, pcm: &[i16], out: &mut Vec<WakeEvent>) -> Result<()> {
        self.stream
            .push_now(pcm, out)
            .map_err(|message| WakeError::Protocol {
                engine: self.engine.clone(),
                message,
            })
    }

    fn words(&self) -> Vec<String> {
        self.stream.words.iter().map(|w| w.name.clone()).collect()
    }

    fn detail(&self) -> String {
        let second = self.stream.second_opinions();
        if second.is_empty() {
            String::new()
        } else {
            format!(" (openWakeWord's second opinion for {})", second.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn word(name: &str) -> Word {
        Word {
            name: name.into(),
            threshold: None,
            trigger_level: 1,
            refractory: Duration::from_secs(2),
        }
    }

    /// The models' directory: `$PICHAT_WAKE_MODELS` (scripts/test.sh sets
    /// it after scripts/setup-wake.sh).
    fn models() -> PathBuf {
        PathBuf::from(std::env::var("PICHAT_WAKE_MODELS").expect("PICHAT_WAKE_MODELS"))
    }

    fn speak(text: &str) -> Vec<i16> {
        speak_as(text, "en-us", 175)
    }

    fn speak_as(text: &str, voice: &str, wpm: u32) -> Vec<i16> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.wav");
        let ok = std::process::Command::new("espeak-ng")
            .args([
                "-v",
                voice,
                "-s",
                &wpm.to_string(),
                "-w",
                p.to_str().unwrap(),
                text,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let clip = crate::audio::wav::read(&p).unwrap();
        crate::audio::wav::frames_of(&clip).unwrap().concat()
    }

    fn detections(words: &[&str], pcm: &[i16]) -> Vec<WakeEvent> {
        let m = models();
        let e = MicroEngine::new(
            "micro",
            &m,
            &m.join("libtensorflowlite_c.so"),
            words.iter().map(|w| word(w)).collect(),
        );
        let mut s = e.open_now().unwrap();
        let mut out = Vec::new();
        // Half a second of silence first, as a microphone would give.
        s.push_now(&[0; 8000], &mut out).unwrap();
        for f in pcm.chunks(320) {
            s.push_now(f, &mut out).unwrap();
        }
        s.push_now(&[0; 8000], &mut out).unwrap();
        out.retain(|e| matches!(e, WakeEvent::Detected { .. }));
        out
    }

    #[test]
    #[ignore = "needs the wake models: scripts/setup-wake.sh, PICHAT_WAKE_MODELS"]
    fn the_real_models_hear_their_words_and_only_them() {
        let words = ["okay_nabu", "hey_mycroft"];
        let d = detections(&words, &speak("Okay Nabu, what time is it?"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            matches!(&d[0], WakeEvent::Detected { word, score, .. } if word == "okay_nabu" && *score >= 0.85),
            "{d:?}"
        );
        let d = detections(&words, &speak("Hey Mycroft."));
        assert!(
            matches!(&d[..], [WakeEvent::Detected { word, .. }] if word == "hey_mycroft"),
            "{d:?}"
        );
        // Said twice within the refractory time: one detection.
        let d = detections(&words, &speak("Okay Nabu. Okay Nabu."));
        assert_eq!(d.len(), 1, "{d:?}");
        let d = detections(
            &words,
            &speak("The weather in Paris is nice today, and tomorrow it will rain."),
        );
        assert!(d.is_empty(), "{d:?}");
        // Several voices, speeds and levels, over noise.
        let mut heard = 0;
        let mut cases = Vec::new();
        for (i, voice) in ["en-us", "en-gb", "en-us+m3", "en-us+f3"]
            .iter()
            .enumerate()
        {
            for (j, wpm) in [140, 190].iter().enumerate() {
                let p = speak_as("Okay Nabu.", voice, *wpm);
                let gain = [1.0f32, 0.4][(i + j) % 2];
                let mut st = (i * 7 + j + 1) as u32;
                let noisy: Vec<i16> = p
                    .iter()
                    .map(|&s| {
                        st = st.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        let n = (((st >> 16) & 0xFFFF) as i32 - 32768) / 64;
                        (s as f32 * gain + n as f32) as i16
                    })
                    .collect();
                let found = !detections(&words, &noisy).is_empty();
                heard += usize::from(found);
                cases.push(format!("{voice} {wpm} wpm x{gain}: {found}"));
            }
        }
        // espeak-ng's en-us+f3 scores 0.81 for okay_nabu in the reference
        // implementation too (the cutoff is 0.85): the model, not this code.
        assert!(heard >= 6, "{heard} of 8: {cases:?}");
    }

    /// Each case's detections by the engine alone and with the second
    /// opinion, how many of those the second opinion decided, and how
    /// often it was asked, and its highest probability as it reports it
    /// (`WakeEvent::SecondOpinion`, for the monitor).
    fn both_ways(pcm: &[i16]) -> (usize, usize, usize, u64, Option<f32>) {
        let m = models();
        let lib = m.join("libtensorflowlite_c.so");
        let alone = MicroEngine::new("micro", &m, &lib, vec![word("okay_nabu")]);
        let second = MicroEngine::new("micro", &m, &lib, vec![word("okay_nabu")])
            .with_second_opinion(Some(&m.join("openwakeword")));
        let mut counts = Vec::new();
        let mut decided = Vec::new();
        let mut asked = 0;
        let mut reported: [Option<f32>; 2] = [None, None];
        for (k, e) in [alone, second].into_iter().enumerate() {
            let mut s = e.open_now().unwrap();
            let mut out = Vec::new();
            for f in [&[0i16; 8000][..], pcm, &[0; 24000][..]]
                .concat()
                .chunks(320)
            {
                s.push_now(f, &mut out).unwrap();
            }
            for e in &out {
                if let WakeEvent::SecondOpinion { probability, .. } = e {
                    reported[k] = Some(reported[k].unwrap_or(0.0).max(*probability));
                }
            }
            let detections: Vec<bool> = out
                .iter()
                .filter_map(|e| match e {
                    WakeEvent::Detected { second_opinion, .. } => Some(*second_opinion),
                    WakeEvent::Score { .. } | WakeEvent::SecondOpinion { .. } => None,
                })
                .collect();
            counts.push(detections.len());
            decided.push(detections.iter().filter(|&&d| d).count());
            asked = s.second_opinions_asked();
        }
        assert_eq!(decided[0], 0, "without a second opinion, none decides");
        assert_eq!(reported[0], None, "without a second opinion, none reports");
        (counts[0], counts[1], decided[1], asked, reported[1])
    }

    #[test]
    #[ignore = "needs the wake models: scripts/setup-wake.sh, PICHAT_WAKE_MODELS"]
    fn the_second_opinion_hears_what_the_model_half_hears() {
        // espeak-ng's en-us+f3 is the voice microWakeWord's model scores
        // under its cutoff (0.29-0.77 in `pichat bench wake`), and
        // openWakeWord's model hears.
        let mut alone = 0;
        let mut second = 0;
        for wpm in [130, 165, 200] {
            let (a, s, decided, asked, p) = both_ways(&speak_as("Okay Nabu.", "en-us+f3", wpm));
            // Asked, it reports what it heard; what it decided, at its
            // threshold.
            assert!(p.is_none() || asked >= 1, "reported unasked: {p:?}");
            if decided >= 1 {
                assert!(p.unwrap() >= SECOND_THRESHOLD, "{p:?}");
            }
            assert!(s <= 1, "one utterance, one detection: {s}");
            assert!(a <= s, "the second opinion only adds: {a} > {s}");
            assert!(decided >= s - a, "what it added is marked as its own");
            assert!(asked >= 1 || a == 1, "asked when the score rose");
            (alone, second) = (alone + a, second + s);
        }
        assert!(
            alone < 3,
            "the model alone misses this voice ({alone} of 3)"
        );
        assert!(
            second >= 2 && second > alone,
            "with the second opinion: {second} of 3, alone {alone}"
        );
        // A voice the model hears: the model's own detection, one.
        let (a, s, decided, _, _) = both_ways(&speak("Okay Nabu, what time is it?"));
        assert_eq!((a, s, decided), (1, 1, 0));
        // Speech without the wake word: nothing, either way.
        let (a, s, _, _, _) = both_ways(&speak_as(
            "The weather in Paris is nice today, and tomorrow it will rain.",
            "en-us+f3",
            165,
        ));
        assert_eq!((a, s), (0, 0));
        // Silence: never asked.
        assert_eq!(both_ways(&[0; 48000]), (0, 0, 0, 0, None));
    }

    #[test]
    #[ignore = "needs the wake models: scripts/setup-wake.sh, PICHAT_WAKE_MODELS"]
    fn a_second_opinion_that_cannot_load_is_explained() {
        let m = models();
        let lib = m.join("libtensorflowlite_c.so");
        let dir = tempfile::tempdir().unwrap();
        let e = MicroEngine::new("micro", &m, &lib, vec![word("okay_nabu")])
            .with_second_opinion(Some(dir.path()));
        let err = e.open_now().err().unwrap().to_string();
        assert!(err.contains("second opinion"), "{err}");
        assert!(err.contains("melspectrogram.tflite"), "{err}");
        assert!(err.contains("setup-wake.sh"), "{err}");
        // A model of the wrong kind where openWakeWord's should be.
        std::fs::copy(
            m.join("okay_nabu.tflite"),
            dir.path().join("melspectrogram.tflite"),
        )
        .unwrap();
        let err = e.open_now().err().unwrap().to_string();
        assert!(err.contains("float32") || err.contains("input"), "{err}");
        // A word without a model there has no second opinion; the others do.
        let ow = m.join("openwakeword");
        let e = MicroEngine::new("micro", &m, &lib, vec![word("okay_nabu"), word("alexa")])
            .with_second_opinion(Some(&ow));
        assert_eq!(
            e.open_now().unwrap().second_opinions(),
            ["okay_nabu", "alexa"]
        );
        std::fs::copy(
            ow.join("melspectrogram.tflite"),
            dir.path().join("melspectrogram.tflite"),
        )
        .unwrap();
        std::fs::copy(
            ow.join("embedding_model.tflite"),
            dir.path().join("embedding_model.tflite"),
        )
        .unwrap();
        std::fs::copy(
            ow.join("okay_nabu.tflite"),
            dir.path().join("okay_nabu.tflite"),
        )
        .unwrap();
        let e = MicroEngine::new("micro", &m, &lib, vec![word("okay_nabu"), word("alexa")])
            .with_second_opinion(Some(dir.path()));
        assert_eq!(e.open_now().unwrap().second_opinions(), ["okay_nabu"]);
    }

    #[test]
    fn missing_models_and_library_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let e = MicroEngine::new(
            "micro",
            dir.path(),
            &dir.path().join("libtensorflowlite_c.so"),
            vec![word("okay_nabu")],
        );
        let err = e.open_now().err().unwrap().to_string();
        assert!(err.contains("cannot load TensorFlow Lite"), "{err}");
        assert!(err.contains("setup-wake.sh"), "{err}");
        let e = MicroEngine::new(
            "micro",
            dir.path(),
            Path::new("libc.so.6"),
            vec![word("okay_nabu")],
        );
        let err = e.open_now().err().unwrap().to_string();
        assert!(err.contains("TfLite"), "a library without the C API: {err}");
    }
}
